"""Optuna sweeps behind `python -m ftsweep -m ...`.

hydra-optuna-sweeper 1.3.0 turns overrides into Optuna distributions well, but its
loop cannot resume a study exactly, lets two workers run the same grid point,
dies on the first failure and has no MLflow grouping. This module keeps the
plugin's parsing and replaces the loop:

- the study is named from the sweep definition, so the same command is the same study;
- `n_trials` (or the grid size) is the study's total: a rerun only runs the remainder;
- a trial left RUNNING by a dead process is marked FAIL and its parameters run again;
- trials are claimed under a storage-wide lock (a file lock for sqlite, an advisory
  lock for PostgreSQL), so concurrent workers never run one grid point twice;
- a failed trial is recorded and the sweep goes on, unless most trials fail;
- one MLflow parent run per study; every trial is its child run.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import itertools
import json
import logging
import math
import os
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import optuna
from omegaconf import DictConfig, OmegaConf

from ftsweep import interrupt
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, Trial, TrialState

log = logging.getLogger("ftsweep.sweep")
# enqueue_trial/add_trial are "experimental" in optuna 2.10 and warn on every call; they are the API we want.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

MAXIMIZE = ("accuracy", "f1")  # objective names containing these are maximised; everything else minimised
STALE = "ftsweep_stale"  # system attr on a trial failed because its worker died


# --------------------------------------------------------------------------- definition
def directions_for(objectives: Sequence[str]) -> list[str]:
    return ["maximize" if any(m in name for m in MAXIMIZE) else "minimize" for name in objectives]


def study_name_for(space: dict[str, BaseDistribution], fixed: dict[str, Any], directions: Sequence[str],
                   objectives: Sequence[str], sampler: str, custom: Optional[str], pruner: str = "none") -> str:
    """Deterministic: the same sweep definition always names the same study."""
    definition = {
        "space": {k: repr(v) for k, v in sorted(space.items())},
        "fixed": {k: str(v) for k, v in sorted(fixed.items())},
        "directions": list(directions), "objectives": list(objectives), "sampler": sampler, "custom": custom,
    }
    if pruner != "none":  # only when set, so studies named before pruning existed keep their names
        definition["pruner"] = pruner
    digest = hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:10]
    return f"ftsweep-{digest}"


def grid_points(space: dict[str, BaseDistribution]) -> Optional[list[dict[str, Any]]]:
    """Every combination, in a fixed order, when every swept key is a discrete choice list."""
    if not space or not all(isinstance(d, CategoricalDistribution) for d in space.values()):
        return None
    names = sorted(space)
    return [dict(zip(names, values)) for values in itertools.product(*(space[n].choices for n in names))]


def _key(params: dict[str, Any]) -> str:
    return json.dumps({k: params[k] for k in sorted(params)}, default=str)


def make_sampler(name: str, seed: int, n_trials: int, n_objectives: int) -> optuna.samplers.BaseSampler:
    startup = min(10, max(3, n_trials // 3))  # TPE needs some random trials first; not 10 of a 12-trial budget
    if name == "auto":
        name = "tpe" if n_objectives == 1 else "motpe"
    samplers: dict[str, Callable[[], optuna.samplers.BaseSampler]] = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "grid": lambda: optuna.samplers.RandomSampler(seed=seed),  # grid trials are enqueued with fixed params
        "motpe": lambda: optuna.samplers.MOTPESampler(seed=seed, n_startup_trials=startup),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
    }
    if name not in samplers:
        raise ValueError(f"hydra.sweeper.sampler must be auto, {', '.join(samplers)}; got '{name}'")
    return samplers[name]()


PRUNERS = ("none", "median", "successive_halving", "hyperband")


def make_pruner(name: str, startup_trials: int, warmup_steps: int) -> optuna.pruners.BasePruner:
    """The same pruner in the sweeper and in every job (Optuna pruners hold no state of their own)."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_steps)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"hydra.sweeper.pruner must be one of {', '.join(PRUNERS)}; got '{name}'")


