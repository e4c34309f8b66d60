import math
import warnings

import pytest
import reference as ref
import torch
import torch.nn.functional as F

from dbm_ltr.losses import DBMLoss, class_margins, dbm_target_cosine, hard_positive_mask

C100 = ref.cifar_lt_counts(500, 100, 100)  # CIFAR-100-LT IF 100
C10 = ref.cifar_lt_counts(5000, 10, 100)


def random_cosines(batch, classes, generator=None, dtype=torch.float64):
    return torch.rand(batch, classes, generator=generator, dtype=dtype) * 2 - 1


def cos_with_target_angles(angles_deg, target, classes, others=0.0):
    """Cosine matrix whose target entries sit at the given angles."""
    cos = torch.full((len(angles_deg), classes), others, dtype=torch.float64)
    cos[torch.arange(len(target)), target] = torch.cos(torch.deg2rad(torch.tensor(angles_deg, dtype=torch.float64)))
    return cos


# ---------------------------------------------------------------- class margins


def test_class_margins_formula_and_rarest_gets_k():
    m = class_margins(C100, max_margin=0.2, tau=0.5)
    expected = [ref.class_margin(C100, c, 0.2, 0.5) for c in range(100)]
    torch.testing.assert_close(m, torch.tensor(expected, dtype=torch.float32))
    assert m.dtype == torch.float32
    assert m.max().item() == pytest.approx(0.2)


def test_class_margins_spec_values():
    m = class_margins(C100)
    assert m[0].item() == pytest.approx(0.001, rel=1e-6)
    assert m[50].item() == pytest.approx(0.0104167, rel=1e-5)
    assert m[99].item() == pytest.approx(0.1, rel=1e-6)


def test_class_margins_any_class_order():
    counts = [50, 5000, 7, 300]
    m = class_margins(counts, max_margin=0.3)
    assert m[2].item() == pytest.approx(0.3)  # the rarest, wherever it stands
    assert m.argmax().item() == 2
    expected = [0.3 * 7 / n for n in counts]
    torch.testing.assert_close(m, torch.tensor(expected, dtype=torch.float32))


