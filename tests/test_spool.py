"""A store that stops answering mid-run: the run's writes wait on disk (ftsweep/spool.py), are retried with
backoff within `tracking.retry_window_s`, and land once it answers; past the window the run finishes locally
and `ftsweep.sync` uploads the rest, each write once. The outage is injected into the client here; the
real `mlflow server` restart is in test_reliability.py."""

import json
import os

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ftsweep import spool
from ftsweep.orphans import end_orphans
from ftsweep.sync import sync
from ftsweep.tracking import Tracker
from ftsweep.train import train
from tests.conftest import run_statuses

DOWN = MlflowException(
    "API request to endpoint /api/2.0/mlflow/runs/log-batch failed with exception "
    "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded with url"
)


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    monkeypatch.setattr(spool, "FIRST_WAIT_S", 0.01)
    monkeypatch.setattr(spool, "MAX_WAIT_S", 0.05)


def outage(monkeypatch, calls: range):
    """The store stops answering for the given window of write calls (counted from the run's first write)."""
    from ftsweep import tracking

    real, seen = tracking.deliver, []

    def deliver(client, run_id, op):
        seen.append(op["kind"])
        if len(seen) - 1 in calls:
            raise DOWN
        return real(client, run_id, op)

    monkeypatch.setattr(tracking, "deliver", deliver)
    return seen


def losses(run_id: str) -> list[int]:
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    return sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))


def test_an_outage_mid_run_delays_the_writes_and_every_one_lands_once(tiny_cfg, tmp_path, monkeypatch):
    seen = outage(monkeypatch, range(8, 14))  # a few loss logs into training, for six tries
    metrics = train(tiny_cfg("max_steps=40", "epochs=100", "log_every_steps=2"), output_dir=tmp_path / "out")
    run_id = json.loads((tmp_path / "out" / "metrics.json").read_text())["run_id"]
    assert run_statuses() == ["FINISHED"] and len(seen) > 14
    assert losses(run_id) == list(range(2, 41, 2))  # each step once, in order
    assert MlflowClient().get_run(run_id).data.metrics["eval/accuracy"] == metrics["eval/accuracy"]
    assert not spool.Spool(tmp_path / "out" / "tracking").waiting() and not spool.is_waiting(run_id)


def test_past_the_window_the_run_finishes_locally_and_sync_uploads_it_once(tiny_cfg, tmp_path, monkeypatch, caplog):
    with monkeypatch.context() as down:
        outage(down, range(6, 10**6))  # the store never comes back while the run lasts
        metrics = train(
            tiny_cfg("max_steps=20", "epochs=100", "log_every_steps=2", "tracking.retry_window_s=0.2"),
            output_dir=tmp_path / "out",
        )
    run_id = json.loads((tmp_path / "out" / "metrics.json").read_text())["run_id"]
    assert "python -m ftsweep.sync" in caplog.text and run_statuses() == ["RUNNING"]
    assert spool.is_waiting(run_id) and end_orphans(Tracker().client) == []  # its end waits in the spool, not lost

    [line] = sync(tmp_path / "out")
    assert f"delivered to run {run_id}" in line
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["eval/accuracy"] == metrics["eval/accuracy"]
    assert losses(run_id) == list(range(2, 21, 2))
    assert "classification_report.json" in {a.path for a in MlflowClient().list_artifacts(run_id)}
    assert sync(tmp_path / "out") == [f"{tmp_path / 'out' / 'tracking'}: 0 write(s) delivered to run {run_id}"]
    assert losses(run_id) == list(range(2, 21, 2))  # nothing twice
    assert not spool.is_waiting(run_id)


