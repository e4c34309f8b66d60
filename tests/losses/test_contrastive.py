import math

import pytest
import torch
import torch.nn.functional as F

from dbm_ltr.losses.contrastive import balanced_contrastive_loss


def naive_bsc(anchors, labels, prototypes, T):
    """The BCL loss written out anchor by anchor, in float64 Python arithmetic."""
    u = anchors.double().tolist()
    q = prototypes.double().tolist()
    y = labels.tolist()
    contrast = u + q
    c_labels = y + list(range(len(q)))
    count = {c: y.count(c) + 1 for c in range(len(q))}
    dot = lambda a, b: sum(x * z for x, z in zip(a, b))
    losses = []
    for i in range(len(u)):
        denom = 0.0
        positives = []
        for j in range(len(contrast)):
            if j == i:
                continue
            same = c_labels[j] == y[i]
            denom += math.exp(dot(u[i], contrast[j]) / T) / (count[c_labels[j]] - (1 if same else 0))
            if same:
                positives.append(j)
        log_d = math.log(denom)
        losses.append(-sum(dot(u[i], contrast[p]) / T - log_d for p in positives) / len(positives))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_per_anchor_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    classes = 5
    labels = torch.randint(0, 3, (6,), generator=gen).repeat(2)  # classes 3, 4 absent: prototypes only
    anchors = F.normalize(torch.randn(12, 8, generator=gen, dtype=torch.float64), dim=1)
    protos = F.normalize(torch.randn(classes, 8, generator=gen, dtype=torch.float64), dim=1)
    for T in (0.1, 0.5):
        got = balanced_contrastive_loss(anchors, labels, protos, T).item()
        assert got == pytest.approx(naive_bsc(anchors, labels, protos, T), rel=1e-9)


def test_single_sample_class_still_has_its_prototype_as_positive():
    anchors = F.normalize(torch.randn(2, 4, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 1])
    protos = F.normalize(torch.randn(2, 4, dtype=torch.float64), dim=1)
    got = balanced_contrastive_loss(anchors, labels, protos, 0.1)
    assert got.item() == pytest.approx(naive_bsc(anchors, labels, protos, 0.1), rel=1e-9)
    assert torch.isfinite(got)


def test_gradients_and_stability_at_low_temperature():
    anchors = F.normalize(torch.randn(16, 8), dim=1).requires_grad_()
    protos = F.normalize(torch.randn(4, 8), dim=1).requires_grad_()
    labels = torch.randint(0, 4, (16,))
    loss = balanced_contrastive_loss(anchors, labels, protos, 0.01)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(anchors.grad).all() and torch.isfinite(protos.grad).all()
    with pytest.raises(ValueError, match="share d"):
        balanced_contrastive_loss(anchors, labels, torch.randn(4, 7), 0.1)
