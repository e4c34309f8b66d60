"""Angular distance between a feature and its true class's classifier weight (Fig. 4 of the DBM paper).

``phi(x) = arccos(clamp(cos(f(x), w_y), -1, 1))`` in degrees, where ``f(x)`` is the pooled
feature the classifier sees and ``w_y`` the weight vector of the true class (for a linear head
its weight row; the bias is ignored). Samples are grouped by the Many / Medium / Few group of
their label's *training* count (Many > 100, Few < 20).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .accuracy import FEW_BELOW, GROUPS, MANY_ABOVE, group_of

__all__ = ["ANGLE_STATS", "angle_statistics", "class_vector_cosines", "feature_angles", "summarize_angles"]

#: Keys of one group's statistics (degrees, except ``count``).
ANGLE_STATS = ("count", "mean", "q25", "median", "q75", "min", "max")


def feature_angles(features: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between each feature row and the weight row of its label.

    Args:
        features: ``(N, D)`` features.
        weights: ``(C, D)`` class weight vectors (one row per class).
        labels: ``(N,)`` true classes in ``0..C-1``.

    Returns:
        ``(N,)`` float64 angles in ``[0, 180]``. A zero feature or weight vector has cosine 0,
        i.e. 90 degrees.

    Example:
        >>> w = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> f = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
        >>> [round(a, 6) for a in feature_angles(f, w, torch.tensor([0, 1])).tolist()]
        [45.0, 90.0]
    """
    features = torch.as_tensor(features)
    weights = torch.as_tensor(weights)
    labels = torch.as_tensor(labels).long().reshape(-1)
    if features.ndim != 2 or weights.ndim != 2 or features.shape[1] != weights.shape[1]:
        raise ValueError(
            f"features (N, D) and weights (C, D) must share D, got {tuple(features.shape)} and {tuple(weights.shape)}"
        )
    if labels.numel() != features.shape[0]:
        raise ValueError(f"{labels.numel()} labels for {features.shape[0]} features")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= weights.shape[0]):
        raise ValueError(f"labels outside 0..{weights.shape[0] - 1}")
    f = torch.nn.functional.normalize(features.detach().double().cpu(), dim=1, eps=1e-12)
    w = torch.nn.functional.normalize(weights.detach().double().cpu(), dim=1, eps=1e-12)
    cos = (f * w.index_select(0, labels.cpu())).sum(dim=1)
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


def summarize_angles(angles: torch.Tensor) -> dict[str, float | int | None]:
    """``count``, ``mean``, quartiles ``q25 / median / q75``, ``min``, ``max`` of a set of
    angles (``None`` values, count 0, when empty). Quartiles interpolate linearly."""
    a = torch.as_tensor(angles, dtype=torch.float64).reshape(-1)
    if a.numel() == 0:
        return {k: (0 if k == "count" else None) for k in ANGLE_STATS}
    q = torch.quantile(a, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    return {
        "count": int(a.numel()),
        "mean": a.mean().item(),
        "q25": q[0],
        "median": q[1],
        "q75": q[2],
        "min": a.min().item(),
        "max": a.max().item(),
    }


def angle_statistics(
    angles: torch.Tensor,
    labels: torch.Tensor,
    cls_num_list: Sequence[int],
    many_threshold: int = MANY_ABOVE,
    few_threshold: int = FEW_BELOW,
) -> dict[str, dict[str, float | int | None]]:
    """Statistics of the angles per group of the label's training count, and over all samples.

    Returns ``{"many": stats, "medium": stats, "few": stats, "all": stats}`` with the keys of
    :data:`ANGLE_STATS`; an empty group has count 0 and ``None`` values (e.g. Few on CIFAR-10).

    Example:
        >>> s = angle_statistics(torch.tensor([10.0, 20.0, 60.0]), torch.tensor([0, 0, 1]), [500, 5])
        >>> s["many"]["mean"], s["few"]["median"], s["medium"]["count"]
        (15.0, 60.0, 0)
    """
    angles = torch.as_tensor(angles, dtype=torch.float64).reshape(-1)
    labels = torch.as_tensor(labels).long().reshape(-1).cpu()
    if angles.numel() != labels.numel():
        raise ValueError(f"{angles.numel()} angles for {labels.numel()} labels")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(cls_num_list)):
        raise ValueError(f"labels outside 0..{len(cls_num_list) - 1} (one count per class)")
    groups = [group_of(int(n), many_threshold, few_threshold) for n in cls_num_list]
    out = {}
    for g in GROUPS:
        in_group = torch.tensor([groups[c] == g for c in range(len(groups))], dtype=torch.bool)
        mask = in_group[labels] if labels.numel() else torch.zeros(0, dtype=torch.bool)
        out[g] = summarize_angles(angles[mask])
    out["all"] = summarize_angles(angles)
    return out


def class_vector_cosines(weights: torch.Tensor, chunk: int = 1024) -> dict[str, float | None]:
    """Mean and largest cosine between the class vectors of two different classes.

    A classifier whose class vectors all point the same way (mean near 1) scores every class
    alike: it has *collapsed*. A margin loss on a cosine classifier can drive a network there
    when every class gets a large margin, because moving all cosines towards 1 shrinks the
    margin's penalty ``s (cos theta - cos(theta + m))`` for every sample at once.

    Args:
        weights: ``(C, D)`` class vectors, one row per class (any device; a zero row counts
            as cosine 0 with every other).
        chunk: rows of the ``C x C`` cosine matrix formed at a time.

    Returns:
        ``{"mean": ..., "max": ...}`` over the ``C (C - 1)`` ordered pairs of distinct classes
        (``None`` for fewer than two classes), in float64.

    Example:
        >>> w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> {k: round(v, 4) for k, v in class_vector_cosines(w).items()}
        {'mean': 0.4714, 'max': 0.7071}
    """
    w = torch.as_tensor(weights).detach()
    if w.ndim != 2:
        raise ValueError(f"class vectors must be a (C, D) matrix, got shape {tuple(w.shape)}")
    classes = w.shape[0]
    if classes < 2:
        return {"mean": None, "max": None}
    unit = torch.nn.functional.normalize(w.double(), dim=1, eps=1e-12)
    total, largest = 0.0, -math.inf
    for start in range(0, classes, chunk):
        block = unit[start : start + chunk] @ unit.T
        rows = torch.arange(block.shape[0], device=block.device)
        block[rows, rows + start] = 0.0  # a class with itself: left out of the sum ...
        total += block.sum().item()
        block[rows, rows + start] = -math.inf  # ... and of the maximum
        largest = max(largest, block.max().item())
    return {"mean": total / (classes * (classes - 1)), "max": largest}
