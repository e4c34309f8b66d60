"""LongTailDigits: the small offline demo data set."""

import numpy as np
import pytest
import torch

from dbm_ltr.data import DATASET_INFO, LongTailDigits, create_dataset, long_tail_counts


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    return load_digits()


def reference_split(labels, IF, tpc, seed, naive_lt_indices):
    """The documented procedure, written out naively."""
    rng = np.random.RandomState(seed)
    test, pool, pool_sizes = [], [], []
    for c in range(10):
        idx = [i for i in range(len(labels)) if labels[i] == c]
        idx = np.array(idx)
        rng.shuffle(idx)
        test.extend(idx[:tpc])
        pool.extend(idx[tpc:])
        pool_sizes.append(len(idx) - tpc)
    pool = np.array(sorted(pool))
    counts = long_tail_counts(min(pool_sizes), 10, IF)
    return pool[naive_lt_indices(labels[pool], counts, seed)], np.array(test)


@pytest.mark.parametrize("IF,tpc,seed", [(10.0, 50, 0), (1, 30, 3), (100, 50, 1)])
def test_splits(IF, tpc, seed, digits, naive_lt_indices):
    train = LongTailDigits(train=True, imbalance_factor=IF, test_per_class=tpc, seed=seed)
    test = LongTailDigits(train=False, imbalance_factor=IF, test_per_class=tpc, seed=seed)
    full = np.bincount(digits.target, minlength=10)
    n_max = int(full.min()) - tpc  # smallest pool
    counts = long_tail_counts(n_max, 10, IF)
    assert train.cls_num_list == counts and len(train) == sum(counts)
    assert test.cls_num_list == [tpc] * 10 and len(test) == 10 * tpc
    assert train.targets == np.repeat(np.arange(10), counts).tolist()
    assert not set(train.indices.tolist()) & set(test.indices.tolist())
    want_train, want_test = reference_split(digits.target, IF, tpc, seed, naive_lt_indices)
    assert np.array_equal(train.indices, want_train) and np.array_equal(test.indices, want_test)
    for ds in (train, test):
        assert len(set(ds.indices.tolist())) == len(ds)
        assert np.array_equal(digits.target[ds.indices], ds.targets)
        assert np.array_equal(ds.data, digits.images[ds.indices].astype(np.uint8))
        assert ds.data.dtype == np.uint8 and ds.data.shape == (len(ds), 8, 8) and ds.data.max() <= 16
        assert ds.classes == [str(c) for c in range(10)] and ds.num_classes == 10
        assert ds.imbalance_factor == float(IF)


def test_items_and_transform():
    ds = LongTailDigits(train=True)
    values = torch.stack([ds[i][0] for i in range(len(ds))])
    assert values.shape == (len(ds), 1, 8, 8) and values.dtype == torch.float32
    assert values.min() >= 0 and values.max() <= 1 and values.max() == 1
    x, y = ds[5]
    assert torch.equal(x[0], torch.from_numpy(ds.data[5] / 16.0).float()) and y == ds.targets[5]
    t = LongTailDigits(train=False, transform=lambda v: v * 2, target_transform=lambda y: -y)
    x2, y2 = t[7]
    assert torch.allclose(x2, torch.from_numpy(t.data[7] / 8.0).float()[None]) and y2 == -t.targets[7]


def test_deterministic_per_seed():
    a, b = LongTailDigits(seed=5), LongTailDigits(seed=5)
    assert np.array_equal(a.indices, b.indices)
    c = LongTailDigits(seed=6)
    assert a.cls_num_list == c.cls_num_list and not np.array_equal(a.indices, c.indices)
    ta, tc = LongTailDigits(train=False, seed=5), LongTailDigits(train=False, seed=6)
    assert not np.array_equal(ta.indices, tc.indices)


def test_create_dataset_digits():
    ds = create_dataset("digits_lt", "/does/not/matter", train=True, imbalance_factor=10, download=True)
    assert ds.cls_num_list == LongTailDigits(imbalance_factor=10).cls_num_list
    info = DATASET_INFO["digits_lt"]
    assert info["num_classes"] == 10 and info["contrastive_transform"] is None


def test_missing_sklearn_message(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        LongTailDigits()
