import pytest

from dbm_ltr.engine import learning_rate


def lr(t, **kw):
    return learning_rate(t - 1, 0.1, kw.pop("epochs", 200), **kw)


def test_cifar_warmup_cosine_values_of_spec():
    assert lr(1) == pytest.approx(0.02)
    assert lr(5) == pytest.approx(0.1)
    assert lr(6) == pytest.approx(0.099974, abs=1e-6)
    assert lr(101) == pytest.approx(0.0504, abs=1e-4)
    assert lr(199) == pytest.approx(0.0, abs=1e-12)
    assert lr(200) == pytest.approx(6.5e-6, rel=1e-2)  # the reference's one-step overshoot


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
    assert learning_rate(0, 0.1, 10, warmup_epochs=0) == pytest.approx(0.1 * 0.5 * (1 + __import__("math").cos(__import__("math").pi * 0.2)))
    with pytest.raises(ValueError, match="unknown schedule"):
        lr(10, schedule="poly")
