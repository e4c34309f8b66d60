import math

import numpy as np
import pytest
import torch

from dbm_ltr.metrics import (
    ANGLE_STATS,
    angle_statistics,
    class_vector_cosines,
    feature_angles,
    summarize_angles,
)


def features_at_angles(weights: torch.Tensor, labels: torch.Tensor, degrees: torch.Tensor, seed=12345):
    """Features whose angle to ``weights[labels]`` is exactly ``degrees`` (float64), with
    random lengths and random directions orthogonal to the weight."""
    g = torch.Generator().manual_seed(seed)
    w = weights[labels].double()
    w_hat = w / w.norm(dim=1, keepdim=True)
    u = torch.randn(w.shape, generator=g, dtype=torch.float64)
    u = u - (u * w_hat).sum(dim=1, keepdim=True) * w_hat  # orthogonal to the weight
    u = u / u.norm(dim=1, keepdim=True)
    theta = torch.deg2rad(degrees.double()).unsqueeze(1)
    length = 0.1 + 5 * torch.rand(len(labels), 1, generator=g, dtype=torch.float64)
    return length * (torch.cos(theta) * w_hat + torch.sin(theta) * u)


def test_angles_of_constructed_features_are_recovered():
    weights = torch.randn(4, 16, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.2, 7.0]).unsqueeze(1)
    degrees = torch.tensor([0.0, 1.0, 30.0, 45.0, 89.5, 90.0, 120.0, 179.0, 180.0, 60.0, 10.0, 150.0])
    labels = torch.arange(len(degrees)) % 4
    feats = features_at_angles(weights, labels, degrees)
    got = feature_angles(feats, weights, labels)
    assert got.dtype == torch.float64
    assert torch.allclose(got, degrees.double(), atol=1e-5)


def test_parallel_float32_vectors_give_zero_not_nan():
    # fp32 cosines of parallel vectors can exceed 1; the cosine is clamped before arccos
    w = torch.randn(3, 64)
    got = feature_angles(w * 3.7, w, torch.arange(3))
    assert torch.isfinite(got).all() and got.max() < 0.05
    got = feature_angles(-w, w, torch.arange(3))
    assert torch.allclose(got, torch.full((3,), 180.0, dtype=torch.float64), atol=0.05)


def test_zero_feature_is_ninety_degrees():
    assert feature_angles(torch.zeros(1, 3), torch.eye(3), torch.tensor([1])).item() == 90.0


def test_statistics_per_group_match_numpy():
    counts = [500, 150, 60, 20, 19, 5]  # many, many, medium, medium, few, few
    weights = torch.randn(6, 8, dtype=torch.float64)
    labels = torch.arange(60) % 6
    degrees = torch.linspace(5, 150, 60)
    stats = angle_statistics(
        feature_angles(features_at_angles(weights, labels, degrees), weights, labels), labels, counts
    )
    assert set(stats) == {"many", "medium", "few", "all"}
    groups = {"many": (0, 1), "medium": (2, 3), "few": (4, 5)}
    for g, classes in groups.items():
        expected = degrees[(labels.unsqueeze(1) == torch.tensor(classes)).any(dim=1)].double().numpy()
        s = stats[g]
        assert set(s) == set(ANGLE_STATS)
        assert s["count"] == len(expected) == 20
        assert s["mean"] == pytest.approx(expected.mean(), abs=1e-6)
        assert [s["q25"], s["median"], s["q75"]] == pytest.approx(np.percentile(expected, [25, 50, 75]), abs=1e-6)
        assert (s["min"], s["max"]) == pytest.approx((expected.min(), expected.max()), abs=1e-6)
    assert stats["all"]["count"] == 60
    assert stats["all"]["mean"] == pytest.approx(degrees.double().mean().item(), abs=1e-6)


def test_empty_group_has_none_values():
    stats = angle_statistics(torch.tensor([10.0, 20.0]), torch.tensor([0, 1]), [5000, 500])  # CIFAR-10-like
    assert stats["few"]["count"] == 0 and stats["medium"]["count"] == 0
    assert all(stats["few"][k] is None for k in ANGLE_STATS if k != "count")
    assert stats["many"]["mean"] == 15.0
    assert summarize_angles(torch.empty(0))["mean"] is None


def test_bad_shapes_and_labels_are_errors():
    with pytest.raises(ValueError, match="share D"):
        feature_angles(torch.zeros(2, 3), torch.zeros(4, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        feature_angles(torch.ones(2, 3), torch.ones(4, 3), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="labels"):
        angle_statistics(torch.ones(2), torch.tensor([0, 2]), [10, 10])


def test_linear_head_uses_weight_rows_and_ignores_bias():
    from dbm_ltr.models import create_model

    model = create_model("resnet32", 10, "linear")
    w = model.class_weights()
    assert w.shape == (10, 64) and w.data_ptr() == model.head.weight.data_ptr()
    f = torch.rand(5, 64)
    labels = torch.arange(5)
    cos = torch.nn.functional.cosine_similarity(f, w[labels].detach(), dim=1).double()
    assert torch.allclose(feature_angles(f, w, labels), torch.rad2deg(torch.arccos(cos)), atol=1e-4)
    assert math.isclose(
        feature_angles(f, w * 2, labels)[0].item(), feature_angles(f, w, labels)[0].item(), abs_tol=1e-4
    )


def _naive_class_cosines(w):
    """Every ordered pair of distinct classes, one at a time (a zero vector has cosine 0)."""
    values = []
    for a in range(len(w)):
        for b in range(len(w)):
            if a != b:
                na, nb = math.sqrt(sum(x * x for x in w[a])), math.sqrt(sum(x * x for x in w[b]))
                dot = sum(x * y for x, y in zip(w[a], w[b]))
                values.append(dot / (na * nb) if na and nb else 0.0)
    return sum(values) / len(values), max(values)


@pytest.mark.parametrize("chunk", [1, 3, 1024])
def test_class_vector_cosines_match_every_pair(chunk):
    w = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    w[3] = 0  # a zero class vector: cosine 0 with every other
    w[5] = 2.5 * w[1]  # same direction, other length: cosine 1
    mean, largest = _naive_class_cosines(w.tolist())
    got = class_vector_cosines(w, chunk=chunk)
    assert got["mean"] == pytest.approx(mean, abs=1e-12) and got["max"] == pytest.approx(largest, abs=1e-12)
    assert got["max"] == pytest.approx(1.0)


def test_class_vector_cosines_of_a_collapsed_and_of_an_orthogonal_classifier():
    collapsed = torch.ones(10, 64) + 1e-3 * torch.randn(10, 64, generator=torch.Generator().manual_seed(1))
    assert class_vector_cosines(collapsed)["mean"] > 0.999
    got = class_vector_cosines(torch.eye(6, dtype=torch.bfloat16))
    assert got == {"mean": 0.0, "max": 0.0}
    assert class_vector_cosines(torch.ones(1, 4)) == {"mean": None, "max": None}  # no pair
    with pytest.raises(ValueError, match=r"\(C, D\) matrix"):
        class_vector_cosines(torch.ones(4))