def pruning_hook(sweep_cfg: Any, objective_name: str) -> Optional[Callable[[int, dict], bool]]:
    """In the job: report each eval's objective to this trial and ask the study's pruner whether to stop."""
    if sweep_cfg is None or sweep_cfg.trial_id is None or sweep_cfg.pruner in (None, "none"):
        return None
    key = objective_name.split("/", 1)[1]
    storage = make_storage(sweep_cfg.storage)
    study = optuna.load_study(study_name=sweep_cfg.study, storage=storage, pruner=make_pruner(
        sweep_cfg.pruner, sweep_cfg.pruner_startup_trials, sweep_cfg.pruner_warmup_steps))
    trial = Trial(study, int(sweep_cfg.trial_id))

    def should_stop(step: int, ev: dict) -> bool:
        trial.report(float(ev[key]), step)
        return trial.should_prune()

    return should_stop


# --------------------------------------------------------------------------- storage
def default_storage() -> str:
    return f"sqlite:///{Path.cwd() / 'multirun' / 'optuna.db'}"


def make_storage(url: str) -> optuna.storages.RDBStorage:
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        # Workers share one file: wait for a lock instead of failing with "database is locked".
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
    return optuna.storages.RDBStorage(url)


@contextlib.contextmanager
def storage_lock(url: str) -> Iterator[None]:
    """Serialise claiming trials across processes (and machines, for PostgreSQL)."""
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):] + ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    elif url.startswith("postgresql"):
        import sqlalchemy

        key = int(hashlib.sha256(b"ftsweep-claim").hexdigest()[:15], 16)
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        engine.dispose()
    else:
        log.warning("no cross-process claim lock for %s: concurrent workers may duplicate a trial", url.split(":")[0])
        yield


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(trial: FrozenTrial, stale_after_s: Optional[float], now: float) -> bool:
    """A RUNNING trial whose worker is gone: its process is dead (same host) or it is older than stale_after_s."""
    if trial.state != TrialState.RUNNING:
        return False
    attrs = trial.user_attrs
    if attrs.get("host") == socket.gethostname() and "pid" in attrs:
        return not _pid_alive(int(attrs["pid"]))
    if stale_after_s is not None and trial.datetime_start is not None:
        return now - trial.datetime_start.timestamp() > stale_after_s
    return False


# --------------------------------------------------------------------------- search spaces for the presets
def _method_lr_range(method: str) -> tuple[float, float]:
    from ftsweep.config import CONF_DIR

    path = CONF_DIR / "method" / f"{method}.yaml"
    low, high = OmegaConf.load(path).lr_range
    return float(low), float(high)


def lr_for_method(cfg: DictConfig, trial: Trial) -> None:
    """lr on a log scale within the bounds of the trial's method (`lr_range` in conf/method/*.yaml)."""
    method = trial.params.get("method", cfg.method.name)
    trial.suggest_float("lr", *_method_lr_range(method), log=True)


def pareto_space(cfg: DictConfig, trial: Trial) -> None:
    """Method, its lr, batch size, and the LoRA rank only where the method is LoRA."""
    method = trial.suggest_categorical("method", ["full", "lora", "head"])
    trial.suggest_float("lr", *_method_lr_range(method), log=True)
    trial.suggest_categorical("batch_size", [8, 16, 32])
    if method == "lora":
        trial.suggest_categorical("method.r", [4, 8, 16])


# --------------------------------------------------------------------------- results
def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False, newline="") as f:
        write(f)
    os.replace(f.name, path)


def write_trials_csv(trials: Sequence[FrozenTrial], objectives: Sequence[str], path: Path) -> None:
    params = sorted({k for t in trials for k in t.params} | {k for t in trials for k in t.user_attrs.get("fixed", {})})
    header = ["number", "state", *objectives, *params, "mlflow_run_id", "error"]

    def write(f) -> None:
        w = csv.writer(f)
        w.writerow(header)
        for t in trials:
            values = t.values or [None] * len(objectives)
            all_params = {**t.user_attrs.get("fixed", {}), **t.params}
            w.writerow([t.number, t.state.name, *values, *(all_params.get(p) for p in params),
                        t.user_attrs.get("mlflow_run_id"), t.user_attrs.get("error")])

    _atomic_write(path, write)


