"""How a trial ended, told to Optuna: its objective values, or why it failed, was pruned or must run again.

- a failed trial is recorded and the sweep goes on, unless most trials fail;
- a trial whose job was stopped in its own worker (a preempted SLURM job) or lost its storage runs again;
- an out-of-memory trial is a failure and infeasible, over any memory budget.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
from typing import Any, Optional

import optuna
from hydra.core.utils import JobReturn, JobStatus
from optuna.trial import FrozenTrial, Trial, TrialState

from ftsweep import interrupt
from ftsweep.errors import first_line, is_out_of_memory
from ftsweep.sweep import results
from ftsweep.sweep.claims import Claims, end_run, trial_id
from ftsweep.sweep.definition import CONSTRAINTS_ATTR, SKIPPED_ATTR, SweepDefinition, SweepSettings
from ftsweep.sweep.storage import retrying, storage_unreachable

log = logging.getLogger("ftsweep.sweep")


def job_outcome(ret: JobReturn) -> tuple[Optional[Any], Optional[BaseException]]:
    """(return value, exception) of a Hydra JobReturn.

    Private on purpose: the public `JobReturn.return_value` re-raises after printing the job's whole
    override list to stderr, which holds the storage URL (and any password in it)."""
    if ret.status == JobStatus.COMPLETED:
        return ret._return_value, None
    return None, ret._return_value


class Outcomes:
    def __init__(
        self,
        definition: SweepDefinition,
        settings: SweepSettings,
        url: str,
        claims: Optional[Claims] = None,
        retry_window_s: float = 600.0,
    ):
        self.d, self.settings, self.url, self._claims = definition, settings, url, claims
        self.retry_window_s = retry_window_s

    @property
    def claims(self) -> Claims:
        """The sweep's claims: a rerun, a retried tell and an interrupt need them (a plain tell does not)."""
        assert self._claims is not None, "Outcomes was made without the sweep's claims"
        return self._claims

    def tell_retrying(
        self, study: optuna.Study, trial: Trial, metrics: Optional[dict], exc: Optional[BaseException]
    ) -> None:
        """`tell`, waiting out a storage server's restart. A try cut off after its tell landed is not told twice."""
        tries: list[int] = []

        def attempt() -> None:
            if tries and self.claims.storage.get_trial(trial_id(trial)).state.is_finished():
                return
            tries.append(1)
            self.tell(study, trial, metrics, exc)

        retrying(self.url, attempt, f"telling trial {trial.number}", self.retry_window_s)

    def tell(self, study: optuna.Study, trial: Trial, metrics: Optional[dict], exc: Optional[BaseException]) -> None:
        if isinstance(exc, interrupt.TrialInterrupted):
            log.warning("trial %d was stopped in its worker (%s): running its parameters again", trial.number, exc)
            self._rerun(study, trial, f"interrupted in its worker: {exc}")
            return
        if exc is not None and storage_unreachable(exc):  # not the parameters' fault: they run again
            log.warning(
                "trial %d lost its storage (%s): running its parameters again", trial.number, first_line(exc)[:120]
            )
            self._rerun(study, trial, f"storage lost: {first_line(exc)}")
            return
        if isinstance(exc, optuna.TrialPruned):
            log.info("trial %d pruned: %s", trial.number, exc)
            study.tell(trial, state=TrialState.PRUNED)
            return
        error = self._error_of(trial, metrics, exc)
        if error is None:
            assert metrics is not None  # _error_of found every objective in them
            if self.d.constraints:
                trial.set_user_attr(CONSTRAINTS_ATTR, self.d.feasibility(metrics))
            study.tell(trial, values=[float(metrics[name]) for name in self.d.objectives])
            return
        log.warning("trial %d failed: %s", trial.number, error)
        trial.set_user_attr("error", error[:1000])
        run_id = trial.user_attrs.get("mlflow_run_id")
        study.tell(trial, state=TrialState.FAIL)
        if exc is not None:  # a job that died (lost for good) left its run RUNNING; a job that raised ended it
            end_run(run_id, error)

    def skip(self, study: optuna.Study, trial: Trial, reason: str, predicted: dict[str, float]) -> None:
        """A trial prescreening did not train: PRUNED (TPE learns from pruned trials and their constraints; a FAIL
        would teach no sampler), infeasible by its predicted values, with `skipped` saying why. It counts toward
        n_trials, so a grid point skipped is done and a search cannot loop on skips."""
        log.info("trial %d skipped, not trained: %s", trial.number, reason)
        trial.set_user_attr(SKIPPED_ATTR, reason)
        trial.set_user_attr("predicted", {k: round(v, 3) for k, v in predicted.items()})
        values = [
            predicted[name] - bound if name in predicted else 0.0 for name, bound in sorted(self.d.constraints.items())
        ]
        trial.set_user_attr(CONSTRAINTS_ATTR, values if any(v > 0 for v in values) else [1.0] * len(values))
        study.tell(trial, state=TrialState.PRUNED)

    def _error_of(self, trial: Trial, metrics: Optional[dict], exc: Optional[BaseException]) -> Optional[str]:
        """Why a trial that neither must rerun nor was pruned failed; None when its objectives can be told."""
        if exc is not None:
            error = first_line(exc, with_type=True)
            if is_out_of_memory(error):
                trial.set_user_attr("infeasible", "out of memory")  # over any memory budget, and a failure
            return error
        assert metrics is not None, "a job that completed returns its metrics"
        missing = [n for n in self.d.objectives if metrics.get(n) is None]
        if missing:
            return f"objective {missing} is not a logged metric; choose from {', '.join(sorted(metrics))}"
        values = [metrics[name] for name in self.d.objectives]
        if not all(math.isfinite(v) for v in values):
            return f"non-finite objective {values}"  # Optuna cannot store NaN
        return None

    def _rerun(self, study: optuna.Study, trial: Trial, error: str) -> None:
        self.claims.fail_for_rerun(study, self.claims.storage.get_trial(trial_id(trial)), error)

    def too_many_failures(self, study: optuna.Study) -> bool:
        finished = [t for t in study.get_trials(deepcopy=False) if results.counts(t)]
        failed = sum(t.state == TrialState.FAIL for t in finished)
        return len(finished) >= self.settings.min_trials_before_abort and failed > self.settings.max_failure_rate * len(
            finished
        )

    def interrupt(self, study: optuna.Study, trial: Trial, exc: BaseException) -> None:
        """The sweep was interrupted while this trial ran: FAIL it for a rerun, and stop its job."""
        frozen = self.claims.storage.get_trial(trial_id(trial))
        if frozen.state == TrialState.RUNNING:
            log.warning(
                "trial %d interrupted (%s): marked FAIL; the same command runs it again",
                trial.number,
                type(exc).__name__,
            )
            self.claims.fail_for_rerun(study, frozen, f"interrupted: {first_line(exc, with_type=True)}")
            _stop_job(frozen)


def _stop_job(trial: FrozenTrial) -> None:
    """SIGTERM a trial's job that runs in another process of this host (a joblib or submitit_local worker):
    it stops at its next step, as the sweep does, instead of training on for nothing. Remote jobs (SLURM,
    a Ray cluster) are left to their engine."""
    pid = trial.user_attrs.get("job_pid")
    if pid and pid != os.getpid() and trial.user_attrs.get("job_host") == socket.gethostname():
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:  # already gone
            pass
