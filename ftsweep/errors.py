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