def test_class_margins_reference_last_is_official_parity_and_warns():
    counts = [500, 5, 50]
    with pytest.warns(UserWarning, match="rarest class"):
        m = class_margins(counts, reference="last")
    torch.testing.assert_close(m, torch.tensor([0.1 * 50 / 500, 0.1 * 50 / 5, 0.1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        class_margins(C100, reference="last")  # sorted counts: no warning, same as "min"
    torch.testing.assert_close(class_margins(C100, reference="last"), class_margins(C100))


def test_tau_zero_gives_uniform_margin():
    torch.testing.assert_close(class_margins(C100, 0.2, tau=0.0), torch.full((100,), 0.2))


# ---------------------------------------------------------------- DBM logits


def test_spec_test_vectors():
    """Hand-computed values: CIFAR-100-LT IF 100, K=0.1, tau=1, lambda=1, s=32."""
    rows = [  # (target, c_y, hard, total margin, target logit)
        (99, 0.5, 1, 0.125000, 12.420075),
        (99, 0.5, 0, 0.100000, 13.153402),
        (0, 0.5, 1, 0.001250, 15.965346),
        (50, 0.9, 1, 0.010937, 28.645719),
        (99, -0.3, 1, 0.165000, -14.483592),
    ]
    crit = DBMLoss(C100)
    cos = torch.zeros(len(rows), 100)
    target = torch.tensor([r[0] for r in rows])
    for b, (y, cy, hard, _, _) in enumerate(rows):
        cos[b, y] = cy
        other = (y + 1) % 100
        cos[b, other] = 0.95 if hard else -0.5
    z = crit.margin_logits(cos, target)
    got = z[torch.arange(len(rows)), target]
    torch.testing.assert_close(got, torch.tensor([r[4] for r in rows]), atol=2e-5, rtol=0)


@pytest.mark.parametrize("overflow", ["arcface", "none"])
@pytest.mark.parametrize("mode", ["hard", "all", "none"])
@pytest.mark.parametrize("K,tau,lam", [(0.1, 1.0, 1.0), (0.3, 0.5, 1.0), (0.2, 1.5, 0.5)])
def test_margin_logits_match_naive_reference_over_all_angles(mode, K, tau, lam, overflow):
    """Every target angle 0..180 degrees, for a frequent, a medium and a rare class; with the
    ArcFace fallback beyond pi and without it (``overflow_mode="none"``, the original code)."""
    angles = [float(a) for a in range(0, 181)]
    gen = torch.Generator().manual_seed(1)
    crit = DBMLoss(C100, max_margin=K, tau=tau, lambda_inst=lam, instance_margin=mode, overflow_mode=overflow)
    for y in (0, 50, 99):
        target = torch.full((len(angles),), y)
        cos = random_cosines(len(angles), 100, gen) * 0.6  # some rows hard, some easy
        cos[torch.arange(len(angles)), target] = torch.cos(torch.deg2rad(torch.tensor(angles, dtype=torch.float64)))
        for dtype, tol in ((torch.float64, 1e-6), (torch.float32, 5e-5)):  # margins: float32 buffers
            x = cos.to(dtype)
            got = crit.margin_logits(x, target)
            want = ref.dbm_logits(x.double().tolist(), target.tolist(), C100, K, tau, 32.0, lam, mode, overflow)
            torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), atol=tol, rtol=0)


def test_margin_reference_last_reaches_the_logits():
    """``margin_reference="last"`` (the original code: margins relative to the last class's
    count) changes the logits when the last class is not the rarest."""
    counts = [500, 5, 50, 20]
    gen = torch.Generator().manual_seed(3)
    cos = random_cosines(64, 4, gen)
    target = torch.arange(64) % 4
    with pytest.warns(UserWarning, match="rarest class"):
        crit = DBMLoss(counts, max_margin=0.1, margin_reference="last")
    for reference, loss in (("last", crit), ("min", DBMLoss(counts, max_margin=0.1))):
        want = ref.dbm_logits(cos.tolist(), target.tolist(), counts, 0.1, reference=reference)
        got = loss.margin_logits(cos, target)
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), atol=1e-6, rtol=0)
    assert not torch.allclose(
        crit.margin_logits(cos, target), DBMLoss(counts, max_margin=0.1).margin_logits(cos, target)
    )


def test_output_dtype_float32_for_half_inputs_and_float64_kept():
    crit = DBMLoss(C10)
    cos = random_cosines(16, 10).float()
    target = torch.randint(0, 10, (16,))
    ref32 = crit.margin_logits(cos, target)
    for dtype in (torch.float16, torch.bfloat16):
        z = crit.margin_logits(cos.to(dtype), target)
        assert z.dtype == torch.float32
        want = crit.margin_logits(cos.to(dtype).float(), target)  # same rounded inputs
        torch.testing.assert_close(z, want)
        torch.testing.assert_close(z, ref32, atol=0.35, rtol=0)  # bf16 input rounding, s=32
    assert crit.margin_logits(cos.double(), target).dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_loss_and_grad_finite_under_autocast(dtype):
    crit = DBMLoss(C100, base="bs")
    feats = torch.randn(32, 64, requires_grad=True)
    weight = torch.randn(64, 100)
    target = torch.randint(0, 100, (32,))
    with torch.autocast("cpu", dtype=dtype):
        cos = (F.normalize(feats, dim=1) @ F.normalize(weight, dim=0)).to(dtype)
        loss = crit(cos, target)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(feats.grad).all()


def test_non_target_logits_are_exactly_scaled_cosines():
    crit = DBMLoss(C10, max_margin=0.3)
    cos = random_cosines(64, 10).float()
    cos[0, :] = 1.0
    cos[1, :] = -1.0
    target = torch.randint(0, 10, (64,))
    z = crit.margin_logits(cos, target)
    mask = F.one_hot(target, 10).bool()
    assert torch.equal(z[~mask], (cos * 32.0)[~mask])


def test_zero_margin_is_plain_cosine_classifier():
    crit = DBMLoss(C100, base="ce", max_margin=0.0)
    cos = random_cosines(32, 100).float().requires_grad_()
    target = torch.randint(0, 100, (32,))
    assert torch.equal(crit.margin_logits(cos, target), cos * 32.0)
    loss = crit(cos, target)
    torch.testing.assert_close(loss, F.cross_entropy(cos * 32.0, target))
    (g,) = torch.autograd.grad(loss, cos)
    cos2 = cos.detach().requires_grad_()
    (g2,) = torch.autograd.grad(F.cross_entropy(cos2 * 32.0, target), cos2)
    torch.testing.assert_close(g, g2)


