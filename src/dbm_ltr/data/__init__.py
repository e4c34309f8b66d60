"""Data: long-tailed CIFAR-10/100 (the LDAM-DRW protocol), a small offline digits demo, and transforms.

Data sets are created by name so that a config can name them::

    train_set = create_dataset("cifar10_lt", root, train=True,
                               transform=build_transform(DATASET_INFO["cifar10_lt"]["train_transform"]),
                               imbalance_factor=100)

Built-in names: ``cifar10_lt``, ``cifar100_lt`` and ``digits_lt`` (ignores ``root`` and
``download``), and the split-file data sets ``imagenet_lt``, ``inat2018`` and ``places_lt``
(:mod:`~dbm_ltr.data.splitfile`; they ignore ``imbalance_factor``, ``download`` and ``seed``
and take the keywords ``split``, ``split_dir``, ``skip_corrupt``, ``decode``, ``check_first``).
``DATASET_INFO[name]`` holds ``num_classes`` (``None`` where the split file defines it; then
``expected_num_classes`` gives the official count) and the names of the default
``train_transform``, ``test_transform`` and ``contrastive_transform`` (``None`` if there is
none) in the :data:`TRANSFORMS` registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from ..errors import DatasetNotFoundError
from ..registry import Registry
from . import splitfile as _splitfile
from .cifar import CIFAR10_CLASSES, CIFAR100_CLASSES, LongTailCIFAR10, LongTailCIFAR100
from .digits import LongTailDigits
from .fastjpeg import CorruptImageError, EncodedBatch, EncodedImage, ImageReadError, MissingImageError
from .longtail import (
    LimitedDataset,
    check_imbalance_factor,
    limit_indices,
    long_tail_counts,
    select_long_tail_indices,
)
from .splitfile import ImageNetLT, INaturalist2018, PlacesLT, SplitFileDataset, SplitFileError
from .transforms import (
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INAT_MEAN,
    INAT_STD,
    TRANSFORMS,
    Cutout,
    EnsureTensor,
    MultiView,
    RandomGaussianBlur,
    batch_normalizer,
    build_transform,
    cifar_contrastive_transform,
    cifar_test_transform,
    cifar_train_transform,
    list_transforms,
    register_transform,
)

__all__ = [
    "CIFAR100_CLASSES",
    "CIFAR10_CLASSES",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "CorruptImageError",
    "DATASETS",
    "DATASET_INFO",
    "EncodedBatch",
    "EncodedImage",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INAT_MEAN",
    "INAT_STD",
    "INaturalist2018",
    "ImageNetLT",
    "ImageReadError",
    "MissingImageError",
    "PlacesLT",
    "SplitFileDataset",
    "SplitFileError",
    "TRANSFORMS",
    "Cutout",
    "DatasetNotFoundError",
    "EnsureTensor",
    "LongTailCIFAR10",
    "LongTailCIFAR100",
    "LimitedDataset",
    "LongTailDigits",
    "MultiView",
    "RandomGaussianBlur",
    "batch_normalizer",
    "build_transform",
    "check_imbalance_factor",
    "cifar_contrastive_transform",
    "cifar_test_transform",
    "cifar_train_transform",
    "create_dataset",
    "list_datasets",
    "limit_indices",
    "list_transforms",
    "long_tail_counts",
    "register_dataset",
    "register_transform",
    "select_long_tail_indices",
]

#: ``factory(root=, train=, transform=, target_transform=, imbalance_factor=, download=, seed=)``
DatasetFactory = Callable[..., Dataset]

DATASETS = Registry("data set")
list_datasets = DATASETS.names

#: per data set: ``num_classes``, ``train_transform``, ``test_transform``, ``contrastive_transform``
DATASET_INFO: dict[str, dict[str, Any]] = {}

_INFO_KEYS = ("num_classes", "train_transform", "test_transform", "contrastive_transform")


def register_dataset(name: str, factory: DatasetFactory | None = None, info: dict | None = None):
    """Register a data set ``factory`` under ``name`` (usable as a decorator).

    The factory is called with the keywords ``root, train, transform, target_transform,
    imbalance_factor, download, seed`` and returns a ``Dataset`` with a ``cls_num_list``.
    ``info`` (optional) becomes ``DATASET_INFO[name]``; it must hold the keys
    ``num_classes, train_transform, test_transform, contrastive_transform``.
    """

    def add(f: DatasetFactory) -> DatasetFactory:
        if info is not None:
            missing = [k for k in _INFO_KEYS if k not in info]
            if missing:
                raise ValueError(f"info for data set {name!r} lacks {missing}")
        DATASETS.register(name, f)
        if info is not None:
            DATASET_INFO[name] = dict(info)
        return f

    return add(factory) if factory is not None else add


def create_dataset(
    name: str,
    root: Any,
    train: bool,
    transform: Callable | None = None,
    imbalance_factor: float = 100.0,
    download: bool = False,
    seed: int = 0,
    target_transform: Callable | None = None,
    **options: Any,
) -> Dataset:
    """Build the data set registered as ``name`` (train split long-tailed, test balanced);
    ``options``: keywords of that data set only (e.g. ``split_dir`` of ``imagenet_lt``)."""
    return DATASETS.lookup(name)(
        root=root,
        train=train,
        transform=transform,
        target_transform=target_transform,
        imbalance_factor=imbalance_factor,
        download=download,
        seed=seed,
        **options,
    )


def _digits_factory(
    root=None, train=True, transform=None, target_transform=None, imbalance_factor=10.0, download=False, seed=0
) -> LongTailDigits:
    # root and download are meaningless for the bundled digits
    return LongTailDigits(
        train=train,
        transform=transform,
        imbalance_factor=imbalance_factor,
        seed=seed,
        target_transform=target_transform,
    )


register_dataset(
    "cifar10_lt",
    LongTailCIFAR10,
    info={
        "num_classes": 10,
        "train_transform": "cifar",
        "test_transform": "cifar_test",
        "contrastive_transform": "cifar_contrastive",
    },
)
register_dataset(
    "cifar100_lt",
    LongTailCIFAR100,
    info={
        "num_classes": 100,
        "train_transform": "cifar",
        "test_transform": "cifar_test",
        "contrastive_transform": "cifar_contrastive",
    },
)
register_dataset(
    "digits_lt",
    _digits_factory,
    info={
        "num_classes": 10,
        "train_transform": "none",
        "test_transform": "none",
        "contrastive_transform": None,
    },
)
for _name, _factory, _prefix, _classes in (
    ("imagenet_lt", _splitfile.imagenet_lt, "imagenet", 1000),
    ("inat2018", _splitfile.inat2018, "inat", 8142),
    ("places_lt", _splitfile.places_lt, "imagenet", 365),
):
    register_dataset(
        _name,
        _factory,
        info={
            "num_classes": None,  # defined by the train split file (max label + 1)
            "expected_num_classes": _classes,  # of the official split files
            "train_transform": f"{_prefix}_train",
            "test_transform": f"{_prefix}_test",
            "contrastive_transform": f"{_prefix}_contrastive",
        },
    )
