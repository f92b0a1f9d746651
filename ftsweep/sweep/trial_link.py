"""The trial side of a sweep: one job's link back to its Optuna trial.

A job learns only `sweep.study`, `sweep.trial_id` and `sweep.storage` from its command line; everything
else (trial number, MLflow parent run, pruner) is read from the study, where the sweeper put it.
`train()` sees this object only as its `Hooks`: a run id to record, tags, and a stop verdict after
each evaluation.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Optional

import optuna

from ftsweep.errors import ConfigError
from ftsweep.hooks import Hooks
from ftsweep.locks import redact
from ftsweep.sweep.definition import make_pruner
from ftsweep.sweep.replicates import REPLICATE_ATTR
from ftsweep.sweep.storage import open_storage, retrying

PARENT_RUN_ATTR = "mlflow_parent_run_id"  # study user attrs written by the sweeper
PRUNER_ATTR = "ftsweep_pruner"
OBJECTIVES_ATTR = "ftsweep_objectives"
STORAGE_ENV = "FTSWEEP_SWEEP_STORAGE"  # the storage URL with its password, set by the sweeper for its jobs


def storage_url(from_command_line: str) -> str:
    """The real storage URL: the command line carries it redacted when it holds a password."""
    if "***" not in from_command_line:
        return from_command_line
    real = os.environ.get(STORAGE_ENV, "")
    if redact(real) != from_command_line:
        raise ConfigError(
            f"sweep.storage={from_command_line} hides a password and ${STORAGE_ENV} does not hold "
            "the matching URL; start trials through the sweeper (python -m ftsweep -m ...)"
        )
    return real


class TrialLink(Hooks):
    keep_in_folder = True  # the sweeper keeps (logs, registers) only its best trial's model

    def __init__(self, study_name: str, trial_id: int, storage_url: str, device_id: Optional[str] = None):
        self.url = storage_url
        self.device_id = device_id  # this trial's launcher slot's device (hydra.sweeper.devices)
        self.storage = retrying(storage_url, lambda: open_storage(storage_url), "opening the study for a trial")
        self.study = retrying(
            storage_url,
            lambda: optuna.load_study(study_name=study_name, storage=self.storage),
            "opening the study for a trial",
        )
        self.trial_id = int(trial_id)
        attrs = retrying(storage_url, lambda: self.study.user_attrs, "reading the study")
        trial = retrying(storage_url, lambda: self.storage.get_trial(self.trial_id), "reading the trial")
        self.number = trial.number
        self.parent_run_id: Optional[str] = attrs.get(PARENT_RUN_ATTR)
        self.tags = {"optuna.study_name": study_name, "optuna.trial_number": self.number}
        if REPLICATE_ATTR in trial.user_attrs:  # a tag, not a param: the report groups runs by params, seed aside
            self.tags["ftsweep.replicate"] = trial.user_attrs[REPLICATE_ATTR]
        self.pruner = make_pruner(attrs.get(PRUNER_ATTR, {}))
        self.objective = (attrs.get(OBJECTIVES_ATTR) or ["eval/accuracy"])[0]
        self.pruned_at: Optional[int] = None

    @classmethod
    def from_config(cls, sweep: Any) -> Optional["TrialLink"]:
        """The link for a job launched by the sweeper; None for a single run."""
        if sweep is None or sweep.trial_id is None:
            return None
        return cls(sweep.study, sweep.trial_id, storage_url(sweep.storage), sweep.device)

    def on_start(self, run_id: str) -> None:
        # The process running the job (a launcher's worker), so that an interrupted sweep can stop it.
        attrs = {"mlflow_run_id": run_id, "job_pid": os.getpid(), "job_host": socket.gethostname()}

        def link() -> None:
            for key, value in attrs.items():
                self.storage.set_trial_user_attr(self.trial_id, key, value)

        retrying(self.url, link, f"linking trial {self.number} to its run")

    def should_stop(self, step: int, evaluation: dict[str, float]) -> Optional[str]:
        """Report this eval's objective to the trial and ask the study's pruner (Optuna's public pruner API)."""
        if isinstance(self.pruner, optuna.pruners.NopPruner):
            return None
        key = self.objective.split("/", 1)[1]
        value = float(evaluation[key])
        retrying(
            self.url,
            lambda: self.storage.set_trial_intermediate_value(self.trial_id, step, value),
            f"reporting trial {self.number}'s evaluation",
        )
        if retrying(
            self.url,
            lambda: self.pruner.prune(self.study, self.storage.get_trial(self.trial_id)),
            f"asking the pruner about trial {self.number}",
        ):
            self.pruned_at = step
            return "pruned"
        return None

    def raise_if_pruned(self) -> None:
        """After train() returns: a trial its pruner stopped ends as Optuna's TrialPruned, which the sweeper
        records as PRUNED (its MLflow run has ended FINISHED)."""
        if self.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned at step {self.pruned_at}")
