"""One worker of a sweep: claim trials, launch them through Hydra's launcher, tell Optuna the outcome.

- `n_trials` (or the grid size) is the study's total: a rerun only runs the remainder;
- trials are claimed under a storage-wide lock, so concurrent workers never run one grid point twice;
- a trial left RUNNING by a dead process is marked FAIL and its parameters run again;
- a failed trial is recorded and the sweep goes on, unless most trials fail;
- one MLflow parent run per study; every trial is its child run;
- `n_jobs` launcher slots each claim the next trial as soon as their own is done, so trials of unequal
  length never leave a worker idle (Hydra's launchers run a list of jobs and wait for the slowest);
- a trial whose job was stopped in its own worker (a preempted SLURM job) runs again, from its checkpoint.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import optuna
from omegaconf import DictConfig
from optuna.trial import FrozenTrial, Trial, TrialState

from ftsweep import interrupt, spool
from ftsweep.errors import first_line, is_out_of_memory
from ftsweep.sweep import results
from ftsweep.sweep.definition import CONSTRAINTS_ATTR, SweepDefinition, SweepSettings, make_pruner
from ftsweep.sweep.storage import (RETRY_WINDOW_S, StorageGone, claim_lock, is_stale, open_storage, retrying,
                                   storage_unreachable, worker_attrs)
from ftsweep.sweep.trial_link import OBJECTIVES_ATTR, PARENT_RUN_ATTR, PRUNER_ATTR, STORAGE_ENV
from ftsweep.tracking import Tracker, redact

log = logging.getLogger("ftsweep.sweep")
RESUME_ATTR = "ftsweep_checkpoint"  # on a FAILed interrupted trial: the checkpoint its rerun starts from
MAX_LOSSES = 2  # a trial whose job the engine lost (killed, preempted) runs again, at most this many times


def trial_id(trial: Trial | FrozenTrial) -> int:
    """A trial's storage id. Private in Optuna (`_trial_id`), yet every storage call needs it."""
    return trial._trial_id


def job_outcome(ret) -> tuple[Optional[Any], Optional[BaseException]]:
    """(return value, exception) of a Hydra JobReturn.

    Private on purpose: the public `JobReturn.return_value` re-raises after printing the job's whole
    override list to stderr, which holds the storage URL (and any password in it)."""
    from hydra.core.utils import JobStatus

    if ret.status == JobStatus.COMPLETED:
        return ret._return_value, None
    return None, ret._return_value


