"""CIFAR-10-LT and CIFAR-100-LT (the LDAM-DRW protocol), with torchvision's ``Dataset`` conventions.

The train split is the standard long-tailed subset of the full training set::

    n_max = len(full_train) // C          (5000 for CIFAR-10, 500 for CIFAR-100)
    n_c   = int(n_max * (1/IF) ** (c / (C-1)))
    images: select_long_tail_indices(full_train_labels, n, seed)   (LDAM-DRW, seed 0)

stored in class order.  The test split is the full balanced test set, untouched.

Sources, tried in this order under ``root``:

a) torchvision's folder format (``cifar-10-batches-py/`` / ``cifar-100-python/``), read with
   ``torchvision.datasets.CIFAR10/100(root, train, download=False)`` (md5-checked there);
b) ``.npz`` archives ``cifar10_train.npz`` / ``cifar10_test.npz`` (``cifar100_*`` for
   CIFAR-100) holding ``images`` (N, 32, 32, 3) uint8, ``labels`` (N,) ints and optionally
   ``classes`` (C,) str; only the archive of the requested split is read;
c) with ``download=True``: torchvision's download into ``root`` (needs internet);
d) otherwise :class:`DatasetNotFoundError`.
"""

from __future__ import annotations

import os
import urllib.error
import warnings
import zipfile
from collections.abc import Callable
from typing import Any, Union

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DataError, DatasetNotFoundError
from .longtail import check_imbalance_factor, long_tail_counts, select_long_tail_indices

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "LongTailCIFAR10",
    "LongTailCIFAR100",
]

