import time

import numpy as np
import pytest
import torch

from dbm_ltr.metrics import class_moments, fisher_pairwise, fisher_separability


def gaussians(num_classes=4, dim=5, per_class=(400, 300, 200, 50), seed=0):
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for c in range(num_classes):
        mean = rng.normal(0, 2, dim)
        mix = rng.normal(0, 1, (dim, dim))
        feats.append(rng.normal(size=(per_class[c], dim)) @ mix + mean)
        labels.append(np.full(per_class[c], c))
    return np.concatenate(feats), np.concatenate(labels)


def closed_form(x, y, i, j):
    """(mu_i - mu_j)^T (S_i + S_j)^-1 (mu_i - mu_j) with population covariances."""
    a, b = x[y == i], x[y == j]
    d = a.mean(0) - b.mean(0)
    pooled = np.cov(a, rowvar=False, ddof=0) + np.cov(b, rowvar=False, ddof=0)
    return d @ np.linalg.solve(pooled, d)


def projected(x, y, i, j, ridge):
    """The Fisher recipe of Table 6 written out: Fisher direction, project the samples, J of the
    projections (population variances)."""
    a, b = x[y == i], x[y == j]
    pooled = np.cov(a, rowvar=False, ddof=0) + np.cov(b, rowvar=False, ddof=0)
    eps = ridge * np.trace(pooled) / x.shape[1]
    w = np.linalg.solve(pooled + eps * np.eye(x.shape[1]), a.mean(0) - b.mean(0))
    pa, pb = a @ w, b @ w
    return (pa.mean() - pb.mean()) ** 2 / (pa.var() + pb.var())


def test_pairwise_equals_closed_form_without_ridge():
    x, y = gaussians()
    got = fisher_pairwise(torch.from_numpy(x), torch.from_numpy(y), 4, ridge=0.0)
    for i in range(4):
        assert torch.isnan(got[i, i])
        for j in range(4):
            if i != j:
                assert got[i, j].item() == pytest.approx(closed_form(x, y, i, j), rel=1e-9)
    assert torch.equal(got.nan_to_num(), got.T.nan_to_num())


def test_projection_form_equals_closed_form_and_implementation():
    x, y = gaussians(seed=1)
    got = fisher_pairwise(torch.from_numpy(x), torch.from_numpy(y), 4)  # default ridge 1e-6
    for i, j in [(0, 1), (1, 0), (2, 3), (0, 3)]:
        assert got[i, j].item() == pytest.approx(projected(x, y, i, j, 1e-6), rel=1e-9)
        # eps -> 0: the projection form is the closed form
        assert projected(x, y, i, j, 0.0) == pytest.approx(closed_form(x, y, i, j), rel=1e-9)
        assert got[i, j].item() == pytest.approx(closed_form(x, y, i, j), rel=1e-4)


def test_class_and_group_scores_are_means_of_pairs():
    x, y = gaussians(seed=2)
    counts = [500, 60, 30, 10]  # many, medium, medium, few
    res = fisher_separability(torch.from_numpy(x), torch.from_numpy(y), counts, ridge=0.0)
    j = np.array([[closed_form(x, y, a, b) if a != b else np.nan for b in range(4)] for a in range(4)])
    s = np.nanmean(j, axis=1)
    assert res["per_class"] == pytest.approx(s.tolist(), rel=1e-9)
    assert res["many"] == pytest.approx(s[0], rel=1e-9)
    assert res["medium"] == pytest.approx((s[1] + s[2]) / 2, rel=1e-9)
    assert res["few"] == pytest.approx(s[3], rel=1e-9)
    assert res["all"] == pytest.approx(s.mean(), rel=1e-9)
    assert res["classes_used"] == 4


def test_invariant_to_invertible_linear_maps():
    # the Fisher criterion does not depend on the coordinates of the feature space
    x, y = gaussians(seed=3)
    mix = np.random.default_rng(0).normal(size=(5, 5)) + 3 * np.eye(5)
    a = fisher_pairwise(torch.from_numpy(x), torch.from_numpy(y), 4, ridge=0.0)
    b = fisher_pairwise(torch.from_numpy(x @ mix), torch.from_numpy(y), 4, ridge=0.0)
    assert torch.allclose(a.nan_to_num(), b.nan_to_num(), rtol=1e-7)


def test_l2_option_normalises_rows():
    x, y = gaussians(seed=4)
    x = np.abs(x) + 0.1
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    a = fisher_separability(torch.from_numpy(x), torch.from_numpy(y), [500, 60, 30, 10], normalization="l2")
    b = fisher_separability(torch.from_numpy(unit), torch.from_numpy(y), [500, 60, 30, 10])
    assert a["per_class"] == pytest.approx(b["per_class"], rel=1e-9)
    with pytest.raises(ValueError, match="normalization"):
        fisher_separability(torch.from_numpy(x), torch.from_numpy(y), [1, 1, 1, 1], normalization="cosine")


def test_classes_without_enough_samples_are_left_out():
    x, y = gaussians(per_class=(40, 40, 1, 0), seed=5)  # class 2: one sample, class 3: none
    res = fisher_separability(torch.from_numpy(x), torch.from_numpy(y), [500, 60, 30, 10], ridge=0.0)
    assert res["per_class"][2] is None and res["per_class"][3] is None
    assert res["few"] is None and res["classes_used"] == 2
    assert res["per_class"][0] == pytest.approx(closed_form(x, y, 0, 1), rel=1e-9)
    assert res["all"] == pytest.approx(res["per_class"][0])


def test_moments_are_population_statistics():
    x, y = gaussians(seed=6)
    counts, means, covs = class_moments(torch.from_numpy(x), torch.from_numpy(y), 4)
    assert counts.tolist() == [400, 300, 200, 50]
    for c in range(4):
        assert np.allclose(means[c].numpy(), x[y == c].mean(0))
        assert np.allclose(covs[c].numpy(), np.cov(x[y == c], rowvar=False, ddof=0))


def test_hundred_classes_of_64d_features_take_seconds():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(100).repeat_interleave(30)
    centres = torch.randn(100, 64, generator=g)
    feats = (centres[labels] + torch.randn(len(labels), 64, generator=g)).relu()
    start = time.perf_counter()
    res = fisher_separability(feats, labels, [500 - 5 * c for c in range(100)])
    assert time.perf_counter() - start < 20  # 4,950 solves; well under a second on an idle core
    assert res["classes_used"] == 100 and all(np.isfinite(res["per_class"]))
    assert res["many"] is not None and res["medium"] is not None and res["few"] is not None
