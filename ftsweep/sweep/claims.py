"""Claiming a sweep's trials: which trial runs next, and trials that must run again.

- `n_trials` (or the grid size) is the study's total: a rerun only runs the remainder;
- trials are claimed under a storage-wide lock, so concurrent workers never run one grid point twice;
- with replicates (replicates.py), a configuration's missing seeds run before the sampler proposes the next one;
- a trial left RUNNING by a dead process, or cut off while being claimed, is marked FAIL and its
  parameters run again (from its checkpoint, when its run wrote one).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional

import optuna
from hydra.utils import get_method
from omegaconf import DictConfig
from optuna.trial import FrozenTrial, Trial, TrialState

from ftsweep.checkpoint import RUN_TAG
from ftsweep.sweep import results
from ftsweep.sweep.definition import SweepDefinition, SweepSettings
from ftsweep.sweep.replicates import REPLICATE_ATTR, SEED, missing
from ftsweep.sweep.storage import claim_lock, is_stale, worker_attrs
from ftsweep.tracking import Tracker

log = logging.getLogger("ftsweep.sweep")
RESUME_ATTR = "ftsweep_checkpoint"  # on a FAILed interrupted trial: the checkpoint its rerun starts from


def trial_id(trial: Trial | FrozenTrial) -> int:
    """A trial's storage id. Private in Optuna (`_trial_id`), yet every storage call needs it."""
    return trial._trial_id


def key(params: dict[str, Any]) -> str:
    return json.dumps({k: params[k] for k in sorted(params)}, default=str)


