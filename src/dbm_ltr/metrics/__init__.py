"""Metrics: pure functions of predictions, features and counts (no data, no engine)."""

from .accuracy import GROUPS, ClassAccuracy, group_of, many_medium_few, per_class_accuracy

__all__ = ["GROUPS", "ClassAccuracy", "group_of", "many_medium_few", "per_class_accuracy"]
