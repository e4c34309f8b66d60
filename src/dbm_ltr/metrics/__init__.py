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
    AUTO_WORK,
    FEATURE_NORMALIZATIONS,
    auto_dims,
    class_moments,
    fisher_pairwise,
    fisher_separability,
    principal_components,
)

__all__ = [
    "ANGLE_STATS",
    "AUTO_WORK",
    "FEATURE_NORMALIZATIONS",
    "FEW_BELOW",
    "GROUPS",
    "MANY_ABOVE",
    "ClassAccuracy",
    "angle_statistics",
    "auto_dims",
    "class_moments",
    "class_vector_cosines",
    "feature_angles",
    "fisher_pairwise",
    "fisher_separability",
    "group_of",
    "many_medium_few",
    "per_class_accuracy",
    "principal_components",
    "summarize_angles",
]
