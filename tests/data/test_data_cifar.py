"""LongTailCIFAR10/100 on fake data written in the real formats (torchvision folder, .npz)."""

import os
import warnings

import numpy as np
import pytest
import torch

from dbm_ltr.data import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    CIFAR_MEAN,
    CIFAR_STD,
    DatasetNotFoundError,
    LongTailCIFAR10,
    LongTailCIFAR100,
    cifar_test_transform,
    create_dataset,
    long_tail_counts,
)

# (class, num_classes, train images per class, test images per class)
KINDS = [(LongTailCIFAR10, 10, 20, 5), (LongTailCIFAR100, 100, 10, 2)]
FORMATS = ["torchvision", "npz"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cls,C,per_train,per_test", KINDS)
@pytest.mark.parametrize("IF", [10.0, 1])
def test_train_split(fmt, cls, C, per_train, per_test, IF, fake_cifar, decode_pixels, naive_lt_indices):
    fake = fake_cifar(fmt, C, per_train, per_test)
    ds = cls(fake.root, train=True, imbalance_factor=IF)
    counts = long_tail_counts(per_train, C, IF)
    assert ds.source == fmt
    assert ds.num_classes == C and ds.train is True and ds.imbalance_factor == float(IF)
    assert ds.root == fake.root
    assert len(ds) == sum(counts) == len(ds.targets) == len(ds.data)
    assert ds.cls_num_list == counts
    assert all(type(n) is int for n in ds.cls_num_list)
    assert ds.data.dtype == np.uint8 and ds.data.shape == (sum(counts), 32, 32, 3)
    assert isinstance(ds.targets, list) and all(type(y) is int for y in ds.targets)
    assert ds.targets == np.repeat(np.arange(C), counts).tolist()  # class order
    assert ds.classes == fake.classes
    # the standard selection on the original order, images paired with their labels
    want = naive_lt_indices(fake.train_labels, counts, 0)
    assert np.array_equal(ds.indices, want)
    labels, orig = decode_pixels(ds.data)
    assert labels.tolist() == ds.targets
    assert np.array_equal(orig, want)
    assert np.array_equal(fake.train_labels[orig], labels)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cls,C,per_train,per_test", KINDS)
def test_test_split_is_full_and_balanced(fmt, cls, C, per_train, per_test, fake_cifar, decode_pixels):
    fake = fake_cifar(fmt, C, per_train, per_test)
    ds = cls(fake.root, train=False, imbalance_factor=100)
    assert len(ds) == C * per_test
    assert ds.cls_num_list == [per_test] * C
    assert ds.targets == fake.test_labels.tolist()  # untouched, original order
    labels, orig = decode_pixels(ds.data)
    assert labels.tolist() == ds.targets
    assert orig.tolist() == list(range(len(ds))) == ds.indices.tolist()


@pytest.mark.parametrize("fmt", FORMATS)
def test_getitem_transforms(fmt, fake_cifar):
    fake = fake_cifar(fmt)
    ds = LongTailCIFAR10(
        fake.root,
        train=True,
        imbalance_factor=10,
        transform=cifar_test_transform(),
        target_transform=lambda y: y + 1000,
    )
    x, y = ds[len(ds) - 1]
    assert y == ds.targets[-1] + 1000 == 1009
    assert isinstance(x, torch.Tensor) and x.shape == (3, 32, 32)
    expected = (torch.tensor([9 / 255, 0, 0]) - torch.tensor(CIFAR_MEAN)) / torch.tensor(CIFAR_STD)
    # channel 0 encodes the label (9), channels 1/2 the original index
    assert torch.allclose(x[0], expected[0].expand(32, 32), atol=1e-5)

    plain = LongTailCIFAR10(fake.root, train=True, imbalance_factor=10)
    img, target = plain[0]
    assert img.size == (32, 32) and img.mode == "RGB" and target == 0
    assert img.getpixel((5, 7))[0] == 0


def test_seed_changes_selection_not_counts(fake_cifar):
    fake = fake_cifar("npz")
    a = LongTailCIFAR10(fake.root, imbalance_factor=10, seed=0)
    b = LongTailCIFAR10(fake.root, imbalance_factor=10, seed=1)
    assert a.cls_num_list == b.cls_num_list
    assert not np.array_equal(a.indices, b.indices)
    assert np.array_equal(LongTailCIFAR10(fake.root, imbalance_factor=10, seed=1).indices, b.indices)


def test_npz_default_class_names(fake_cifar, tmp_path):
    f10 = fake_cifar("npz", 10, classes=False, root=tmp_path)
    assert LongTailCIFAR10(f10.root, train=False).classes == list(CIFAR10_CLASSES)
    f100 = fake_cifar("npz", 100, 10, 2, classes=False, root=tmp_path)
    ds = LongTailCIFAR100(f100.root, train=False)
    assert ds.classes == list(CIFAR100_CLASSES)
    assert len(CIFAR100_CLASSES) == 100 == len(set(CIFAR100_CLASSES))
    assert list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES)  # fine labels are alphabetical
    assert CIFAR100_CLASSES[0] == "apple" and CIFAR100_CLASSES[-1] == "worm"
    assert ds.class_to_idx["apple"] == 0


