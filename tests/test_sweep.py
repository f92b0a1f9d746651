"""Sweeps as a user runs them: `python -m ftsweep -m ...` subprocesses on the tiny model, a sqlite
Optuna storage under multirun/ and a sqlite MLflow store, both in the test's own folder."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from ftsweep.sweep import directions_for, grid_points, study_name_for
from tests.conftest import REPO, toy_rows, write_csv

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def toy(tmp_path) -> Path:
    return write_csv(tmp_path / "toy.csv", toy_rows(48))


def base(toy: Path) -> list[str]:
    return ["model=tiny", "data=local", f"data.train_file={toy}", "progress_bar=false", "max_steps=2"]


def sweep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ftsweep", "-m", *args]


def run(cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(sweep_cmd(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def studies(cwd: Path) -> list[optuna.Study]:
    storage = f"sqlite:///{cwd / 'multirun' / 'optuna.db'}"
    return [optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage)]


def mlflow_runs(experiment: str = "local"):
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("ftsweep.role") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def statuses() -> list[str]:
    db = os.environ["MLFLOW_TRACKING_URI"][len("sqlite:///"):]
    with sqlite3.connect(db) as con:
        return [s for (s,) in con.execute("select status from runs")]


# --------------------------------------------------------------------------- pure helpers
def test_study_name_is_deterministic_and_definition_sensitive():
    from optuna.distributions import CategoricalDistribution as C

    a = study_name_for({"lr": C([1, 2])}, {"model": "tiny"}, ["maximize"], ["eval/accuracy"], "grid", None)
    assert a == study_name_for({"lr": C([1, 2])}, {"model": "tiny"}, ["maximize"], ["eval/accuracy"], "grid", None)
    assert a != study_name_for({"lr": C([1, 3])}, {"model": "tiny"}, ["maximize"], ["eval/accuracy"], "grid", None)
    assert a != study_name_for({"lr": C([1, 2])}, {"model": "minilm"}, ["maximize"], ["eval/accuracy"], "grid", None)


def test_grid_only_for_choice_lists_and_directions_from_objective_names():
    from optuna.distributions import CategoricalDistribution as C
    from optuna.distributions import LogUniformDistribution as L

    assert len(grid_points({"a": C([1, 2]), "b": C(["x", "y", "z"])})) == 6
    assert grid_points({"a": C([1, 2]), "lr": L(1e-5, 1e-3)}) is None
    assert directions_for(["eval/accuracy", "mem/peak_mb", "eval/f1_macro"]) == ["maximize", "minimize", "maximize"]


# --------------------------------------------------------------------------- sweeps
def test_grid_runs_exactly_the_combinations_once_and_a_rerun_resumes_nothing(tmp_path, toy):
    proc = run(tmp_path, *base(toy), "method=full,lora", "batch_size=8,16,32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [study] = studies(tmp_path)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    combos = {(t.params["method"], t.params["batch_size"]) for t in trials}
    assert combos == {(m, b) for m in ("full", "lora") for b in (8, 16, 32)}
    parents, children = mlflow_runs()
    assert len(parents) == 1 and len(children) == 6
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {c.info.run_id for c in children} == {t.user_attrs["mlflow_run_id"] for t in trials}
    assert {c.data.tags["optuna.trial_number"] for c in children} == {str(t.number) for t in trials}
    assert parents[0].info.status == "FINISHED" and parents[0].data.metrics["sweep/n_complete"] == 6
    sweep_dir = tmp_path / "multirun" / study.study_name
    assert (sweep_dir / "optimization_results.yaml").exists() and (sweep_dir / "trials.csv").exists()
    assert sorted(p.name for p in sweep_dir.glob("trial_*")) == [f"trial_{i}" for i in range(6)]

    again = run(tmp_path, *base(toy), "method=full,lora", "batch_size=8,16,32")
    assert again.returncode == 0
    assert "already complete" in again.stderr + again.stdout
    assert len(studies(tmp_path)[0].get_trials()) == 6
    assert "RUNNING" not in statuses()


def test_tpe_search_runs_the_configured_number_of_trials(tmp_path, toy):
    proc = run(tmp_path, "hparams_search=lr_bs", *base(toy), "hydra.sweeper.n_trials=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [study] = studies(tmp_path)
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state.name == "COMPLETE" for t in trials)
    assert all(1e-5 <= t.params["lr"] <= 2e-4 for t in trials)  # full's lr_range
    assert {t.params["batch_size"] for t in trials} <= {8, 16, 32}
    assert type(study.sampler).__name__ == "TPESampler"


def test_pareto_search_writes_a_front(tmp_path, toy):
    proc = run(tmp_path, "hparams_search=pareto", *base(toy), "hydra.sweeper.n_trials=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [study] = studies(tmp_path)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    for t in study.get_trials():
        assert ("method.r" in t.params) == (t.params["method"] == "lora")  # conditional parameter
    text = (tmp_path / "multirun" / study.study_name / "optimization_results.yaml").read_text()
    assert "solutions:" in text and "mem/peak_mb" in text
    parents, _ = mlflow_runs()
    assert parents[0].data.metrics["sweep/pareto_size"] >= 1


def test_a_failing_combination_does_not_sink_the_sweep(tmp_path, toy):
    proc = run(tmp_path, *base(toy), "batch_size=8,0,16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = studies(tmp_path)[0].get_trials()
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE", "FAIL"]
    failed = next(t for t in trials if t.state.name == "FAIL")
    assert failed.params["batch_size"] == 0 and "batch_size must be >= 1" in failed.user_attrs["error"]
    assert "RUNNING" not in statuses()


def test_all_trials_failing_exits_non_zero_with_a_summary(tmp_path, toy):
    proc = run(tmp_path, *base(toy), "lr=-1,-2")
    assert proc.returncode != 0
    assert "all 2 trials failed" in proc.stderr + proc.stdout
    parents, _ = mlflow_runs()
    assert parents[0].info.status == "FAILED"
    assert "RUNNING" not in statuses()


@pytest.mark.parametrize("pruner", ["none", "median"])
def test_sigkill_mid_trial_then_the_same_command_resumes(tmp_path, toy, pruner):
    args = [*base(toy), "max_steps=400", "epochs=1000", "log_every_steps=50", "batch_size=8,16,32", f"hydra.sweeper.pruner={pruner}",
            "eval_every_steps=100"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(sweep_cmd(*args), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    db = tmp_path / "multirun" / "optuna.db"
    deadline = time.time() + 240
    while time.time() < deadline:  # kill while trial 1 runs: trial 0 done, 1 in flight, 2 not started
        try:
            with sqlite3.connect(db) as con:
                rows = dict(con.execute("select number, state from trials"))
        except sqlite3.OperationalError:  # not created yet
            rows = {}
        if rows.get(1) == "RUNNING":
            break
        time.sleep(0.2)
    else:
        pytest.fail("trial 1 never started")
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    resumed = run(tmp_path, *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "left RUNNING" in resumed.stderr + resumed.stdout
    trials = studies(tmp_path)[0].get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(t.params["batch_size"] for t in complete) == [8, 16, 32]  # every point once
    stale = [t for t in trials if t.state.name == "FAIL"]
    assert len(stale) == 1 and stale[0].number == 1 and stale[0].system_attrs.get("ftsweep_stale")
    assert "RUNNING" not in statuses()
    parents, children = mlflow_runs()
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.info.status for c in children) == ["FINISHED"] * 3 + ["KILLED"]


@pytest.mark.parametrize("pruner", ["none", "median"])
def test_two_concurrent_workers_share_one_grid(tmp_path, toy, pruner):
    args = [*base(toy), "batch_size=4,8,16,32", "method=full,lora", f"hydra.sweeper.pruner={pruner}",
            "hydra.sweeper.pruner_startup_trials=2", "max_steps=6", "eval_every_steps=2"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen(sweep_cmd(*args), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    [study] = studies(tmp_path)
    trials = study.get_trials()
    assert len(trials) == 8 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert len({(t.params["batch_size"], t.params["method"]) for t in trials}) == 8  # no point twice
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both did work
    parents, children = mlflow_runs()
    assert len(parents) == 1 and len(children) == 8
    assert "database is locked" not in "".join(outs)
    assert "RUNNING" not in statuses()


def test_joblib_launcher_runs_trials_in_parallel_processes(tmp_path, toy):
    proc = run(tmp_path, *base(toy), "batch_size=8,16", "method=full,lora", "hydra/launcher=joblib",
               "hydra.sweeper.n_jobs=2", "hydra.launcher.n_jobs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = studies(tmp_path)[0].get_trials()
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    parents, children = mlflow_runs()
    assert len(children) == 4 and {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}


def test_per_trial_memory_peak_does_not_depend_on_trial_order(tmp_path, toy):
    """A big trial first must not inflate the small one's peak (CPU RSS, trials in one process)."""
    def peaks(order: str) -> dict[str, float]:
        folder = tmp_path / order.replace(",", "-")
        folder.mkdir()
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
        proc = run(folder, *base(toy), f"model.hidden_size={order}", "model.intermediate_size=1024",
                   "data.max_length=256", "batch_size=32")
        assert proc.returncode == 0, proc.stderr[-3000:]
        _, children = mlflow_runs()
        return {c.data.params["model.hidden_size"]: c.data.metrics["mem/cpu_peak_rss_mb"] for c in children}

    big_first, small_first = peaks("512,32"), peaks("32,512")
    assert big_first["512"] > big_first["32"]
    assert abs(big_first["32"] - small_first["32"]) < 0.1 * small_first["32"], (big_first, small_first)


