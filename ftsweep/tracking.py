"""MLflow tracking: one run per training job, always ended (FINISHED, FAILED or KILLED).

Uses MlflowClient with an explicit run id rather than MLflow's global "active run",
so several runs in one process (Hydra's basic launcher) never step on each other.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ftsweep import orphans
from ftsweep import spool as spool_mod
from ftsweep.artifacts import DATABASE_FULL
from ftsweep.errors import FtsweepError, first_line, quiet_logs
from ftsweep.locks import SQLITE, create_aside, file_of, redact, url_lock

log = logging.getLogger("ftsweep")
T = TypeVar("T")
MAX_PARAM_LEN = 6000  # MLflow's limit on a param value (older servers: 500)


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else a sqlite store in the current folder (the ./mlruns file store is
    deprecated)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


_SQLITE_MAGIC = b"SQLite format 3\x00"
_ready: set[str] = set()  # stores this process has already checked and initialised
_clients: dict[tuple, Any] = {}  # one client per store and process: making one costs ~0.2 s, a sweep makes many


def check_store(uri: str) -> None:
    """Store URIs that MLflow would reject late, slowly or with a traceback: one line naming the URI and the fix."""
    fix = "set MLFLOW_TRACKING_URI to sqlite:///path/to/mlflow.db or an http:// MLflow server"
    if uri.startswith("file:") or ("://" not in uri and not uri.startswith("databricks")):
        raise FtsweepError(f"MLflow tracking store {uri} is a file store, which MLflow no longer supports; {fix}")
    path = file_of(uri)
    if path is None:
        return
    if path.is_dir():
        raise FtsweepError(f"MLflow tracking store {uri}: {path} is a folder, not a database file; {fix}")
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            if f.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
                raise FtsweepError(f"MLflow tracking store {uri}: {path} is not an SQLite database; {fix}")
    path.parent.mkdir(parents=True, exist_ok=True)


def open_client(uri: str):
    """An MlflowClient on a checked store. Creating the client creates (or migrates) a new store's tables, which
    is not safe when several processes start on one new store at once, so that happens under a lock."""
    check_store(uri)
    path = file_of(uri)
    # A database file replaced or removed since (same URI, another inode) gets a new client.
    key = (uri, os.getpid(), path.stat().st_ino if path is not None and path.exists() else None)
    if key in _clients:
        return _clients[key]
    try:
        with url_lock(uri, "mlflow-init"), quiet_logs("mlflow.store.db.utils", "alembic"):
            if path is not None:
                create_aside(path, lambda aside: MlflowClient(aside).search_experiments(max_results=1))
            client = MlflowClient(uri)
            if uri not in _ready:
                client.search_experiments(max_results=1)  # a server that is not MLflow fails here, not mid-run
                _ready.add(uri)
    except Exception as exc:
        reason = first_line(exc).split(" Response body:")[0]  # not a page of HTML from a server that is not MLflow
        raise FtsweepError(f"MLflow tracking store {uri} is not usable: {reason}") from exc
    if path is None or path.exists():  # a new sqlite file exists once the client has made its tables
        key = (uri, os.getpid(), path.stat().st_ino if path is not None else None)
        _clients[key] = client
    return client


def _artifact_root(tracking_uri: str) -> str | None:
    # Keep a sqlite store's artifacts beside its file, not in whatever folder the run started from.
    if tracking_uri.startswith(SQLITE):
        path = file_of(tracking_uri)
        assert path is not None  # a sqlite URL names its file
        return (path.resolve().parent / "mlartifacts").as_uri()
    return None


def _retry(call: Callable[[], T], attempts: int = 8, first_wait_s: float = 0.25) -> T:
    """Retry a tracking call while a sqlite store is locked by another writer (concurrent sweep workers)."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:  # MlflowException wraps sqlalchemy's OperationalError
            if "database is locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(first_wait_s * 2**attempt)
    raise AssertionError("unreachable")


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def deliver(client, run_id: str, op: dict[str, Any]) -> None:
    """One write of a run's spool (or of a run without one), sent to MLflow."""
    kind = op["kind"]
    if kind == "params":
        client.log_batch(run_id, params=[Param(k, v) for k, v in op["params"]])
    elif kind == "metrics":
        client.log_batch(run_id, metrics=[Metric(k, v, op["ts"], op["step"]) for k, v in op["metrics"].items()])
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in op["tags"].items()])
    elif kind == "artifact":
        client.log_artifact(run_id, op["path"])
    elif kind == "end":
        client.set_terminated(run_id, status=op["status"], end_time=op.get("ts"))
    else:
        raise ValueError(f"unknown tracking write {kind!r}")