class SweepRunner:
    def __init__(self, settings: SweepSettings, definition: SweepDefinition, config: DictConfig, launcher,
                 storage_url: str, sweep_dir: Path):
        self.settings = settings
        self.d = definition
        self.config = config
        self.launcher = launcher
        self.url = storage_url
        self.base_dir = sweep_dir
        self.sweep_dir = sweep_dir
        self.custom: Optional[Callable] = None
        # How long claims and tells wait for a storage server that restarts (the tracking store's window too).
        tracking = config.get("tracking") if config is not None else None
        self.retry_window_s = float(tracking.retry_window_s) if tracking is not None else RETRY_WINDOW_S
        if definition.custom_search_space:
            from hydra.utils import get_method

            self.custom = get_method(definition.custom_search_space)

    # ---- setup
    def _open(self) -> tuple[optuna.Study, Tracker]:
        """The study (an old one found by its ftsweep 0.1 name) and its MLflow parent run, under the lock,
        because two workers creating tables or the same study at once would collide."""
        with claim_lock(self.url):
            self.storage = open_storage(self.url)
            names = {s.study_name for s in self.storage.get_all_studies()}
            name = self.d.study_name
            if name not in names and not self.d.study_name_override and self.d.legacy_study_name in names:
                name = self.d.legacy_study_name
                log.info("resuming study %s, named by an earlier ftsweep", name)
            study = optuna.create_study(study_name=name, storage=self.storage,
                                        pruner=make_pruner(self.d.pruner_spec()), directions=list(self.d.directions),
                                        load_if_exists=True)
            study.set_user_attr(PRUNER_ATTR, self.d.pruner_spec())
            study.set_user_attr(OBJECTIVES_ATTR, list(self.d.objectives))
            self.sweep_dir = self.base_dir / study.study_name
            return study, self._parent_run(study)

    def _parent_run(self, study: optuna.Study) -> Tracker:
        """Created by the first worker, reopened by later ones (or created again if this store lacks it)."""
        tracker = Tracker()
        run_id = study.user_attrs.get(PARENT_RUN_ATTR)
        window = float(self.config.tracking.retry_window_s)
        if run_id and tracker.resume(run_id):
            tracker.keep_writes(self.sweep_dir / spool.FOLDER, window)
            return tracker
        tracker.start(self.config.experiment_name or self.config.data.name, run_name=f"sweep-{study.study_name}",
                      tags={"ftsweep.role": "sweep", "optuna.study_name": study.study_name,
                            "optuna.storage": redact(self.url), "ftsweep.sweep_dir": str(self.sweep_dir)})
        definition = self.d.canonical()
        tracker.log_params({
            "sweep.study_name": study.study_name, "sweep.storage": self.url, "sweep.sampler": self.d.sampler,
            "sweep.n_trials": self.d.n_trials, "sweep.seed": self.d.seed,
            "sweep.objectives": ",".join(self.d.objectives), "sweep.directions": ",".join(self.d.directions),
            "sweep.search_space": json.dumps(definition["space"]), "sweep.fixed": json.dumps(definition["fixed"]),
            "sweep.custom_search_space": self.d.custom_search_space or "",
            "sweep.constraints": json.dumps(self.d.constraints), "sweep.pruner": self.d.pruner,
        })
        study.set_user_attr(PARENT_RUN_ATTR, tracker.run_id)
        tracker.keep_writes(self.sweep_dir / spool.FOLDER, window)  # its results wait out a store's outage too
        return tracker

    # ---- claiming
    def _fail_for_rerun(self, study: optuna.Study, trial: FrozenTrial, error: str) -> None:
        """FAIL a trial that did not get to finish, so that it does not count and its parameters run again
        (from its checkpoint, when its run wrote one: checkpoint_every_steps)."""
        self.storage.set_trial_system_attr(trial_id(trial), results.STALE, True)
        checkpoint = _checkpoint_of(trial.user_attrs.get("mlflow_run_id"))
        if checkpoint:
            self.storage.set_trial_system_attr(trial_id(trial), RESUME_ATTR, checkpoint)
        self.storage.set_trial_user_attr(trial_id(trial), "error", error[:1000])
        self.storage.set_trial_state_values(trial_id(trial), TrialState.FAIL)
        _end_run(trial.user_attrs.get("mlflow_run_id"), error)  # its job is gone or stopping: no RUNNING run
        if self.d.grid is None:
            study.enqueue_trial(dict(trial.params))  # the grid re-claims its free points by itself

    def _fail_stale(self, study: optuna.Study) -> None:
        now = time.time()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if is_stale(t, self.settings.stale_after_s, now):
                log.warning("trial %d was left RUNNING by %s, which is gone: marking it FAIL and running its "
                            "parameters again", t.number, t.user_attrs.get("worker", "an unknown worker"))
                self._fail_for_rerun(study, t, "worker died (stale RUNNING trial)")

    def _fail_half_claimed(self, study: optuna.Study) -> None:
        """A RUNNING trial without its worker's attrs was cut off while being claimed (the storage went away
        right after `ask`, or the claiming process died). Under the claim lock no claim is in progress, so it
        is nobody's: FAIL it so that its parameters run again, rather than never."""
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if "worker" not in t.user_attrs:
                log.warning("trial %d was cut off while being claimed: marking it FAIL and running its parameters "
                            "again", t.number)
                self._fail_for_rerun(study, t, "cut off while being claimed")

    def _claim(self, study: optuna.Study) -> Optional[Trial]:
        """The next trial to run, or None when the study has no room left (or, for a grid, no free point).
        Called under `self._claiming` (this process's slots); `claim_lock` covers other processes."""
        with claim_lock(self.url):
            self._fail_stale(study)
            self._fail_half_claimed(study)
            trials = study.get_trials(deepcopy=False)
            room = self._room(trials)
            ran = {_key(t.params) for t in trials if results.counts(t) or t.state == TrialState.RUNNING}
            taken = ran | {_key(t.system_attrs.get("fixed_params", {})) for t in trials if t.state == TrialState.WAITING}
            # Checkpoints of interrupted trials whose parameters have not run again yet: the rerun starts there.
            resumable = {_key(t.params): t.system_attrs[RESUME_ATTR] for t in trials
                         if t.system_attrs.get(RESUME_ATTR) and _key(t.params) not in ran
                         and Path(t.system_attrs[RESUME_ATTR]).is_file()}
            if room <= 0:
                return None
            # Seeded by the study's size at this claim (under the lock): reproducible, and neither a resumed
            # sweep nor a second worker proposes the same start-up points again.
            study.sampler = self.d.make_sampler(trials_so_far=len(trials))
            if self.d.grid is not None:
                free = [p for p in self.d.grid if _key(p) not in taken]
                if not free:
                    return None
                study.enqueue_trial(free[0])
            trial = study.ask(fixed_distributions=self.d.space)
            for key, value in worker_attrs().items():  # at once: a claim without them is a half-made one
                trial.set_user_attr(key, value)
            if self.custom is not None:
                self.custom(self.config, trial)
            if self.d.sampler == "bruteforce" and _key(trial.params) in ran:  # it offers a repeat only when done
                trial.set_user_attr("error", "not run: every combination of the search space has run "
                                             "(hydra.sweeper.n_trials is above their number)")
                study.tell(trial, state=TrialState.FAIL)
                log.warning("every combination of the search space has run; the sweep stops here")
                return None
            resume = resumable.get(_key(trial.params))
            if resume:
                trial.set_user_attr("resume_from", resume)
            trial.set_user_attr("fixed", self.d.fixed)
            return trial

    def _overrides(self, study: optuna.Study, trial: Trial, slot: int) -> tuple[str, ...]:
        """The job's command line. Hydra prints and saves it, so the storage URL goes without its password;
        the job gets the real one from the environment it inherits (set in run(); see trial_link.storage_url)."""
        params = {**self.d.fixed, **trial.params}
        resume = trial.user_attrs.get("resume_from")
        devices = self.settings.devices
        return (*(f"{k}={v}" for k, v in params.items()), *([f"resume='{resume}'"] if resume else []),
                *([f"sweep.device={devices[slot % len(devices)]}"] if devices else []),
                f"sweep.study={study.study_name}", f"sweep.trial_id={trial_id(trial)}",
                f"sweep.storage='{redact(self.url)}'",
                f"hydra.sweep.subdir={study.study_name}/trial_{trial.number}")

    # ---- results
    def _tell_retrying(self, study: optuna.Study, trial: Trial, metrics: Optional[dict],
                       exc: Optional[BaseException]) -> None:
        """_tell, waiting out a storage server's restart. A try cut off after its tell landed is not told twice."""
        tries = []

        def attempt() -> None:
            if tries and self.storage.get_trial(trial_id(trial)).state.is_finished():
                return
            tries.append(1)
            self._tell(study, trial, metrics, exc)

        retrying(self.url, attempt, f"telling trial {trial.number}", self.retry_window_s)

    def _tell(self, study: optuna.Study, trial: Trial, metrics: Optional[dict], exc: Optional[BaseException]) -> None:
        if isinstance(exc, interrupt.TrialInterrupted):
            log.warning("trial %d was stopped in its worker (%s): running its parameters again", trial.number, exc)
            self._fail_for_rerun(study, self.storage.get_trial(trial_id(trial)), f"interrupted in its worker: {exc}")
            return
        if exc is not None and storage_unreachable(exc):  # not the parameters' fault: they run again
            log.warning("trial %d lost its storage (%s): running its parameters again", trial.number,
                        first_line(exc)[:120])
            self._fail_for_rerun(study, self.storage.get_trial(trial_id(trial)), f"storage lost: {first_line(exc)}")
            return
        if isinstance(exc, optuna.TrialPruned):
            log.info("trial %d pruned: %s", trial.number, exc)
            study.tell(trial, state=TrialState.PRUNED)
            return
        if exc is not None:
            error = first_line(exc, with_type=True)
            if is_out_of_memory(error):
                trial.set_user_attr("infeasible", "out of memory")  # over any memory budget, and a failure
        else:
            values = [metrics.get(name) for name in self.d.objectives]
            if any(v is None for v in values):
                missing = [n for n, v in zip(self.d.objectives, values) if v is None]
                error = f"objective {missing} is not a logged metric; choose from {', '.join(sorted(metrics))}"
            elif not all(math.isfinite(v) for v in values):
                error = f"non-finite objective {values}"  # Optuna cannot store NaN
            else:
                if self.d.constraints:
                    trial.set_user_attr(CONSTRAINTS_ATTR, self.d.feasibility(metrics))
                study.tell(trial, values=[float(v) for v in values])
                return
        log.warning("trial %d failed: %s", trial.number, error)
        trial.set_user_attr("error", error[:1000])
        run_id = trial.user_attrs.get("mlflow_run_id")
        study.tell(trial, state=TrialState.FAIL)
        if exc is not None:  # a job that died (lost for good) left its run RUNNING; a job that raised ended it
            _end_run(run_id, error)

    def _too_many_failures(self, study: optuna.Study) -> bool:
        finished = [t for t in study.get_trials(deepcopy=False) if results.counts(t)]
        failed = sum(t.state == TrialState.FAIL for t in finished)
        return (len(finished) >= self.settings.min_trials_before_abort
                and failed > self.settings.max_failure_rate * len(finished))

    def _finish(self, study: optuna.Study, parent: Tracker, aborted: bool, utilisation: dict[str, float]) -> dict[str, Any]:
        result = results.write_results(study, self.d, self.sweep_dir)
        for name in ("optimization_results.yaml", "trials.csv"):
            parent.log_artifact(self.sweep_dir / name)
        try:
            children = parent.client.search_runs(
                [parent.client.get_run(parent.run_id).info.experiment_id],
                f"tags.`mlflow.parentRunId` = '{parent.run_id}'", max_results=10000)
        except Exception as exc:
            if not spool.unreachable(exc):
                raise
            log.warning("MLflow cannot be reached to read the trials' runs: no best model or report now; after "
                        "python -m ftsweep.sync %s, python -m ftsweep.report --sweep %s", self.sweep_dir, parent.run_id)
            children = []
        parent.log_metrics({**results.sweep_metrics(result, [c.data.metrics for c in children]), **utilisation}, step=0)
        if utilisation:
            log.info("%d slot(s) busy %.0f%% of %.0f s", self.settings.n_jobs,
                     100 * utilisation["sweep/worker_utilisation"], utilisation["sweep/wall_time_s"])
        save_model = getattr(self.config.get("save_model"), "value", "none")  # the SaveModel enum's name
        if save_model != "none" and not aborted:  # after a Ctrl-C, the next run of the command does it
            try:  # the results above are already safe whatever happens here
                self._keep_best_model(study, children, parent, delete_others=save_model == "best")
            except Exception as exc:
                log.warning("could not keep the best trial's model: %s", first_line(exc, with_type=True))
        try:  # the report is a view of results already saved: it must never fail the sweep
            from ftsweep.report import make_report

            log.info("trade-off report: %s", make_report(parent.run_id, out=self.sweep_dir))
        except Exception as exc:
            log.warning("could not write the report (%s); rerun python -m ftsweep.report --sweep %s",
                        first_line(exc, with_type=True), parent.run_id)
        return result

    def _keep_best_model(self, study: optuna.Study, children: list, parent: Tracker, delete_others: bool) -> None:
        """save_model=best: log the best trial's model (on the objective; for a Pareto search, the report's
        answer: the most accurate trial within budget) to its run, register it as `ftsweep-<experiment>@best`,
        and delete the model folders of the other finished trials. save_model=all: every trial logged its own;
        register the best."""
        from ftsweep import keep

        finished = [c for c in children if c.info.status == "FINISHED" and c.data.tags.get("pruned") != "true"
                    and self._feasible(c)]
        single = len(self.d.objectives) == 1
        metric = self.d.objectives[0] if single else "eval/accuracy"
        sign = -1.0 if single and self.d.directions[0] == "minimize" else 1.0
        scored = [c for c in finished if metric in c.data.metrics]
        if not scored:
            return
        best = max(scored, key=lambda c: sign * c.data.metrics[metric])
        folder = self.sweep_dir / f"trial_{best.data.tags.get('optuna.trial_number')}" / keep.MODEL_NAME
        uri = best.data.tags.get("ftsweep.model_uri")
        if uri is None and folder.is_dir():
            model, tokenizer = keep.load_folder(folder)
            labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
            uri = keep.log_model(parent.tracking_uri, best.info.run_id, model, tokenizer, keep.examples_of(folder),
                                 labels, keep.cut_of(str(folder)))
            parent.client.set_tag(best.info.run_id, "ftsweep.model_uri", uri)
        if uri is None:
            return  # trials of an earlier sweep, which kept no models
        experiment = parent.client.get_experiment(best.info.experiment_id).name
        registered = keep.register(parent.tracking_uri, uri, best.info.run_id, keep.registered_name(experiment))
        parent.set_tags({"ftsweep.best_model": registered, "ftsweep.best_run_id": best.info.run_id})
        log.info("best trial's model: %s (run %s)", registered, best.info.run_id)
        if delete_others:  # only trials that are over: another worker may still be writing its own
            done = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
            for other in self.sweep_dir.glob(f"trial_*/{keep.MODEL_NAME}"):
                if other != folder and int(other.parent.name.split("_")[1]) in done:
                    shutil.rmtree(other, ignore_errors=True)

    def _feasible(self, run) -> bool:
        return all(run.data.metrics.get(k, math.inf) <= bound for k, bound in self.d.constraints.items())

    # ---- running
    def _slot(self, study: optuna.Study, slot: int) -> None:
        """One launcher slot: claim a trial, launch it alone, tell its outcome, and claim the next at once."""
        while not self._stop.is_set():
            interrupt.check()  # in a slot thread, the main thread sees it through `errors` and ends the sweep
            with self._claiming:  # claimed and in flight at once: an interrupted sweep sees every trial it must stop
                if self._interrupted:
                    return
                trial = retrying(self.url, lambda: self._claim(study), "claiming a trial", self.retry_window_s)
                if trial is None:
                    return
                trial.set_user_attr("slot", slot)
                self._in_flight[trial_id(trial)] = trial
            started = time.perf_counter()
            try:
                ret = self.launcher.launch([self._overrides(study, trial, slot)], initial_job_idx=next(self._job_idx))
                metrics, exc = job_outcome(ret[0])
            except Exception as lost:  # the engine lost the job: a killed worker, a preempted node
                metrics, exc = None, lost
                if self._losses(study, trial) < MAX_LOSSES:
                    exc = interrupt.TrialInterrupted(f"job lost by {type(self.launcher).__name__}: {first_line(lost)}")
            with self._claiming:
                if self._interrupted:
                    return  # the sweep was interrupted meanwhile, and marked this trial for a rerun
                self._tell_retrying(study, trial, metrics, exc)
                del self._in_flight[trial_id(trial)]
                self._busy_s += time.perf_counter() - started
                self._launched += 1
            if self._too_many_failures(study):
                self._aborted = True
                self._stop.set()
                log.error("stopping: more than %.0f%% of finished trials failed (hydra.sweeper.max_failure_rate)",
                          100 * self.settings.max_failure_rate)

    def _run_slots(self, study: optuna.Study) -> None:
        """n_jobs slots, each a thread that launches one job at a time through the launcher, while the main
        thread waits for signals (and stops the jobs in flight). Hydra's basic launcher runs jobs in this very
        process, on shared globals (HydraConfig, RNGs, the working run's peak memory): one slot, the main thread."""
        if type(self.launcher).__name__ == "BasicLauncher":
            if self.settings.n_jobs > 1:
                log.warning("hydra.sweeper.n_jobs=%d runs trials at once only with a launcher that has worker "
                            "processes (hydra/launcher=joblib, ray, submitit_local, submitit_slurm); the basic "
                            "launcher runs them one at a time", self.settings.n_jobs)
            self._slot(study, 0)
            return
        if self._room(study.get_trials(deepcopy=False)) > 0:  # a finished study starts no engine
            _start_engine(self.launcher)
        errors: list[BaseException] = []

        def guarded(slot: int) -> None:
            try:
                self._slot(study, slot)
            except BaseException as exc:  # reaches the main thread, which ends the sweep
                errors.append(exc)
                self._stop.set()

        threads = [threading.Thread(target=guarded, args=(i,), name=f"ftsweep-slot-{i}", daemon=True)
                   for i in range(self.settings.n_jobs)]
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            interrupt.check()  # signals reach the main thread only
            time.sleep(0.2)
        if errors:
            raise errors[0]

    def _interrupt_trial(self, study: optuna.Study, trial: Trial, exc: BaseException) -> None:
        frozen = self.storage.get_trial(trial_id(trial))
        if frozen.state == TrialState.RUNNING:
            log.warning("trial %d interrupted (%s): marked FAIL; the same command runs it again",
                        trial.number, type(exc).__name__)
            self._fail_for_rerun(study, frozen, f"interrupted: {first_line(exc, with_type=True)}")
            _stop_job(frozen)

    def _losses(self, study: optuna.Study, trial: Trial) -> int:
        """How often these parameters' jobs were lost already: a job that dies each time is a failure."""
        key = _key(trial.params)
        return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                   if _key(t.params) == key and "job lost" in t.user_attrs.get("error", ""))

    def _room(self, trials: list[FrozenTrial]) -> int:
        """How many more trials the study can start: its total, less those that count or are running."""
        return self.d.n_trials - sum(results.counts(t) or t.state == TrialState.RUNNING for t in trials)

    def run(self) -> dict[str, Any]:
        with interrupt.deferred():  # a study without its parent run would be a half-made sweep
            study, parent = self._open()
        os.environ[STORAGE_ENV] = self.url
        os.environ[interrupt.SWEEPER_PID_ENV] = str(os.getpid())  # jobs in other processes are workers
        log.info("study %s (%s, %d trials in all, %s) on %s; MLflow parent run %s; %d slot(s)", study.study_name,
                 self.d.sampler, self.d.n_trials, "/".join(self.d.directions), redact(self.url), parent.run_id,
                 self.settings.n_jobs)
        self._claiming, self._stop, self._job_idx = threading.Lock(), threading.Event(), itertools.count()
        self._in_flight: dict[int, Trial] = {}
        self._launched, self._aborted, self._interrupted, self._busy_s = 0, False, False, 0.0
        started = time.perf_counter()
        try:
            self._run_slots(study)
        except BaseException as exc:  # Ctrl-C, SIGTERM: the trials in flight run again on resume
            self._stop.set()
            with interrupt.deferred():
                with self._claiming:  # from here no slot claims or tells
                    self._aborted = self._interrupted = True
                    in_flight = list(self._in_flight.values())
                for trial in in_flight:
                    try:
                        self._interrupt_trial(study, trial, exc)
                    except Exception as failed:  # the others must still be marked
                        log.warning("trial %d: %s", trial.number, first_line(failed, with_type=True))
            raise
        finally:
            with interrupt.deferred():  # results, report and the parent run's end are written whatever comes
                wall = time.perf_counter() - started
                try:
                    result = self._finish(study, parent, self._aborted, self._utilisation(wall))
                    others_running = bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
                except Exception as exc:
                    if not storage_unreachable(exc):
                        raise
                    parent.end("FAILED")  # every finished trial is in the storage; the same command resumes
                    raise StorageGone(f"Optuna storage {redact(self.url)} cannot be reached, so this sweep's "
                                      f"results are not written; rerun the same command when it is back") from exc
                all_failed = result["n_complete"] == 0 and result["n_failed"] > 0
                if self._aborted or all_failed:
                    parent.end("FAILED")
                elif not others_running:
                    parent.end("FINISHED")  # else the worker still running trials closes it
        if self._launched == 0:
            log.info("study %s is already complete (%d of %d trials finished): nothing to run", study.study_name,
                     result["n_complete"] + result["n_failed"] + result["n_pruned"], self.d.n_trials)
        results.log_summary(result, self.sweep_dir)
        result["ok"] = not self._aborted and not all_failed
        return result

    def _utilisation(self, wall_s: float) -> dict[str, float]:
        """Busy time over wall time x slots, from the first claim to the last outcome (this process's slots)."""
        if not self._launched or wall_s <= 0:
            return {}
        return {"sweep/wall_time_s": wall_s, "sweep/busy_time_s": self._busy_s,
                "sweep/worker_utilisation": self._busy_s / (wall_s * self.settings.n_jobs)}


