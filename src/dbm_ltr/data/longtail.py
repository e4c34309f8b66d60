"""Long-tailed subsampling of a balanced data set (the LDAM-DRW protocol), and smaller
subsets that keep the class proportions (``data.limit``).

Per-class counts follow an exponential profile::

    n_c = int(n_max * (1 / IF) ** (c / (C - 1))),   c = 0 .. C-1

(integer truncation), so class 0 keeps ``n_max`` images and class ``C-1`` keeps
``int(n_max / IF)``.  Which images are kept is the LDAM-DRW convention: one legacy
NumPy RNG seeded once, then for every class in order its indices (original order)
are shuffled in place and the first ``n_c`` are kept.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError

__all__ = [
    "LimitedDataset",
    "check_imbalance_factor",
    "limit_indices",
    "long_tail_counts",
    "select_long_tail_indices",
]


def check_imbalance_factor(imbalance_factor: object) -> float:
    """Return ``imbalance_factor`` as a float; ValueError unless it is a finite number >= 1."""
    if (
        isinstance(imbalance_factor, bool)
        or not isinstance(imbalance_factor, numbers.Real)
        or not math.isfinite(float(imbalance_factor))
        or imbalance_factor < 1
    ):
        raise ValueError(
            f"imbalance_factor must be a finite number >= 1 (n_max / n_min; 1 = balanced), got {imbalance_factor!r}"
        )
    return float(imbalance_factor)


def long_tail_counts(n_max: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """Images per class of the exponential long-tail profile.

    ``n_c = int(n_max * (1/IF) ** (c / (C-1)))`` for ``c = 0..C-1``.  ``IF = 1`` gives the
    balanced profile ``[n_max] * C``.

    Raises:
        ValueError: ``n_max < 1``, ``num_classes < 2`` or ``imbalance_factor`` not a finite
            number ``>= 1``.
    """
    if isinstance(n_max, bool) or not isinstance(n_max, numbers.Integral) or n_max < 1:
        raise ValueError(f"n_max must be a positive integer, got {n_max!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    imbalance_factor = check_imbalance_factor(imbalance_factor)
    ratio = 1.0 / float(imbalance_factor)
    n_max = int(n_max)
    c_last = float(num_classes) - 1.0
    return [int(n_max * ratio ** (c / c_last)) for c in range(int(num_classes))]


def select_long_tail_indices(targets: Sequence[int] | np.ndarray, counts: Sequence[int], seed: int = 0) -> np.ndarray:
    """Indices of the long-tailed subset, classes concatenated in order ``0..C-1``.

    Equivalent to ``np.random.seed(seed)`` followed by, for every class ``c`` in order,
    ``idx = np.where(targets == c)[0]; np.random.shuffle(idx); keep idx[:counts[c]]``
    (LDAM-DRW with ``rand_number = seed``), but with a private ``RandomState`` so that the
    global NumPy RNG is left untouched.

    Args:
        targets: 1-D integer labels of the full (balanced) set, in its original order.
        counts: wanted images per class; ``len(counts)`` is the number of classes ``C``.
        seed: seed of the ``np.random.RandomState``.

    Returns:
        ``int64`` array of ``sum(counts)`` indices into ``targets``.

    Raises:
        ValueError: bad shapes, labels outside ``0..C-1``, negative counts, or a class with
            fewer images than requested.
    """
    t = np.asarray(targets)
    if t.ndim != 1:
        raise ValueError(f"targets must be 1-D, got shape {t.shape}")
    if t.size and not np.issubdtype(t.dtype, np.integer):
        if not (np.issubdtype(t.dtype, np.floating) and np.all(t == np.round(t))):
            raise ValueError(f"targets must be integer labels, got dtype {t.dtype}")
        t = t.astype(np.int64)
    c_arr = np.asarray(counts)
    if c_arr.ndim != 1 or c_arr.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D sequence, got shape {c_arr.shape}")
    num_classes = c_arr.size
    count_list: list[int] = []
    for c, n in enumerate(c_arr.tolist()):
        if isinstance(n, bool) or not float(n).is_integer() or n < 0:
            raise ValueError(f"counts must be non-negative integers; class {c}: {n!r}")
        count_list.append(int(n))
    if t.size:
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"targets hold labels {lo}..{hi} but counts are given for {num_classes} classes "
                f"(valid labels: 0..{num_classes - 1})"
            )

    rng = np.random.RandomState(seed)
    selected: list[np.ndarray] = []
    for c, n_c in enumerate(count_list):
        idx = np.where(t == c)[0]
        if idx.size < n_c:
            raise ValueError(f"class {c} has only {idx.size} images but {n_c} are needed for the long-tailed subset")
        rng.shuffle(idx)
        selected.append(idx[:n_c])
    return np.concatenate(selected).astype(np.int64, copy=False)


def limit_indices(
    targets: Sequence[int], limit: int, num_classes: int | None = None, setting: str = "data.limit"
) -> np.ndarray:
    """Positions of at most ``limit`` samples that keep the class proportions of ``targets``
    and every class: class ``c`` keeps ``max(1, floor(n_c * limit / N))`` of its samples (the
    largest classes give some back if the floors of 1 overshoot), the first ones in order.

    Raises:
        ValueError: ``limit`` smaller than the number of classes present.
    """
    targets = np.asarray(targets, dtype=np.int64)
    counts = np.bincount(targets, minlength=num_classes or 0)
    present = np.flatnonzero(counts)
    if limit >= len(targets):
        return np.arange(len(targets))
    if limit < len(present):
        split = "test" if "test" in setting else "training"
        raise ConfigError(
            f"{setting}={limit} cannot keep all {len(present)} classes of the {split} set (one image "
            f"each at least); use {setting} >= {len(present)} or 0 for the whole set"
        )
    quota = np.zeros_like(counts)
    quota[present] = np.maximum(1, counts[present] * limit // len(targets))
    while quota.sum() > limit:  # the floors of 1 overshoot: the largest classes give back
        quota[np.argmax(quota)] -= 1
    keep = [np.flatnonzero(targets == c)[: quota[c]] for c in present]
    return np.sort(np.concatenate(keep))


class LimitedDataset:
    """The samples ``indices`` of ``dataset`` (``data.limit``): ``targets``, ``cls_num_list``
    and, for in-memory data sets, ``data`` follow the selection; every other attribute is the
    data set's own."""

    def __init__(self, dataset, indices: np.ndarray, limit: int) -> None:
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.limit = limit
        full = np.asarray(dataset.targets, dtype=np.int64)
        self.targets = full[self.indices].tolist()
        classes = len(getattr(dataset, "cls_num_list", None) or []) or int(full.max(initial=-1)) + 1
        self.cls_num_list = np.bincount(self.targets, minlength=classes).astype(int).tolist()
        data = getattr(dataset, "data", None)
        if isinstance(data, np.ndarray) and len(data) == len(full):
            self.data = data[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[int(self.indices[index])]

    def __getattr__(self, name: str):
        if name == "dataset":  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dataset!r}, limit={self.limit}, size={len(self)})"