class Tracker:
    """One MLflow run's writes. With `keep_writes`, they go to an on-disk spool first (ftsweep/spool.py), so
    that a store that cannot be reached for a while delays them instead of killing training."""

    def __init__(self, tracking_uri: str | None = None):
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.client = open_client(self.tracking_uri)
        self.run_id: str | None = None
        self.spool: spool_mod.Spool | None = None
        self.backoff: spool_mod.Backoff | None = None
        self._identity: dict[str, Any] = {}

    @property
    def active_run_id(self) -> str:
        """The id of the run this tracker writes to: set by start() or resume(), None again after end()."""
        assert self.run_id is not None, "no run: start() or resume() one first"
        return self.run_id

    # ---- the spool
    def keep_writes(self, folder: Path, retry_window_s: float) -> None:
        """From now on every write of this run is appended to `folder` before it is sent, and one the store
        cannot take for `retry_window_s` waits there for `python -m ftsweep.sync`."""
        self.spool = spool_mod.Spool.create(
            folder, {"run_id": self.run_id, "tracking_uri": self.tracking_uri, **self._identity}
        )
        self.backoff = spool_mod.Backoff(retry_window_s)

    def _write(self, op: dict[str, Any]) -> None:
        if self.spool is None:
            _retry(lambda: deliver(self.client, self.active_run_id, op))
            return
        self.spool.append(op)
        self.flush()

    def flush(self, wait: bool = False) -> bool:
        """Send the spool's waiting writes, in order; True when none is left. `wait`: retry with backoff until
        they are sent or the retry window has passed since the store stopped answering."""
        assert self.spool is not None and self.backoff is not None
        while not self.backoff.expired:
            if not self.backoff.due:
                if not wait:
                    return False
                self.backoff.sleep_until_due()
            try:
                # urllib3 warns of each retry of each call; one line below says the store is away.
                with quiet_logs("urllib3.connectionpool", warnings_too=True):
                    for i, op in self.spool.pending():
                        _retry(partial(deliver, self.client, self.active_run_id, op))
                        self.spool.mark(i + 1)
            except Exception as exc:
                if not spool_mod.unreachable(exc):
                    raise
                if self.backoff.down_since is None:
                    log.warning(
                        "MLflow tracking store %s cannot be reached (%s); training goes on and the run's "
                        "writes wait in %s (retried for %.0f s)",
                        redact(self.tracking_uri),
                        first_line(exc)[:120],
                        self.spool.folder,
                        self.backoff.window_s,
                    )
                self.backoff.failed()
                if not wait:
                    return False
                continue
            if self.backoff.down_since is not None:
                log.info(
                    "MLflow tracking store %s answers again: every waiting write delivered", redact(self.tracking_uri)
                )
            self.backoff.succeeded()
            return True
        return not self.spool.waiting()

    def experiment_id(self, name: str) -> str:
        try:
            exp = _retry(lambda: self.client.get_experiment_by_name(name))
            if exp is not None:
                return exp.experiment_id
            try:
                # The kind tag makes MLflow's UI open on its model-training views (runs, charts), not GenAI traces.
                return _retry(
                    lambda: self.client.create_experiment(
                        name,
                        artifact_location=_artifact_root(self.tracking_uri),
                        tags={"mlflow.experimentKind": "custom_model_development"},
                    )
                )
            except MlflowException:  # another process created it first
                exp = _retry(lambda: self.client.get_experiment_by_name(name))
                if exp is None:
                    raise
                return exp.experiment_id
        except Exception as exc:
            first = first_line(exc)
            raise FtsweepError(f"MLflow tracking store {self.tracking_uri} is not usable: {first}") from exc

    def start(self, experiment: str, run_name: str, tags: Mapping[str, str], parent_run_id: str | None = None) -> str:
        exp_id = self.experiment_id(experiment)
        tags = {**{k: str(v) for k, v in tags.items()}, **orphans.owner_tags()}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id  # MLflow's own tag: the UI nests the run under its parent
        run = _retry(lambda: self.client.create_run(exp_id, run_name=run_name, tags=tags))
        self.run_id = run.info.run_id
        self._identity = {"experiment": experiment, "run_name": run_name, "tags": tags}
        return self.run_id

    def resume(self, run_id: str) -> bool:
        """Reopen a run (a resumed sweep's parent, a resumed training run); False when this store lacks it."""
        try:
            run = _retry(lambda: self.client.get_run(run_id))
        except MlflowException:
            return False
        self.run_id = run_id
        _retry(lambda: self.client.update_run(run_id, status="RUNNING"))
        self._identity = {
            "experiment": self.client.get_experiment(run.info.experiment_id).name,
            "run_name": run.info.run_name,
            "tags": dict(run.data.tags),
        }
        self.set_tags(orphans.owner_tags())  # this process owns it now
        return True

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [[k, redact(str(v))[:MAX_PARAM_LEN]] for k, v in params.items()]
        for i in range(0, len(items), 100):  # log_batch takes at most 100 params
            self._write({"kind": "params", "params": items[i : i + 100]})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._write(
            {
                "kind": "metrics",
                "step": step,
                "ts": int(time.time() * 1000),
                "metrics": {k: float(v) for k, v in metrics.items()},
            }
        )

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._write({"kind": "tags", "tags": {k: redact(str(v))[:5000] for k, v in tags.items()}})

    def last_step(self, *keys: str) -> int:
        """The highest step this run has logged for any of `keys` (-1 for none)."""
        return max(
            (m.step for key in keys for m in _retry(partial(self.client.get_metric_history, self.run_id, key))),
            default=-1,
        )

    def delete_tags(self, *keys: str) -> None:
        tags = _retry(lambda: self.client.get_run(self.run_id)).data.tags
        for key in keys:
            if key in tags:
                _retry(partial(self.client.delete_tag, self.run_id, key))

    def log_dataset(self, df, name: str, source: str, context: str, targets: str = "label") -> None:
        """A data set as an MLflow dataset input (name, digest, source, schema): the run page's Datasets column."""
        with warnings.catch_warnings():  # a source string MLflow could read two ways: it picks the local one
            warnings.simplefilter("ignore")
            dataset = from_pandas(df, source=source, name=name, targets=targets)
        entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
        _retry(lambda: self.client.log_inputs(self.run_id, datasets=[entity]))

    def log_artifact(self, path: str | Path) -> None:
        self._write({"kind": "artifact", "path": str(path)})

    def log_text(self, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(redact(text))
            self.log_artifact(path)

    def log_json(self, obj: Any, name: str) -> None:
        self.log_text(json.dumps(obj, indent=2, default=str), name)

    def end(self, status: str = "FINISHED") -> None:
        """End the run. With a spool, a finished run waits (within the retry window) for a store that cannot
        be reached; a failed or killed one does not. Writes still waiting then stay for ftsweep.sync."""
        if self.run_id is None:
            return
        if self.spool is None:
            run_id = self.run_id
            _retry(lambda: self.client.set_terminated(run_id, status=status))
            self.run_id = None
            return
        self.spool.append({"kind": "end", "status": status, "ts": int(time.time() * 1000)})
        delivered = self.flush(wait=status == "FINISHED")
        run_id, self.run_id = self.run_id, None
        if delivered:
            spool_mod.unregister(run_id)
            return
        spool_mod.register_waiting(run_id, self.spool.folder)
        log.warning(
            "MLflow tracking store %s could not take run %s's last writes; they are kept in %s: "
            "python -m ftsweep.sync %s uploads them",
            redact(self.tracking_uri),
            run_id,
            self.spool.folder,
            self.spool.folder.parent,
        )

    def fail(self, exc: BaseException, status: str) -> None:
        """End the run with the error that stopped it. When the store cannot take even that (its disk is full,
        it is gone), the reason is noted on this host and the next ftsweep start here ends the run (end_orphans)."""
        error = first_line(exc, with_type=True)
        run_id = self.run_id
        # A store that cannot take these writes has MLflow log an ERROR with a traceback for each: one line below.
        with quiet_logs("mlflow.store.db.utils", level=logging.CRITICAL):
            try:
                self.set_tags({"error": error, "error_type": type(exc).__name__})
            except Exception:  # noqa: BLE001 - the end below matters more than the tags
                pass
            try:
                self.end(status)
                return
            except Exception as caught:  # noqa: BLE001 - the run's own error is the one to report
                store_error = caught
        self.run_id = None
        spool_mod.note_end(run_id, status, error)
        reason = DATABASE_FULL if DATABASE_FULL in str(store_error) else first_line(store_error)
        log.warning(
            "could not record the end of run %s in %s (%s); the next ftsweep start on this host ends it",
            run_id,
            redact(self.tracking_uri),
            reason,
        )
