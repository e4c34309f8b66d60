"""The machinery shared by the margin losses: the one-function cross-entropy, the per-sample
work, and what they promise about inputs."""

import math

import pytest
import reference as ref
import torch
import torch.nn.functional as F

from dbm_ltr.losses import DBMLoss, LDAMLoss, margins

C100 = ref.cifar_lt_counts(500, 100, 100)
LOSSES = {
    "dbm-ce": lambda: DBMLoss(C100),
    "dbm-bs": lambda: DBMLoss(C100, base="bs", max_margin=0.3),
    "dbm-cb-all": lambda: DBMLoss(C100, base="cb", instance_margin="all"),
    "dbm-drw-none": lambda: DBMLoss(C100, base="drw", instance_margin="none"),
    "dbm-zero": lambda: DBMLoss(C100, max_margin=0.0),
    "ldam-drw": lambda: LDAMLoss(C100, base="drw"),
}


def batch(rows=64, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cos = torch.rand(rows, 100, generator=gen, dtype=dtype) * 2 - 1
    cos[:4] = torch.randint(-2, 3, (4, 100), generator=gen) / 2  # exact ties and +-1
    cos[4, :] = -1.0
    cos[4, 0] = 1.0  # target far below the best class: theta + m > pi
    target = torch.randint(0, 100, (rows,), generator=gen)
    return cos, target


def reference_loss(crit, cos, target, epoch):
    """``F.cross_entropy`` on the library's margin logits (checked against the naive float64
    references in test_dbm.py / test_ldam.py)."""
    base = crit.base_loss
    logits = crit.margin_logits(cos, target)
    if base.logit_offset is not None:
        logits = logits + base.logit_offset
    return F.cross_entropy(logits, target, weight=base.weight_at(epoch))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", LOSSES)
def test_the_accelerator_path_gives_the_cpu_results(name):
    """On an accelerator the loss blends its rare branches (ArcFace fallback, ties of the hard
    mask, tiny probabilities) instead of testing for them on the host, and checks the cosine
    range on the device: the same logits, loss and gradient as the CPU path, on the edge
    cases of ``batch()`` (exact ties, +-1, theta + m > pi)."""
    results = []
    for device in ("cpu", "cuda"):
        crit = LOSSES[name]().to(device)
        cos, target = (t.to(device) for t in batch())
        x = cos.clone().requires_grad_()
        loss = crit(x, target, epoch=170)
        loss.backward()
        results.append([t.detach().cpu() for t in (crit.margin_logits(cos, target), loss, x.grad)])
    for cpu, cuda in zip(*results):
        torch.testing.assert_close(cuda, cpu, rtol=1e-5, atol=1e-6)
    cos, target = (t.to("cuda") for t in batch())
    cos[5, target[5]] = float("nan")  # a diverged step: a NaN loss for train.nan_policy, no device assert
    assert torch.isnan(LOSSES[name]().to("cuda")(cos, target, epoch=170)).item()
    torch.cuda.synchronize()


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("epoch", [0, 170])
def test_loss_and_gradient_equal_cross_entropy_of_the_margin_logits(name, epoch):
    crit = LOSSES[name]()
    cos, target = batch()
    mine = cos.clone().requires_grad_()
    theirs = cos.clone().requires_grad_()
    loss = crit(mine, target, epoch=epoch)
    want = reference_loss(crit, theirs, target, epoch)
    loss.backward()
    want.backward()
    assert loss.dtype == torch.float32 and loss.shape == ()
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", LOSSES)
def test_gradcheck_of_the_whole_loss(name):
    crit = LOSSES[name]()
    cos, target = batch(rows=6, dtype=torch.float64, seed=1)
    cos = (cos * 0.98).requires_grad_()  # inside (-1, 1), where the derivative exists
    assert torch.autograd.gradcheck(lambda x: crit(x, target, epoch=170), (cos,))


def test_the_input_is_never_written_to():
    """Not even for a moment: the version counter of the cosines (bumped by every in-place
    write through torch) and their bits stay as they were, through forward and backward."""
    crit = DBMLoss(C100, base="bs", max_margin=0.3)
    cos, target = batch(rows=128)
    x = cos.clone().requires_grad_()
    before = (x._version, x.detach().clone())
    crit(x, target).backward()
    crit.margin_logits(x, target)
    assert x._version == before[0] and torch.equal(x.detach(), before[1])


def test_logits_passed_as_cosines_are_an_error_naming_the_classifier():
    crit = DBMLoss(C100, base="bs")
    logits = torch.randn(8, 100) * 5
    with pytest.raises(ValueError, match="raw cosines in \\[-1, 1\\] \\(the output of CosineClassifier"):
        crit(logits, torch.arange(8))
    crit(torch.full((2, 100), 1.0000001), torch.tensor([0, 1]))  # rounding above 1 is fine


@pytest.mark.parametrize("scale", [64.0, 200.0])
def test_loss_exact_where_the_target_probability_underflows(scale):
    # logit gaps of 2 * scale: exp underflows float32, the loss must still be finite and exact
    crit = DBMLoss([10] * 5, scale=scale)
    cos = torch.tensor([[1.0, -1.0, -1.0, -1.0, -1.0], [0.2, 0.1, 0.0, 0.3, 0.9]], requires_grad=True)
    target = torch.tensor([1, 4])
    loss = crit(cos, target)
    want = F.cross_entropy(crit.margin_logits(cos, target).double(), target)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(cos.grad).all()


def test_cosines_are_left_bit_for_bit_unchanged():
    crit = DBMLoss(C100, base="bs")
    cos, target = batch()
    cos[5, target[5]] = float("nan")
    cos[6, target[6]] = -0.0
    before = cos.clone()
    x = cos.requires_grad_()
    crit(x, target).backward()
    crit.margin_logits(x, target)
    assert torch.equal(x.detach().view(torch.int32), before.view(torch.int32))


@pytest.mark.parametrize("on_device", [False, True])
def test_logits_are_refused_and_nan_cosines_pass_to_the_nan_policy(on_device):
    """Values far beyond [-1, 1] are logits passed by mistake: an error on the CPU, a failed
    device assert on an accelerator (the same check, run here on the CPU). A NaN cosine comes
    from a diverged step: it passes both checks, so the loss is NaN and the engine's
    ``train.nan_policy`` decides (a device assert would end the process)."""
    cos, target = batch()
    with pytest.raises((ValueError, RuntimeError), match="not cosines"):
        margins._check_cosines(cos[:, 0] * 32, on_device=on_device)
    margins._check_cosines(cos[:, 0] * 1.005, on_device=on_device)  # round-off beyond 1 is fine
    cos[5, target[5]] = float("nan")
    margins._check_cosines(cos.gather(1, target[:, None])[:, 0], on_device=on_device)
    assert math.isnan(DBMLoss(C100, base="bs")(cos, target).item())
    with pytest.raises((ValueError, RuntimeError), match="not cosines"):  # a NaN hides no logit
        margins._check_cosines(torch.tensor([float("nan"), 0.5, 32.0]), on_device=on_device)


def test_non_contiguous_cosines():
    crit = DBMLoss(C100, base="bs")
    cos, target = batch()
    wide = cos.t().contiguous().t().requires_grad_()  # same values, column-major
    assert not wide.is_contiguous()
    plain = cos.clone().requires_grad_()
    crit(wide, target).backward()
    crit(plain, target).backward()
    torch.testing.assert_close(wide.grad, plain.grad)
    torch.testing.assert_close(crit.margin_logits(wide, target), crit.margin_logits(plain, target))


def test_backward_twice_with_retain_graph_gives_the_same_gradient():
    crit = DBMLoss(C100, base="bs")
    cos, target = batch()
    x = cos.requires_grad_()
    loss = crit(x, target)
    (first,) = torch.autograd.grad(loss, x, retain_graph=True)
    (second,) = torch.autograd.grad(loss, x)
    assert torch.equal(first, second)


def test_double_backward_is_a_clear_error():
    crit = DBMLoss(C100)
    cos, target = batch()
    x = cos.requires_grad_()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(crit(x, target), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(crit.margin_logits(x, target).sum(), x, create_graph=True)


def test_empty_batch_gives_nan_like_cross_entropy():
    crit = DBMLoss(C100, base="drw")
    empty = torch.zeros(0, 100, requires_grad=True)
    target = torch.zeros(0, dtype=torch.long)
    loss = crit(empty, target, epoch=200)
    assert math.isnan(loss.item()) and math.isnan(F.cross_entropy(empty, target).item())
    assert crit.margin_logits(empty, target).shape == (0, 100)
