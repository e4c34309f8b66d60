import pytest

from dbm_ltr.engine import learning_rate


def lr(t, **kw):
    return learning_rate(t - 1, 0.1, kw.pop("epochs", 200), **kw)


def test_reference_cosine_values_of_the_dbm_code():
    kw = dict(schedule="cosine_reference")
    assert lr(1, **kw) == pytest.approx(0.02)
    assert lr(5, **kw) == pytest.approx(0.1)
    assert lr(6, **kw) == pytest.approx(0.099974, abs=1e-6)
    assert lr(101, **kw) == pytest.approx(0.0504, abs=1e-4)
    assert lr(199, **kw) == pytest.approx(0.0, abs=1e-12)
    assert lr(200, **kw) == pytest.approx(6.5e-6, rel=1e-2)  # the reference's one-step overshoot


@pytest.mark.parametrize("epochs,warmup", [(200, 5), (5, 0), (1, 5), (30, 2), (2, 0)])
def test_cosine_decreases_to_zero_at_the_end_for_every_length(epochs, warmup):
    """After the warm-up every epoch's rate is below the one before, the first equals the
    cosine's value at phase 1/(E-W+1) and the rate would be exactly 0 one epoch after the end."""
    import math

    rates = [learning_rate(e, 0.1, epochs, warmup_epochs=warmup) for e in range(epochs)]
    w = min(warmup, epochs)
    assert rates[:w] == pytest.approx([0.1 * t / w for t in range(1, w + 1)])
    tail = rates[w:]
    assert all(b < a for a, b in zip(tail, tail[1:]))
    if tail:
        span = epochs - w + 1
        assert tail[-1] == pytest.approx(0.05 * (1 + math.cos(math.pi * (span - 1) / span)))
        assert learning_rate(epochs, 0.1, epochs, warmup_epochs=warmup) == pytest.approx(0.0, abs=1e-12)
    reference = [learning_rate(e, 0.1, epochs, "cosine_reference", warmup) for e in range(epochs)]
    if epochs == 200:  # the two cosines: within 1.3 % of the peak everywhere
        assert max(abs(a - b) for a, b in zip(rates, reference)) < 1.3e-3


def test_step_schedule_ncl_400_epochs():
    kw = dict(epochs=400, schedule="step", milestones=(320, 360), lr_decay=0.01)
    assert lr(3, **kw) == pytest.approx(0.06)
    assert lr(320, **kw) == pytest.approx(0.1)
    assert lr(321, **kw) == pytest.approx(1e-3)
    assert lr(361, **kw) == pytest.approx(1e-5)


def test_cifar_step_default_and_constant():
    assert lr(161, schedule="step") == pytest.approx(1e-3)
    assert lr(181, schedule="step") == pytest.approx(1e-5)
    assert lr(150, schedule="constant") == 0.1
    assert learning_rate(0, 0.1, 10, warmup_epochs=0) == pytest.approx(
        0.1 * 0.5 * (1 + __import__("math").cos(__import__("math").pi / 11))
    )
    with pytest.raises(ValueError, match="unknown schedule"):
        lr(10, schedule="poly")
