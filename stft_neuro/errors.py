"""The one exception type that reaches a user as a single line.

Library code raises :class:`UserError` (or a subclass) for anything a user can cause: a missing
file, a wrong shape, a bad option. The CLI prints ``stft-neuro: error: <message>`` and exits with
status 1; everything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input from a user: the message names what is wrong and where."""


class DataError(UserError):
    """A data folder, split file, feature file or embedding file is missing or malformed."""


class ConfigError(UserError):
    """A configuration key or value is invalid."""


class CheckpointError(UserError):
    """A checkpoint is missing, not a checkpoint, or does not fit the data."""
