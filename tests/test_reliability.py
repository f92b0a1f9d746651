"""Faults and signals (docs/reliability.md): each test proves that nothing finished is lost and no run stays RUNNING."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest

from tests.conftest import (
    count,
    free_port,
    logged_losses,
    mlflow_db,
    pause_when,
    query,
    resume,
    run_statuses,
    toy_rows,
    wait_for,
    wait_http,
    write_csv,
)


def start(cli, *args: str) -> subprocess.Popen:
    return cli.popen(*args, stderr=subprocess.PIPE)


def long_run(tmp_path: Path) -> list[str]:
    toy = write_csv(tmp_path / "toy.csv", toy_rows(64))
    return [
        "model=tiny",
        "data=local",
        f"data.train_file={toy}",
        "progress_bar=false",
        "epochs=100000",
        "log_every_steps=5",
    ]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_a_single_run_ends_it_killed_and_keeps_its_metrics(cli, tmp_path, sig):
    proc = start(cli, *long_run(tmp_path), "hydra.run.dir=out")
    db = mlflow_db()
    wait_for(lambda: logged_losses(db) >= 2, "train/loss to be logged")
    t0 = time.time()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert time.time() - t0 < 15
    assert proc.returncode != 0
    assert "MLflow run is marked KILLED" in err and "Traceback" not in err
    assert run_statuses() == ["KILLED"]
    assert logged_losses(db) >= 2  # kept
    leftovers = [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".") and p.suffix == ".tmp"]
    cache = Path(os.environ["FTSWEEP_CACHE"])
    leftovers += [p for p in cache.rglob("*") if p.name.startswith((".fetch-", "tmp"))]
    assert leftovers == []


def test_sigterm_during_a_sweep_fails_the_trial_and_the_same_command_resumes(cli, tmp_path):
    toy = write_csv(tmp_path / "toy.csv", toy_rows(64))
    args = [
        "-m",
        "model=tiny",
        "data=local",
        f"data.train_file={toy}",
        "progress_bar=false",
        "max_steps=300",
        "epochs=1000",
        "log_every_steps=5",
        "batch_size=8,16",
    ]
    proc = start(cli, *args)
    db = mlflow_db()
    pause_when(proc, lambda: logged_losses(db) >= 1, "the first trial to log")
    resume(proc, signal.SIGTERM)
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
    lines = [ln for ln in err.splitlines() if ln.startswith("ftsweep: error:")]
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
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "con = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)\n"
            "con.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(25); con.execute('COMMIT')",
            str(mlflow_db()),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
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


# --------------------------------------------------------------------------- round 3: a full disk (fault-injected here;
# the real tmpfs case is test_a_store_on_a_full_tmpfs_...)
def enospc(*_a, **_k):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_checkpoint_that_finds_the_disk_full_leaves_the_previous_one_and_says_where_and_how_much(
    tiny_cfg, tmp_path, monkeypatch
):
    import torch

    from ftsweep.checkpoint import load
    from ftsweep.errors import DiskFullError
    from ftsweep.train import train

    real_save, saves = torch.save, []

    def second_save_fills_the_disk(obj, f, *a, **k):
        saves.append(1)
        if len(saves) == 2:
            f.write(b"half a checkpoint")
            enospc()
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", second_save_fills_the_disk)
    out = tmp_path / "out"
    with pytest.raises(DiskFullError) as err:
        train(tiny_cfg("max_steps=30", "epochs=100", "log_every_steps=5", "checkpoint_every_steps=10"), output_dir=out)
    ckpt = out / "checkpoint" / "checkpoint.pt"
    message = str(err.value)
    assert message.startswith(f"No space left on device writing {ckpt} (needs about ") and " MB free there)" in message
    assert load(ckpt)["loop"]["result"].steps == 10  # the first checkpoint, whole
    assert [p.name for p in ckpt.parent.iterdir() if p.name.startswith(".")] == []  # no half-written file
    [(status, error)] = query(
        mlflow_db(),
        "select status, (select value from tags t where t.run_uuid = r.run_uuid and key='error') from runs r",
    )
    assert status == "FAILED" and "No space left" in error
    assert logged_losses() >= 2  # the metrics already logged are kept


def test_a_kept_model_that_finds_the_disk_full_leaves_the_previous_folder_intact(tiny_cfg, tmp_path, monkeypatch):
    from ftsweep import keep
    from ftsweep.config import validate
    from ftsweep.errors import DiskFullError
    from ftsweep.model import load_model, load_tokenizer

    tc = validate(tiny_cfg())
    tokenizer = load_tokenizer(tc.model)
    model = load_model(tc.model, ["neg", "pos"], tokenizer, tc.method)
    folder = keep.save_folder(model, tokenizer, tmp_path / "model", ["a text"], {"max_length": 16})
    before = sorted((p.name, p.stat().st_size) for p in folder.iterdir())

    def half_then_full(self, where, **_kwargs):
        (Path(where) / "model.safetensors").write_bytes(b"half a model")
        enospc()

    monkeypatch.setattr(type(model), "save_pretrained", half_then_full)
    with pytest.raises(DiskFullError, match=f"No space left on device writing {folder} \\(needs about .* MB"):
        keep.save_folder(model, tokenizer, folder, ["a text"], {"max_length": 16})
    assert sorted((p.name, p.stat().st_size) for p in folder.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_store_that_cannot_record_a_runs_end_has_it_ended_by_the_next_start_on_this_host(tiny_cfg, monkeypatch):
    """The store's disk is full: the run's end cannot be written. The reason is noted on this host, and the next
    start ends the run with it; a live process's run and another host's run are left alone."""
    from ftsweep.orphans import HOST_TAG, PID_TAG, end_orphans
    from ftsweep.tracking import Tracker

    tracker = Tracker()
    orphan = tracker.start("local", "orphan", {})
    with monkeypatch.context() as patched:
        patched.setattr(tracker.client, "set_terminated", lambda *a, **k: enospc())
        tracker.fail(RuntimeError("database or disk is full"), "FAILED")
    dead_pid = int(Path("/proc/sys/kernel/pid_max").read_text())  # pids are below pid_max: never alive
    other = Tracker()
    other.client.set_tag(orphan, PID_TAG, str(dead_pid))
    live = Tracker().start("local", "live", {})  # this process: alive
    elsewhere = Tracker().start("local", "elsewhere", {})
    other.client.set_tag(elsewhere, HOST_TAG, "another-host")
    other.client.set_tag(elsewhere, PID_TAG, str(dead_pid))
    assert end_orphans(Tracker().client) == [orphan]
    run = other.client.get_run(orphan)
    assert run.info.status == "FAILED" and run.data.tags["error"] == "orphaned: RuntimeError: database or disk is full"
    assert {other.client.get_run(r).info.status for r in (live, elsewhere)} == {"RUNNING"}
    assert end_orphans(Tracker().client) == []  # once


def test_a_store_on_a_full_tmpfs_fails_the_kept_model_in_one_line_and_the_next_start_ends_its_run(
    cli, tmp_path, monkeypatch, small_tmpfs
):
    """The MLflow store (sqlite file and artifacts) on a real 2 MB tmpfs: the tiny model's kept copy (4 MB) does
    not fit, and then neither does the run's end. One line naming the path and the space; the metrics stay in
    metrics.json; the next start, with space again, ends the run FAILED with that line as its reason."""
    store = small_tmpfs(2)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    args = [*long_run(tmp_path)[:4], "max_steps=3"]
    full = cli.run(*args, "hydra.run.dir=out")
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr[-3000:]
    [line] = [ln for ln in full.stderr.splitlines() if ln.startswith("ftsweep: error:")]
    assert f"No space left on device writing {store}" in line and "needs about" in line and "MB free there" in line
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["eval/accuracy"] >= 0 and run_statuses() == ["RUNNING"]  # the store could not take the end

    small_tmpfs.resize(store, 32)
    again = cli.run(*args, "save_model=none", "hydra.run.dir=out2")
    assert again.returncode == 0, again.stderr[-3000:]
    ended = dict(query(mlflow_db(), "select r.run_uuid, r.status from runs r"))
    assert sorted(ended.values()) == ["FAILED", "FINISHED"]
    [(reason,)] = query(mlflow_db(), f"select value from tags where run_uuid='{metrics['run_id']}' and key='error'")
    assert reason.startswith("orphaned: FtsweepError: could not keep the model (No space left on device writing")


def mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on loopback (sqlite backend, artifacts served from `folder`), answering."""
    folder.mkdir(exist_ok=True)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder / 'server.db'}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_http(f"http://127.0.0.1:{port}/health", timeout_s=120)
    return server


