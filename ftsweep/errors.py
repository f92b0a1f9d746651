"""Errors a user can fix. The entry point prints them as one line and exits non-zero."""

import contextlib
import logging
import warnings
from typing import Iterator


class FtsweepError(Exception):
    """Bad input: the message says what is wrong and how to fix it."""


class ConfigError(FtsweepError):
    """A config value is out of range or inconsistent."""


class DataError(FtsweepError):
    """A data file, column or label set cannot be used."""


class ModelError(FtsweepError):
    """A model or method cannot be built as configured."""


class TrainingError(FtsweepError):
    """Training diverged (NaN or inf loss)."""


class DiskFullError(FtsweepError):
    """No space was left where a file had to go; what was there before is intact (ftsweep.artifacts.no_space)."""


def check_config(ok: bool, message: str) -> None:
    """A schema's range check: a ConfigError with `message` unless `ok`."""
    if not ok:
        raise ConfigError(message)


def is_out_of_memory(error: str) -> bool:
    """Whether a one-line error (see first_line) says a run ran out of CUDA or host memory."""
    return any(word in error for word in ("OutOfMemoryError", "MemoryError", "out of memory"))


def causes(exc: BaseException) -> list[BaseException]:
    """`exc` and the errors it was raised from or while handling (__cause__, else __context__), each once: a
    library's own error often wraps the one that says what happened (a full disk, a server gone)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def first_line(exc: BaseException, with_type: bool = False) -> str:
    """The first line of an exception's message (its type when it has none): a failure shown in one line."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" if with_type else lines[0]


def describe_config_error(exc: BaseException) -> str:
    """Hydra's and OmegaConf's composition errors in one line: what failed, why, and the valid choices."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    message = lines[0].rstrip(".") if lines else type(exc).__name__
    if "Available options" in str(exc):  # a group option that does not exist, e.g. method=lorra
        start = next(i for i, line in enumerate(lines) if line.startswith("Available options")) + 1
        options = []
        for line in lines[start:]:
            if line.startswith("Config search path"):
                break
            if not line.startswith("base_"):  # the schemas, not choices a user means
                options.append(line)
        message += f"; choose from {', '.join(options)}"
    if message.startswith("hydra.mode changed"):  # Hydra 1.4: an overlay's `hydra.mode: MULTIRUN` needs -m
        message += " (a search preset with hydra.mode: MULTIRUN runs as a sweep: add -m)"
    if message.startswith("Could not override 'hydra.sweeper.sampler."):  # hydra-optuna-sweeper's node shape
        return (
            f"{message}: ftsweep's sweeper names its sampler, e.g. hydra.sweeper.sampler=tpe "
            f"hydra.sweeper.seed=123 (hydra-optuna-sweeper's node works in YAML, or as "
            f"+hydra.sweeper.sampler._target_=optuna.samplers.TPESampler)"
        )
    cause = exc.__cause__
    if cause is not None and first_line(cause) not in message:
        message += f": {first_line(cause)}"
    return message


@contextlib.contextmanager
def quiet_logs(*loggers: str, warnings_too: bool = False, level: int | None = None) -> Iterator[None]:
    """Libraries' INFO chatter and retry warnings (or everything below `level`) silenced around a call whose
    failure ftsweep reports in one line."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(level or (logging.ERROR if warnings_too else logging.WARNING))
    try:
        with warnings.catch_warnings():
            if warnings_too:
                warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)
