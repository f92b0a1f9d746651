"""One worker of a sweep: `n_jobs` launcher slots, each claiming a trial, launching it alone through Hydra's
launcher and telling Optuna its outcome, then claiming the next at once, so that trials of unequal length
never leave a worker idle (Hydra's launchers run a list of jobs and wait for the slowest).

The parts: the study and its parent run (study.py), claims (claims.py), outcomes (outcomes.py), what a
launcher can do (launchers.py). What comes after the sweep, the best model and the report, is
ftsweep/conclude.py's.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Optional

import optuna
from omegaconf import DictConfig
from optuna.trial import Trial, TrialState

from ftsweep import interrupt
from ftsweep.errors import first_line
from ftsweep.locks import redact
from ftsweep.sweep import study as study_mod
from ftsweep.sweep.claims import Claims, trial_id
from ftsweep.sweep.definition import SweepDefinition, SweepSettings
from ftsweep.sweep.launchers import capabilities
from ftsweep.sweep.outcomes import Outcomes, job_outcome
from ftsweep.sweep.prescreen import Prescreen
from ftsweep.sweep.storage import RETRY_WINDOW_S, StorageGone, retrying, storage_unreachable
from ftsweep.sweep.trial_link import STORAGE_ENV
from ftsweep.tracking import Tracker

log = logging.getLogger("ftsweep.sweep")
MAX_LOSSES = 2  # a trial whose job the engine lost (killed, preempted) runs again, at most this many times


class SweepRunner:
    def __init__(
        self,
        settings: SweepSettings,
        definition: SweepDefinition,
        config: DictConfig,
        launcher,
        storage_url: str,
        sweep_dir: Path,
        prescreen: Optional[Prescreen] = None,
    ):
        self.settings, self.d, self.config, self.launcher, self.url = (
            settings,
            definition,
            config,
            launcher,
            storage_url,
        )
        self.base_dir = sweep_dir
        self.prescreen = prescreen  # None: every claimed trial is launched
        # How long claims and tells wait for a storage server that restarts (the tracking store's window too).
        tracking = config.get("tracking") if config is not None else None
        self.retry_window_s = float(tracking.retry_window_s) if tracking is not None else RETRY_WINDOW_S
        self.claiming = threading.Lock()  # this process's slots claim, tell and stop one at a time
        self.stop = threading.Event()
        self.job_idx = itertools.count()
        self.in_flight: dict[int, Trial] = {}
        self.launched, self.busy_s = 0, 0.0
        self.aborted = self.interrupted = False
        self.done: Optional[study_mod.SweepDone] = None  # set once the results are written

    def run(self) -> dict[str, Any]:
        with interrupt.deferred():  # a study without its parent run would be a half-made sweep
            storage, study = study_mod.open_study(self.d, self.url)
            sweep_dir = self.base_dir / study.study_name
            parent = study_mod.open_parent_run(study, self.d, self.url, self.config, sweep_dir)
        claims = Claims(self.d, self.settings, self.url, storage, self.config)
        outcomes = Outcomes(self.d, self.settings, self.url, claims, self.retry_window_s)
        os.environ[STORAGE_ENV] = self.url
        os.environ[interrupt.SWEEPER_PID_ENV] = str(os.getpid())  # jobs in other processes are workers
        log.info(
            "study %s (%s, %s) on %s; MLflow parent run %s; %d slot(s)",
            study.study_name,
            self.d.plan(),
            "/".join(self.d.directions),
            redact(self.url),
            parent.run_id,
            self.settings.n_jobs,
        )
        # What is alive now (imports, configs, the study) lives as long as the sweep: frozen, it leaves the full
        # collections each trial makes at its start and end, which went through ~590k objects, ~0.45 s each on
        # the 2-core EPYC. Once, before any trial: a trial's own objects, made later, stay collectable. Collected
        # first, so that no garbage of the check before (the data it read) is frozen for the sweep's lifetime.
        gc.collect()
        gc.freeze()
        started = time.perf_counter()
        try:
            self._run_slots(study, claims, outcomes)
        except BaseException as exc:  # Ctrl-C, SIGTERM: the trials in flight run again on resume
            self._interrupt(study, outcomes, exc)
            raise
        finally:
            with interrupt.deferred():  # results and the parent run's end are written whatever comes
                result = self._close(study, parent, sweep_dir, time.perf_counter() - started)
        if self.launched == 0:
            log.info(
                "study %s is already complete (%d of %d trials finished): nothing to run",
                study.study_name,
                result["n_complete"] + result["n_failed"] + result["n_pruned"],
                self.d.n_trials,
            )
        return result

    # ---- the slots
    def _run_slots(self, study: optuna.Study, claims: Claims, outcomes: Outcomes) -> None:
        """n_jobs slots, each a thread that launches one job at a time through the launcher, while the main
        thread waits for signals (and stops the jobs in flight)."""
        can = capabilities(self.launcher)
        if can.in_process:
            if self.settings.n_jobs > 1:
                log.warning(
                    "hydra.sweeper.n_jobs=%d runs trials at once only with a launcher that has worker "
                    "processes (hydra/launcher=joblib, ray, submitit_local, submitit_slurm); the basic "
                    "launcher runs them one at a time",
                    self.settings.n_jobs,
                )
            self._slot(study, claims, outcomes, 0)
            return
        if can.start_engine is not None and claims.room(study.get_trials(deepcopy=False)) > 0:
            can.start_engine(self.launcher)  # a finished study starts no engine
        errors: list[BaseException] = []

        def guarded(slot: int) -> None:
            try:
                self._slot(study, claims, outcomes, slot)
            except BaseException as exc:  # reaches the main thread, which ends the sweep
                errors.append(exc)
                self.stop.set()

        threads = [
            threading.Thread(target=guarded, args=(i,), name=f"ftsweep-slot-{i}", daemon=True)
            for i in range(self.settings.n_jobs)
        ]
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            interrupt.check()  # signals reach the main thread only
            time.sleep(0.2)
        if errors:
            raise errors[0]

    def _slot(self, study: optuna.Study, claims: Claims, outcomes: Outcomes, slot: int) -> None:
        """One launcher slot: claim a trial, launch it alone, tell its outcome, and claim the next at once."""
        while not self.stop.is_set():
            interrupt.check()  # in a slot thread, the main thread sees it through `errors` and ends the sweep
            with self.claiming:  # claimed and in flight at once: an interrupted sweep sees every trial it must stop
                if self.interrupted:
                    return
                trial = retrying(self.url, lambda: claims.claim(study), "claiming a trial", self.retry_window_s)
                if trial is None:
                    return
                trial.set_user_attr("slot", slot)
                self.in_flight[trial_id(trial)] = trial
            if self._skipped(study, outcomes, trial):
                continue
            started = time.perf_counter()
            try:
                ret = self.launcher.launch([self._overrides(study, trial, slot)], initial_job_idx=next(self.job_idx))
                metrics, exc = job_outcome(ret[0])
            except Exception as lost:  # the engine lost the job: a killed worker, a preempted node
                metrics, exc = None, lost
                if claims.losses(study, trial) < MAX_LOSSES:
                    exc = interrupt.TrialInterrupted(f"job lost by {type(self.launcher).__name__}: {first_line(lost)}")
            with self.claiming:
                if self.interrupted:
                    return  # the sweep was interrupted meanwhile, and marked this trial for a rerun
                outcomes.tell_retrying(study, trial, metrics, exc)
                del self.in_flight[trial_id(trial)]
                self.busy_s += time.perf_counter() - started
                self.launched += 1
            if outcomes.too_many_failures(study):
                self.aborted = True
                self.stop.set()
                log.error(
                    "stopping: more than %.0f%% of finished trials failed (hydra.sweeper.max_failure_rate)",
                    100 * self.settings.max_failure_rate,
                )

    def _skipped(self, study: optuna.Study, outcomes: Outcomes, trial: Trial) -> bool:
        """Prescreening: a trial predicted over budget is told as skipped instead of launched."""
        verdict = self.prescreen.verdict({**self.d.fixed, **trial.params}) if self.prescreen else None
        if verdict is None:
            return False
        with self.claiming:
            if not self.interrupted:  # else the interrupt marked it for a rerun
                retrying(self.url, lambda: outcomes.skip(study, trial, *verdict), "telling a skip", self.retry_window_s)
                del self.in_flight[trial_id(trial)]
        return True

    def _overrides(self, study: optuna.Study, trial: Trial, slot: int) -> tuple[str, ...]:
        """The job's command line. Hydra prints and saves it, so the storage URL goes without its password;
        the job gets the real one from the environment it inherits (set in run(); see trial_link.storage_url)."""
        params = {**self.d.fixed, **trial.params}
        resume = trial.user_attrs.get("resume_from")
        devices = self.settings.devices
        return (
            *(f"{k}={v}" for k, v in params.items()),
            *([f"resume='{resume}'"] if resume else []),
            *([f"sweep.device={devices[slot % len(devices)]}"] if devices else []),
            f"sweep.study={study.study_name}",
            f"sweep.trial_id={trial_id(trial)}",
            f"sweep.storage='{redact(self.url)}'",
            f"hydra.sweep.subdir={study.study_name}/trial_{trial.number}",
        )

    # ---- the end
    def _interrupt(self, study: optuna.Study, outcomes: Outcomes, exc: BaseException) -> None:
        self.stop.set()
        with interrupt.deferred():
            with self.claiming:  # from here no slot claims or tells
                self.aborted = self.interrupted = True
                in_flight = list(self.in_flight.values())
            for trial in in_flight:
                try:
                    outcomes.interrupt(study, trial, exc)
                except Exception as failed:  # the others must still be marked
                    log.warning("trial %d: %s", trial.number, first_line(failed, with_type=True))

    def _close(self, study: optuna.Study, parent: Tracker, sweep_dir: Path, wall_s: float) -> dict[str, Any]:
        """The results, written and logged to the parent run, which then ends (unless another worker still runs
        trials: it closes it)."""
        try:
            result, children = study_mod.write_results(study, self.d, parent, sweep_dir, self._utilisation(wall_s))
            others_running = bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        except Exception as exc:
            if not storage_unreachable(exc):
                raise
            parent.end("FAILED")  # every finished trial is in the storage; the same command resumes
            raise StorageGone(
                f"Optuna storage {redact(self.url)} cannot be reached, so this sweep's "
                f"results are not written; rerun the same command when it is back"
            ) from exc
        all_failed = result["n_complete"] == 0 and result["n_failed"] > 0
        save_model = getattr(self.config.get("save_model"), "value", "none")  # the SaveModel enum's name
        self.done = study_mod.SweepDone(
            study, self.d, sweep_dir, parent.active_run_id, parent.tracking_uri, children, save_model, self.aborted
        )
        if self.aborted or all_failed:
            parent.end("FAILED")
        elif not others_running:
            parent.end("FINISHED")  # else the worker still running trials closes it
        result["ok"] = not self.aborted and not all_failed
        return result

    def _utilisation(self, wall_s: float) -> dict[str, float]:
        """Busy time over wall time x slots, from the first claim to the last outcome (this process's slots)."""
        if not self.launched or wall_s <= 0:
            return {}
        utilisation = {
            "sweep/wall_time_s": wall_s,
            "sweep/busy_time_s": self.busy_s,
            "sweep/worker_utilisation": self.busy_s / (wall_s * self.settings.n_jobs),
        }
        log.info(
            "%d slot(s) busy %.0f%% of %.0f s",
            self.settings.n_jobs,
            100 * utilisation["sweep/worker_utilisation"],
            wall_s,
        )
        return utilisation
