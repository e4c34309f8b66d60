"""The errors a user can fix. Every one derives from :class:`DbmLtrError`, and its message
says what is wrong and how to fix it; the command line prints such an error as one line (any
other exception is a bug and shows its traceback). Each also derives from the built-in
exception it refines, so ``except ValueError`` and the like keep working."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DatasetNotFoundError",
    "DbmLtrError",
    "MissingDependencyError",
    "TrainingError",
    "UnsafeCheckpointError",
]


class DbmLtrError(Exception):
    """Base of every user-facing error of dbm-ltr."""


class ConfigError(DbmLtrError, ValueError):
    """A configuration problem: unknown key, wrong type or value, a method or loss that cannot
    be built from the settings, a device that is not there."""


class DataError(DbmLtrError, ValueError):
    """Data that cannot be used: unreadable archive or split file, labels out of range, an
    empty class, a missing or corrupt image."""


class DatasetNotFoundError(DbmLtrError, FileNotFoundError):
    """A data set is not on disk in any supported format (and was not downloaded).

    The message names the data set, the absolute root searched, the file and folder names
    looked for, and how to obtain the data.
    """


class MissingDependencyError(DbmLtrError, ImportError):
    """An optional package is needed (scikit-learn for the demo, timm for ``timm:`` trunks)."""


class CheckpointError(DbmLtrError, RuntimeError):
    """A checkpoint that cannot be used or written, or a run directory that cannot be trained
    into; the message says why and what to do."""


class UnsafeCheckpointError(CheckpointError):
    """A file that the restricted unpickler refuses: loading it could run code, so nothing of
    it was loaded (:mod:`dbm_ltr.serialization`)."""


class TrainingError(DbmLtrError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says what to change."""
