import time

import numpy as np
import pytest
import torch

from dbm_ltr.metrics import (
    AUTO_WORK,
    auto_dims,
    class_moments,
    fisher_pairwise,
    fisher_separability,
    principal_components,
)


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


def test_principal_components_are_the_top_directions_of_the_total_scatter():
    x, _ = gaussians(dim=6)
    got = principal_components(torch.from_numpy(x), 3).numpy()
    centred = x - x.mean(0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)  # naive reference: SVD of the data
    expected = centred @ vt[:3].T
    assert np.allclose(np.abs(got), np.abs(expected), atol=1e-8)  # each axis up to its sign
    assert np.allclose(got.T @ got, np.diag(sv[:3] ** 2), atol=1e-6)  # uncorrelated, by variance
    with pytest.raises(ValueError, match="dims must be in 1..6"):
        principal_components(torch.from_numpy(x), 7)


def test_fisher_on_principal_components_is_fisher_of_the_projected_features():
    x, y = gaussians(dim=6)
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    reduced = centred @ vt[:4].T
    got = fisher_pairwise(torch.from_numpy(x), torch.from_numpy(y), 4, ridge=0.0, dims=4)
    for i in range(4):
        for j in range(4):
            if i != j:
                assert got[i, j].item() == pytest.approx(closed_form(reduced, y, i, j), rel=1e-8)
    full = fisher_pairwise(torch.from_numpy(x), torch.from_numpy(y), 4, ridge=0.0)
    off = ~torch.eye(4, dtype=torch.bool)
    assert (got[off] <= full[off] * (1 + 1e-9)).all()  # a subspace can only separate less


def test_auto_dims_keeps_affordable_cases_exact_and_bounds_the_rest():
    assert auto_dims(100, 64, pooled_rank=198) == 64 and auto_dims(10, 64) == 64  # CIFAR test sets
    assert auto_dims(100, 64, pooled_rank=8) == 8  # CIFAR-100-LT training set: 5 + 5 images
    k = auto_dims(1000, 2048)  # ImageNet-LT with ResNet-50 features
    pairs = 1000 * 999 // 2
    assert pairs * k**3 <= AUTO_WORK < pairs * (k + 1) ** 3 and k == 34
    assert auto_dims(1000, 2048, pooled_rank=20) == 20  # never a singular S_i + S_j
    assert auto_dims(8142, 2048, pooled_rank=4) == 4 and auto_dims(1000, 2048, pooled_rank=0) == 1
    x, y = gaussians(dim=6)
    exact = fisher_separability(torch.from_numpy(x), torch.from_numpy(y), [400, 300, 200, 50])
    auto = fisher_separability(torch.from_numpy(x), torch.from_numpy(y), [400, 300, 200, 50], dims="auto")
    assert auto == exact and exact["dims"] == 6
    with pytest.raises(ValueError, match="dims must be None, 'auto' or an int"):
        fisher_separability(torch.from_numpy(x), torch.from_numpy(y), [1] * 4, dims="all")


def test_many_classes_of_wide_features_project_instead_of_solving_every_dimension():
    """300 classes of 256-d features: 44,850 solves of 256 x 256 (and 157 MB of covariances)
    in full; auto projects onto as many components as the two smallest classes support."""
    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([12] * 299 + [11])
    labels = torch.arange(300).repeat_interleave(sizes)
    feats = torch.randn(300, 256, generator=g)[labels] + 0.5 * torch.randn(len(labels), 256, generator=g)
    res = fisher_separability(feats, labels, [100] * 300, dims="auto")
    assert res["dims"] == 11 + 12 - 2 and res["classes_used"] == 300
    assert all(np.isfinite(res["per_class"])) and min(res["per_class"]) > 0
