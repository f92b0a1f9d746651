"""A run's tracking writes on disk first, in order, and delivered to MLflow when the store answers.

A tracking server that goes away for a moment (a restart, a network blip) must not kill or lose training.
Every write of a run (params, metrics, tags, artifacts, its end) is appended to `<run dir>/tracking/ops.jsonl`
before it is sent; `delivered` counts the ones MLflow has. While the store cannot be reached the writes
wait there and are retried with backoff for `tracking.retry_window_s`; past that the run finishes locally,
and `python -m ftsweep.sync RUN_DIR` delivers the rest later, into the same run or a new one, each write
once (W&B's client, which writes locally first and syncs, is the model).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from ftsweep.artifacts import write_json, write_text
from ftsweep.assets import cache_dir
from ftsweep.errors import causes

FOLDER = "tracking"  # inside a run's (or a sweep's) output folder
OPS, DELIVERED, RUN = "ops.jsonl", "delivered", "run.json"
FIRST_WAIT_S, MAX_WAIT_S = 1.0, 30.0  # backoff between tries while the store is away

# What an unreachable store looks like through MLflow's REST client (requests/urllib3 underneath).
_UNREACHABLE = (
    "Max retries exceeded",
    "Connection refused",
    "Connection reset",
    "Connection aborted",
    "RemoteDisconnected",
    "Failed to establish a new connection",
    "Read timed out",
    "TEMPORARILY_UNAVAILABLE",
    "503 Server Error",
    "502 Server Error",
    "504 Server Error",
    "failed with exception HTTPConnectionPool",
    "failed with exception HTTPSConnectionPool",
)


def worker_folder(sweep_dir: Path) -> Path:
    """The spool of this process's writes to a sweep's parent run. Several workers write to that one run,
    each through its own spool: one shared folder let a starting worker move aside the spool another was
    writing (found by CI with 8 workers: an artifact copy vanished before it was sent)."""
    return Path(sweep_dir) / f"{FOLDER}-{socket.gethostname()}-{os.getpid()}"


def unreachable(exc: BaseException) -> bool:
    """Whether a tracking call failed because the store could not be reached (worth waiting for), rather
    than because it refused the call (which retrying would not change)."""
    return any(
        isinstance(error, (ConnectionError, TimeoutError)) or any(s in str(error) for s in _UNREACHABLE)
        for error in causes(exc)
    )


class Spool:
    """The ordered writes of one MLflow run, on disk: what the run is (run.json), every write (ops.jsonl, one
    JSON object a line, appended and flushed before it is sent) and how many MLflow has (`delivered`)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.ops_file = self.folder / OPS
        self.folder.mkdir(parents=True, exist_ok=True)
        # Known while this process writes the spool: a healthy store then never rereads the file.
        self._count: int | None = None
        self._delivered: int | None = None
        self._last: dict[str, Any] = {}

    @classmethod
    def create(cls, folder: Path, run: dict[str, Any]) -> "Spool":
        """A new, empty spool. One left by an earlier process with writes still waiting is moved aside
        (`tracking.1`, ...), where `ftsweep.sync` still finds it."""
        folder = Path(folder)
        if (folder / OPS).is_file() and cls(folder).waiting():
            folder.rename(
                next(
                    folder.with_name(f"{folder.name}.{i}")
                    for i in range(1, 10**6)
                    if not folder.with_name(f"{folder.name}.{i}").exists()
                )
            )
        spool = cls(folder)
        write_json(spool.folder / RUN, run)
        write_text(spool.ops_file, "")
        spool.mark(0)
        spool._count = 0
        return spool

    @property
    def run(self) -> dict[str, Any]:
        return json.loads((self.folder / RUN).read_text())

    def append(self, op: dict[str, Any]) -> None:
        if op.get("kind") == "artifact":  # the file may be temporary: the spool keeps its own copy
            n = sum(1 for _ in (self.folder / "artifacts").glob("*")) if (self.folder / "artifacts").is_dir() else 0
            copy = Path("artifacts") / str(n) / Path(op["path"]).name  # relative: the folder may move
            (self.folder / copy).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(op["path"], self.folder / copy)
            op = {**op, "path": str(copy)}
        with open(self.ops_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(op) + "\n")
            f.flush()
        if self._count is not None:
            self._count += 1
            self._last = {**op, "path": str(self.folder / op["path"])} if op.get("kind") == "artifact" else op

    def ops(self) -> list[dict[str, Any]]:
        """Every write, in order; an artifact's path is its copy's, wherever the folder is now."""
        with open(self.ops_file, encoding="utf-8") as f:
            ops = [json.loads(line) for line in f if line.strip()]
        return [{**op, "path": str(self.folder / op["path"])} if op.get("kind") == "artifact" else op for op in ops]

    @property
    def delivered(self) -> int:
        if self._delivered is not None:
            return self._delivered
        try:
            return int((self.folder / DELIVERED).read_text())
        except (OSError, ValueError):
            return 0

    def mark(self, n: int) -> None:
        write_text(self.folder / DELIVERED, f"{n}\n")
        self._delivered = n

    def pending(self) -> Iterator[tuple[int, dict[str, Any]]]:
        done = self.delivered
        if self._count is not None and done >= self._count - 1:  # none, or only the write just appended
            if done == self._count - 1:
                yield done, self._last
            return
        for i, op in enumerate(self.ops()):
            if i >= done:
                yield i, op

    def waiting(self) -> bool:
        return any(True for _ in self.pending())


