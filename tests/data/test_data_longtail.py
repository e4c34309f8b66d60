"""Long-tail counts and the seeded LDAM-DRW selection (LDAM-DRW)."""

import os

import numpy as np
import pytest

from dbm_ltr.data import long_tail_counts, select_long_tail_indices

SHARED = "/work/shared/data"


def groups(counts):
    """Many n > 100, medium 20 <= n <= 100, few n < 20 (the long-tailed protocol)."""
    return (sum(n > 100 for n in counts), sum(20 <= n <= 100 for n in counts), sum(n < 20 for n in counts))


def test_cifar10_if100_counts():
    assert long_tail_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.mark.parametrize(
    "n_max,C,IF,total,n_min,grp",
    [
        (5000, 10, 100, 12406, 50, (8, 2, 0)),
        (5000, 10, 50, 13996, 100, (9, 1, 0)),
        (5000, 10, 10, 20431, 500, (10, 0, 0)),
        (500, 100, 100, 10847, 5, (35, 35, 30)),
        (500, 100, 50, 12608, 10, (41, 41, 18)),
        (500, 100, 10, 19573, 50, (69, 31, 0)),
    ],
)
def test_spec_table(n_max, C, IF, total, n_min, grp):
    counts = long_tail_counts(n_max, C, IF)
    assert len(counts) == C
    assert sum(counts) == total
    assert counts[0] == n_max and counts[-1] == n_min == min(counts)
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    assert groups(counts) == grp


def test_cifar100_if100_ends():
    counts = long_tail_counts(500, 100, 100)
    assert counts[:5] == [500, 477, 455, 434, 415]
    assert counts[-6:] == [6, 6, 5, 5, 5, 5]


def test_balanced_and_types():
    assert long_tail_counts(7, 3, 1) == [7, 7, 7]
    assert long_tail_counts(np.int64(100), np.int32(2), np.float32(10.0)) == [100, 10]
    assert all(type(n) is int for n in long_tail_counts(500, 100, 100))


@pytest.mark.parametrize(
    "args,match",
    [
        ((5000, 10, 0.5), "imbalance_factor must be a finite number >= 1"),
        ((5000, 10, 0), "imbalance_factor"),
        ((5000, 10, -10), "imbalance_factor"),
        ((5000, 10, float("nan")), "imbalance_factor"),
        ((5000, 10, float("inf")), "imbalance_factor"),
        ((5000, 10, "100"), "imbalance_factor"),
        ((5000, 1, 100), "num_classes must be an integer >= 2"),
        ((5000, 2.5, 100), "num_classes"),
        ((0, 10, 100), "n_max must be a positive integer"),
        ((50.5, 10, 100), "n_max"),
    ],
)
def test_counts_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        long_tail_counts(*args)


@pytest.mark.parametrize("seed", [0, 1, 123])
def test_selection_equals_global_rng_reference(seed, naive_lt_indices):
    rng = np.random.RandomState(1000 + seed)
    targets = rng.randint(0, 7, size=700)
    have = np.bincount(targets, minlength=7)
    counts = [int(h * f) for h, f in zip(have, np.linspace(1.0, 0.1, 7))]
    before = np.random.get_state()[1].copy()
    got = select_long_tail_indices(targets, counts, seed=seed)
    assert np.array_equal(np.random.get_state()[1], before), "global NumPy RNG was touched"
    want = naive_lt_indices(targets, counts, seed)
    assert got.dtype == np.int64
    assert np.array_equal(got, want)
    # class order, the right counts, no duplicates
    assert np.array_equal(targets[got], np.repeat(np.arange(7), counts))
    assert len(set(got.tolist())) == len(got)


def test_selection_accepts_lists_and_zero_counts(naive_lt_indices):
    targets = [0, 1, 2, 0, 1, 2, 0, 1, 2, 2]
    got = select_long_tail_indices(targets, [3, 0, 2], seed=5)
    assert np.array_equal(got, naive_lt_indices(targets, [3, 0, 2], 5))
    assert sorted(got[:3].tolist()) == [0, 3, 6]


