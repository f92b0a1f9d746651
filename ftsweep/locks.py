"""Exclusive locks across processes and machines, for the one store behind a URL.

Two uses: claiming a sweep's trials (ftsweep/sweep/storage.py), and creating a fresh MLflow store, whose
table creation and migrations collide when two processes start on a new sqlite file at once
(`table _alembic_tmp_experiments already exists`, `duplicate column name`).

Also what the modules that take a store's URL share: the file behind it, and the URL with its password hidden.
`redact` lives here rather than in tracking.py so that ftsweep/sweep/storage.py, which Hydra's start-up imports
through the sweeper plugin, does not bring in MLflow (about 1.1 s) for every command line.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import uuid
from pathlib import Path
from typing import Callable, Iterator, Optional

SQLITE, JOURNAL = "sqlite:///", "journal://"


def file_of(url: str) -> Optional[Path]:
    """The file behind a sqlite or journal URL (relative paths are relative to the working directory)."""
    for prefix in (SQLITE, JOURNAL):
        if url.startswith(prefix):
            return Path(url[len(prefix) :])
    return None


_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s'\"]*):(?P<secret>[^@/\s'\"]+)@")


def redact(text: str) -> str:
    """Hide the password of every URL in a text (`postgresql://ml:pw@db/x` -> `postgresql://ml:***@db/x`)."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


@contextlib.contextmanager
def url_lock(url: str, purpose: str, pg_name: Optional[str] = None) -> Iterator[bool]:
    """Hold an exclusive lock named `purpose` on the store behind `url`: a file lock beside a sqlite or journal
    file, a PostgreSQL advisory lock (keyed by `pg_name`, default `purpose`) on a server database. Yields False
    (no lock) for other stores."""
    path = file_of(url)
    if path is not None:
        lock = path.with_name(f"{path.name}.{purpose}-lock")  # never `.lock`: Optuna's journal uses that name
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    elif url.startswith("postgresql"):
        # Here, not at the top: this module is on every command's start-up path (the sweeper plugin), and
        # sqlalchemy added 0.1 s to each (0.49 -> 0.62 s for a one-line config error); only PostgreSQL needs it.
        import sqlalchemy

        key = int(hashlib.sha256((pg_name or purpose).encode()).hexdigest()[:15], 16)
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield True
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        finally:
            engine.dispose()
    else:
        yield False


def create_aside(path: Path, create: Callable[[str], object]) -> None:
    """Make a new sqlite store whole or not at all: `create(url)` builds its tables in a file beside `path`,
    which then takes its place. Creating MLflow's tables runs its migrations for seconds; a process killed
    meanwhile left a half-made file that every later start failed on ("table ... already exists", an
    out-of-date schema). Call it holding the store's lock. An existing, non-empty file is left alone."""
    if path.exists() and path.stat().st_size > 0:
        return
    for stale in path.parent.glob(f"{path.name}.new-*"):  # what a creator killed mid-way left
        stale.unlink(missing_ok=True)
    # A name never used before: MLflow keeps one store object per URI for the life of the process.
    aside = path.with_name(f"{path.name}.new-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        create(f"{SQLITE}{aside}")
        os.replace(aside, path)
    finally:
        aside.unlink(missing_ok=True)