def test_sync_into_a_store_that_lacks_the_run_creates_it_again(tiny_cfg, tmp_path, monkeypatch):
    train(tiny_cfg("max_steps=4", "log_every_steps=2"), output_dir=tmp_path / "out")
    original = json.loads((tmp_path / "out" / "metrics.json").read_text())["run_id"]
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    [line] = sync(tmp_path / "out", tracking_uri=elsewhere)
    assert f"(for {original}, which" in line
    client = MlflowClient(elsewhere)
    [run] = client.search_runs([client.get_experiment_by_name("local").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["ftsweep.synced_from"] == original
    assert run.data.params["lr"] and "eval/accuracy" in run.data.metrics


def test_only_an_unreachable_store_is_waited_for():
    assert spool.unreachable(DOWN)
    assert spool.unreachable(ConnectionRefusedError(111, "Connection refused"))
    assert not spool.unreachable(MlflowException("INVALID_PARAMETER_VALUE: Changing param values is not allowed"))


def test_sync_of_a_folder_without_a_spool_is_one_line(tmp_path):
    from ftsweep.errors import FtsweepError

    with pytest.raises(FtsweepError, match="holds no ftsweep tracking spool"):
        sync(tmp_path)


def test_a_sweeps_parent_is_synced_first_and_its_trials_nest_under_it_in_a_new_store(tmp_path):
    """Spools of a parent run and a trial, as a sweep leaves them, synced into a store that has neither."""
    parent, child = Tracker(), Tracker()
    parent.start("local", "sweep-x", {"ftsweep.role": "sweep"})
    parent.keep_writes(spool.worker_folder(tmp_path / "sweep"), 600)
    child.start("local", "trial", {}, parent_run_id=parent.run_id)
    child.keep_writes(tmp_path / "sweep" / "trial_0" / "tracking", 600)
    child.log_metrics({"eval/accuracy": 0.75}, step=3)
    child.end("FINISHED")
    parent.log_metrics({"sweep/n_complete": 1}, step=0)
    parent.end("FINISHED")
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    lines = sync(tmp_path / "sweep", tracking_uri=elsewhere)
    assert (
        lines[0].startswith(f"{spool.worker_folder(tmp_path / 'sweep')}: ") and len(lines) == 3
    )  # parent, trial, report
    client = MlflowClient(elsewhere)
    runs = client.search_runs([client.get_experiment_by_name("local").experiment_id])
    [new_parent] = [r for r in runs if r.data.tags.get("ftsweep.role") == "sweep"]
    [new_child] = [r for r in runs if r.data.tags.get("ftsweep.synced_from") == child.spool.run["synced_from"]]
    assert new_child.data.tags["mlflow.parentRunId"] == new_parent.info.run_id
    assert new_child.data.metrics["eval/accuracy"] == 0.75 and {r.info.status for r in runs} == {"FINISHED"}


def test_each_sweep_worker_spools_the_parent_run_in_its_own_folder(tmp_path, monkeypatch):
    """Workers of one sweep write to its one parent run. A starting worker must not move aside the spool
    another is writing (they shared one folder, and a worker's artifact copy vanished before it was sent),
    and a sync into a new store makes the parent run once from all the workers' spools."""
    parent = Tracker()
    run_id = parent.start("local", "sweep-x", {"ftsweep.role": "sweep"})
    parent.end("FINISHED")
    folders, spools = [], []
    for pid, value in ((101, 1.0), (102, 2.0)):
        monkeypatch.setattr(os, "getpid", lambda pid=pid: pid)
        folders.append(spool.worker_folder(tmp_path / "sweep"))
        spools.append(
            spool.Spool.create(
                folders[-1],
                {
                    "run_id": run_id,
                    "tracking_uri": parent.tracking_uri,
                    "experiment": "local",
                    "run_name": "sweep-x",
                    "tags": {},
                },
            )
        )
        spools[-1].append({"kind": "metrics", "metrics": {"sweep/x": value}, "step": pid, "ts": 1000})
    assert folders[0] != folders[1] and all(f.name.startswith(spool.FOLDER) for f in folders)
    assert [s.waiting() for s in spools] == [True, True]  # the first worker's spool is still where it wrote it
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    first, second = sync(tmp_path / "sweep", tracking_uri=elsewhere)
    client = MlflowClient(elsewhere)
    [run] = client.search_runs([client.get_experiment_by_name("local").experiment_id])
    assert f"new run {run.info.run_id}" in first and second.endswith(f"delivered to run {run.info.run_id}")
    assert [m.value for m in client.get_metric_history(run.info.run_id, "sweep/x")] == [1.0, 2.0]
