"""Every bad input gets a ValueError that names the problem."""

import pytest
import torch

from dbm_ltr.losses import BalancedLoss, DBMLoss, LDAMLoss, class_margins, create_loss

COUNTS = [500, 50, 5]


@pytest.mark.parametrize(
    "make",
    [
        lambda c: DBMLoss(c),
        lambda c: LDAMLoss(c),
        lambda c: BalancedLoss(c),
        lambda c: class_margins(c),
    ],
)
@pytest.mark.parametrize(
    "counts,match",
    [
        ([500, 0, 5], "class 1: 0"),
        ([500, -3, 5], "class 1: -3"),
        ([], "non-empty"),
        ([[1, 2], [3, 4]], "1-D"),
        ([10, float("nan")], "class 1: nan"),
    ],
)
def test_bad_class_counts(make, counts, match):
    with pytest.raises(ValueError, match=match):
        make(counts)


@pytest.mark.parametrize("crit", [DBMLoss(COUNTS), LDAMLoss(COUNTS), BalancedLoss(COUNTS, "bs")])
def test_class_count_mismatch(crit):
    with pytest.raises(ValueError, match=r"built for 3 classes .* outputs 4 columns"):
        crit(torch.zeros(2, 4), torch.tensor([0, 1]))


@pytest.mark.parametrize("crit", [DBMLoss(COUNTS), LDAMLoss(COUNTS), BalancedLoss(COUNTS)])
@pytest.mark.parametrize("target", [[0, 3], [-1, 0]])
def test_target_out_of_range(crit, target):
    with pytest.raises(ValueError, match=r"valid: 0\.\.2"):
        crit(torch.zeros(2, 3), torch.tensor(target))


def test_target_shape_and_dtype():
    crit = DBMLoss(COUNTS)
    with pytest.raises(ValueError, match="target of shape"):
        crit(torch.zeros(2, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integer class indices"):
        crit(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(B, C\)"):
        crit(torch.zeros(3), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"max_margin": -0.1}, "max_margin must be"),
        ({"scale": -1.0}, "scale must be"),
        ({"scale": 0.0}, "scale must be"),
        ({"base": "focal"}, "unknown base 'focal'; choose one of ce, cb, drw, bs"),
        ({"instance_margin": "easy"}, "unknown instance_margin 'easy'; choose one of hard, all, none"),
        ({"overflow_mode": "clip"}, "unknown overflow_mode"),
        ({"margin_reference": "max"}, "unknown margin reference"),
        ({"lambda_inst": -1.0}, "lambda_inst must be"),
        ({"max_margin": 1.0}, "above pi/2"),
        ({"tau": float("inf")}, "tau must be finite"),
        ({"tau": -1.0}, "tau must be finite and >= 0"),
    ],
)
def test_bad_dbm_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DBMLoss(COUNTS, **kwargs)


def test_bad_ldam_and_base_hyperparameters():
    with pytest.raises(ValueError, match="max_margin must be"):
        LDAMLoss(COUNTS, max_margin=-0.5)
    with pytest.raises(ValueError, match="scale must be"):
        LDAMLoss(COUNTS, scale=-30)
    with pytest.raises(ValueError, match="unknown base"):
        BalancedLoss(COUNTS, base="CE")
    with pytest.raises(ValueError, match="beta must be"):
        BalancedLoss(COUNTS, base="cb", cb_beta=1.0)
    with pytest.raises(ValueError, match="drw_epoch"):
        BalancedLoss(COUNTS, base="drw", drw_epoch=0)


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown loss 'focal'; available: bs, cb, ce, dbm, drw, ldam"):
        create_loss("focal", COUNTS)
    with pytest.raises(ValueError, match="loss .dbm. does not take margin; it accepts base, cb_beta"):
        create_loss("dbm", COUNTS, margin=0.1)


@pytest.mark.parametrize("crit", [DBMLoss(COUNTS), BalancedLoss(COUNTS)])
def test_target_on_another_device(crit):
    with pytest.raises(ValueError, match="target is on meta but the logits/cosines are on cpu"):
        crit(torch.zeros(2, 3), torch.tensor([0, 1], device="meta"))