@pytest.mark.parametrize(
    "targets,counts,match",
    [
        ([0, 0, 1, 1, 2], [2, 2, 2], r"class 2 has only 1 images but 2 are needed"),
        ([0, 1, 3], [1, 1, 1], r"labels 0\.\.3 .* 3 classes"),
        ([-1, 0, 1], [1, 1], r"labels -1\.\.1"),
        ([[0, 1]], [1, 1], "1-D"),
        ([0, 1], [], "non-empty"),
        ([0, 1], [1, -1], r"class 1: -1"),
        ([0, 1], [1, 0.5], r"class 1: 0\.5"),
        ([0.5, 1.0], [1, 1], "integer labels"),
    ],
)
def test_selection_bad_input(targets, counts, match):
    with pytest.raises(ValueError, match=match):
        select_long_tail_indices(targets, counts)


def test_selection_on_real_cifar10_labels(naive_lt_indices):
    path = os.path.join(SHARED, "cifar10_train_subset_lossless.npz")
    if not os.path.isfile(path):
        pytest.skip(f"{path} not available")
    with np.load(path) as z:
        labels = z["all_train_labels"]
    assert labels.shape == (50000,) and np.bincount(labels).tolist() == [5000] * 10
    counts = long_tail_counts(5000, 10, 100)
    got = select_long_tail_indices(labels, counts, seed=0)
    want = naive_lt_indices(labels, counts, 0)
    assert len(got) == 12406
    starts = np.cumsum([0] + counts[:-1])
    for c, s in enumerate(starts):
        assert np.array_equal(got[s : s + 5], want[s : s + 5]), f"class {c}"
        assert (labels[got[s : s + counts[c]]] == c).all()
    assert np.array_equal(got, want)
    # pinned: first indices of classes 0 and 9 of the standard CIFAR-10-LT IF100 split
    assert got[:5].tolist() == [4030, 38518, 48266, 45556, 6312]
    assert got[starts[9] : starts[9] + 5].tolist() == [22220, 38393, 22240, 25393, 19625]


def test_limit_indices_keeps_proportions_and_every_class():
    from dbm_ltr.data import limit_indices
    from dbm_ltr.errors import ConfigError

    counts = [500, 200, 50, 10, 3]
    targets = np.repeat(np.arange(5), counts)
    np.random.RandomState(0).shuffle(targets)
    keep = limit_indices(targets, 100)
    kept = np.bincount(targets[keep], minlength=5)
    assert kept.sum() <= 100 and (kept >= 1).all()
    assert kept.tolist() == [65, 26, 6, 1, 1]  # floor(n_c * 100 / 763), at least 1 each
    assert (np.diff(keep) > 0).all()  # positions in order
    for c in range(5):  # the first images of each class
        assert (keep[targets[keep] == c] == np.flatnonzero(targets == c)[: kept[c]]).all()
    tight = np.bincount(targets[limit_indices(targets, 5)], minlength=5)
    assert tight.tolist() == [1, 1, 1, 1, 1]
    assert len(limit_indices(targets, 10_000)) == len(targets)
    with pytest.raises(ConfigError, match="data.limit=4 cannot keep all 5 classes"):
        limit_indices(targets, 4)


def test_limited_dataset_keeps_images_and_labels_together():
    """``data.limit``'s view: item i, ``data[i]`` and ``targets[i]`` are the underlying data
    set's sample ``indices[i]`` (the device pipeline reads ``data`` and ``targets``, the loader
    ``__getitem__``); a class left out keeps its place in ``cls_num_list``; other attributes
    are the data set's."""
    from dbm_ltr.data.longtail import LimitedDataset

    class Coded:  # image n is filled with n: an image carries its own index
        def __init__(self, targets):
            self.targets = list(targets)
            self.data = np.stack([np.full((2, 2, 3), n, np.uint8) for n in range(len(targets))])
            self.cls_num_list = np.bincount(self.targets, minlength=4).tolist()
            self.classes = ["a", "b", "c", "d"]

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, n):
            return self.data[n], self.targets[n]

    base = Coded([0, 1, 0, 2, 1, 0, 2, 0])  # class 3 has no sample
    indices = np.array([1, 3, 4, 6])
    view = LimitedDataset(base, indices, limit=4)
    assert len(view) == 4 and view.cls_num_list == [0, 2, 2, 0] and view.classes == base.classes
    for i, n in enumerate(indices):
        image, label = view[i]
        assert (image == n).all() and label == base.targets[n]
        assert (view.data[i] == n).all() and view.targets[i] == base.targets[n]