def stop_server(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=60)


def test_a_tracking_server_restarted_mid_run_loses_nothing_and_the_run_ends_in_its_true_state(
    cli, tmp_path, monkeypatch
):
    """The issue's case: the server goes away during training and comes back later. Before: the run died
    after urllib3's retries with a traceback, and stayed RUNNING. Now every write waits on disk and lands."""
    port, folder = free_port(), tmp_path / "server"
    server = mlflow_server(folder, port)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    proc = start(
        cli,
        *long_run(tmp_path)[:4],
        "max_steps=300",
        "epochs=1000",
        "log_every_steps=5",
        "save_model=none",
        "hydra.run.dir=out",
    )
    db = folder / "server.db"
    try:
        wait_for(lambda: logged_losses(db) >= 3, "the run to log through the server")
        stop_server(server)
        time.sleep(5)  # training goes on meanwhile; its writes wait in out/tracking
        server = mlflow_server(folder, port)
        out, err = proc.communicate(timeout=600)
    finally:
        stop_server(server)
    assert proc.returncode == 0 and "Traceback" not in out + err, err[-3000:]
    assert "cannot be reached" in out + err
    assert [s for (s,) in query(db, "select status from runs")] == ["FINISHED"]
    steps = [s for (s,) in query(db, "select step from metrics where key='train/loss'")]
    assert sorted(steps) == list(range(5, 301, 5))  # every write once
    assert count(db, "select count(*) from metrics where key='eval/accuracy'") >= 1