def results_summary(study: optuna.Study, objectives: Sequence[str]) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    out: dict[str, Any] = {
        "name": "optuna", "study_name": study.study_name, "objectives": list(objectives),
        "directions": [d.name.lower() for d in study.directions],
        "n_complete": len(complete), "n_failed": sum(t.state == TrialState.FAIL for t in trials),
        "n_pruned": sum(t.state == TrialState.PRUNED for t in trials),
    }
    out["fixed"] = complete[0].user_attrs.get("fixed", {}) if complete else {}
    if not complete:
        return out
    if len(objectives) == 1:
        best = study.best_trial
        out.update(best_params=dict(best.params), best_value=best.value, best_trial=best.number,
                   best_mlflow_run_id=best.user_attrs.get("mlflow_run_id"))
    else:
        out["solutions"] = [{"trial": t.number, "params": dict(t.params),
                             "values": dict(zip(objectives, t.values)),
                             "mlflow_run_id": t.user_attrs.get("mlflow_run_id")} for t in study.best_trials]
    return out


def pruning_savings(parent) -> dict[str, float]:
    """Training time the sweep spent, against an estimate of what it would have spent without pruning.

    A pruned trial would have run its remaining steps at the median time per step of the complete trials."""
    client = parent.client
    run = client.get_run(parent.run_id)
    children = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.run_id}'",
                                  max_results=10000)
    done = [c.data.metrics for c in children if "perf/train_time_s" in c.data.metrics and c.data.metrics.get("train/steps")]
    if not done:
        return {}
    per_step = [m["perf/train_time_s"] / m["train/steps"] for m in done if m["train/steps"] >= m.get("train/total_steps", 0)]
    spent = sum(m["perf/train_time_s"] for m in done)
    if not per_step:
        return {"sweep/train_time_s": spent}
    rate = sorted(per_step)[len(per_step) // 2]
    unpruned = sum(m["perf/train_time_s"] + max(m.get("train/total_steps", 0) - m["train/steps"], 0) * rate for m in done)
    return {"sweep/train_time_s": spent, "sweep/train_time_unpruned_est_s": unpruned,
            "sweep/time_saved_pct": 100.0 * (1 - spent / unpruned) if unpruned else 0.0}


# --------------------------------------------------------------------------- job side
def record_run_id(sweep_cfg: Any, run_id: str) -> None:
    """Called in the job: store its MLflow run id on its Optuna trial, so each finds the other."""
    if sweep_cfg is None or sweep_cfg.trial_id is None or not sweep_cfg.storage:
        return
    make_storage(sweep_cfg.storage).set_trial_user_attr(int(sweep_cfg.trial_id), "mlflow_run_id", run_id)


@dataclass
class SweepSettings:
    sampler: str = "auto"
    seed: int = 42
    direction: Any = None
    storage: Optional[str] = None
    study_name: Optional[str] = None
    n_trials: int = 20
    n_jobs: int = 1
    max_failure_rate: float = 0.5
    min_trials_before_abort: int = 4
    stale_after_s: Optional[float] = None
    custom_search_space: Optional[str] = None
    pruner: str = "none"
    pruner_startup_trials: int = 5
    pruner_warmup_steps: int = 0


# --------------------------------------------------------------------------- the loop
class SweepRunner:
    """One worker of a sweep: claim trials, launch them, record results, until the study is full."""

    def __init__(self, settings: SweepSettings, config: DictConfig, launcher, arguments: list[str]):
        self.s = settings
        self.config = config
        self.launcher = launcher
        self.arguments = arguments
        self.job_idx = 0
        self.objectives = list(config.objectives)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.aborted = False

    # ---- setup
    def _definition(self) -> None:
        from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

        params = self.config.hydra.sweeper.get("params") or {}
        overrides = [f"{k}={v}" for k, v in params.items()] + list(self.arguments)
        self.space, self.fixed = create_params_from_overrides(overrides)
        for name in self.fixed:
            self.space.pop(name, None)
        self.custom = None
        if self.s.custom_search_space:
            from hydra.utils import get_method

            self.custom = get_method(self.s.custom_search_space)
        sampler = self.s.sampler
        self.points = grid_points(self.space) if sampler in ("auto", "grid") and self.custom is None else None
        if sampler == "grid" and self.points is None:
            raise ValueError("hydra.sweeper.sampler=grid needs every swept key to be a choice list")
        self.sampler_name = "grid" if self.points is not None else sampler
        self.n_trials = len(self.points) if self.points is not None else self.s.n_trials
        direction = self.s.direction
        if direction is None:
            self.directions = directions_for(self.objectives)
        else:
            self.directions = [direction] if isinstance(direction, str) else [str(d) for d in direction]
        if len(self.directions) != len(self.objectives):
            raise ValueError(f"{len(self.objectives)} objectives {self.objectives} but {len(self.directions)} directions")
        if self.s.pruner != "none":
            make_pruner(self.s.pruner, 1, 0)  # validates the name
            if len(self.objectives) > 1:
                raise ValueError("Optuna cannot prune a multi-objective study: set hydra.sweeper.pruner=none "
                                 f"(objectives: {self.objectives})")
            if not self.objectives[0].startswith("eval/"):
                raise ValueError(f"pruning needs an eval/ objective reported during training, not {self.objectives[0]}")
        self.storage_url = self.s.storage or default_storage()
        self.study_name = self.s.study_name or study_name_for(
            self.space, self.fixed, self.directions, self.objectives, self.sampler_name, self.s.custom_search_space,
            self.s.pruner)

    def _open_study(self) -> optuna.Study:
        self.storage = make_storage(self.storage_url)
        sampler = make_sampler(self.sampler_name, self.s.seed, self.n_trials, len(self.directions))
        self.pruner = make_pruner(self.s.pruner, self.s.pruner_startup_trials, self.s.pruner_warmup_steps)
        return optuna.create_study(study_name=self.study_name, storage=self.storage, sampler=sampler,
                                   pruner=self.pruner, directions=self.directions, load_if_exists=True)

    def _parent_run(self, study: optuna.Study):
        """The study's MLflow parent run: created by the first worker, reopened by later ones."""
        from ftsweep.tracking import Tracker

        tracker = Tracker()
        run_id = study.user_attrs.get("mlflow_parent_run_id")
        if run_id:
            tracker.resume(run_id)
            return tracker
        experiment = self.config.experiment_name or self.config.data.name
        tracker.start(experiment, run_name=f"sweep-{self.study_name}",
                      tags={"ftsweep.role": "sweep", "optuna.study_name": self.study_name,
                            "optuna.storage": _redact(self.storage_url)})
        tracker.log_params({
            "sweep.study_name": self.study_name, "sweep.storage": _redact(self.storage_url),
            "sweep.sampler": self.sampler_name, "sweep.n_trials": self.n_trials, "sweep.seed": self.s.seed,
            "sweep.objectives": ",".join(self.objectives), "sweep.directions": ",".join(self.directions),
            "sweep.search_space": json.dumps({k: repr(v) for k, v in sorted(self.space.items())}),
            "sweep.fixed": json.dumps({k: str(v) for k, v in sorted(self.fixed.items())}),
            "sweep.custom_search_space": self.s.custom_search_space or "",
        })
        study.set_user_attr("mlflow_parent_run_id", tracker.run_id)
        return tracker

    # ---- claiming
    def _fail_stale(self, study: optuna.Study, trials: list[FrozenTrial]) -> None:
        now = time.time()
        for t in trials:
            if is_stale(t, self.s.stale_after_s, now):
                log.warning("trial %d was left RUNNING by %s, which is gone: marking it FAIL and running its "
                            "parameters again", t.number, t.user_attrs.get("worker", "an unknown worker"))
                self._fail_for_rerun(study, t._trial_id, t.params, "worker died (stale RUNNING trial)")
                if t.user_attrs.get("mlflow_run_id"):
                    _end_child_run(t.user_attrs["mlflow_run_id"])

    def _interrupted(self, study: optuna.Study, batch: list[Trial], exc: BaseException) -> None:
        for trial in batch:
            if self.storage.get_trial(trial._trial_id).state != TrialState.RUNNING:
                continue
            log.warning("trial %d interrupted (%s): marked FAIL; the same command runs it again", trial.number,
                        type(exc).__name__)
            self._fail_for_rerun(study, trial._trial_id, trial.params, f"interrupted: {type(exc).__name__} {exc}")

    def _fail_for_rerun(self, study: optuna.Study, trial_id: int, params: dict[str, Any], error: str) -> None:
        """FAIL a trial that did not get to finish, so that it does not count and its parameters run again."""
        self.storage.set_trial_system_attr(trial_id, STALE, True)
        self.storage.set_trial_user_attr(trial_id, "error", error[:1000])
        self.storage.set_trial_state(trial_id, TrialState.FAIL)
        if self.points is None:
            study.enqueue_trial(dict(params))  # the grid re-claims its free points by itself

    @staticmethod
    def _done(t: FrozenTrial) -> bool:
        return t.state.is_finished() and not t.system_attrs.get(STALE)

    def _claim(self, study: optuna.Study) -> list[Trial]:
        with storage_lock(self.storage_url):
            self._fail_stale(study, study.get_trials(deepcopy=False))
            trials = study.get_trials(deepcopy=False)
            done = sum(self._done(t) for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            room = self.n_trials - done - running
            claimed = {_key(t.params) for t in trials if self._done(t) or t.state == TrialState.RUNNING}
            claimed |= {_key(t.system_attrs.get("fixed_params", {})) for t in trials if t.state == TrialState.WAITING}
            batch = []
            for _ in range(max(0, min(self.s.n_jobs, room))):
                if self.points is not None:
                    free = [p for p in self.points if _key(p) not in claimed]
                    if not free:
                        break
                    claimed.add(_key(free[0]))
                    study.enqueue_trial(free[0])
                trial = study.ask()
                for name, dist in self.space.items():
                    trial._suggest(name, dist)
                if self.custom is not None:
                    self.custom(self.config, trial)
                trial.set_user_attr("fixed", {k: str(v) for k, v in self.fixed.items()})
                trial.set_user_attr("worker", self.worker)
                trial.set_user_attr("host", socket.gethostname())
                trial.set_user_attr("pid", os.getpid())
                batch.append(trial)
            return batch

    def _overrides(self, trial: Trial) -> tuple[str, ...]:
        params = {**self.fixed, **trial.params}
        return (*(f"{k}={v}" for k, v in params.items()),
                f"sweep.study={self.study_name}", f"sweep.trial={trial.number}", f"sweep.trial_id={trial._trial_id}",
                f"sweep.storage='{self.storage_url}'", f"sweep.parent_run_id={self.parent.run_id}",
                f"sweep.pruner={self.s.pruner}", f"sweep.pruner_startup_trials={self.s.pruner_startup_trials}",
                f"sweep.pruner_warmup_steps={self.s.pruner_warmup_steps}")

    # ---- results
    def _tell(self, study: optuna.Study, trial: Trial, ret) -> bool:
        """Record one job's outcome; True when it succeeded."""
        from hydra.core.utils import JobStatus

        error = None
        if ret.status == JobStatus.COMPLETED:
            value = ret.return_value
            values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
            if len(values) != len(self.directions):
                error = f"job returned {len(values)} values for {len(self.directions)} objectives"
            elif not all(math.isfinite(v) for v in values):
                error = f"job returned a non-finite objective {values}"  # Optuna cannot store NaN
            else:
                study.tell(trial, values=values)
                return True
        elif isinstance(ret._return_value, optuna.TrialPruned):
            log.info("trial %d pruned: %s", trial.number, ret._return_value)
            study.tell(trial, state=TrialState.PRUNED)
            return True
        else:
            exc = ret._return_value
            error = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
        log.warning("trial %d failed: %s", trial.number, error)
        trial.set_user_attr("error", error[:1000])
        study.tell(trial, state=TrialState.FAIL)
        return False

    def _too_many_failures(self, study: optuna.Study) -> bool:
        finished = [t for t in study.get_trials(deepcopy=False) if self._done(t)]
        failed = sum(t.state == TrialState.FAIL for t in finished)
        return len(finished) >= self.s.min_trials_before_abort and failed > self.s.max_failure_rate * len(finished)

    def _finish(self, study: optuna.Study) -> dict[str, Any]:
        sweep_dir = Path(str(self.config.hydra.sweep.dir)) / self.study_name
        summary = results_summary(study, self.objectives)
        _atomic_write(sweep_dir / "optimization_results.yaml",
                      lambda f: f.write(OmegaConf.to_yaml(OmegaConf.create(json.loads(json.dumps(summary, default=str))))))
        write_trials_csv(study.get_trials(deepcopy=False), self.objectives, sweep_dir / "trials.csv")
        self.parent.log_artifact(sweep_dir / "optimization_results.yaml")
        self.parent.log_artifact(sweep_dir / "trials.csv")
        metrics = {f"sweep/{k}": summary[k] for k in ("n_complete", "n_failed", "n_pruned")}
        if "best_value" in summary:
            metrics["sweep/best_value"] = summary["best_value"]
        if "solutions" in summary:
            metrics["sweep/pareto_size"] = len(summary["solutions"])
        metrics.update(pruning_savings(self.parent))
        self.parent.log_metrics(metrics, step=0)
        summary["sweep_dir"] = str(sweep_dir)
        try:  # the report is a view of results already saved: it must never fail the sweep
            from ftsweep.report import make_report

            log.info("trade-off report: %s", make_report(self.parent.run_id, out=sweep_dir))
        except Exception as exc:
            log.warning("could not write the report (%s: %s); rerun python -m ftsweep.report --sweep %s",
                        type(exc).__name__, exc, self.parent.run_id)
        return summary

    def run(self) -> dict[str, Any]:
        self._definition()
        with storage_lock(self.storage_url):  # two workers creating the tables at once would collide
            study = self._open_study()
            self.parent = self._parent_run(study)
        log.info("study %s (%s, %d trials in all, %s) on %s; MLflow parent run %s", self.study_name,
                 self.sampler_name, self.n_trials, "/".join(self.directions), _redact(self.storage_url),
                 self.parent.run_id)
        launched = 0
        batch: list[Trial] = []
        try:
            while True:
                interrupt.check()
                batch = self._claim(study)
                if not batch:
                    break
                overrides = [self._overrides(t) for t in batch]
                returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
                self.job_idx += len(returns)
                launched += len(returns)
                for trial, ret in zip(batch, returns):
                    self._tell(study, trial, ret)
                batch = []
                if self._too_many_failures(study):
                    self.aborted = True
                    log.error("stopping: more than %.0f%% of finished trials failed (hydra.sweeper.max_failure_rate)",
                              100 * self.s.max_failure_rate)
                    break
        except BaseException as exc:  # Ctrl-C, SIGTERM: the trials in flight run again on resume
            self.aborted = True
            self._interrupted(study, batch, exc)
            raise
        finally:
            summary = self._finish(study)
            others_running = any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False))
            all_failed = summary["n_complete"] == 0 and summary["n_failed"] > 0
            if self.aborted or all_failed:
                self.parent.end("FAILED")
            elif not others_running:
                self.parent.end("FINISHED")  # else the worker still running trials closes it
        if launched == 0:
            log.info("study %s is already complete (%d of %d trials finished): nothing to run",
                     self.study_name, summary["n_complete"] + summary["n_failed"] + summary["n_pruned"], self.n_trials)
        _log_summary(summary)
        summary["ok"] = not self.aborted and not all_failed
        return summary


def _log_summary(summary: dict[str, Any]) -> None:
    log.info("%d complete, %d failed, %d pruned; results in %s", summary["n_complete"], summary["n_failed"],
             summary["n_pruned"], summary["sweep_dir"])
    if "best_value" in summary:
        log.info("best %s = %.4g with %s", summary["objectives"][0], summary["best_value"], summary["best_params"])
    for s in summary.get("solutions", []):
        log.info("pareto: %s with %s", s["values"], s["params"])
    if summary["n_complete"] == 0 and summary["n_failed"]:
        log.error("all %d trials failed; see the error column of trials.csv", summary["n_failed"])


def _redact(url: str) -> str:
    """Drop a password from a storage URL before it is logged."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}"
    return url


def _end_child_run(run_id: str) -> None:
    from ftsweep.tracking import Tracker

    tracker = Tracker()
    tracker.run_id = run_id
    tracker.set_tags({"error": "worker died (stale RUNNING trial)"})
    tracker.end("KILLED")