def test_two_workers_on_postgresql_for_optuna_and_mlflow(tmp_path, toy, postgres_server, monkeypatch):
    storage, tracking = postgres_server(), postgres_server()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    args = [*base(toy), "batch_size=4,8", "method=full,lora", f"hydra.sweeper.storage={storage}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen(sweep_cmd(*args), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    [summary] = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({(t.params["batch_size"], t.params["method"]) for t in trials}) == 4
    parents, children = mlflow_runs()
    assert len(parents) == 1 and len(children) == 4
    assert all(r.info.status == "FINISHED" for r in parents + children)


# --------------------------------------------------------------------------- pruning
PRUNABLE = ["max_steps=48", "epochs=20", "eval_every_steps=4", "optimizer.warmup_ratio=0", "lr=5e-3,1e-7"]


def test_a_hopeless_trial_is_pruned_early_and_kept(tmp_path, toy):
    proc = run(tmp_path, *base(toy), *PRUNABLE, "hydra.sweeper.pruner=median", "hydra.sweeper.pruner_startup_trials=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [study] = studies(tmp_path)
    good, bad = sorted(study.get_trials(), key=lambda t: -t.params["lr"])
    assert good.state.name == "COMPLETE" and bad.state.name == "PRUNED"
    assert max(bad.intermediate_values) < 48  # stopped before its last step
    parents, children = mlflow_runs()
    pruned = next(c for c in children if c.info.run_id == bad.user_attrs["mlflow_run_id"])
    assert pruned.info.status == "FINISHED" and pruned.data.tags["pruned"] == "true"
    assert int(pruned.data.tags["pruned_at_step"]) == pruned.data.metrics["train/steps"] < 48
    assert "eval/accuracy" in pruned.data.metrics  # its partial results are kept
    m = parents[0].data.metrics
    assert m["sweep/n_pruned"] == 1 and m["sweep/train_time_unpruned_est_s"] > m["sweep/train_time_s"]
    report = (tmp_path / "multirun" / study.study_name / "report.md").read_text()
    assert "1 pruned" in report and "% saved" in report


def test_without_a_pruner_nothing_is_pruned(tmp_path, toy):
    proc = run(tmp_path, *base(toy), *PRUNABLE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [t.state.name for t in studies(tmp_path)[0].get_trials()] == ["COMPLETE", "COMPLETE"]


def test_pruning_a_multi_objective_study_is_refused_clearly(tmp_path, toy):
    proc = run(tmp_path, "hparams_search=pareto", *base(toy), "hydra.sweeper.pruner=median")
    assert proc.returncode != 0
    assert "Optuna cannot prune a multi-objective study" in proc.stderr
