"""Graceful stops: SIGTERM and Ctrl-C end a run at the next safe point, not inside a database write.

Raising KeyboardInterrupt from a signal handler can land in the middle of an MLflow or Optuna
write and leave a connection half-used. So the first signal only asks for a stop; the training
loop, the evaluation and the sweep loop call `check()` at their step boundaries and raise there.
A second signal raises at once (for a process stuck outside those loops), except inside
`deferred()`: the clean-up that ends runs and writes a sweep's results always runs to its end.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator

_requested: list[str] = []
_deferring: list[bool] = []


def _handler(signum, frame) -> None:
    name = signal.Signals(signum).name
    if _requested and not _deferring:
        raise KeyboardInterrupt(f"terminated by {name} (second signal)")
    _requested.append(name)


def install() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _handler)


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