# --------------------------------------------------------------------------- round 2: concurrency, signals, stores
class Watched:
    """A CLI process whose output (stdout and stderr together) is read line by line as it comes."""

    def __init__(self, cli, *args: str):
        self.proc = cli.popen(*args)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    def wait_for(self, marker: str, count: int = 1, timeout: float = 240) -> None:
        wait_for(
            lambda: sum(marker in line for line in self.lines) >= count or self.proc.poll() is not None,
            f"'{marker}' in the output",
            timeout,
        )

    def finish(self, timeout: float = 600) -> tuple[int, str]:
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return self.proc.returncode, "".join(self.lines)


def assert_clean_end(code: int, output: str, allowed=(0, 130)) -> None:
    assert code in allowed, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert len([line for line in output.splitlines() if line.startswith("ftsweep: error:")]) <= 1
    assert "RUNNING" not in run_statuses(), output[-3000:]


def test_processes_started_together_on_a_new_store_all_succeed(cli, tmp_path):
    """Three single runs and a sweep, started at the same moment on an MLflow store that does not exist yet."""
    toy = write_csv(tmp_path / "toy.csv", toy_rows(48))
    args = ["model=tiny", "data=local", f"data.train_file={toy}", "progress_bar=false", "max_steps=2"]
    procs = [Watched(cli, *args, f"seed={i}", f"hydra.run.dir=out{i}") for i in range(3)]
    procs.append(Watched(cli, "-m", *args, "batch_size=4,8"))
    for code, output in [proc.finish() for proc in procs]:  # all ended before any store is checked
        assert_clean_end(code, output, allowed=(0,))
    assert sorted(run_statuses()) == ["FINISHED"] * 6  # 3 runs, a parent and its 2 trials


def sweep_args(tmp_path: Path) -> list[str]:
    toy = write_csv(tmp_path / "toy.csv", toy_rows(48))
    return [
        "-m",
        "model=tiny",
        "data=local",
        f"data.train_file={toy}",
        "progress_bar=false",
        "max_steps=3",
        "batch_size=4,8",
    ]


def completed_trials(tmp_path: Path) -> list[int]:
    storage = f"sqlite:///{tmp_path / 'multirun' / 'optuna.db'}"
    [summary] = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    return sorted(t.params["batch_size"] for t in trials if t.state.name == "COMPLETE")


@pytest.mark.parametrize(
    "phase, marker, count",
    [
        ("start-up (imports, composing the config)", None, 0),
        ("creating the study and its parent run", "A new study created", 1),
        ("a trial loading its data and model", "Launching 1 jobs", 1),
        ("a trial's artifacts and its tell", "perf/step_time_ms", 1),
        ("writing the results and the report", "perf/step_time_ms", 2),  # the last trial has just ended
    ],
)
def test_ctrl_c_at_any_phase_of_a_sweep_ends_cleanly_and_the_command_resumes(cli, tmp_path, phase, marker, count):
    args = sweep_args(tmp_path)
    watched = Watched(cli, *args)
    if marker is None:
        time.sleep(0.5)
    else:
        watched.wait_for(marker, count)
    watched.proc.send_signal(signal.SIGINT)
    assert_clean_end(*watched.finish())
    assert_clean_end(*Watched(cli, *args).finish(), allowed=(0,))
    assert completed_trials(tmp_path) == [4, 8]


def test_a_second_ctrl_c_while_the_sweep_finishes_still_writes_its_results(cli, tmp_path):
    args = [*sweep_args(tmp_path), "max_steps=100000", "epochs=100000"]
    watched = Watched(cli, *args)
    wait_for(lambda: logged_losses() >= 1, "a trial to log")
    watched.proc.send_signal(signal.SIGINT)
    watched.wait_for("marked FAIL")
    watched.proc.send_signal(signal.SIGINT)  # the impatient second Ctrl-C, while results are being written
    code, output = watched.finish()
    assert_clean_end(code, output, allowed=(130,))
    [sweep_dir] = [p for p in (tmp_path / "multirun").iterdir() if p.is_dir()]
    assert (sweep_dir / "trials.csv").exists() and (sweep_dir / "report.md").exists()
    assert sorted(run_statuses()) == ["FAILED", "KILLED"]  # the parent and the interrupted trial