class Claims:
    def __init__(
        self,
        definition: SweepDefinition,
        settings: SweepSettings,
        url: str,
        storage: optuna.storages.BaseStorage,
        config: Optional[DictConfig] = None,
    ):
        self.d, self.settings, self.url, self.storage, self.config = definition, settings, url, storage, config
        self.custom: Optional[Callable] = (
            get_method(definition.custom_search_space) if definition.custom_search_space else None
        )

    def claim(self, study: optuna.Study) -> Optional[Trial]:
        """The next trial to run, or None when the study has no room left (or, for a grid, no free point).
        `claim_lock` covers other processes; the caller serialises this process's slots."""
        with claim_lock(self.url):
            self._fail_stale(study)
            self._fail_half_claimed(study)
            trials = study.get_trials(deepcopy=False)
            ran = {key(t.params) for t in trials if results.counts(t) or t.state == TrialState.RUNNING}
            if self.room(trials) <= 0:
                return None
            # Seeded by the study's size at this claim (under the lock): reproducible, and neither a resumed
            # sweep nor a second worker proposes the same start-up points again.
            study.sampler = self.d.make_sampler(trials_so_far=len(trials))
            if self.d.grid is not None:
                taken = ran | {
                    key(t.system_attrs.get("fixed_params", {})) for t in trials if t.state == TrialState.WAITING
                }
                free = [p for p in self.d.grid if key(p) not in taken]
                if not free:
                    return None
                study.enqueue_trial(free[0])
            elif self.d.seeds:
                self._enqueue_replicate(study, trials)
            trial = study.ask(fixed_distributions=self.d.space)
            for name, value in worker_attrs().items():  # at once: a claim without them is a half-made one
                trial.set_user_attr(name, value)
            if self.d.seeds:
                trial.set_user_attr(REPLICATE_ATTR, self.d.seeds.index(trial.params[SEED]))
            if self.custom is not None:
                self.custom(self.config, trial)
            if self.d.sampler == "bruteforce" and key(trial.params) in ran:  # it offers a repeat only when done
                trial.set_user_attr(
                    "error",
                    "not run: every combination of the search space has run "
                    "(hydra.sweeper.n_trials is above their number)",
                )
                study.tell(trial, state=TrialState.FAIL)
                log.warning("every combination of the search space has run; the sweep stops here")
                return None
            resume = _resumable(trials, ran).get(key(trial.params))
            if resume:
                trial.set_user_attr("resume_from", resume)
            trial.set_user_attr("fixed", self.d.fixed)
            return trial

    def _enqueue_replicate(self, study: optuna.Study, trials: list[FrozenTrial]) -> None:
        """Queue the first seed a claimed configuration still lacks, if any; else the sampler proposes the next
        configuration (with the first seed: definition.make_sampler). A trial already waiting goes first: a rerun,
        or a replicate queued by a claim cut off before its `ask`."""
        if any(t.state == TrialState.WAITING for t in trials):
            return
        taken = [t.params for t in trials if results.counts(t) or t.state == TrialState.RUNNING]
        replicate = missing(taken, self.d.seeds)
        if replicate is not None:
            study.enqueue_trial(replicate)

    def room(self, trials: list[FrozenTrial]) -> int:
        """How many more trials the study can start: its total, less those that count or are running."""
        return self.d.n_trials - sum(results.counts(t) or t.state == TrialState.RUNNING for t in trials)

    def losses(self, study: optuna.Study, trial: Trial) -> int:
        """How often these parameters' jobs were lost already: a job that dies each time is a failure."""
        point = key(trial.params)
        return sum(
            1
            for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            if key(t.params) == point and "job lost" in t.user_attrs.get("error", "")
        )

    def fail_for_rerun(self, study: optuna.Study, trial: FrozenTrial, error: str) -> None:
        """FAIL a trial that did not get to finish, so that it does not count and its parameters run again
        (from its checkpoint, when its run wrote one: checkpoint_every_steps)."""
        self.storage.set_trial_system_attr(trial_id(trial), results.STALE, True)
        checkpoint = _checkpoint_of(trial.user_attrs.get("mlflow_run_id"))
        if checkpoint:
            self.storage.set_trial_system_attr(trial_id(trial), RESUME_ATTR, checkpoint)
        self.storage.set_trial_user_attr(trial_id(trial), "error", error[:1000])
        self.storage.set_trial_state_values(trial_id(trial), TrialState.FAIL)
        end_run(trial.user_attrs.get("mlflow_run_id"), error)  # its job is gone or stopping: no RUNNING run
        if self.d.grid is None:
            study.enqueue_trial(dict(trial.params))  # the grid re-claims its free points by itself

    def _fail_stale(self, study: optuna.Study) -> None:
        now = time.time()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if is_stale(t, self.settings.stale_after_s, now):
                log.warning(
                    "trial %d was left RUNNING by %s, which is gone: marking it FAIL and running its parameters again",
                    t.number,
                    t.user_attrs.get("worker", "an unknown worker"),
                )
                self.fail_for_rerun(study, t, "worker died (stale RUNNING trial)")

    def _fail_half_claimed(self, study: optuna.Study) -> None:
        """A RUNNING trial without its worker's attrs was cut off while being claimed (the storage went away
        right after `ask`, or the claiming process died). Under the claim lock no claim is in progress, so it
        is nobody's: FAIL it so that its parameters run again, rather than never."""
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if "worker" not in t.user_attrs:
                log.warning(
                    "trial %d was cut off while being claimed: marking it FAIL and running its parameters again",
                    t.number,
                )
                self.fail_for_rerun(study, t, "cut off while being claimed")


def _resumable(trials: list[FrozenTrial], ran: set[str]) -> dict[str, str]:
    """Checkpoints of interrupted trials whose parameters have not run again yet: the rerun starts there."""
    return {
        key(t.params): t.system_attrs[RESUME_ATTR]
        for t in trials
        if t.system_attrs.get(RESUME_ATTR) and key(t.params) not in ran and Path(t.system_attrs[RESUME_ATTR]).is_file()
    }


def _checkpoint_of(run_id: Optional[str]) -> Optional[str]:
    """The checkpoint file an (interrupted) trial's MLflow run wrote, if it still exists."""
    if not run_id:
        return None
    try:
        path = Tracker().client.get_run(run_id).data.tags.get(RUN_TAG)
    except Exception:  # a store that lost the run: start from step 0
        return None
    return path if path and Path(path).is_file() else None


def end_run(run_id: Optional[str], error: str) -> None:
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
