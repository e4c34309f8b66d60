import pytest
import reference as ref
import torch

from dbm_ltr.losses import (
    BalancedLoss,
    DBMLoss,
    class_balanced_weights,
    create_loss,
    drw_phase,
    log_prior,
)

C100 = ref.cifar_lt_counts(500, 100, 100)


def test_class_balanced_weights_closed_form_and_spec_values():
    w = class_balanced_weights(C100, 0.9999)
    torch.testing.assert_close(w, torch.tensor(ref.cb_weights(C100), dtype=torch.float32))
    assert w.sum().item() == pytest.approx(100, rel=1e-6)
    assert w[0].item() == pytest.approx(0.0449, abs=5e-4)
    assert w[50].item() == pytest.approx(0.457, abs=5e-3)
    assert w[99].item() == pytest.approx(4.378, abs=5e-3)
    assert torch.equal(class_balanced_weights(C100, 0.0), torch.ones(100))


def test_log_prior_spec_values():
    assert sum(C100) == 10847
    lp = log_prior(C100)
    assert lp[0].item() == pytest.approx(-3.0770, abs=1e-4)
    assert lp[99].item() == pytest.approx(-7.6822, abs=1e-4)


def random_batch(batch=32, classes=100, dtype=torch.float64):
    return torch.randn(batch, classes, dtype=dtype) * 3, torch.randint(0, classes, (batch,))


def test_ce_and_cb_match_reference():
    z, t = random_batch()
    assert BalancedLoss(C100, "ce")(z, t).item() == pytest.approx(ref.cross_entropy(z.tolist(), t.tolist()))
    got = BalancedLoss(C100, "cb")(z, t).item()
    assert got == pytest.approx(ref.cross_entropy(z.tolist(), t.tolist(), ref.cb_weights(C100)), rel=1e-6)


def test_weighted_mean_divides_by_sum_of_weights_not_batch():
    z, t = random_batch(8, 3)
    counts = [1000, 100, 10]
    w = ref.cb_weights(counts)
    loss = BalancedLoss(counts, "cb")(z, t).item()
    per = [ref.cross_entropy([r], [y]) for r, y in zip(z.tolist(), t.tolist())]
    want = sum(w[y] * l for y, l in zip(t.tolist(), per)) / sum(w[y] for y in t.tolist())
    assert loss == pytest.approx(want, rel=1e-6)


def test_balanced_softmax_adds_log_prior():
    z, t = random_batch()
    lp = ref.log_prior(C100)
    adjusted = [[v + p for v, p in zip(row, lp)] for row in z.tolist()]
    assert BalancedLoss(C100, "bs")(z, t).item() == pytest.approx(ref.cross_entropy(adjusted, t.tolist()), rel=1e-6)


def test_dbm_bs_adds_prior_after_scaling():
    cos = torch.rand(16, 100, dtype=torch.float64) * 2 - 1
    t = torch.randint(0, 100, (16,))
    crit = DBMLoss(C100, base="bs")
    z = ref.dbm_logits(cos.tolist(), t.tolist(), C100)
    lp = ref.log_prior(C100)
    adjusted = [[v + p for v, p in zip(row, lp)] for row in z]
    assert crit(cos, t).item() == pytest.approx(ref.cross_entropy(adjusted, t.tolist()), rel=1e-6)
    # margin_logits is before the base-loss adjustment
    torch.testing.assert_close(crit.margin_logits(cos, t), torch.tensor(z, dtype=torch.float64), atol=1e-5, rtol=0)


def test_drw_switch_and_phase_clamp():
    assert [drw_phase(e, 160) for e in (0, 159, 160, 199, 320, 1000)] == [0, 0, 1, 1, 1, 1]
    z, t = random_batch()
    drw, ce, cb = (BalancedLoss(C100, b) for b in ("drw", "ce", "cb"))
    assert drw(z, t, epoch=159).item() == pytest.approx(ce(z, t).item())
    assert drw(z, t, epoch=160).item() == pytest.approx(cb(z, t).item())
    assert drw(z, t, epoch=400).item() == pytest.approx(cb(z, t).item())  # original code: IndexError
    early = BalancedLoss(C100, "drw", drw_epoch=3)
    assert early(z, t, epoch=3).item() == pytest.approx(cb(z, t).item())


def test_dbm_drw_switches_weights_with_margin_active_in_both_phases():
    cos = torch.rand(16, 100, dtype=torch.float64) * 2 - 1
    t = torch.randint(0, 100, (16,))
    z = ref.dbm_logits(cos.tolist(), t.tolist(), C100)
    crit = DBMLoss(C100, base="drw")
    assert crit(cos, t, epoch=0).item() == pytest.approx(ref.cross_entropy(z, t.tolist()), rel=1e-6)
    want = ref.cross_entropy(z, t.tolist(), ref.cb_weights(C100))
    assert crit(cos, t, epoch=160).item() == pytest.approx(want, rel=1e-6)


def test_drw_without_epoch_is_an_error():
    z, t = random_batch()
    with pytest.raises(ValueError, match="epoch="):
        BalancedLoss(C100, "drw")(z, t)


def test_registry_builds_every_base_and_margin_loss():
    z, t = random_batch(8, 100)
    for name in ("ce", "cb", "bs"):
        crit = create_loss(name, C100)
        assert crit.base == name and crit.input_kind == "logits"
        assert torch.isfinite(crit(z, t))
    assert create_loss("drw", C100, drw_epoch=5).drw_epoch == 5
    dbm = create_loss("dbm", C100, base="bs", max_margin=0.2)
    assert isinstance(dbm, DBMLoss) and dbm.input_kind == "cosine" and dbm.max_margin == 0.2
    assert create_loss("ldam", C100, base="drw").base == "drw"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_logits_give_the_float32_loss_of_the_rounded_logits(dtype):
    """Outside autocast too (a model run in half precision): the loss, its class weights and
    offsets in float32, equal to the loss of the same rounded logits in float32."""
    z, t = random_batch(8, 100, torch.float32)
    for base in ("ce", "bs", "cb", "drw"):
        crit = BalancedLoss(C100, base, drw_epoch=1)
        want = crit(z.to(dtype).float(), t, epoch=1)
        got = crit(z.to(dtype), t, epoch=1)
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(want.item(), rel=1e-6)
