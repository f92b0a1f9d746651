"""Errors a user can fix. The entry point prints them as one line and exits non-zero."""


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


def is_out_of_memory(error: str) -> bool:
    """Whether a one-line error (see first_line) says a run ran out of CUDA or host memory."""
    return any(word in error for word in ("OutOfMemoryError", "MemoryError", "out of memory"))


def first_line(exc: BaseException, with_type: bool = False) -> str:
    """The first line of an exception's message (its type when it has none): a failure shown in one line."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" if with_type else lines[0]
