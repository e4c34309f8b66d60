"""Image data sets defined by split files: ImageNet-LT, iNaturalist 2018 and Places-LT.

Layout: the images anywhere under ``root``; one split file per split, one image a line::

    train/n01440764/n01440764_10026.JPEG 0          (ImageNet_LT_train.txt)

``relative/path label``, whitespace-separated (the label is the last field, so a path may hold
spaces; a leading ``/`` is ignored: paths are relative to ``root``), blank lines skipped. The
split files are looked up in ``split_dir`` (if given) and then in ``root``:

=============  ============================================================  ==============
data set       split files                                                   eval split
=============  ============================================================  ==============
imagenet_lt    ImageNet_LT_train.txt, ImageNet_LT_val.txt, ImageNet_LT_test  test
inat2018       iNaturalist18_train.txt, iNaturalist18_val.txt (or the        val
               official train2018.json / val2018.json)
places_lt      Places_LT_train.txt, Places_LT_val.txt, Places_LT_test.txt    test
=============  ============================================================  ==============

``train=True`` gives the train split, ``train=False`` the split the paper evaluates on (the
table); ``split="train" | "val" | "test"`` picks one explicitly. The train split defines the
classes: ``num_classes = max label + 1``, every class needs a training image, and labels of
the other splits must be below it. Errors name the file and line.

Attributes (torchvision-like): ``samples`` ((path, label) list), ``targets``, ``classes``
(the images' folder name where it identifies the class, e.g. the ImageNet wnid; iNaturalist's
category names from the json; else ``"0"``, ``"1"``, ...), ``class_to_idx``, ``cls_num_list``
(images per class in this split), ``train_cls_num_list`` (in the train split),
``num_classes``, ``split``, ``split_file``, ``skipped`` (corrupt images replaced so far, over
all loader workers).

Decoding (``decode``): ``"cpu"`` (default) hands the transform an undecoded
:class:`~dbm_ltr.data.fastjpeg.EncodedImage` when it takes one (the ``imagenet_*`` / ``inat_*``
recipes: reduced-size JPEG decoding, see :mod:`dbm_ltr.data.fastjpeg`), else a PIL image;
``"pil"`` always decodes the full image with PIL (as torchvision's ``ImageFolder``);
``"device"`` returns the undecoded bytes for batched GPU decoding (``collate_fn`` +
:meth:`SplitFileDataset.decode_batch`; CUDA only, falls back to ``"cpu"`` with a warning).

Unreadable images raise an error naming the file and the split-file line; with
``skip_corrupt=True`` such a sample is replaced by the next readable one (index + 1, + 2, ...,
with its own label) and counted in ``skipped``. A missing image counts as unreadable. The
first ``check_first`` listed files are checked for existence up front.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Union

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from ..errors import DataError, DatasetNotFoundError
from .fastjpeg import (
    EncodedBatch,
    EncodedImage,
    EncodedSample,
    ImageReadError,
    MissingImageError,
    accepts_encoded,
    collate_encoded,
    decode_batch,
)

__all__ = [
    "DECODE_MODES",
    "INaturalist2018",
    "ImageNetLT",
    "PlacesLT",
    "SplitFileDataset",
    "SplitFileError",
    "read_coco_split",
    "read_split_file",
]

PathLike = Union[str, "os.PathLike[str]"]
DECODE_MODES = ("cpu", "pil", "device")
SPLITS = ("train", "val", "test")
_SLOTS = 257  # skip counters: main process + one per loader worker (mod 256)


class SplitFileError(DataError):
    """A split file is malformed or inconsistent; the message names the file and line."""


def read_split_file(path: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(relative paths, labels (N,) int64, line numbers (N,))`` of a ``path label`` file."""
    paths: list[str] = []
    labels: list[int] = []
    lines: list[int] = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                text = line.strip()
                if not text:
                    continue
                fields = text.rsplit(None, 1)
                if len(fields) != 2:
                    raise SplitFileError(f"{path} line {number}: expected 'relative/path label', got {text[:120]!r}")
                rel, raw = fields
                try:
                    label = int(raw)
                except ValueError:
                    raise SplitFileError(
                        f"{path} line {number}: the label {raw!r} is not an integer (expected 'relative/path label')"
                    ) from None
                if label < 0:
                    raise SplitFileError(f"{path} line {number}: negative label {label} (labels are 0..C-1)")
                paths.append(rel.lstrip("/"))
                labels.append(label)
                lines.append(number)
    except UnicodeDecodeError as err:
        raise SplitFileError(f"{path}: not a UTF-8 text file ({err})") from None
    return paths, np.asarray(labels, dtype=np.int64), np.asarray(lines, dtype=np.int64)