def test_torchvision_folder_preferred_over_npz(fake_cifar, tmp_path):
    fake_cifar("npz", 10, 20, 5, seed=7)
    fake = fake_cifar("torchvision", 10, 30, 5, seed=3)
    ds = LongTailCIFAR10(tmp_path, imbalance_factor=10)
    assert ds.source == "torchvision"
    assert ds.cls_num_list == long_tail_counts(30, 10, 10)
    assert ds.classes == fake.classes


def test_corrupt_torchvision_folder_falls_back_to_npz(fake_cifar, tmp_path, decode_pixels):
    fake_cifar("torchvision")
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "ab") as f:
        f.write(b"garbage")  # md5 mismatch
    with pytest.raises(DatasetNotFoundError, match="could not read it"):
        LongTailCIFAR10(tmp_path)
    fake_cifar("npz", 10, 20, 5)
    with pytest.warns(UserWarning, match="using .*cifar10_train.npz"):
        ds = LongTailCIFAR10(tmp_path, imbalance_factor=10)
    assert ds.source == "npz" and ds.cls_num_list == long_tail_counts(20, 10, 10)


def test_only_the_requested_npz_is_read(fake_cifar, tmp_path):
    fake = fake_cifar("npz")
    (tmp_path / "cifar10_test.npz").write_bytes(b"not an archive")
    ds = LongTailCIFAR10(fake.root, train=True, imbalance_factor=10)  # test file never opened
    assert len(ds) == sum(long_tail_counts(20, 10, 10))
    with pytest.raises(ValueError, match="cifar10_test.npz: cannot read as a .npz archive"):
        LongTailCIFAR10(fake.root, train=False)
    os.remove(tmp_path / "cifar10_train.npz")
    with pytest.raises(DatasetNotFoundError, match="cifar10_train.npz"):
        LongTailCIFAR10(fake.root, train=True)


def test_fewer_images_than_real_cifar(fake_cifar):
    fake = fake_cifar("npz", 10, 3, 1)  # n_max = 3
    ds = LongTailCIFAR10(fake.root, imbalance_factor=3)
    assert ds.cls_num_list == [3, 2, 2, 2, 1, 1, 1, 1, 1, 1]


def test_download_path_uses_torchvision(fake_cifar, tmp_path, monkeypatch):
    """download=True hands over to torchvision's download (stubbed here: no internet)."""
    from torchvision.datasets import CIFAR10

    calls = []

    def fake_download(self):
        calls.append(self.root)
        fake_cifar("torchvision", root=self.root)

    monkeypatch.setattr(CIFAR10, "download", fake_download)
    root = tmp_path / "fresh"
    with pytest.raises(DatasetNotFoundError):
        LongTailCIFAR10(root)
    assert calls == []
    ds = LongTailCIFAR10(root, download=True, imbalance_factor=10)
    assert calls == [str(root)] and ds.source == "torchvision"
    assert ds.cls_num_list == long_tail_counts(20, 10, 10)


@pytest.mark.parametrize("name,C", [("cifar10_lt", 10), ("cifar100_lt", 100)])
def test_create_dataset(name, C, fake_cifar):
    fake = fake_cifar("npz", C, 10, 2)
    ds = create_dataset(name, fake.root, train=True, imbalance_factor=5, seed=0, target_transform=str)
    assert ds.num_classes == C and ds.cls_num_list == long_tail_counts(10, C, 5)
    assert ds[0][1] == "0"
    test = create_dataset(name, fake.root, train=False, imbalance_factor=5)
    assert test.cls_num_list == [2] * C


def test_pathlike_and_user_root(fake_cifar, tmp_path, monkeypatch):
    fake_cifar("npz")
    monkeypatch.setenv("HOME", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = LongTailCIFAR10("~", train=False)
    assert ds.root == str(tmp_path) and len(ds) == 50
