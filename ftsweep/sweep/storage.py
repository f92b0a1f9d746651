"""Where a study lives: storage URLs, opening (and upgrading) them, the claim lock and dead workers.

Three kinds of URL:
- `sqlite:///path.db`: one machine, or a shared filesystem that honours locks;
- `journal:///path.log`: Optuna's JournalStorage, an append-only file for clusters that share a
  filesystem but have no database server;
- any other SQLAlchemy URL (`postgresql://...`): many machines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypeVar

import optuna
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from ftsweep.errors import ConfigError, FtsweepError, causes
from ftsweep.locks import JOURNAL, SQLITE, create_aside, file_of, redact, url_lock
from ftsweep.orphans import pid_alive
from ftsweep.spool import Backoff

T = TypeVar("T")


class StorageGone(FtsweepError):
    """The sweep's Optuna storage stayed unreachable for the whole retry window."""


log = logging.getLogger("ftsweep.sweep")


def check_url(url: str) -> None:
    if "://" not in url:
        raise ConfigError(
            f"hydra.sweeper.storage must be a URL: sqlite:///{url}, journal://{url} or "
            f"postgresql://user@host/db; got '{url}'"
        )


def default_url(sweep_dir: Path) -> str:
    return f"{SQLITE}{(Path(sweep_dir) / 'optuna.db').resolve()}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The storage behind a URL. An RDB written by an older Optuna is upgraded in place for sqlite, after a
    backup beside it; for a server database the user is told the one command that upgrades it."""
    check_url(url)
    path = file_of(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if url.startswith(JOURNAL):
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    # Workers share one sqlite file: wait for its lock rather than failing with "database is locked". A server
    # database's pooled connections are checked before use, so one restarted meanwhile is simply reconnected.
    engine: dict[str, Any] = {"connect_args": {"timeout": 120}} if url.startswith(SQLITE) else {"pool_pre_ping": True}
    if path is not None and url.startswith(
        SQLITE
    ):  # a new file's tables are made whole or not at all (a kill mid-way left half)
        with url_lock(url, "optuna-init"):
            create_aside(path, lambda aside: optuna.storages.RDBStorage(aside, engine_kwargs=engine).engine.dispose())
    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, skip_compatibility_check=True)
    current, head = storage.get_current_version(), storage.get_head_version()
    if current != head:
        if path is None:
            raise ConfigError(
                f"the Optuna storage {redact(url)} has schema {current}, older than this Optuna's "
                f"{head}; back it up, then run: optuna storage upgrade --storage '{redact(url)}'"
            )
        backup = path.with_name(f"{path.name}.bak-{current}")
        if not backup.exists():
            shutil.copy2(path, backup)
        storage.upgrade()
        log.warning(
            "upgraded the Optuna storage %s from schema %s to %s; the old file is kept as %s",
            path,
            current,
            head,
            backup,
        )
    return storage


# A database server that is restarting or gone, as SQLAlchemy and psycopg report it.
_GONE = (
    "server closed the connection",
    "terminating connection",
    "Connection refused",
    "could not connect",
    "connection is closed",
    "the database system is starting up",
    "the database system is shutting down",
    "connection to server",
    "SSL SYSCALL error",
    "Connection reset",
)
RETRY_WINDOW_S = 600.0  # how long a sweep waits for its storage to come back (tracking.retry_window_s as well)


def storage_unreachable(exc: BaseException) -> bool:
    return any(
        getattr(error, "connection_invalidated", False) or any(s in str(error) for s in _GONE) for error in causes(exc)
    )


def retrying(url: str, call: Callable[[], T], what: str, window_s: float = RETRY_WINDOW_S) -> T:
    """`call` against the storage; while its database server cannot be reached (a restart), retried with
    backoff for `window_s`, then one line. Only for calls that are safe to repeat (see runner._claim)."""
    backoff = Backoff(window_s)  # the tracking spool's: 1 s, doubling to 30 s
    while True:
        try:
            return call()
        except Exception as exc:
            if not storage_unreachable(exc):
                raise
            if backoff.down_since is None:
                log.warning(
                    "Optuna storage %s cannot be reached while %s (%s); retrying for %.0f s",
                    redact(url),
                    what,
                    str(exc).splitlines()[0][:120],
                    window_s,
                )
            backoff.failed()
            if backoff.expired:
                raise StorageGone(
                    f"Optuna storage {redact(url)} could not be reached for {window_s:.0f} s while "
                    f"{what}; rerun the same command when it is back, to resume"
                ) from exc
            backoff.sleep_until_due()


@contextlib.contextmanager
def claim_lock(url: str) -> Iterator[None]:
    """Serialise claiming trials across processes (a file lock), and machines (a PostgreSQL advisory lock)."""
    # The same file and advisory-lock names as earlier versions: old and new workers exclude each other.
    with url_lock(url, "ftsweep", pg_name="ftsweep-claim") as locked:
        if not locked:
            log.warning(
                "no cross-process claim lock for %s: concurrent workers may duplicate a trial", url.split(":")[0]
            )
        yield


def worker_attrs() -> dict[str, object]:
    """Who runs a trial, so that a dead worker's RUNNING trial can be recognised."""
    return {"worker": f"{socket.gethostname()}:{os.getpid()}", "host": socket.gethostname(), "pid": os.getpid()}


def is_stale(trial: FrozenTrial, stale_after_s: Optional[float], now: float) -> bool:
    """A RUNNING trial whose worker is gone: its process is dead (same host) or it is older than stale_after_s."""
    if trial.state != TrialState.RUNNING:
        return False
    attrs = trial.user_attrs
    if attrs.get("host") == socket.gethostname() and "pid" in attrs:
        return not pid_alive(int(attrs["pid"]))
    if stale_after_s is not None and trial.datetime_start is not None:
        return now - trial.datetime_start.timestamp() > stale_after_s
    return False
