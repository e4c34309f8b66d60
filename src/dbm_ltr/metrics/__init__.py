"""Metrics: pure functions of predictions, features and counts (no data, no engine)."""

from .accuracy import (
    FEW_BELOW,
    GROUPS,
    MANY_ABOVE,
    ClassAccuracy,
    group_of,
    many_medium_few,
    per_class_accuracy,
)
from .angles import ANGLE_STATS, angle_statistics, class_vector_cosines, feature_angles, summarize_angles
from .fisher import (
    FEATURE_NORMALIZATIONS,
    class_moments,
    fisher_pairwise,
    fisher_separability,
)

__all__ = [
    "ANGLE_STATS",
    "FEATURE_NORMALIZATIONS",
    "FEW_BELOW",
    "GROUPS",
    "MANY_ABOVE",
    "ClassAccuracy",
    "angle_statistics",
    "class_moments",
    "class_vector_cosines",
    "feature_angles",
    "fisher_pairwise",
    "fisher_separability",
    "group_of",
    "many_medium_few",
    "per_class_accuracy",
    "summarize_angles",
]
