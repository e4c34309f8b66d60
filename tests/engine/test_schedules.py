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


def test_step_gml_is_the_gml_codes_cifar_schedule():
    """The GML code's CIFAR learning rate, written out for 0-based epochs: ``lr / W * (e + 1)``
    while ``e <= W`` (one epoch past the warm-up: 1.2 x lr at e = 5), x0.01 once ``e > 180``,
    x0.1 once ``e > 160``."""

    def theirs(e, base=0.1, warmup=5, schedule=(160, 180)):
        if e <= warmup:
            return base / warmup * (e + 1)
        if e > schedule[1]:
            return base * 0.01
        if e > schedule[0]:
            return base * 0.1
        return base

    kw = dict(schedule="step_gml", milestones=(161, 181), lr_decay=0.1)
    ours = [learning_rate(e, 0.1, 200, warmup_epochs=5, **kw) for e in range(200)]
    assert ours == pytest.approx([theirs(e) for e in range(200)], rel=1e-15)
    assert ours[5] == pytest.approx(0.12) and ours[6] == 0.1
    plain = [learning_rate(e, 0.1, 200, "step", 5, (161, 181), 0.1) for e in range(200)]
    assert [e for e in range(200) if plain[e] != ours[e]] == [5]  # only the overshoot differs
    # no warm-up: nothing to overshoot; a run shorter than the warm-up: the warm-up alone
    assert [learning_rate(e, 0.1, 10, warmup_epochs=0, **kw) for e in range(3)] == [0.1] * 3
    assert [learning_rate(e, 0.1, 3, warmup_epochs=5, **kw) for e in range(3)] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1])


def test_cosine_without_warmup_is_the_gml_codes_imagenet_schedule():
    """GML's ImageNet code: ``lr * (1 + cos(pi * (e + 1) / (E + 1))) / 2`` for 0-based ``e``
    (its ``--cos`` with no warm-up): our ``cosine`` with ``warmup_epochs=0``."""
    import math

    theirs = [0.05 * 0.5 * (1 + math.cos(math.pi * (e + 1) / 91)) for e in range(90)]
    assert [learning_rate(e, 0.05, 90, "cosine", 0) for e in range(90)] == pytest.approx(theirs, rel=1e-14)