class Backoff:
    """When to try an unreachable store again, and when to stop trying (`window_s` after the first failure)."""

    def __init__(self, window_s: float):
        self.window_s = window_s
        self.down_since: float | None = None
        self.next_try = 0.0
        self.wait_s = FIRST_WAIT_S

    def failed(self) -> None:
        now = time.monotonic()
        if self.down_since is None:
            self.down_since, self.wait_s = now, FIRST_WAIT_S
        self.next_try = now + self.wait_s
        self.wait_s = min(2 * self.wait_s, MAX_WAIT_S)

    def succeeded(self) -> None:
        self.down_since, self.next_try, self.wait_s = None, 0.0, FIRST_WAIT_S

    @property
    def due(self) -> bool:
        return time.monotonic() >= self.next_try

    @property
    def expired(self) -> bool:
        return self.down_since is not None and time.monotonic() - self.down_since > self.window_s

    def sleep_until_due(self) -> None:
        time.sleep(max(0.0, self.next_try - time.monotonic()))


# Runs whose spool still holds writes for `ftsweep.sync`: the orphan check (orphans.end_orphans) leaves
# them alone, since their true end is in the spool, not lost.
def _registry(run_id: str) -> Path:
    return cache_dir() / "spools" / run_id


def register_waiting(run_id: str, folder: Path) -> None:
    write_text(_registry(run_id), f"{Path(folder).resolve()}\n")


def unregister(run_id: str) -> None:
    _registry(run_id).unlink(missing_ok=True)


def is_waiting(run_id: str) -> bool:
    return _registry(run_id).is_file()


# How a run ended, when its store could not take it (tracking.Tracker.fail): the next start records it
# (orphans.end_orphans). Best effort: the disk that filled may be this one too.
def _end_note(run_id: str) -> Path:
    return cache_dir() / "orphans" / f"{run_id}.json"


def note_end(run_id: str | None, status: str, error: str) -> None:
    if run_id is not None:
        with contextlib.suppress(Exception):
            write_json(_end_note(run_id), {"status": status, "error": error})


def noted_end(run_id: str) -> dict[str, str]:
    try:
        return dict(json.loads(_end_note(run_id).read_text()))
    except (OSError, ValueError):
        return {}


def forget_end(run_id: str) -> None:
    _end_note(run_id).unlink(missing_ok=True)
