"""A small offline long-tailed demo data set built from scikit-learn's 8x8 digits.

``sklearn.datasets.load_digits()`` ships 1797 images (10 classes, ~180 each) inside
scikit-learn.  Split, for a given ``seed``:

* ``rng = np.random.RandomState(seed)``; for classes 0..9 in order, shuffle that class's
  indices with ``rng`` and put the first ``test_per_class`` into the (balanced) test split;
  the rest form the pool.
* train = ``select_long_tail_indices(pool_labels, long_tail_counts(n_max, 10, IF), seed)``
  with ``n_max`` = the smallest pool size over classes (pool kept in original order).

Items are ``(1, 8, 8)`` float tensors in ``[0, 1]`` (pixel / 16).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import MissingDependencyError
from .longtail import check_imbalance_factor, long_tail_counts, select_long_tail_indices

__all__ = ["LongTailDigits", "digits_split"]

NUM_CLASSES = 10


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise MissingDependencyError(
            "the digits demo data set needs scikit-learn: pip install scikit-learn (or pip install 'dbm-ltr[demo]')"
        ) from err
    bunch = load_digits()
    images = np.asarray(bunch.images).astype(np.uint8)  # values 0..16
    labels = np.asarray(bunch.target).astype(np.int64)
    return images, labels


def digits_split(
    labels: np.ndarray, imbalance_factor: float, test_per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(train_indices, test_indices)`` into ``labels`` (see the module docstring)."""
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    test_parts, pool_parts = [], []
    for c in range(NUM_CLASSES):
        idx = np.where(labels == c)[0]
        if idx.size <= test_per_class:
            raise ValueError(
                f"digits class {c} has only {idx.size} images; test_per_class={test_per_class} leaves none for training"
            )
        rng.shuffle(idx)
        test_parts.append(idx[:test_per_class])
        pool_parts.append(idx[test_per_class:])
    test_idx = np.concatenate(test_parts).astype(np.int64)
    pool = np.sort(np.concatenate(pool_parts)).astype(np.int64)
    n_max = min(p.size for p in pool_parts)
    counts = long_tail_counts(n_max, NUM_CLASSES, imbalance_factor)
    train_idx = pool[select_long_tail_indices(labels[pool], counts, seed)]
    return train_idx, test_idx


class LongTailDigits(Dataset):
    """Long-tailed 8x8 digits (train) with a balanced held-out test split.

    Args:
        train: long-tailed train split or balanced test split.
        transform: optional, applied to the ``(1, 8, 8)`` float tensor.
        imbalance_factor: ``n_max / n_min >= 1`` of the train split.
        test_per_class: test images per class (held out before the long-tailed selection).
        seed: seed of both the train/test split and the long-tailed selection.
        target_transform: optional, applied to the integer label.

    Attributes: ``data`` (N, 8, 8) uint8 with values 0..16, ``targets``, ``classes``
    (``"0"..."9"``), ``cls_num_list``, ``num_classes``, ``imbalance_factor``, ``indices``
    (positions in ``load_digits()``), ``train``, ``transform``, ``target_transform``.
    """

    num_classes = NUM_CLASSES

    def __init__(
        self,
        train: bool = True,
        transform: Callable | None = None,
        imbalance_factor: float = 10.0,
        test_per_class: int = 50,
        seed: int = 0,
        target_transform: Callable | None = None,
    ) -> None:
        super().__init__()
        self.imbalance_factor = check_imbalance_factor(imbalance_factor)
        if isinstance(test_per_class, bool) or not isinstance(test_per_class, int) or test_per_class < 1:
            raise ValueError(f"test_per_class must be a positive integer, got {test_per_class!r}")
        self.train = bool(train)
        self.transform = transform
        self.target_transform = target_transform
        self.test_per_class = test_per_class
        self.seed = seed

        images, labels = _load_digits()
        train_idx, test_idx = digits_split(labels, self.imbalance_factor, test_per_class, seed)
        idx = train_idx if self.train else test_idx
        self.indices: np.ndarray = idx
        self.data: np.ndarray = np.ascontiguousarray(images[idx])
        self.targets: list[int] = [int(y) for y in labels[idx]]
        self.classes: list[str] = [str(c) for c in range(NUM_CLASSES)]
        self.class_to_idx: dict[str, int] = {name: i for i, name in enumerate(self.classes)}
        self.cls_num_list: list[int] = np.bincount(labels[idx], minlength=NUM_CLASSES).astype(int).tolist()
        self.root = None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img: Any = torch.from_numpy(self.data[index].astype(np.float32) / 16.0).unsqueeze(0)
        target: Any = self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return (
            f"{type(self).__name__}(split={split}, size={len(self)}, "
            f"imbalance_factor={self.imbalance_factor:g}, seed={self.seed})"
        )