def read_coco_split(path: str) -> tuple[list[str], np.ndarray, np.ndarray, dict[int, str]]:
    """The official iNaturalist json (COCO-style ``images`` with ``id`` / ``file_name``,
    ``annotations`` with ``image_id`` / ``category_id``, optional ``categories`` with ``id`` /
    ``name``): ``(paths, labels, image ids, {category id: name})`` in the order of ``images``."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SplitFileError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise SplitFileError(f"{path}: expected a COCO-style mapping with 'images' and 'annotations'")
    label_of: dict[Any, int] = {}
    for k, ann in enumerate(data["annotations"]):
        try:
            image_id, category = ann["image_id"], ann["category_id"]
        except (KeyError, TypeError):
            raise SplitFileError(f"{path}: annotation #{k} lacks 'image_id' / 'category_id'") from None
        if isinstance(category, bool) or not isinstance(category, int):
            raise SplitFileError(
                f"{path}: annotation #{k} (image_id {image_id}): category_id {category!r} is not an integer"
            )
        if category < 0:
            raise SplitFileError(f"{path}: annotation #{k} (image_id {image_id}): negative category_id {category}")
        label_of[image_id] = category
    paths, labels, ids = [], [], []
    for k, image in enumerate(data["images"]):
        try:
            image_id, name = image["id"], image["file_name"]
        except (KeyError, TypeError):
            raise SplitFileError(f"{path}: image #{k} lacks 'id' / 'file_name'") from None
        if image_id not in label_of:
            raise SplitFileError(f"{path}: image id {image_id} ({name}) has no annotation")
        paths.append(str(name).lstrip("/"))
        labels.append(label_of[image_id])
        ids.append(image_id if isinstance(image_id, int) else k)
    names = {}
    for cat in data.get("categories") or []:
        if isinstance(cat, dict) and "id" in cat and "name" in cat:
            names[int(cat["id"])] = str(cat["name"])
    return paths, np.asarray(labels, dtype=np.int64), np.asarray(ids, dtype=np.int64), names


class SplitFileDataset(Dataset):
    """A data set listed in split files (see the module docstring); subclasses set the names."""

    dataset_name: str = ""
    split_files: dict[str, str] = {}
    json_files: dict[str, str] = {}
    eval_split: str = "test"
    layout_hint: str = ""

    def __init__(
        self,
        root: PathLike,
        train: bool = True,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        split: str | None = None,
        split_dir: PathLike = "",
        skip_corrupt: bool = False,
        decode: str = "cpu",
        check_first: int = 16,
    ) -> None:
        super().__init__()
        self.root = os.path.expanduser(os.fspath(root))
        self.split_dir = os.path.expanduser(os.fspath(split_dir)) if split_dir else ""
        self.train = bool(train)
        self.split = split or ("train" if self.train else self.eval_split)
        if self.split not in SPLITS:
            raise ValueError(f"{self.dataset_name}: unknown split {self.split!r}; choose one of {', '.join(SPLITS)}")
        if self.split not in self.split_files:
            raise ValueError(f"{self.dataset_name} has no {self.split} split (splits: {', '.join(self.split_files)})")
        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, got {decode!r}")
        if decode == "device" and not torch.cuda.is_available():
            warnings.warn(
                f"{self.dataset_name}: decode='device' decodes JPEGs on a CUDA GPU, and CUDA is not "
                "available here; decoding on the CPU instead (decode='cpu')",
                stacklevel=2,
            )
            decode = "cpu"
        self.decode = decode
        self.transform = transform
        self.target_transform = target_transform
        self.skip_corrupt = bool(skip_corrupt)
        if self.split_dir and not os.path.isdir(self.split_dir):
            raise DatasetNotFoundError(
                f"{self.dataset_name}: the split-file folder {os.path.abspath(self.split_dir)} (data.split_dir) "
                "does not exist"
            )
        if not os.path.isdir(self.root):
            raise DatasetNotFoundError(
                f"{self.dataset_name}: the root folder {os.path.abspath(self.root)} does not exist; point "
                f"data.root at the folder the split files' image paths are relative to{self.layout_hint}"
            )

        train_paths, train_labels, train_where, train_file, names = self._read("train")
        self.num_classes = int(train_labels.max()) + 1 if len(train_labels) else 0
        if self.num_classes == 0:
            raise SplitFileError(f"{train_file}: the train split lists no image")
        train_counts = np.bincount(train_labels, minlength=self.num_classes)
        empty = np.flatnonzero(train_counts == 0)
        if len(empty):
            shown = ", ".join(str(c) for c in empty[:10]) + (", ..." if len(empty) > 10 else "")
            raise SplitFileError(
                f"{train_file}: {len(empty)} class(es) have no training image: {shown} (labels must be "
                f"0..C-1 with every class present; here C = max label + 1 = {self.num_classes})"
            )
        if self.split == "train":
            paths, labels, where, split_file = train_paths, train_labels, train_where, train_file
        else:
            paths, labels, where, split_file, _ = self._read(self.split)
            bad = np.flatnonzero(labels >= self.num_classes)
            if len(bad):
                k = int(bad[0])
                raise SplitFileError(
                    f"{split_file} {self._where_text(where[k])}: label {int(labels[k])} but the train split "
                    f"({train_file}) has only {self.num_classes} classes (labels 0..{self.num_classes - 1})"
                )
        self.split_file = split_file
        self.train_cls_num_list: list[int] = train_counts.astype(int).tolist()
        self.cls_num_list: list[int] = np.bincount(labels, minlength=self.num_classes).astype(int).tolist()
        self.classes: list[str] = self._class_names(train_paths, train_labels, names)
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(self.classes)}
        self._rel = np.array([p.encode("utf-8") for p in paths]) if paths else np.zeros(0, dtype="S1")
        self._labels = labels
        self._where = where
        self.targets: list[int] = labels.tolist()
        self._samples: list[tuple[str, int]] | None = None
        self._skips = torch.zeros(_SLOTS, dtype=torch.int64)
        try:
            self._skips.share_memory_()
        except (RuntimeError, OSError):  # pragma: no cover - no shared memory: counts per process
            pass
        self._warned = False
        self.collate_fn = collate_encoded if self.decode == "device" else None
        self.check_files(check_first)

    # ------------------------------------------------------------------ split files
    def _places(self) -> list[str]:
        places = [self.split_dir] if self.split_dir else []
        return places + [self.root]

    def _read(self, split: str):
        """``(paths, labels, where (line numbers or image ids), file, category names)``."""
        txt = self.split_files[split]
        for place in self._places():
            path = os.path.join(place, txt)
            if os.path.isfile(path):
                paths, labels, lines = read_split_file(path)
                return paths, labels, lines, os.path.abspath(path), {}
        js = self.json_files.get(split)
        if js:
            for place in self._places():
                path = os.path.join(place, js)
                if os.path.isfile(path):
                    paths, labels, ids, names = read_coco_split(path)
                    ids = -1 - ids  # negative: json image ids, not line numbers
                    return paths, labels, ids, os.path.abspath(path), names
        looked = f"'{txt}'" + (f" or '{js}'" if js else "")
        where = " and ".join(os.path.abspath(p) for p in self._places())
        raise DatasetNotFoundError(
            f"{self.dataset_name} ({split} split): split file not found: looked for {looked} in {where}. "
            f"Put the split files ({', '.join(self.split_files.values())}) in data.root or pass their "
            f"folder as data.split_dir{self.layout_hint}"
        )

    @staticmethod
    def _where_text(where: int) -> str:
        return f"line {where}" if where > 0 else f"image id {-1 - where}"

    def _class_names(self, paths: Sequence[str], labels: np.ndarray, names: dict[int, str]) -> list[str]:
        C = self.num_classes
        if names and all(c in names for c in range(C)):
            return [names[c] for c in range(C)]
        folder: list[str | None] = [None] * C
        for rel, y in zip(paths, labels.tolist()):
            parent = os.path.basename(os.path.dirname(rel))
            if folder[y] is None:
                folder[y] = parent
            elif folder[y] != parent:
                return [str(c) for c in range(C)]
        if any(not f for f in folder) or len(set(folder)) != C:
            return [str(c) for c in range(C)]
        return [str(f) for f in folder]

    # ------------------------------------------------------------------ files
    def path(self, index: int) -> str:
        """Absolute path of sample ``index``."""
        return os.path.join(self.root, self._rel[index].decode("utf-8"))

    def listing(self, index: int) -> str:
        """Where sample ``index`` is listed: ``FILE line N`` (or ``image id N``)."""
        return f"{self.split_file} {self._where_text(int(self._where[index]))}"

    @property
    def samples(self) -> list[tuple[str, int]]:
        if self._samples is None:
            self._samples = [(self.path(i), int(y)) for i, y in enumerate(self._labels)]
        return self._samples

    @property
    def imgs(self) -> list[tuple[str, int]]:
        return self.samples

    def check_files(self, n: int) -> None:
        """Check that the first ``n`` listed images exist (an error names the first missing
        one; none found at all means a wrong root, also with ``skip_corrupt``)."""
        n = min(int(n), len(self))
        if n <= 0:
            return
        missing = [i for i in range(n) if not os.path.isfile(self.path(i))]
        if not missing:
            return
        first = missing[0]
        if len(missing) == n:
            raise DatasetNotFoundError(
                f"{self.dataset_name}: none of the first {n} images of {self.split_file} exists under "
                f"{os.path.abspath(self.root)} (e.g. {self.path(first)}, {self.listing(first)}); is "
                f"data.root the folder the listed paths are relative to?{self.layout_hint}"
            )
        if not self.skip_corrupt:
            raise MissingImageError(
                self.path(first),
                f"no such file ({self.listing(first)}; {len(missing)} of the first {n} "
                "listed images are missing; data.skip_corrupt=true replaces unreadable images)",
            )

    # ------------------------------------------------------------------ corrupt images
    @property
    def skipped(self) -> int:
        """Unreadable samples replaced so far (all loader workers of this data set)."""
        return int(self._skips.sum())

    def _count_skip(self, path: str, reason: str) -> None:
        info = get_worker_info()
        slot = 0 if info is None else 1 + info.id % (_SLOTS - 1)
        self._skips[slot] += 1
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"{self.dataset_name}: skipping unreadable image {path} ({reason}); "
                "later ones are only counted (the data set's 'skipped')",
                stacklevel=3,
            )

    # ------------------------------------------------------------------ Dataset API
    def __len__(self) -> int:
        return len(self._labels)

    def _load(self, index: int) -> Any:
        image = EncodedImage(self.path(index))
        if self.decode == "device":
            image.size  # noqa: B018 - a cheap header check in the worker
            return EncodedSample.read(image)
        if self.decode == "cpu" and accepts_encoded(self.transform):
            return self.transform(image)
        img = image.pil()
        return self.transform(img) if self.transform is not None else img

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        index = int(index)
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        index %= n
        i = index
        for _ in range(n):
            try:
                img = self._load(i)
                break
            except ImageReadError as err:
                if not self.skip_corrupt:
                    raise type(err)(
                        err.path,
                        f"{err.reason} ({self.listing(i)}; data.skip_corrupt=true replaces "
                        "unreadable images by the next readable one)",
                    ) from None
                self._count_skip(err.path, err.reason)
                i = (i + 1) % n
        else:
            raise ImageReadError(self.path(index), f"no image of {self.split_file} could be read")
        target: Any = int(self._labels[i])
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def decode_batch(self, batch: EncodedBatch, device: torch.device | str, *per_sample: torch.Tensor) -> tuple:
        """``decode="device"``: decode a collated batch on the GPU and apply the transform;
        returns ``(images, *per_sample)``, the per-sample tensors (targets, indices) following
        any unreadable image replaced under ``skip_corrupt``."""
        images, source = decode_batch(
            batch,
            self.transform,
            device,
            self.skip_corrupt,
            on_corrupt=lambda path: self._count_skip(path, "nvJPEG and PIL cannot decode it"),
            with_source=True,
        )
        if source != list(range(len(source))):
            index = torch.tensor(source)
            per_sample = tuple(t[index.to(t.device)] for t in per_sample)
        return (images, *per_sample)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split}, size={len(self)}, classes={self.num_classes}, "
            f"root={self.root!r}, split_file={self.split_file!r}, decode={self.decode})"
        )


class ImageNetLT(SplitFileDataset):
    """ImageNet-LT (Liu et al., 2019): 1000 classes, 115.8k training images (1280 to 5 a
    class); evaluated on the balanced 50k-image test split (``ImageNet_LT_test.txt``)."""

    dataset_name = "ImageNet-LT"
    split_files = {"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt", "test": "ImageNet_LT_test.txt"}
    eval_split = "test"
    layout_hint = " (ImageNet-LT: root holds train/ and val/ of ILSVRC2012 and the ImageNet_LT_*.txt files)"


class INaturalist2018(SplitFileDataset):
    """iNaturalist 2018: 8142 classes, 437.5k training images; evaluated on the val split
    (3 images a class). Split files ``iNaturalist18_*.txt``, or the official ``train2018.json``
    / ``val2018.json``."""

    dataset_name = "iNaturalist 2018"
    split_files = {"train": "iNaturalist18_train.txt", "val": "iNaturalist18_val.txt"}
    json_files = {"train": "train2018.json", "val": "val2018.json"}
    eval_split = "val"
    layout_hint = " (iNaturalist 2018: root holds train_val2018/ and the split files)"


class PlacesLT(SplitFileDataset):
    """Places-LT (Liu et al., 2019): 365 classes, 62.5k training images; evaluated on the
    balanced test split (``Places_LT_test.txt``)."""

    dataset_name = "Places-LT"
    split_files = {"train": "Places_LT_train.txt", "val": "Places_LT_val.txt", "test": "Places_LT_test.txt"}
    eval_split = "test"
    layout_hint = " (Places-LT: root holds the Places365 images the Places_LT_*.txt paths point at)"


def _factory(cls: type) -> Callable[..., SplitFileDataset]:
    def factory(
        root: PathLike = "data",
        train: bool = True,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        imbalance_factor: float = 100.0,
        download: bool = False,
        seed: int = 0,
        split: str | None = None,
        split_dir: PathLike = "",
        skip_corrupt: bool = False,
        decode: str = "cpu",
        check_first: int = 16,
    ) -> SplitFileDataset:
        # imbalance_factor and seed: the split files fix the subset; download: not possible
        return cls(
            root,
            train=train,
            transform=transform,
            target_transform=target_transform,
            split=split,
            split_dir=split_dir,
            skip_corrupt=skip_corrupt,
            decode=decode,
            check_first=check_first,
        )

    factory.__name__ = f"create_{cls.__name__}"
    factory.__doc__ = (
        f"{cls.__name__} with :func:`~dbm_ltr.data.create_dataset`'s signature "
        "(``imbalance_factor``, ``download`` and ``seed`` are ignored)."
    )
    return factory


imagenet_lt = _factory(ImageNetLT)
inat2018 = _factory(INaturalist2018)
places_lt = _factory(PlacesLT)
