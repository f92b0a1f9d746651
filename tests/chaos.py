"""`make chaos`: a joblib sweep with 2 workers, SIGKILLed at random moments (a worker, the sweeper, both) and
run again after each kill, until it completes. Then the study must hold the grid's trials COMPLETE, each
once; no MLflow run may be RUNNING; and every trial's metrics must equal a calm run's of the same grid.

    python -m tests.chaos --kills 12 --seed 1        # make chaos (KILLS=12 SEED=1)

Bounded: `--kills` kills, each at a seeded random moment, then at most 4 clean reruns. The slow tier of the
tests runs a short version (tests/test_launchers.py)."""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import psutil
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, count, toy_rows, write_csv

GRID = ["batch_size=4,8", "seed=1,2"]  # 4 trials
COMPARED = ("eval/accuracy", "eval/loss", "train/steps")
KINDS = ("sweeper", "both", "worker")  # in turn: a killed worker's sweep goes on and completes, so it comes last


@dataclass
class Chaos:
    folder: Path
    steps: int = 80  # per trial: a second or two on the tiny model, so kills land mid-trial
    log: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        toy = (
            write_csv(self.folder / "toy.csv", toy_rows(64))
            if not (self.folder / "toy.csv").exists()
            else self.folder / "toy.csv"
        )
        return [
            sys.executable,
            "-m",
            "ftsweep",
            "-m",
            "model=tiny",
            "data=local",
            f"data.train_file={toy}",
            "progress_bar=false",
            f"max_steps={self.steps}",
            "epochs=1000",
            "log_every_steps=20",
            "save_model=none",
            *GRID,
            "hydra/launcher=joblib",
            "hydra.sweeper.n_jobs=2",
            "hydra.launcher.n_jobs=2",
        ]

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "MLFLOW_TRACKING_URI": f"sqlite:///{self.folder / 'mlflow.db'}",
            "FTSWEEP_CACHE": os.environ.get("FTSWEEP_CACHE", str(self.folder / "cache")),
        }

    def start(self) -> subprocess.Popen:
        log = open(self.folder / "sweeps.log", "a")  # every start's output, for a failure to show why
        return subprocess.Popen(
            self.command(),
            cwd=self.folder,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def finish(self, attempts: int = 4) -> None:
        """Rerun the same command until it exits 0, as a user would after a crash."""
        for _ in range(attempts):
            code = self.start().wait(timeout=900)
            self.log.append(f"rerun: exit {code}")
            if code == 0:
                return
        errors = [line for line in (self.folder / "sweeps.log").read_text().splitlines() if "error" in line.lower()]
        raise AssertionError(f"the sweep did not complete in {attempts} reruns: {self.log}; {errors[-3:]}")

    # ---- what the sweep left
    def study(self) -> optuna.Study:
        storage = f"sqlite:///{self.folder / 'multirun' / 'optuna.db'}"
        [name] = optuna.get_all_study_names(storage)
        return optuna.load_study(study_name=name, storage=storage)

    def metrics_by_point(self) -> dict[tuple, dict[str, float]]:
        client = MlflowClient(self.env()["MLFLOW_TRACKING_URI"])
        out = {}
        for trial in self.study().get_trials(states=[optuna.trial.TrialState.COMPLETE]):
            run = client.get_run(trial.user_attrs["mlflow_run_id"])
            out[tuple(sorted(trial.params.items()))] = {k: run.data.metrics[k] for k in COMPARED}
        return out

    def wait_for_training(self, proc: subprocess.Popen, timeout_s: float = 300) -> None:
        """Until a trial of the study is RUNNING (or the sweep ended)."""
        db = self.folder / "multirun" / "optuna.db"
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            if count(db, "select count(*) from trials where state = 'RUNNING'") > 0:
                return
            time.sleep(0.2)

    def running_runs_of(self, pids: set[str]) -> list[str]:
        client = MlflowClient(self.env()["MLFLOW_TRACKING_URI"])
        return [
            r.info.run_id
            for e in client.search_experiments()
            for r in client.search_runs([e.experiment_id])
            if r.info.status == "RUNNING" and r.data.tags.get("ftsweep.pid") in pids
        ]

    def statuses(self) -> list[str]:
        client = MlflowClient(self.env()["MLFLOW_TRACKING_URI"])
        return [r.info.status for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def _workers(proc: subprocess.Popen) -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process(proc.pid).children(recursive=True) if "python" in p.name().lower()]
    except psutil.NoSuchProcess:
        return []


def kill(proc: subprocess.Popen, kind: str, rng: random.Random) -> str:
    """SIGKILL a worker, the sweeper, or the sweeper and its whole process group ("both")."""
    workers = _workers(proc)
    if kind == "worker" and workers:
        victim = rng.choice(workers)
        victim.send_signal(signal.SIGKILL)
        return f"killed worker {victim.pid}"
    if kind == "both":
        os.killpg(proc.pid, signal.SIGKILL)
        return f"killed sweeper {proc.pid} and its {len(workers)} workers"
    proc.send_signal(signal.SIGKILL)  # its workers notice their parent is gone and stop
    return f"killed sweeper {proc.pid}"


def run_chaos(folder: Path, kills: int, seed: int, max_wait_s: float = 15.0, startup_s: float = 8.0) -> list[Chaos]:
    """`kills` SIGKILLs, each at a random moment of a fresh start of the same command. A sweep that completes
    before its next kill is one episode; the kills go on in a new folder (a new study, a new store), and the
    first kill of each episode lands in its first `startup_s` seconds. Returns every episode, each finished
    with clean reruns."""
    rng = random.Random(seed)
    episodes = [Chaos(folder / "episode_0")]
    strays: list[psutil.Process] = []  # workers of a killed sweeper: they finish their job alone, as they would
    for i in range(kills):
        chaos = episodes[-1]
        chaos.folder.mkdir(parents=True, exist_ok=True)
        fresh = not (chaos.folder / "multirun").exists()
        proc = chaos.start()
        if fresh:  # the very first start of a sweep: killed while it creates its MLflow and Optuna stores
            time.sleep(rng.uniform(0.5, startup_s))
        else:  # in claims, training, telling or finishing
            chaos.wait_for_training(proc)
            time.sleep(rng.uniform(0.0, max_wait_s))
        if proc.poll() is not None:
            chaos.log.append(f"kill {i}: the sweep had ended (exit {proc.returncode}) first")
            if proc.returncode == 0:
                episodes.append(Chaos(folder / f"episode_{len(episodes)}"))
            continue
        kind = KINDS[i % len(KINDS)] if kills >= len(KINDS) else rng.choice(KINDS)
        if kind == "sweeper":
            strays += _workers(proc)
        chaos.log.append(f"kill {i}: {kill(proc, kind, rng)}")
        proc.wait(timeout=900)  # a killed worker's job reruns in the sweep itself, which then goes on
    for chaos in episodes:
        chaos.folder.mkdir(parents=True, exist_ok=True)
        chaos.finish()
        _stop_strays(chaos, strays)
    return episodes


def _stop_strays(chaos: Chaos, strays: list[psutil.Process]) -> None:
    """A killed sweeper's workers train on alone (the rerun ran their trials again) and end their runs; then they
    idle until loky's timeout (300 s), so once their runs are over they are stopped."""
    pids = {str(p.pid) for p in strays}
    deadline = time.monotonic() + 300
    while chaos.running_runs_of(pids) and time.monotonic() < deadline:
        time.sleep(1)
    for stray in strays:
        with contextlib.suppress(psutil.NoSuchProcess):
            stray.kill()


def check(episodes: list[Chaos], calm: Chaos) -> None:
    for chaos in episodes:
        trials = chaos.study().get_trials()
        complete = [tuple(sorted(t.params.items())) for t in trials if t.state.name == "COMPLETE"]
        assert sorted(complete) == sorted(set(complete)) and len(complete) == 4, (complete, chaos.log)
        assert "RUNNING" not in chaos.statuses(), (chaos.statuses(), chaos.log)
        assert chaos.metrics_by_point() == calm.metrics_by_point(), chaos.log


def kills_done(episodes: list[Chaos]) -> int:
    return sum(line.startswith("kill") and ": killed" in line for chaos in episodes for line in chaos.log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ftsweep-chaos-") as tmp:
        calm = Chaos(Path(tmp) / "calm")
        calm.folder.mkdir()
        calm.finish(attempts=1)
        t0 = time.monotonic()
        episodes = run_chaos(Path(tmp) / "chaos", args.kills, args.seed)
        check(episodes, calm)
        for i, chaos in enumerate(episodes):
            print(f"episode {i}:", "; ".join(chaos.log))
        print(
            f"chaos: {kills_done(episodes)} of {args.kills} kills landed (seed {args.seed}) over {len(episodes)} "
            f"episode(s); each ended with the grid complete once, no RUNNING run and the calm run's metrics; "
            f"{time.monotonic() - t0:.0f} s"
        )


if __name__ == "__main__":
    main()
