"""The real CIFAR-10 copy in /work/shared/data (skipped where it is absent)."""

import os

import numpy as np
import pytest

from dbm_ltr.data import CIFAR10_CLASSES, LongTailCIFAR10, long_tail_counts

SHARED = "/work/shared/data"
COUNTS_IF100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def need(*names):
    for n in names:
        if not os.path.isfile(os.path.join(SHARED, n)):
            pytest.skip(f"{os.path.join(SHARED, n)} not available")


@pytest.fixture(scope="module")
def train_if100():
    need("cifar10_train.npz")
    return LongTailCIFAR10(SHARED, train=True, imbalance_factor=100)


def test_train_if100(train_if100):
    ds = train_if100
    assert ds.source == "npz"
    assert len(ds) == 12406 and ds.cls_num_list == COUNTS_IF100 == long_tail_counts(5000, 10, 100)
    assert ds.targets == np.repeat(np.arange(10), COUNTS_IF100).tolist()
    assert ds.classes == list(CIFAR10_CLASSES)
    assert ds.data.shape == (12406, 32, 32, 3) and ds.data.dtype == np.uint8


def test_train_if100_is_the_standard_subset(train_if100, naive_lt_indices):
    need("cifar10_train_subset_lossless.npz")
    with np.load(os.path.join(SHARED, "cifar10_train_subset_lossless.npz")) as z:
        all_labels, sub_images, sub_idx = z["all_train_labels"], z["images"], z["indices"]
    ds = train_if100
    assert np.array_equal(ds.indices, naive_lt_indices(all_labels, COUNTS_IF100, 0))
    assert np.array_equal(all_labels[ds.indices], ds.targets)
    # images stay paired: compare kept images that lie in the lossless subset (JPEG'd copy, MAE ~6)
    assert np.array_equal(sub_idx, np.arange(len(sub_idx)))
    pos = np.where(ds.indices < len(sub_idx))[0]
    assert len(pos) > 500
    ours = ds.data[pos].astype(np.float64)
    ref = sub_images[ds.indices[pos]].astype(np.float64)
    mae = np.abs(ours - ref).mean(axis=(1, 2, 3))
    assert mae.max() < 20, mae.max()
    shifted = np.abs(ours - np.roll(ref, 1, axis=0)).mean()
    assert shifted > 3 * mae.mean()


def test_test_split():
    need("cifar10_test.npz")
    ds = LongTailCIFAR10(SHARED, train=False)
    assert len(ds) == 10000 and ds.cls_num_list == [1000] * 10
    img, y = ds[0]
    assert img.size == (32, 32) and y == ds.targets[0]
