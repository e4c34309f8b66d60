"""Inter-class separability by the Fisher criterion (Table 6 of the DBM paper).

For every ordered class pair ``(i, j)``, ``i != j``, with class means ``mu`` and population
covariances ``S`` (ddof 0) of the features::

    eps  = ridge * trace(S_i + S_j) / D
    w_ij = (S_i + S_j + eps I)^-1 (mu_i - mu_j)
    a, b = F_i w_ij, F_j w_ij                                  (projections)
    J_ij = (mean(a) - mean(b))^2 / (var(a) + var(b))           (population variances)

Because ``mean(a) - mean(b) = (mu_i - mu_j)^T w`` and ``var(a) + var(b) = w^T (S_i + S_j) w``
exactly, the projections are never formed: per-class means and covariances are computed once and
the pairs are solved in batches. ``J_ij = J_ji``, so only ``i < j`` is solved. With
``eps -> 0``, ``J_ij = (mu_i - mu_j)^T (S_i + S_j)^-1 (mu_i - mu_j)``.

Class separability ``S_i = mean_{j != i} J_ij``; a group's score is the mean of ``S_i`` over
its classes (Many / Medium / Few by training count), ``all`` the mean over every class.

The exact criterion costs one ``D x D`` solve per pair and ``C`` covariances of ``D x D``: for
the 64-d features of a CIFAR ResNet-32 that is nothing, for ImageNet-LT (1,000 classes, 2,048-d
ResNet-50 features) 499,500 solves and 34 GB of covariances. And where two classes have fewer
samples than dimensions (``n_i + n_j - 2 < D``) ``S_i + S_j`` is singular: ``J`` is then set by
the ridge, not by the features. ``dims`` projects the features onto their top principal
components first (PCA of the total scatter, as before LDA in "Fisherfaces"); :func:`auto_dims`
picks the largest dimension that avoids both, which keeps the paper's case (CIFAR-100 test
features, 64-d, 100 a class) exact. In a subspace the criterion can only be lower (the best
direction is searched among fewer), so compare runs at the same ``dims``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .accuracy import FEW_BELOW, GROUPS, MANY_ABOVE, group_of

__all__ = [
    "AUTO_WORK",
    "FEATURE_NORMALIZATIONS",
    "auto_dims",
    "class_moments",
    "fisher_pairwise",
    "fisher_separability",
    "principal_components",
]

#: ``raw``: features as the classifier sees them (the default); ``l2``: each row scaled to unit norm.
FEATURE_NORMALIZATIONS = ("raw", "l2")

# Bytes of (D, D) float64 matrices solved at once; bounds memory for many classes / wide features.
_CHUNK_BYTES = 8 * 2**20

#: Work budget of :func:`auto_dims`: pairs x dims^3 (a few seconds of one CPU core). CIFAR-100
#: with 64-d features needs 4,950 x 64^3 = 1.3e9, far below it.
AUTO_WORK = 2e10


def auto_dims(num_classes: int, dim: int, pooled_rank: int | None = None, work: float = AUTO_WORK) -> int:
    """The feature dimension for the Fisher criterion: ``dim``, or fewer where

    * the ``C (C - 1) / 2`` pairwise solves would cost more than ``work`` (pairs x dim^3): the
      largest ``k`` that fits, or
    * ``pooled_rank`` (the rank ``n_a + n_b - 2`` of the pooled covariance of the two smallest
      classes) is below it: in more dimensions ``S_i + S_j`` is singular, and ``J`` of such a
      pair is set by the ridge (``~1 / eps^2``), not by the features;

    at least 1.

    >>> auto_dims(100, 64, pooled_rank=198), auto_dims(1000, 2048), auto_dims(100, 64, pooled_rank=8)
    (64, 34, 8)
    """
    pairs = max(num_classes * (num_classes - 1) // 2, 1)
    k = dim
    if pairs * float(dim) ** 3 > work:
        k = int((work / pairs) ** (1.0 / 3.0))
        while (k + 1) ** 3 * pairs <= work:  # the float cube root may fall one short
            k += 1
    if pooled_rank is not None:
        k = min(k, pooled_rank)
    return max(1, min(k, dim))


def principal_components(features: torch.Tensor, dims: int) -> torch.Tensor:
    """``(N, dims)``: the features, centred on their mean, in the basis of the top ``dims``
    eigenvectors of their covariance (the total scatter; float64)."""
    f = torch.as_tensor(features).double()
    if not 1 <= dims <= f.shape[1]:
        raise ValueError(f"dims must be in 1..{f.shape[1]} (the feature dimension), got {dims}")
    centred = f - f.mean(dim=0)
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    return centred @ vectors[:, -dims:].flip(1)


def _prepare(features: torch.Tensor, labels: torch.Tensor, normalization: str):
    if normalization not in FEATURE_NORMALIZATIONS:
        raise ValueError(
            f"unknown feature normalization {normalization!r}; choose one of {', '.join(FEATURE_NORMALIZATIONS)}"
        )
    f = torch.as_tensor(features).detach().cpu().double()
    y = torch.as_tensor(labels).detach().cpu().long().reshape(-1)
    if f.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(f.shape)}")
    if y.numel() != f.shape[0]:
        raise ValueError(f"{y.numel()} labels for {f.shape[0]} features")
    if normalization == "l2":
        f = torch.nn.functional.normalize(f, dim=1, eps=1e-12)
    return f, y


def class_moments(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class sample counts ``(C,)``, means ``(C, D)`` and population covariances
    ``(C, D, D)`` (float64; zeros for a class without samples)."""
    f = torch.as_tensor(features).double()
    y = torch.as_tensor(labels).long().reshape(-1)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels outside 0..{num_classes - 1}")
    d = f.shape[1]
    counts = torch.bincount(y, minlength=num_classes).double()
    means = torch.zeros(num_classes, d, dtype=torch.float64).index_add_(0, y, f)
    means /= counts.clamp(min=1).unsqueeze(1)
    covs = torch.zeros(num_classes, d, d, dtype=torch.float64)
    order = torch.argsort(y, stable=True)
    f_sorted = f.index_select(0, order)
    start = 0
    for c, n in enumerate(counts.long().tolist()):
        if n:
            centred = f_sorted[start : start + n] - means[c]
            covs[c] = centred.T @ centred / n
        start += n
    return counts, means, covs


