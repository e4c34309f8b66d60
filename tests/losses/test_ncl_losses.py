import math

import pytest
import torch
import torch.nn.functional as F

from dbm_ltr.losses.ncl import (
    hard_category_mask,
    moco_loss,
    nested_balanced_online_distillation,
)


def test_hard_category_mask_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.7], [0.0, 0.3, 0.2, 0.1]])
    target = torch.tensor([3, 0])
    mask = hard_category_mask(scores, target, 2)
    # row 0: target 3 + the highest other (class 0); row 1: target 0 (lowest score) + class 1
    assert mask.tolist() == [[1, 0, 0, 1], [1, 1, 0, 0]]
    assert hard_category_mask(scores, target, 4).sum().item() == 8
    with pytest.raises(ValueError, match="k must be in 1..4"):
        hard_category_mask(scores, target, 5)


def kl(p, q):
    return sum(a * (math.log(a) - math.log(b + 1e-9)) for a, b in zip(p, q))


def softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def test_nbod_against_hand_computation():
    a = [
        torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], dtype=torch.float64),
        torch.tensor([[0.3, 0.1, 0.2], [2.0, 1.0, 0.0]], dtype=torch.float64),
        torch.tensor([[-1.0, 0.0, 1.0], [0.5, 0.5, 0.5]], dtype=torch.float64),
    ]
    probs = [[softmax(r) for r in x.tolist()] for x in a]
    total = 0.0
    for i in range(3):
        for j in range(3):
            if i != j:  # KL(p_j || p_i), batch mean
                total += sum(kl(probs[j][b], probs[i][b]) for b in range(2)) / 2
    want = 0.6 / 2 * total
    assert nested_balanced_online_distillation(a, 0.6).item() == pytest.approx(want, rel=1e-6)
    assert nested_balanced_online_distillation(a[:1]).item() == 0.0


def test_nbod_gradient_finite_when_probabilities_underflow():
    a = [
        torch.tensor([[500.0, 0.0, -500.0]], requires_grad=True),
        torch.tensor([[0.0, 300.0, 0.0]], requires_grad=True),
    ]
    loss = nested_balanced_online_distillation(a)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(x.grad).all() for x in a)


def test_moco_loss_by_hand():
    q = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=1)
    k = F.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0]]), dim=1)
    queue = F.normalize(torch.tensor([[1.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]), dim=1)
    want = 0.0
    for b in range(2):
        logits = [float(q[b] @ k[b]) / 0.2] + [float(q[b] @ n) / 0.2 for n in queue]
        want += -logits[0] + math.log(sum(math.exp(v) for v in logits))
    assert moco_loss(q, k, queue, 0.2).item() == pytest.approx(want / 2, rel=1e-6)
