"""Errors of the data package."""

from __future__ import annotations

__all__ = ["DatasetNotFoundError"]


class DatasetNotFoundError(FileNotFoundError):
    """A data set is not on disk in any supported format (and was not downloaded).

    The message names the data set, the absolute root searched, the file and folder names
    looked for, and how to obtain the data.
    """