def fisher_pairwise(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    ridge: float = 1e-6,
    normalization: str = "raw",
    min_samples: int = 2,
    dims: int | None = None,
) -> torch.Tensor:
    """The ``(C, C)`` matrix of Fisher criteria ``J_ij`` (float64, symmetric).

    The diagonal and every pair involving a class with fewer than ``min_samples`` samples is
    ``nan``. A pair whose projected variances are both zero gets ``inf`` (``nan`` if the means
    coincide too).

    Args:
        features: ``(N, D)`` features.
        labels: ``(N,)`` classes in ``0..num_classes-1``.
        num_classes: ``C``.
        ridge: ``eps = ridge * trace(S_i + S_j) / D`` (``ridge`` itself if the trace is 0).
        normalization: ``"raw"`` or ``"l2"`` (unit-norm feature rows), see
            :data:`FEATURE_NORMALIZATIONS`.
        min_samples: classes with fewer evaluation samples are left out.
        dims: project the (normalised) features onto their top ``dims`` principal components
            first (:func:`principal_components`); ``None``: all dimensions.
    """
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    f, y = _prepare(features, labels, normalization)
    if dims is not None and dims != f.shape[1]:
        f = principal_components(f, dims)
    counts, means, covs = class_moments(f, y, num_classes)
    d = f.shape[1]
    result = torch.full((num_classes, num_classes), float("nan"), dtype=torch.float64)
    valid = (counts >= max(min_samples, 1)).nonzero().flatten()
    if valid.numel() < 2:
        return result
    pairs = torch.combinations(valid, r=2)  # (P, 2), i < j
    eye = torch.eye(d, dtype=torch.float64)
    chunk = max(1, _CHUNK_BYTES // (8 * d * d))
    for start in range(0, pairs.shape[0], chunk):
        i, j = pairs[start : start + chunk].unbind(1)
        pooled = covs[i] + covs[j]  # (P, D, D)
        diff = means[i] - means[j]  # (P, D)
        trace = pooled.diagonal(dim1=1, dim2=2).sum(dim=1)
        eps = ridge * torch.where(trace > 0, trace / d, torch.ones_like(trace))
        system = pooled + eps.view(-1, 1, 1) * eye
        if ridge > 0:  # symmetric positive definite
            w = torch.linalg.solve(system, diff)
        else:  # may be singular: least-squares (minimum-norm) direction
            w = torch.linalg.lstsq(system, diff.unsqueeze(2)).solution.squeeze(2)
        between = (diff * w).sum(dim=1) ** 2
        within = (torch.bmm(pooled, w.unsqueeze(2)).squeeze(2) * w).sum(dim=1)
        j_val = between / within
        result[i, j] = j_val
        result[j, i] = j_val
    return result


def fisher_separability(
    features: torch.Tensor,
    labels: torch.Tensor,
    cls_num_list: Sequence[int],
    ridge: float = 1e-6,
    normalization: str = "raw",
    min_samples: int = 2,
    many_threshold: int = MANY_ABOVE,
    few_threshold: int = FEW_BELOW,
    dims: int | str | None = None,
) -> dict:
    """Fisher separability per class and per Many / Medium / Few group (Table 6).

    Args:
        features: ``(N, D)`` evaluation features.
        labels: ``(N,)`` their classes.
        cls_num_list: *training* images per class (defines ``C`` and the groups).
        ridge, normalization, min_samples: see :func:`fisher_pairwise`.
        dims: ``None``: all ``D`` dimensions; an int: that many principal components;
            ``"auto"``: :func:`auto_dims` of ``C`` and ``D``.

    Returns:
        ``{"per_class": [S_i or None], "many", "medium", "few", "all": mean of S_i or None,
        "classes_used": int, "dims": int}``. ``S_i`` averages ``J_ij`` over the other classes
        that have enough samples; a class without enough samples (or a group without classes)
        is ``None`` and left out of the means. ``dims`` is the dimension the criterion used.

    Example:
        >>> f = torch.tensor([[0.0], [2.0], [10.0], [12.0]])
        >>> fisher_separability(f, torch.tensor([0, 0, 1, 1]), [500, 5], ridge=0)["all"]
        50.0
    """
    num_classes = len(cls_num_list)
    width = torch.as_tensor(features).shape[-1]
    if dims == "auto":
        sizes = torch.bincount(torch.as_tensor(labels).reshape(-1).long(), minlength=num_classes)
        sizes = sizes[sizes >= max(min_samples, 1)].sort().values.tolist()
        rank = sizes[0] + sizes[1] - 2 if len(sizes) >= 2 else None
        dims = auto_dims(len(sizes), width, rank)
    elif dims is not None and not isinstance(dims, int):
        raise ValueError(f"dims must be None, 'auto' or an int, got {dims!r}")
    pairwise = fisher_pairwise(features, labels, num_classes, ridge, normalization, min_samples, dims)
    finite_or_inf = ~torch.isnan(pairwise)
    per_class = []
    for c in range(num_classes):
        row = pairwise[c][finite_or_inf[c]]
        per_class.append(row.mean().item() if row.numel() else None)
    groups = [group_of(int(n), many_threshold, few_threshold) for n in cls_num_list]
    out: dict = {"per_class": per_class}
    for g in GROUPS:
        values = [s for s, gc in zip(per_class, groups) if gc == g and s is not None]
        out[g] = sum(values) / len(values) if values else None
    used = [s for s in per_class if s is not None]
    out["all"] = sum(used) / len(used) if used else None
    out["classes_used"] = len(used)
    out["dims"] = width if dims is None else dims
    return out
