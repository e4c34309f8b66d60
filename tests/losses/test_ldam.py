import math

import pytest
import reference as ref
import torch

from dbm_ltr.losses import LDAMLoss, ldam_margins

C100 = ref.cifar_lt_counts(500, 100, 100)


def test_ldam_margins_spec_values():
    d = ldam_margins(C100, 0.5)
    assert d[0].item() == pytest.approx(0.158, abs=1e-3)
    assert d[99].item() == pytest.approx(0.5)
    want = [0.5 * (min(C100) / n) ** 0.25 for n in C100]
    torch.testing.assert_close(d, torch.tensor(want, dtype=torch.float32))


@pytest.mark.parametrize("base", ["ce", "drw"])
def test_ldam_matches_naive_reference(base):
    cos = torch.rand(32, 100, dtype=torch.float64) * 2 - 1
    t = torch.randint(0, 100, (32,))
    crit = LDAMLoss(C100, max_margin=0.5, scale=30.0, base=base)
    z = [[30 * v for v in row] for row in cos.tolist()]
    for b, y in enumerate(t.tolist()):
        z[b][y] = 30 * (cos[b, y].item() - 0.5 * (min(C100) / C100[y]) ** 0.25)
    torch.testing.assert_close(crit.margin_logits(cos, t), torch.tensor(z, dtype=torch.float64))
    assert crit(cos, t, epoch=0).item() == pytest.approx(ref.cross_entropy(z, t.tolist()), rel=1e-6)
    weights = ref.cb_weights(C100) if base == "drw" else None
    assert crit(cos, t, epoch=170).item() == pytest.approx(ref.cross_entropy(z, t.tolist(), weights), rel=1e-6)


def test_ldam_gradcheck_and_edges():
    crit = LDAMLoss([100, 10, 1])
    cos = (torch.rand(6, 3, dtype=torch.float64) * 2 - 1).requires_grad_()
    t = torch.tensor([0, 1, 2, 2, 1, 0])
    assert torch.autograd.gradcheck(lambda x: crit(x, t), (cos,))
    edge = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]], requires_grad=True)
    loss = crit(edge, torch.tensor([2, 0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(edge.grad).all()
    assert math.isfinite(loss.item())
