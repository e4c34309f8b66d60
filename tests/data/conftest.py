"""Shared fakes for the data tests: fake CIFAR in torchvision's folder format and as .npz.

Every fake image carries its label and its position in the original split in its pixels:
channel 0 = label, channel 1 = index % 256, channel 2 = index // 256 (constant planes), so a
test can check that images and labels stay paired and which original image was kept.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import types

import numpy as np
import pytest

SHARED_DATA = "/work/shared/data"


def _fake_labels(num_classes: int, per_class: int, seed: int) -> np.ndarray:
    labels = np.repeat(np.arange(num_classes), per_class)
    np.random.RandomState(seed).shuffle(labels)
    return labels.astype(np.int64)


def _fake_images(labels: np.ndarray) -> np.ndarray:
    n = len(labels)
    idx = np.arange(n)
    img = np.empty((n, 32, 32, 3), dtype=np.uint8)
    img[..., 0] = labels[:, None, None]
    img[..., 1] = (idx % 256)[:, None, None]
    img[..., 2] = (idx // 256)[:, None, None]
    return img


def _md5(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def _pickle(path: str, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _to_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) HWC -> (N, 3072) channel-major rows, as in the CIFAR python pickles."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


def write_torchvision_cifar(root, num_classes, train_labels, test_labels, class_names, monkeypatch):
    """Write the real torchvision file layout and make torchvision's md5 table match it.

    The md5 sums of the fake files replace torchvision's table (class attributes
    ``train_list`` / ``test_list`` / ``meta``) for this test only, so torchvision still runs
    its own integrity check on our files.
    """
    from torchvision.datasets import CIFAR10, CIFAR100

    tr_img, te_img = _fake_images(train_labels), _fake_images(test_labels)
    if num_classes == 10:
        folder = os.path.join(root, "cifar-10-batches-py")
        os.makedirs(folder, exist_ok=True)
        train_list = []
        for b, part in enumerate(np.array_split(np.arange(len(train_labels)), 5), start=1):
            name = f"data_batch_{b}"
            _pickle(
                os.path.join(folder, name),
                {
                    "batch_label": f"training batch {b} of 5",
                    "labels": train_labels[part].tolist(),
                    "data": _to_rows(tr_img[part]),
                    "filenames": [f"img_{i}.png" for i in part],
                },
            )
            train_list.append([name, _md5(os.path.join(folder, name))])
        _pickle(
            os.path.join(folder, "test_batch"),
            {
                "batch_label": "testing batch 1 of 1",
                "labels": test_labels.tolist(),
                "data": _to_rows(te_img),
                "filenames": [f"test_{i}.png" for i in range(len(test_labels))],
            },
        )
        _pickle(
            os.path.join(folder, "batches.meta"),
            {
                "label_names": list(class_names),
                "num_cases_per_batch": 10000,
                "num_vis": 3072,
            },
        )
        cls = CIFAR10
        test_list = [["test_batch", _md5(os.path.join(folder, "test_batch"))]]
        meta = {"filename": "batches.meta", "key": "label_names", "md5": _md5(os.path.join(folder, "batches.meta"))}
    else:
        folder = os.path.join(root, "cifar-100-python")
        os.makedirs(folder, exist_ok=True)
        for name, lab, img in (("train", train_labels, tr_img), ("test", test_labels, te_img)):
            _pickle(
                os.path.join(folder, name),
                {
                    "filenames": [f"{name}_{i}.png" for i in range(len(lab))],
                    "batch_label": f"{name} batch",
                    "fine_labels": lab.tolist(),
                    "coarse_labels": (lab // 5).tolist(),
                    "data": _to_rows(img),
                },
            )
        _pickle(
            os.path.join(folder, "meta"),
            {
                "fine_label_names": list(class_names),
                "coarse_label_names": [f"super{i}" for i in range(20)],
            },
        )
        cls = CIFAR100
        train_list = [["train", _md5(os.path.join(folder, "train"))]]
        test_list = [["test", _md5(os.path.join(folder, "test"))]]
        meta = {"filename": "meta", "key": "fine_label_names", "md5": _md5(os.path.join(folder, "meta"))}
    monkeypatch.setattr(cls, "train_list", train_list)
    monkeypatch.setattr(cls, "test_list", test_list)
    monkeypatch.setattr(cls, "meta", meta)


def write_npz(path, images, labels, classes=None) -> None:
    arrays = {"images": images, "labels": labels}
    if classes is not None:
        arrays["classes"] = np.asarray(classes)
    np.savez_compressed(path, **arrays)


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch):
    """``make(fmt, num_classes, train_per_class, test_per_class, seed, classes=True)``.

    Writes a fake CIFAR-10/100 under ``tmp_path`` in format ``"torchvision"`` or ``"npz"``
    and returns a namespace with ``root``, ``train_labels``, ``test_labels``, ``classes``.
    """

    def make(fmt="npz", num_classes=10, train_per_class=20, test_per_class=5, seed=1, classes=True, root=None):
        root = str(root or tmp_path)
        train_labels = _fake_labels(num_classes, train_per_class, seed)
        test_labels = _fake_labels(num_classes, test_per_class, seed + 1)
        names = [f"fake{c}" for c in range(num_classes)]
        if fmt == "torchvision":
            write_torchvision_cifar(root, num_classes, train_labels, test_labels, names, monkeypatch)
        elif fmt == "npz":
            prefix = "cifar10" if num_classes == 10 else "cifar100"
            write_npz(
                os.path.join(root, f"{prefix}_train.npz"),
                _fake_images(train_labels),
                train_labels,
                names if classes else None,
            )
            write_npz(
                os.path.join(root, f"{prefix}_test.npz"),
                _fake_images(test_labels),
                test_labels,
                names if classes else None,
            )
        else:
            raise ValueError(fmt)
        return types.SimpleNamespace(root=root, train_labels=train_labels, test_labels=test_labels, classes=names)

    return make


@pytest.fixture
def decode_pixels():
    """``decode(data) -> (labels, indices)`` for an (N, 32, 32, 3) array of fake images."""

    def decode(data):
        data = np.asarray(data).astype(np.int64)
        for ch in range(3):  # constant planes survive a correct HWC conversion only
            assert (data[..., ch] == data[:, :1, :1, ch]).all()
        return data[:, 0, 0, 0], data[:, 0, 0, 1] + 256 * data[:, 0, 0, 2]

    return decode


@pytest.fixture
def naive_lt_indices():
    """Naive LDAM-DRW reference on NumPy's *global* legacy RNG (state restored afterwards)."""

    def reference(targets, counts, seed=0):
        saved = np.random.get_state()
        try:
            np.random.seed(seed)
            targets_np = np.array(targets, dtype=np.int64)
            new_idx = []
            for the_class, the_img_num in zip(range(len(counts)), counts):
                idx = np.where(targets_np == the_class)[0]
                np.random.shuffle(idx)
                new_idx.append(idx[:the_img_num])
            return np.concatenate(new_idx)
        finally:
            np.random.set_state(saved)

    return reference


@pytest.fixture
def write_npz_file():
    return write_npz


@pytest.fixture
def fake_images():
    return _fake_images