def _stop_job(trial: FrozenTrial) -> None:
    """SIGTERM a trial's job that runs in another process of this host (a joblib or submitit_local worker):
    it stops at its next step, as the sweep does, instead of training on for nothing. Remote jobs (SLURM,
    a Ray cluster) are left to their engine."""
    import signal
    import socket

    pid = trial.user_attrs.get("job_pid")
    if pid and pid != os.getpid() and trial.user_attrs.get("job_host") == socket.gethostname():
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:  # already gone
            pass


def _start_engine(launcher) -> None:
    """Start Ray once, before the slots launch at the same time (each launch would call ray.init otherwise)."""
    if hasattr(launcher, "ray_cfg"):  # hydra-ray-launcher
        from hydra_plugins.hydra_ray_launcher._launcher_util import start_ray

        start_ray(launcher.ray_cfg.init)


def _key(params: dict[str, Any]) -> str:
    return json.dumps({k: params[k] for k in sorted(params)}, default=str)


def _checkpoint_of(run_id: Optional[str]) -> Optional[str]:
    """The checkpoint file an (interrupted) trial's MLflow run wrote, if it still exists."""
    if not run_id:
        return None
    from ftsweep.checkpoint import RUN_TAG

    try:
        path = Tracker().client.get_run(run_id).data.tags.get(RUN_TAG)
    except Exception:  # a store that lost the run: start from step 0
        return None
    return path if path and Path(path).is_file() else None


def _end_run(run_id: Optional[str], error: str) -> None:
    """End a trial's MLflow run KILLED, unless its job already ended it."""
    if not run_id:
        return
    tracker = Tracker()
    try:
        if tracker.client.get_run(run_id).info.status != "RUNNING":
            return
    except Exception:  # a store that lost the run: nothing to end
        return
    tracker.run_id = run_id
    tracker.set_tags({"error": error})
    tracker.end("KILLED")