def test_tau0_lambda0_is_arcface_with_uniform_margin():
    K, s = 0.2, 32.0
    crit = DBMLoss(C100, max_margin=K, tau=0.0, lambda_inst=0.0, scale=s)
    cos = random_cosines(128, 100) * 0.9
    target = torch.randint(0, 100, (128,))
    # ArcFace (Deng et al. 2019) with the easy-margin-free threshold fallback, written out
    theta = torch.acos(cos.gather(1, target[:, None]).squeeze(1))
    arc = torch.where(theta + K <= math.pi, torch.cos(theta + K), torch.cos(theta) - K * math.sin(K))
    want = cos * s
    want[torch.arange(128), target] = arc * s
    torch.testing.assert_close(crit.margin_logits(cos, target), want)
    torch.testing.assert_close(crit(cos, target), F.cross_entropy(want, target))


def test_instance_margin_only_on_hard_positives():
    crit = DBMLoss(C10, max_margin=0.3)
    target = torch.tensor([9, 9])
    cos = torch.tensor([[0.2] * 9 + [0.5], [0.8] + [0.2] * 8 + [0.5]], dtype=torch.float64)
    z = crit.margin_logits(cos, target)[:, 9] / 32
    easy = math.cos(math.acos(0.5) + 0.3)
    hard = math.cos(math.acos(0.5) + 0.3 * (1 + 0.25))
    torch.testing.assert_close(z, torch.tensor([easy, hard], dtype=torch.float64))


def test_ablation_modes_order_the_target_logit():
    cos = torch.tensor([[0.9, 0.1, 0.3]], dtype=torch.float64)  # class 2 target, hard
    t = torch.tensor([2])
    z = {
        m: DBMLoss([100, 50, 10], instance_margin=m).margin_logits(cos, t)[0, 2].item() for m in ("none", "hard", "all")
    }
    plain = DBMLoss([100, 50, 10], max_margin=0).margin_logits(cos, t)[0, 2].item()
    assert plain > z["none"] > z["hard"] == pytest.approx(z["all"])
    easy = torch.tensor([[0.1, 0.1, 0.3]], dtype=torch.float64)
    z_easy = {
        m: DBMLoss([100, 50, 10], instance_margin=m).margin_logits(easy, t)[0, 2].item()
        for m in ("none", "hard", "all")
    }
    assert z_easy["none"] == pytest.approx(z_easy["hard"]) and z_easy["all"] < z_easy["hard"]


# ---------------------------------------------------------------- hard-positive mask


def test_hard_mask_on_raw_cosines_not_on_prior_adjusted_logits():
    # raw argmax is class 0 (hard for target 2); with the log prior class 2 would not win
    counts = [10, 1000, 5000]
    cos = torch.tensor([[0.50, 0.10, 0.49]])
    t = torch.tensor([2])
    bs = DBMLoss(counts, base="bs", max_margin=0.1)
    z = bs.margin_logits(cos, t)
    m_c = 0.1 * 10 / 5000
    hard_margin = m_c * (1 + (1 - 0.49) / 2)
    assert z[0, 2].item() == pytest.approx(32 * math.cos(math.acos(0.49) + hard_margin), abs=1e-5)


def test_fast_hard_mask_equals_argmax_including_ties():
    crit = DBMLoss([10] * 6, max_margin=0.3)
    rows = [
        [0.5, 0.5, 0.1, 0.0, 0.0, 0.0],  # tie between 0 and 1
        [0.0] * 6,  # all tied (e.g. a zero feature)
        [0.3, 0.2, 0.3, 0.3, 0.1, 0.0],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        [0.5, 0.5 + 1e-7, 0.0, 0.0, 0.0, 0.0],  # one ulp apart: same after scaling
    ]
    cos = torch.tensor(rows)
    for y in range(6):
        target = torch.full((len(rows),), y)
        h = hard_positive_mask(cos, target)
        for b, row in enumerate(rows):
            assert h[b].item() == float(ref.first_argmax(torch.tensor(row).tolist()) != y)
        slope = crit.margin_slope[target] * h
        margin = crit.class_margin[target] + slope * (1 - cos[:, y])
        want = torch.cos(torch.acos(cos[:, y]) + margin) * 32
        torch.testing.assert_close(crit.margin_logits(cos, target)[:, y], want)