def test_a_sweep_on_a_tracking_server_that_is_not_mlflow_stops_before_any_study(cli, tmp_path, monkeypatch):
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = server.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N ..."
        port = int(line.split(" port ")[1].split()[0])
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        code, output = Watched(cli, *sweep_args(tmp_path)).finish()
    finally:
        server.terminate()
    assert code == 2 and "Traceback" not in output
    [line] = [ln for ln in output.splitlines() if ln.startswith("ftsweep: error:")]
    assert f"MLflow tracking store http://127.0.0.1:{port} is not usable" in line and "<" not in line
    assert not (tmp_path / "multirun" / "optuna.db").exists()


def test_sigterm_writes_a_checkpoint_and_resume_with_the_run_id_alone_finishes_that_run(cli, tmp_path):
    toy = write_csv(tmp_path / "toy.csv", toy_rows(64))
    proc = start(
        cli,
        "model=tiny",
        "data=local",
        f"data.train_file={toy}",
        "progress_bar=false",
        "epochs=1000",
        "max_steps=200",
        "log_every_steps=5",
        "checkpoint_every_steps=20",
    )
    db = mlflow_db()
    pause_when(proc, lambda: logged_losses(db) >= 6, "a checkpoint's worth of steps")
    resume(proc, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    [(run_id, status)] = query(db, "select run_uuid, status from runs")
    assert status == "KILLED"
    [(checkpoint,)] = query(db, f"select value from tags where run_uuid='{run_id}' and key='ftsweep.checkpoint'")
    assert Path(checkpoint).is_file()

    resumed = cli.run(f"resume={run_id}", "progress_bar=false")  # the rest of the settings come from the checkpoint
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert query(db, "select run_uuid, status from runs") == [(run_id, "FINISHED")]
    steps = [s for (s,) in query(db, f"select step from metrics where run_uuid='{run_id}' and key='train/loss'")]
    assert sorted(steps) == list(range(5, 201, 5))  # every logged step exactly once, before and after the cut
    assert not Path(checkpoint).exists()  # finished: removed


def test_an_interrupted_trial_resumes_from_its_checkpoint_when_the_sweep_runs_again(cli, tmp_path):
    args = [*sweep_args(tmp_path), "max_steps=60", "epochs=1000", "log_every_steps=5", "checkpoint_every_steps=10"]
    proc = start(cli, *args)
    db = mlflow_db()
    pause_when(proc, lambda: logged_losses(db) >= 5, "two checkpoints of the first trial")
    resume(proc, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    [(cut_run,)] = query(db, "select run_uuid from runs where status='KILLED'")

    resumed = start(cli, *args)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert completed_trials(tmp_path) == [4, 8]
    assert sorted(run_statuses()) == ["FINISHED"] * 3  # the parent and two trials: the cut run was continued
    steps = [s for (s,) in query(db, f"select step from metrics where run_uuid='{cut_run}' and key='train/loss'")]
    assert sorted(steps) == list(range(5, 61, 5))  # from its checkpoint, not from step 0: every step once


def test_a_killed_run_resumes_from_its_last_checkpoint_without_logging_a_step_twice(cli, tmp_path):
    toy = write_csv(tmp_path / "toy.csv", toy_rows(64))
    proc = start(
        cli,
        "model=tiny",
        "data=local",
        f"data.train_file={toy}",
        "progress_bar=false",
        "epochs=1000",
        "max_steps=120",
        "log_every_steps=5",
        "checkpoint_every_steps=20",
    )
    db = mlflow_db()
    pause_when(
        proc,
        lambda: count(db, "select count(*) from tags where key='ftsweep.checkpoint'") > 0 and logged_losses(db) >= 7,
        "steps logged after the first checkpoint",
    )
    proc.kill()  # SIGKILL: no chance to write a last checkpoint or end the run
    proc.communicate(timeout=60)
    [(run_id, status)] = query(db, "select run_uuid, status from runs")
    assert status == "RUNNING"  # as a killed process leaves it, until the run resumes

    resumed = cli.run(f"resume={run_id}", "progress_bar=false")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert query(db, "select run_uuid, status from runs") == [(run_id, "FINISHED")]
    steps = [s for (s,) in query(db, f"select step from metrics where run_uuid='{run_id}' and key='train/loss'")]
    assert sorted(steps) == list(range(5, 121, 5))  # the steps redone after the checkpoint are not logged twice
