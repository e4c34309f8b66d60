"""Every bad input to the data package gets a clear error."""

import os

import numpy as np
import pytest

from dbm_ltr.data import (
    DATASET_INFO,
    TRANSFORMS,
    DatasetNotFoundError,
    LongTailCIFAR10,
    LongTailCIFAR100,
    LongTailDigits,
    build_transform,
    create_dataset,
    list_datasets,
    register_dataset,
    register_transform,
)


@pytest.mark.parametrize(
    "cls,name,folder,prefix",
    [
        (LongTailCIFAR10, "CIFAR-10", "cifar-10-batches-py", "cifar10"),
        (LongTailCIFAR100, "CIFAR-100", "cifar-100-python", "cifar100"),
    ],
)
@pytest.mark.parametrize("train", [True, False])
def test_missing_dataset_message(cls, name, folder, prefix, train, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.mkdir("empty")
    with pytest.raises(DatasetNotFoundError) as info:
        cls("empty", train=train)
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert name in msg
    assert str(tmp_path / "empty") in msg  # absolute root
    assert f"'{folder}/'" in msg
    assert f"{prefix}_train.npz" in msg and f"{prefix}_test.npz" in msg
    assert "download=True" in msg and "data.download=true" in msg and "data.root" in msg
    assert ("train split" if train else "test split") in msg


def test_missing_dataset_via_create_dataset(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="CIFAR-10 .* not found in"):
        create_dataset("cifar10_lt", tmp_path / "nowhere", train=True)


def _write(path, images, labels, **extra):
    np.savez(path, images=images, labels=labels, **extra)


GOOD_IMAGES = np.zeros((20, 32, 32, 3), np.uint8)
GOOD_LABELS = np.arange(20) % 10


@pytest.mark.parametrize(
    "arrays,match",
    [
        (
            dict(images=np.zeros((20, 32, 32), np.uint8), labels=GOOD_LABELS),
            r"'images' must have shape \(N, 32, 32, 3\), got \(20, 32, 32\)",
        ),
        (
            dict(images=np.zeros((20, 3, 32, 32), np.uint8), labels=GOOD_LABELS),
            r"'images' must have shape \(N, 32, 32, 3\), got \(20, 3, 32, 32\)",
        ),
        (
            dict(images=np.zeros((20, 32, 32, 3), np.float32), labels=GOOD_LABELS),
            "'images' must be uint8 .* got dtype float32",
        ),
        (
            dict(images=GOOD_IMAGES, labels=GOOD_LABELS[:19]),
            "label count mismatch: 20 images but 'labels' has shape \\(19,\\)",
        ),
        (dict(images=GOOD_IMAGES, labels=GOOD_LABELS.reshape(4, 5)), "label count mismatch"),
        (dict(images=GOOD_IMAGES, labels=GOOD_LABELS + 1), r"labels out of range: found 1\.\.10, valid 0\.\.9"),
        (dict(images=GOOD_IMAGES, labels=GOOD_LABELS - 1), r"labels out of range: found -1\.\.8"),
        (dict(images=GOOD_IMAGES, labels=GOOD_LABELS.astype(np.float64)), "'labels' must be integers"),
        (
            dict(images=GOOD_IMAGES, labels=GOOD_LABELS, classes=np.array(["a", "b"])),
            r"'classes' must list 10 names, got shape \(2,\)",
        ),
        (dict(images=GOOD_IMAGES), r"missing array\(s\) \['labels'\]"),
        (dict(pictures=GOOD_IMAGES, labels=GOOD_LABELS), r"missing array\(s\) \['images'\]"),
    ],
)
def test_bad_npz(arrays, match, tmp_path):
    path = tmp_path / "cifar10_train.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=match) as info:
        LongTailCIFAR10(tmp_path, train=True)
    assert str(path) in str(info.value)  # names the file


def test_npz_not_an_archive(tmp_path):
    np.save(tmp_path / "single.npy", GOOD_IMAGES)
    os.rename(tmp_path / "single.npy", tmp_path / "cifar10_test.npz")
    with pytest.raises(ValueError, match="cifar10_test.npz: expected a .npz archive"):
        LongTailCIFAR10(tmp_path, train=False)


def test_npz_object_classes_rejected(tmp_path):
    _write(
        tmp_path / "cifar10_test.npz",
        GOOD_IMAGES,
        GOOD_LABELS,
        classes=np.array([str(i) for i in range(10)], dtype=object),
    )
    with pytest.raises(ValueError, match="cifar10_test.npz: cannot read its arrays"):
        LongTailCIFAR10(tmp_path, train=False)


def test_cifar100_labels_checked_against_100_classes(tmp_path):
    _write(tmp_path / "cifar100_test.npz", GOOD_IMAGES, np.full(20, 100))
    with pytest.raises(ValueError, match=r"found 100\.\.100, valid 0\.\.99"):
        LongTailCIFAR100(tmp_path, train=False)


def test_not_enough_images_for_a_class(tmp_path):
    labels = np.repeat(np.arange(10), 10)
    labels[labels == 9] = 0  # class 9 vanishes, class 0 has 20; n_max = 100 // 10 = 10
    _write(tmp_path / "cifar10_train.npz", np.zeros((100, 32, 32, 3), np.uint8), labels)
    with pytest.raises(ValueError, match="class 9 has only 0 images but 1 are needed"):
        LongTailCIFAR10(tmp_path, train=True, imbalance_factor=10)


def test_fewer_images_than_classes(tmp_path):
    _write(tmp_path / "cifar10_train.npz", GOOD_IMAGES[:5], GOOD_LABELS[:5])
    with pytest.raises(ValueError, match="only 5 images, fewer than its 10 classes"):
        LongTailCIFAR10(tmp_path, train=True)


@pytest.mark.parametrize("IF", [0.5, 0, -1, float("nan"), "100", None])
def test_bad_imbalance_factor(IF, tmp_path):
    match = "imbalance_factor must be a finite number >= 1"
    with pytest.raises(ValueError, match=match):
        LongTailCIFAR10(tmp_path, imbalance_factor=IF)  # checked before looking for files
    with pytest.raises(ValueError, match=match):
        LongTailDigits(imbalance_factor=IF)
    with pytest.raises(ValueError, match=match):
        create_dataset("digits_lt", None, train=True, imbalance_factor=IF)


@pytest.mark.parametrize("n", [0, -3, 2.5, 180])
def test_bad_test_per_class(n):
    with pytest.raises(ValueError, match="test_per_class"):
        LongTailDigits(test_per_class=n)


def test_unknown_dataset_name():
    with pytest.raises(
        ValueError, match="unknown data set 'cifar1000_lt'; available: cifar100_lt, cifar10_lt, digits_lt"
    ):
        create_dataset("cifar1000_lt", ".", train=True)


def test_unknown_transform_name():
    with pytest.raises(
        ValueError,
        match="unknown transform 'autoaug'; available: cifar, "
        "cifar_contrastive, cifar_test, imagenet_contrastive, .*, none",
    ):
        build_transform("autoaug")


def test_register_duplicates_and_custom():
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("cifar10_lt", LongTailCIFAR10)
    with pytest.raises(ValueError, match="already registered"):
        register_transform("cifar", lambda: None)
    with pytest.raises(ValueError, match=r"lacks \['test_transform'"):
        register_dataset("tmp_ds", LongTailCIFAR10, info={"num_classes": 1, "train_transform": "none"})
    assert "tmp_ds" not in list_datasets()

    seen = {}

    @register_dataset(
        "tmp_ds",
        info={"num_classes": 2, "train_transform": "none", "test_transform": "none", "contrastive_transform": None},
    )
    def factory(**kwargs):
        seen.update(kwargs)
        return "dataset"

    @register_transform("tmp_tf")
    def tf_factory():
        return "transform"

    try:
        assert create_dataset("tmp_ds", "r", False, imbalance_factor=3, seed=4) == "dataset"
        assert seen == dict(
            root="r", train=False, transform=None, target_transform=None, imbalance_factor=3, download=False, seed=4
        )
        assert DATASET_INFO["tmp_ds"]["num_classes"] == 2
        assert build_transform("tmp_tf") == "transform"
    finally:
        from dbm_ltr.data import DATASETS

        DATASETS.pop("tmp_ds")
        DATASET_INFO.pop("tmp_ds")
        TRANSFORMS.pop("tmp_tf")