def test_hard_mask_where_scaling_merges_two_cosines():
    """At s = 30 (the large-scale presets, GML) two adjacent float32 cosines can round to one
    scaled value: the row is settled on the raw cosines, as the reference's argmax does."""
    x = torch.linspace(0.25, 0.99, 4001, dtype=torch.float32)
    up = torch.nextafter(x, torch.tensor(2.0))
    merged = x[(x * 30 == up * 30) & (x < up)]
    assert len(merged) > 0
    a = merged[0].item()
    b = torch.nextafter(merged[:1], torch.tensor([2.0])).item()
    cos = torch.tensor([[a, b, 0.0], [a, b, 0.0], [b, a, 0.0]], dtype=torch.float32)
    target = torch.tensor([0, 1, 0])  # hard (b > a), easy, easy (first of equal-after-scaling)
    crit = DBMLoss([100, 100, 100], scale=30.0, max_margin=0.3)
    hard = [float(ref.first_argmax(row) != y) for row, y in zip(cos.double().tolist(), target.tolist())]
    assert hard == [1.0, 0.0, 0.0]
    want = ref.dbm_logits(cos.double().tolist(), target.tolist(), [100, 100, 100], 0.3, s=30.0)
    got = crit.margin_logits(cos, target).double()
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), atol=2e-5, rtol=0)


def test_fast_hard_mask_random_matches_reference():
    gen = torch.Generator().manual_seed(3)
    crit = DBMLoss(C100)
    cos = torch.randint(-4, 5, (512, 100), generator=gen) / 4.0  # many exact ties
    target = torch.randint(0, 100, (512,), generator=gen)
    want = ref.dbm_logits(cos.double().tolist(), target.tolist(), C100)
    torch.testing.assert_close(
        crit.margin_logits(cos, target).double(), torch.tensor(want, dtype=torch.float64), atol=5e-5, rtol=0
    )


# ---------------------------------------------------------------- theta + m > pi


@pytest.mark.parametrize("K", [0.1, 0.3, 0.5])
@pytest.mark.parametrize("mode", ["hard", "all", "none"])
def test_target_logit_monotone_and_below_plain_everywhere(K, mode):
    c = torch.linspace(-1, 1, 20001, dtype=torch.float64)
    hard = 1.0 if mode != "none" else 0.0
    psi = dbm_target_cosine(c, torch.full_like(c, K), hard, 1.0)
    assert torch.all(psi <= c + 1e-12)
    assert torch.all(psi[1:] >= psi[:-1])  # harder sample (smaller c) never gets a larger logit
    assert torch.isfinite(psi).all()


def test_overflow_fallback_value_and_parity_mode():
    c = torch.tensor([-0.99, -0.5], dtype=torch.float64)
    m = torch.tensor([0.3, 0.3], dtype=torch.float64)
    psi = dbm_target_cosine(c, m, 0.0)
    assert psi[0].item() == pytest.approx(-0.99 - 0.3 * math.sin(0.3))  # acos(-.99)+.3 > pi
    assert psi[1].item() == pytest.approx(math.cos(math.acos(-0.5) + 0.3))
    raw = dbm_target_cosine(c, m, 0.0, overflow_mode="none")
    assert raw[0].item() == pytest.approx(math.cos(math.acos(-0.99) + 0.3))
    assert raw[0] > c[0]  # the original code's wrong-way logit


# ---------------------------------------------------------------- gradients


def test_gradcheck_float64_normal_range():
    gen = torch.Generator().manual_seed(5)
    for mode in ("hard", "all", "none"):
        for base in ("ce", "bs", "cb"):
            crit = DBMLoss(C10, base=base, max_margin=0.3, instance_margin=mode)
            cos = (random_cosines(12, 10, gen) * 0.95).requires_grad_()
            target = torch.randint(0, 10, (12,), generator=gen)
            assert torch.autograd.gradcheck(lambda x: crit.margin_logits(x, target), (cos,))
            assert torch.autograd.gradcheck(lambda x: crit(x, target), (cos,))