PathLike = Union[str, "os.PathLike[str]"]

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# the 100 fine labels of CIFAR-100 in label order (alphabetical)
CIFAR100_CLASSES: tuple[str, ...] = (
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
)


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    if labels.ndim != 1:
        raise DataError(f"{where}: 'labels' must be 1-D, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: 'labels' must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64, copy=False)
    if labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise DataError(
                f"{where}: labels out of range: found {lo}..{hi}, valid 0..{num_classes - 1} ({num_classes} classes)"
            )
    return labels


class _LongTailCIFAR(Dataset):
    """Shared implementation; see :class:`LongTailCIFAR10` / :class:`LongTailCIFAR100`."""

    dataset_name: str = ""
    num_classes: int = 0
    base_folder: str = ""
    npz_prefix: str = ""
    default_classes: tuple[str, ...] = ()

    def __init__(
        self,
        root: PathLike,
        train: bool = True,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        download: bool = False,
        imbalance_factor: float = 100.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.imbalance_factor = check_imbalance_factor(imbalance_factor)
        self.root = os.path.expanduser(os.fspath(root))
        self.train = bool(train)
        self.transform = transform
        self.target_transform = target_transform
        self.seed = seed

        images, labels, classes, self.source = self._load_split(download)
        C = self.num_classes
        if self.train:
            n_max = len(labels) // C
            if n_max < 1:
                raise DataError(
                    f"{self.dataset_name} train split ({self.source}) has only {len(labels)} images, "
                    f"fewer than its {C} classes"
                )
            counts = long_tail_counts(n_max, C, self.imbalance_factor)
            empty = [c for c, n in enumerate(counts) if n == 0]
            if empty:
                named = ", ".join(f"{c} ({classes[c]})" for c in empty[:5])
                raise DataError(
                    f"{self.dataset_name} train split ({self.source}, {n_max} images a class) at "
                    f"imbalance factor {self.imbalance_factor:g} leaves class(es) {named} without "
                    f"training images (n_c = int({n_max} * (1/IF)^(c/{C - 1}))); lower "
                    "data.imbalance_factor or use a larger training set"
                )
            indices = select_long_tail_indices(labels, counts, seed)
            images = images[indices]
            labels = labels[indices]
        else:
            indices = np.arange(len(labels), dtype=np.int64)

        #: positions of the kept images in the full split (original order)
        self.indices: np.ndarray = indices
        self.data: np.ndarray = np.ascontiguousarray(images)
        self.targets: list[int] = [int(y) for y in labels]
        self.classes: list[str] = list(classes)
        self.class_to_idx: dict[str, int] = {name: i for i, name in enumerate(self.classes)}
        self.cls_num_list: list[int] = np.bincount(labels, minlength=C).astype(int).tolist()

    # ------------------------------------------------------------------ loading
    def _split_name(self) -> str:
        return "train" if self.train else "test"

    def _npz_path(self, split: str) -> str:
        return os.path.join(self.root, f"{self.npz_prefix}_{split}.npz")

    @classmethod
    def _torchvision_class(cls) -> type:
        raise NotImplementedError

    def _from_torchvision(self, download: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
        ds = self._torchvision_class()(self.root, train=self.train, download=download)
        where = os.path.join(os.path.abspath(self.root), self.base_folder)
        labels = _check_labels(np.asarray(ds.targets), self.num_classes, where)
        return np.asarray(ds.data, dtype=np.uint8), labels, [str(c) for c in ds.classes]

    def _load_split(self, download: bool) -> tuple[np.ndarray, np.ndarray, list[str], str]:
        folder = os.path.join(self.root, self.base_folder)
        npz = self._npz_path(self._split_name())
        problem = None
        if os.path.isdir(folder):
            try:
                return (*self._from_torchvision(download=False), "torchvision")
            except RuntimeError as err:  # torchvision: files missing or md5 mismatch
                problem = f"the folder {os.path.abspath(folder)} exists but torchvision could not read it ({err})"
                damaged = self._damaged_files()
                if damaged:
                    problem = (
                        f"the folder {os.path.abspath(folder)} exists but torchvision could not read it: "
                        f"{', '.join(damaged)} fail(s) torchvision's md5 check (damaged or partly downloaded); "
                        "delete the folder and download it again (--set data.download=true), or copy intact files "
                        "there"
                    )
        if os.path.isfile(npz):
            if problem is not None:
                warnings.warn(f"{problem}; using {os.path.abspath(npz)} instead", stacklevel=3)
            return (*self._load_npz(npz), "npz")
        if download:
            try:
                return (*self._from_torchvision(download=True), "torchvision")
            except OSError as err:  # no network (URLError, a refused or timed-out connection) or no disk
                raise DatasetNotFoundError(self._download_failed_message(err)) from None
        raise DatasetNotFoundError(self._not_found_message(problem))

    def _damaged_files(self) -> list[str]:
        """The files of torchvision's folder that are missing or fail its md5 check."""
        from torchvision.datasets.utils import check_integrity

        tv = self._torchvision_class()
        entries = [*tv.train_list, *tv.test_list, [tv.meta["filename"], tv.meta["md5"]]]
        folder = os.path.join(self.root, self.base_folder)
        return [
            os.path.join(self.base_folder, name)
            for name, md5 in entries
            if not check_integrity(os.path.join(folder, name), md5)
        ]

    def _download_failed_message(self, err: OSError) -> str:
        root = os.path.abspath(self.root)
        reason = getattr(err, "reason", None) or err.strerror or err
        network = isinstance(err, (urllib.error.URLError, ConnectionError, TimeoutError))
        cause = f"no network ({reason})" if network else f"{reason}"
        return (
            f"{self.dataset_name} could not be downloaded into {root}: {cause}. Without a network, copy "
            f"torchvision's folder '{self.base_folder}/' or the archives '{self.npz_prefix}_train.npz' / "
            f"'{self.npz_prefix}_test.npz' into data.root (README, 'Getting the data') and leave data.download off"
        )

    def _not_found_message(self, problem: str | None) -> str:
        root = os.path.abspath(self.root)
        train_npz = f"{self.npz_prefix}_train.npz"
        test_npz = f"{self.npz_prefix}_test.npz"
        msg = (
            f"{self.dataset_name} ({self._split_name()} split) not found in {root}: looked for "
            f"torchvision's folder '{self.base_folder}/' and the archive "
            f"'{self.npz_prefix}_{self._split_name()}.npz'."
        )
        if problem:
            msg += f" Note: {problem}."
        msg += (
            f" To get it, either pass download=True (in a config: --set data.download=true; "
            f"needs internet), or point data.root at a folder holding '{self.base_folder}/' or "
            f"'{train_npz}' / '{test_npz}' (images (N,32,32,3) uint8, labels (N,) int)."
        )
        return msg

    def _load_npz(self, path: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        where = os.path.abspath(path)
        try:
            archive = np.load(path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise DataError(f"{where}: cannot read as a .npz archive ({err})") from None
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError(f"{where}: expected a .npz archive (np.savez), got a single array")
        with archive:
            missing = [k for k in ("images", "labels") if k not in archive.files]
            if missing:
                raise DataError(
                    f"{where}: missing array(s) {missing}; found {sorted(archive.files)} "
                    f"(need 'images' (N,32,32,3) uint8 and 'labels' (N,) int)"
                )
            try:
                images = archive["images"]
                labels = archive["labels"]
                classes = archive["classes"] if "classes" in archive.files else None
            except (ValueError, OSError, zipfile.BadZipFile) as err:
                raise DataError(f"{where}: cannot read its arrays ({err})") from None

        if images.ndim != 4 or images.shape[1:] != (32, 32, 3):
            raise DataError(f"{where}: 'images' must have shape (N, 32, 32, 3), got {images.shape}")
        if images.dtype != np.uint8:
            raise DataError(f"{where}: 'images' must be uint8 (0..255 RGB), got dtype {images.dtype}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(
                f"{where}: label count mismatch: {images.shape[0]} images but 'labels' has shape {labels.shape}"
            )
        labels = _check_labels(labels, self.num_classes, where)

        if classes is None:
            names = list(self.default_classes)
        else:
            if classes.ndim != 1 or classes.shape[0] != self.num_classes:
                raise DataError(f"{where}: 'classes' must list {self.num_classes} names, got shape {classes.shape}")
            names = [str(c) for c in classes.tolist()]
        return images, labels, names

    # ------------------------------------------------------------------ Dataset API
    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        """``(transform(PIL image), target_transform(label))``, as torchvision's CIFAR."""
        img = Image.fromarray(self.data[index])
        target: Any = self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self._split_name()}, size={len(self)}, "
            f"imbalance_factor={self.imbalance_factor:g}, seed={self.seed}, root={self.root!r}, "
            f"source={self.source})"
        )


class LongTailCIFAR10(_LongTailCIFAR):
    """CIFAR-10-LT: long-tailed train split (class 0 largest), balanced test split.

    Args:
        root: folder holding ``cifar-10-batches-py/`` or ``cifar10_train.npz`` /
            ``cifar10_test.npz`` (or where to download to).
        train: train (long-tailed) or test (full, balanced) split.
        transform: applied to the PIL image.
        target_transform: applied to the integer label.
        download: download with torchvision if no local copy is found.
        imbalance_factor: ``IF = n_max / n_min >= 1`` (train only; 1 = balanced).
        seed: seed of the subset selection (0 = the standard split).

    Attributes: ``data`` (N, 32, 32, 3) uint8, ``targets``, ``classes``, ``cls_num_list``
    (images per class in this split), ``indices`` (positions in the full split),
    ``num_classes``, ``imbalance_factor``, ``root``, ``train``, ``transform``,
    ``target_transform``, ``source`` (``"torchvision"`` or ``"npz"``).
    """

    dataset_name = "CIFAR-10"
    num_classes = 10
    base_folder = "cifar-10-batches-py"
    npz_prefix = "cifar10"
    default_classes = CIFAR10_CLASSES

    @classmethod
    def _torchvision_class(cls) -> type:
        from torchvision.datasets import CIFAR10

        return CIFAR10


class LongTailCIFAR100(_LongTailCIFAR):
    """CIFAR-100-LT; same as :class:`LongTailCIFAR10` with 100 fine labels.

    Sources: ``cifar-100-python/`` or ``cifar100_train.npz`` / ``cifar100_test.npz``.
    """

    dataset_name = "CIFAR-100"
    num_classes = 100
    base_folder = "cifar-100-python"
    npz_prefix = "cifar100"
    default_classes = CIFAR100_CLASSES

    @classmethod
    def _torchvision_class(cls) -> type:
        from torchvision.datasets import CIFAR100

        return CIFAR100
