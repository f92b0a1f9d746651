"""Sweeps on real engines, on this machine and loopback only: joblib's worker processes, a local Ray cluster,
submitit's job processes. Each test runs `python -m ftsweep -m ...` as a user does (slow tier)."""

import os
import signal
import time
from pathlib import Path

import optuna
import pytest

from tests.conftest import count, mlflow_db, query, run_statuses, toy_rows, wait_for, write_csv
from tests.test_reliability import start
from tests.test_sweep import mlflow_runs, studies

pytestmark = pytest.mark.slow


def base(tmp_path: Path, rows: int = 48) -> list[str]:
    toy = write_csv(tmp_path / "toy.csv", toy_rows(rows))
    return ["model=tiny", "data=local", f"data.train_file={toy}", "progress_bar=false", "save_model=none"]


def runs_by_trial(study: optuna.Study) -> dict[int, object]:
    """Trial number -> its MLflow run."""
    _, children = mlflow_runs()
    return {int(c.data.tags["optuna.trial_number"]): c for c in children}


def test_free_slots_start_the_next_trial_at_once_and_each_slot_keeps_its_device(cli, tmp_path):
    """Six trials of unequal length on two joblib workers. Hydra's launchers wait for a whole batch; here a
    slot whose trial ended claims the next one at once, so no slot waits for the other's long trial. Each slot
    pins its trials to its own device id (hydra.sweeper.devices; fake ids on this CPU machine)."""
    proc = cli.sweep(
        *base(tmp_path, rows=96),
        "max_steps=2,1000",
        "epochs=1000",
        "seed=1,2,3",
        "hydra/launcher=joblib",
        "hydra.sweeper.n_jobs=2",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.devices=[7,9]",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [study] = studies(cli.cwd)
    trials = study.get_trials()
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    runs = runs_by_trial(study)
    span = {t.number: (runs[t.number].info.start_time / 1000, runs[t.number].info.end_time / 1000) for t in trials}
    checked = 0
    for slot, device in ((0, "7"), (1, "9")):
        mine = sorted((t for t in trials if t.user_attrs["slot"] == slot), key=lambda t: span[t.number][0])
        assert {runs[t.number].data.tags["ftsweep.device_id"] for t in mine} == {device}
        others = [t for t in trials if t.user_attrs["slot"] != slot and t.params["max_steps"] == 1000]
        for a, b in zip(mine, mine[1:]):
            # A long trial of the other slot with more than half of it still to run when `a` ended: `b` must
            # start before it ends. A launcher that waits for its whole batch would start `b` only after it (the
            # gap is one job's start-up, a few seconds; a long trial is 1,000 steps, ~13 s on the slower CPU).
            for c in others:
                (c_start, c_end), a_end = span[c.number], span[a.number][1]
                if c_start < a_end and c_end - a_end > (c_end - c_start) / 2:
                    assert span[b.number][0] < span[c.number][1], (a.number, b.number, c.number, span)
                    checked += 1
    assert checked >= 1, span  # the grid (longest first) always puts short trials beside a long one
    overlapping = [
        (a, b)
        for a in trials
        for b in trials
        if a.number < b.number and span[a.number][0] < span[b.number][1] and span[b.number][0] < span[a.number][1]
    ]
    assert overlapping and all(
        runs[a.number].data.tags["ftsweep.device_id"] != runs[b.number].data.tags["ftsweep.device_id"]
        for a, b in overlapping
    )
    [parent], _ = mlflow_runs()
    assert 0 < parent.data.metrics["sweep/worker_utilisation"] <= 1


def test_ray_cluster_runs_the_grid_places_trials_by_their_resources_and_a_rerun_adds_nothing(cli, tmp_path):
    """A local Ray cluster (ray.init on loopback) runs each trial as a task asking for its resources: one
    `trial_slot` each, of which the cluster has one, so three slots still run one trial at a time. On a
    GPU cluster the same request is `hydra.launcher.ray.remote.num_gpus=1` (asked for here with 0)."""
    args = [
        *base(tmp_path),
        "max_steps=3",
        "batch_size=8,16,32",
        "hydra/launcher=ray",
        "hydra.sweeper.n_jobs=3",
        "hydra.launcher.ray.init.num_cpus=2",
        "hydra.launcher.ray.init.resources={trial_slot:1}",
        "hydra.launcher.ray.remote.resources={trial_slot:1}",
        "hydra.launcher.ray.remote.num_gpus=0",
    ]
    proc = cli.sweep(*args, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "register_new_resolver" not in proc.stderr
    [study] = studies(cli.cwd)
    assert sorted(t.params["batch_size"] for t in study.get_trials() if t.state.name == "COMPLETE") == [8, 16, 32]
    parents, children = mlflow_runs()
    assert len(parents) == 1 and len(children) == 3
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    spans = sorted((c.info.start_time, c.info.end_time) for c in children)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))  # one at a time

    again = cli.sweep(*args, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to run" in again.stdout + again.stderr and len(study.get_trials()) == 3
    assert len(mlflow_runs()[1]) == 3
    assert "RUNNING" not in run_statuses()


def test_submitit_runs_the_grid_and_a_preempted_job_reruns_its_trial_from_its_checkpoint(cli, tmp_path):
    """hydra/launcher=submitit_local: each trial is a submitit job, a process of its own, as on SLURM. One job
    gets SIGTERM mid-training, as a preempted SLURM job does: its run writes a checkpoint and ends KILLED,
    the sweep runs that trial again from the checkpoint, in the same MLflow run, and finishes the grid."""
    proc = start(
        cli,
        "-m",
        *base(tmp_path, rows=64),
        "max_steps=3,150",
        "epochs=1000",
        "log_every_steps=5",
        "checkpoint_every_steps=10",
        "hydra/launcher=submitit_local",
        "hydra.sweeper.n_jobs=2",
    )
    db = mlflow_db()
    wait_for(
        lambda: count(db, "select max(step) from metrics where key='train/loss'") >= 40,
        "the long trial to pass two checkpoints",
    )
    [study] = studies(cli.cwd)
    [long_trial] = [t for t in study.get_trials() if t.params.get("max_steps") == 150]
    long_run = long_trial.user_attrs["mlflow_run_id"]
    os.kill(long_trial.user_attrs["job_pid"], signal.SIGTERM)  # the submitit job's process, not the sweeper
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped in its worker" in out + err and "Traceback" not in out + err
    [study] = studies(cli.cwd)
    states = sorted((t.params["max_steps"], t.state.name) for t in study.get_trials())
    assert states == [(3, "COMPLETE"), (150, "COMPLETE"), (150, "FAIL")]
    statuses = dict(query(db, "select run_uuid, status from runs"))
    assert statuses[long_run] == "FINISHED" and "RUNNING" not in statuses.values()  # resumed in place
    tags = dict(query(db, f"select key, value from tags where run_uuid='{long_run}'"))
    assert int(tags["ftsweep.resumed_at_step"]) >= 10
    steps = [s for (s,) in query(db, f"select step from metrics where run_uuid='{long_run}' and key='train/loss'")]
    assert sorted(steps) == list(range(5, 151, 5))  # each step logged once, before and after the preemption


def test_a_killed_worker_loses_its_job_and_the_trial_runs_again(cli, tmp_path):
    """SIGKILL leaves a job no chance to report: joblib's executor reports the worker lost, and the sweep
    runs the trial again (without a checkpoint, from step 0), ending the dead job's RUNNING run KILLED."""
    proc = start(
        cli,
        "-m",
        *base(tmp_path, rows=64),
        "max_steps=300",
        "epochs=1000",
        "log_every_steps=5",
        "seed=1,2",
        "hydra/launcher=joblib",
        "hydra.sweeper.n_jobs=2",
        "hydra.launcher.n_jobs=2",
    )
    db = mlflow_db()
    wait_for(
        lambda: len(query(db, "select distinct run_uuid from metrics where key='train/loss'")) >= 2,
        "both trials to train",
    )
    [study] = studies(cli.cwd)
    victim = next(t for t in study.get_trials() if t.state.name == "RUNNING" and "job_pid" in t.user_attrs)
    os.kill(victim.user_attrs["job_pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "job lost" in out + err
    trials = study.get_trials()
    assert sorted(t.params["seed"] for t in trials if t.state.name == "COMPLETE") == [1, 2]
    assert any(t.state.name == "FAIL" and t.params["seed"] == victim.params["seed"] for t in trials)
    statuses = [s for (s,) in query(db, "select status from runs")]
    assert "RUNNING" not in statuses and "KILLED" in statuses


def test_sigterm_to_a_sweep_stops_the_jobs_in_its_worker_processes_too(cli, tmp_path):
    """Without it the sweep would exit only after its joblib workers trained to the end, for nothing, and
    their runs would end FINISHED while their trials had been marked FAIL for a rerun."""
    proc = start(
        cli,
        "-m",
        *base(tmp_path, rows=64),
        "max_steps=3000",
        "epochs=1000",
        "log_every_steps=5",
        "seed=1,2",
        "hydra/launcher=joblib",
        "hydra.sweeper.n_jobs=2",
        "hydra.launcher.n_jobs=2",
    )
    db = mlflow_db()
    wait_for(
        lambda: len(query(db, "select distinct run_uuid from metrics where key='train/loss'")) >= 2,
        "both trials to train",
    )
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "rerun the same command to resume" in err
    assert time.time() - t0 < 30
    [study] = studies(cli.cwd)
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "FAIL"]
    statuses = sorted(query(db, "select name, status from runs"))
    assert statuses == [("full-lr1e-4-bs16", "KILLED")] * 2 + [(f"sweep-{study.study_name}", "FAILED")]


@pytest.mark.slow
def test_a_short_chaos_run_completes_the_grid_once_with_the_calm_runs_metrics(tmp_path):
    """`make chaos` in small: three SIGKILLs (a worker, the sweeper, both) at seeded random moments, each followed
    by the same command; then exactly the grid, no RUNNING run, and metrics equal to a calm run's."""
    from tests.chaos import Chaos, check, kills_done, run_chaos

    calm = Chaos(tmp_path / "calm")
    calm.folder.mkdir()
    calm.finish(attempts=1)
    episodes = run_chaos(tmp_path / "chaos", kills=3, seed=1, max_wait_s=6.0)
    check(episodes, calm)
    assert kills_done(episodes) >= 2, [c.log for c in episodes]
