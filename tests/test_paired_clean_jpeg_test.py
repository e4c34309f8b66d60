"""scripts/paired_clean_jpeg_test.py: each clean image finds its own noisy copy."""

import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "paired_clean_jpeg_test.py"


def load():
    spec = importlib.util.spec_from_file_location("paired", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_clean_image_is_matched_to_its_noisy_copy_of_the_same_class(tmp_path):
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (12, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(12) % 3
    order = rng.permutation(12)
    noisy = np.clip(clean.astype(int) + rng.integers(-3, 4, clean.shape), 0, 255).astype(np.uint8)
    full, full_labels = noisy[order], labels[order]
    match, error = load().match_jpeg_copies(clean, labels, full, full_labels)
    np.testing.assert_array_equal(order[match], np.arange(12))
    assert (full_labels[match] == labels).all() and (error <= 3).all()


def test_writes_two_data_roots(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    classes = np.array(["a", "b", "c"])
    np.savez(tmp_path / "cifar10_test_subset_lossless.npz", images=images, labels=labels, classes=classes)
    np.savez(tmp_path / "cifar10_test.npz", images=images[::-1], labels=labels[::-1], classes=classes)
    np.savez(tmp_path / "cifar10_train.npz", images=images, labels=labels, classes=classes)
    assert load().main(["--root", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    clean = np.load(tmp_path / "out" / "clean" / "cifar10_test.npz")
    jpeg = np.load(tmp_path / "out" / "jpeg" / "cifar10_test.npz")
    np.testing.assert_array_equal(clean["images"], jpeg["images"])
    np.testing.assert_array_equal(clean["labels"], labels)
    assert (tmp_path / "out" / "jpeg" / "cifar10_train.npz").is_file()
