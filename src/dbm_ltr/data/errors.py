"""Errors of the data package (defined in :mod:`dbm_ltr.errors`)."""

from ..errors import DataError, DatasetNotFoundError

__all__ = ["DataError", "DatasetNotFoundError"]
