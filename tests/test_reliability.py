"""Faults and signals (RELIABILITY.md): each test proves that nothing finished is lost and no run stays RUNNING."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.conftest import run_statuses, toy_rows, write_csv


def start(cli, *args: str) -> subprocess.Popen:
    return cli.popen(*args, stderr=subprocess.PIPE)


def query(db: Path, sql: str) -> list[tuple]:
    try:
        with sqlite3.connect(db) as con:
            return list(con.execute(sql))
    except sqlite3.OperationalError:  # not created yet
        return []


def wait_for(condition, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def mlflow_db() -> Path:
    return Path(os.environ["MLFLOW_TRACKING_URI"][len("sqlite:///"):])


def long_run(tmp_path: Path) -> list[str]:
    toy = write_csv(tmp_path / "toy.csv", toy_rows(64))
    return ["model=tiny", "data=local", f"data.train_file={toy}", "progress_bar=false", "epochs=100000",
            "log_every_steps=5"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_a_single_run_ends_it_killed_and_keeps_its_metrics(cli, tmp_path, sig):
    proc = start(cli, *long_run(tmp_path), "hydra.run.dir=out")
    db = mlflow_db()
    wait_for(lambda: query(db, "select count(*) from metrics where key='train/loss'")[0][0] >= 2 if db.exists()
             else False, "train/loss to be logged")
    t0 = time.time()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert time.time() - t0 < 15
    assert proc.returncode != 0
    assert "MLflow run is marked KILLED" in err and "Traceback" not in err
    assert run_statuses() == ["KILLED"]
    assert query(db, "select count(*) from metrics where key='train/loss'")[0][0] >= 2  # kept
    leftovers = [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".") and p.suffix == ".tmp"]
    cache = Path(os.environ["FTSWEEP_CACHE"])
    leftovers += [p for p in cache.rglob("*") if p.name.startswith((".fetch-", "tmp"))]
    assert leftovers == []


def test_sigterm_during_a_sweep_fails_the_trial_and_the_same_command_resumes(cli, tmp_path):
    toy = write_csv(tmp_path / "toy.csv", toy_rows(64))
    args = ["-m", "model=tiny", "data=local", f"data.train_file={toy}", "progress_bar=false", "max_steps=300", "epochs=1000",
            "log_every_steps=5", "batch_size=8,16"]
    proc = start(cli, *args)
    db = mlflow_db()
    wait_for(lambda: query(db, "select count(*) from metrics where key='train/loss'")[0][0] >= 1 if db.exists()
             else False, "the first trial to log")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "rerun the same command to resume" in err
    storage = f"sqlite:///{tmp_path / 'multirun' / 'optuna.db'}"
    [summary] = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    [trial] = study.get_trials()
    assert trial.state.name == "FAIL" and "interrupted" in trial.user_attrs["error"]
    statuses = dict(query(db, "select name, status from runs"))
    assert statuses.pop(f"sweep-{summary.study_name}") == "FAILED"
    assert list(statuses.values()) == ["KILLED"]

    resumed = start(cli, *args)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    assert sorted(t.params["batch_size"] for t in trials if t.state.name == "COMPLETE") == [8, 16]
    assert "RUNNING" not in run_statuses()


def test_unreachable_tracking_server_is_one_clear_line_before_training(cli, tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the socket is
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    toy = write_csv(tmp_path / "toy.csv", toy_rows(32))
    t0 = time.time()
    proc = start(cli, "model=tiny", "data=local", f"data.train_file={toy}")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    lines = [l for l in err.splitlines() if l.startswith("ftsweep: error:")]
    assert len(lines) == 1 and f"http://127.0.0.1:{port} is not usable" in lines[0]
    assert "training" not in err and time.time() - t0 < 60


@pytest.mark.slow  # waits out a 25 s lock
def test_mlflow_sqlite_locked_longer_than_its_busy_timeout_is_retried_and_nothing_is_lost(tiny_cfg):
    """Another process holds an exclusive lock on mlflow.db for 25 s; MLflow's sqlite busy timeout is 20 s."""
    from mlflow.tracking import MlflowClient

    from ftsweep.tracking import Tracker
    from ftsweep.train import train

    Tracker().experiment_id("local")  # the store exists before it is locked
    locker = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time\n"
         "con = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)\n"
         "con.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(25); con.execute('COMMIT')",
         str(mlflow_db())], stdout=subprocess.PIPE, text=True)
    assert locker.stdout.readline().strip() == "locked"
    t0 = time.time()
    metrics = train(tiny_cfg("epochs=5", "log_every_steps=2"))  # 40 steps; every tracking call waits out the lock
    assert time.time() - t0 > 20
    assert locker.wait(timeout=60) == 0
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.search_runs([client.get_experiment_by_name("local").experiment_id])[0]
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 20  # every logged step arrived
    assert run.data.metrics["eval/accuracy"] == metrics["eval/accuracy"]


def test_disk_full_while_writing_artifacts_fails_clearly_and_keeps_the_metrics(tiny_cfg, tmp_path, monkeypatch):
    import errno

    from mlflow.tracking import MlflowClient

    from ftsweep.errors import FtsweepError
    from ftsweep.tracking import Tracker
    from ftsweep.train import train

    real = Tracker.log_artifact

    def full_disk(self, path):
        if Path(path).name in ("classification_report.json", "confusion_matrix.png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, path)

    monkeypatch.setattr(Tracker, "log_artifact", full_disk)
    with pytest.raises(FtsweepError, match="No space left on device.*metrics are logged"):
        train(tiny_cfg("max_steps=4"), output_dir=tmp_path / "out")
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.search_runs([client.get_experiment_by_name("local").experiment_id])[0]
    assert run.info.status == "FAILED" and "No space left" in run.data.tags["error"]
    assert "eval/accuracy" in run.data.metrics and (tmp_path / "out" / "metrics.json").exists()