@pytest.mark.parametrize("mode", ["all", "hard", "none"])
def test_gradcheck_in_overflow_region(mode):
    """theta + m > pi (the ArcFace fallback c - m sin m) with and without an instance margin:
    without one m is a constant and d psi / dc is 1 (row 2 is easy: no instance margin in
    "hard" mode either)."""
    crit = DBMLoss([100, 10], max_margin=0.5, instance_margin=mode)
    cos = torch.tensor([[0.3, -0.97], [0.1, -0.999], [-1.0, -0.995]], dtype=torch.float64)
    cos.requires_grad_()
    target = torch.tensor([1, 1, 1])
    assert (torch.acos(cos[:, 1]) + 0.5 > math.pi).all()  # every target in the fallback
    assert torch.autograd.gradcheck(lambda x: crit.margin_logits(x, target), (cos,))
    assert torch.autograd.gradcheck(lambda x: crit(x, target), (cos,))


def test_gradient_matches_spec_closed_form():
    """The derivative: dz_y/dc = s sin(theta + m) (1/sqrt(1 - c^2) + lambda h m_C / 2)."""
    crit = DBMLoss(C100, scale=32.0)
    cos = torch.zeros(3, 100, dtype=torch.float64)
    target = torch.tensor([99, 50, 0])
    cy = torch.tensor([0.3, -0.2, 0.7], dtype=torch.float64)
    cos[torch.arange(3), target] = cy
    cos[:, 1] = 0.9  # all hard (class 1 wins)
    cos.requires_grad_()
    z = crit.margin_logits(cos, target)
    (g,) = torch.autograd.grad(z[torch.arange(3), target].sum(), cos)
    for b in range(3):
        y, c = target[b].item(), cy[b].item()
        mc = ref.class_margin(C100, y)
        m = mc * (1 + (1 - c) / 2)
        want = 32 * math.sin(math.acos(c) + m) * (1 / math.sqrt(1 - c * c) + mc / 2)
        assert g[b, y].item() == pytest.approx(want, rel=1e-6)  # float32 margins


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("base", ["ce", "bs", "drw"])
def test_loss_and_grad_finite_at_the_edges(dtype, base):
    crit = DBMLoss(C10, base=base, max_margin=0.3)
    edge = torch.tensor([1.0, -1.0, 1.0000002, -1.0000002, 0.9999999, -0.9999999, 0.0])
    cos = edge[torch.randint(0, len(edge), (64, 10))].to(dtype).requires_grad_()
    target = torch.randint(0, 10, (64,))
    loss = crit(cos, target, epoch=170)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(cos.grad).all()
    assert cos.grad.abs().max() < 1e4


def test_target_logit_at_exact_edges():
    crit = DBMLoss([100, 10], max_margin=0.2, instance_margin="none")
    cos = torch.tensor([[0.0, 1.0], [0.0, -1.0]], requires_grad=True)
    t = torch.tensor([1, 1])
    z = crit.margin_logits(cos, t)
    assert z[0, 1].item() == pytest.approx(32 * math.cos(0.2), rel=1e-6)
    assert z[1, 1].item() == pytest.approx(32 * (-1 - 0.2 * math.sin(0.2)), rel=1e-6)
    (g,) = torch.autograd.grad(z[:, 1].sum(), cos)
    assert torch.isfinite(g).all()


# ---------------------------------------------------------------- module behaviour


def test_buffers_follow_dtype_and_device_and_stay_out_of_state_dict():
    crit = DBMLoss(C10, base="bs")
    names = {n for n, _ in crit.named_buffers()}
    assert {"class_margin", "margin_slope", "base_loss.logit_offset"} <= names
    assert crit.state_dict() == {}  # derived from counts, rebuilt from the config
    moved = crit.to(torch.float64)
    assert moved.class_margin.dtype == torch.float64
    meta = DBMLoss(C10).to("meta")
    assert meta.class_margin.device.type == "meta"


def test_repr_lists_hyperparameters():
    text = repr(DBMLoss(C10, base="drw", max_margin=0.2))
    assert "max_margin=0.2" in text and "base='drw'" in text
