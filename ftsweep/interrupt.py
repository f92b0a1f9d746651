"""Graceful stops: SIGTERM and Ctrl-C end a run at the next safe point, not inside a database write.

Raising KeyboardInterrupt from a signal handler can land in the middle of an MLflow or Optuna
write and leave a connection half-used. So the first signal only asks for a stop; the training
loop, the evaluation and the sweep loop call `check()` at their step boundaries and raise there.
A second signal raises at once (for a process stuck outside those loops), except inside
`deferred()`: the clean-up that ends runs and writes a sweep's results always runs to its end.

A sweep job that runs in a worker process of its own (joblib, submitit, Ray) handles its signals the same
way inside `job_scope()`, and reports the stop as `TrialInterrupted`, which the sweeper answers by running
the trial again (from its checkpoint): a preempted SLURM job is not a failed trial.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator

SWEEPER_PID_ENV = "FTSWEEP_SWEEPER_PID"  # set by the sweeper: a job whose process differs runs in a worker
_requested: list[str] = []
_deferring: list[bool] = []


class TrialInterrupted(Exception):
    """A sweep job stopped by SIGTERM/SIGINT in its own worker process; its trial runs again."""


def _handler(signum, frame) -> None:
    name = signal.Signals(signum).name
    if _requested and not _deferring:
        raise KeyboardInterrupt(f"terminated by {name} (second signal)")
    _requested.append(name)


def _job_handler(signum, frame) -> None:
    """A job in a worker never stops mid-step: a terminal's Ctrl-C reaches it, and then its sweeper's SIGTERM."""
    _requested.append(signal.Signals(signum).name)


def install(handler=_handler) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def requested() -> bool:
    return bool(_requested)


def check() -> None:
    """Raise KeyboardInterrupt here if a stop was asked for."""
    if _requested:
        raise KeyboardInterrupt(f"terminated by {_requested[0]}")


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """No signal interrupts this block; one that arrives is remembered for the next `check()`.

    For the few writes that must not be cut in half by an impatient second Ctrl-C: ending MLflow runs,
    marking interrupted trials, writing a sweep's results and report (each takes seconds at most;
    SIGKILL still ends the process, and the next run of the command repairs what it left)."""
    _deferring.append(True)
    try:
        yield
    finally:
        _deferring.pop()


def in_worker() -> bool:
    """True in a sweep job that runs in a process other than the sweeper's (joblib, submitit, Ray)."""
    return os.environ.get(SWEEPER_PID_ENV) != str(os.getpid())


@contextlib.contextmanager
def job_scope() -> Iterator[None]:
    """A sweep job in a worker process: SIGTERM and SIGINT stop it at the next step boundary (a second one
    too: the sweeper stops its jobs with SIGTERM after a Ctrl-C that may have reached them), whatever the
    engine does with them (submitit ignores SIGTERM, so a preempted job would be SIGKILLed mid-step, with no
    checkpoint). The engine's handlers come back afterwards, with no stop left pending for the worker's next job."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    _requested.clear()
    install(_job_handler)
    try:
        yield
    finally:
        _requested.clear()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
