"""Graceful stops: SIGTERM and Ctrl-C end a run at the next safe point, not inside a database write.

Raising KeyboardInterrupt from a signal handler can land in the middle of an MLflow or Optuna
write and leave a connection half-used. So the first signal only asks for a stop; the training
loop, the evaluation and the sweep loop call `check()` at their step boundaries and raise there.
A second signal raises at once (for a process stuck outside those loops).
"""

from __future__ import annotations

import signal

_requested: list[str] = []


def _handler(signum, frame) -> None:
    name = signal.Signals(signum).name
    if _requested:
        raise KeyboardInterrupt(f"terminated by {name} (second signal)")
    _requested.append(name)


def install() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _handler)


def check() -> None:
    """Raise KeyboardInterrupt here if a stop was asked for."""
    if _requested:
        raise KeyboardInterrupt(f"terminated by {_requested[0]}")
