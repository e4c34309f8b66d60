import math

import pytest
import torch

from dbm_ltr.metrics import ClassAccuracy, group_of, many_medium_few, per_class_accuracy


def test_group_boundaries_follow_spec():
    # Many n > 100, Medium 20 <= n <= 100, Few n < 20
    assert [group_of(n) for n in (101, 100, 20, 19)] == ["many", "medium", "medium", "few"]


def test_group_accuracy_hand_made_example():
    counts = [500, 150, 100, 50, 20, 19, 5]
    preds = torch.tensor([0, 0, 1, 1, 2, 0, 3, 3, 4, 4, 5, 5, 6, 0])
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6])
    per_class = per_class_accuracy(preds, targets, 7)
    assert per_class.tolist() == [100.0, 100.0, 50.0, 100.0, 100.0, 100.0, 50.0]
    groups = many_medium_few(per_class, counts)
    assert groups["many"] == pytest.approx(100.0)  # classes 0, 1
    assert groups["medium"] == pytest.approx((50 + 100 + 100) / 3)  # classes 2, 3, 4 (unweighted)
    assert groups["few"] == pytest.approx((100 + 50) / 2)  # classes 5, 6


def test_empty_group_is_none_and_classes_without_samples_are_skipped():
    acc = ClassAccuracy(3)
    acc.update(torch.tensor([0, 1]), torch.tensor([0, 1]))  # class 2 never evaluated
    summary = acc.summary([500, 200, 10])
    assert summary["top1"] == 100.0
    assert summary["few"] is None and summary["medium"] is None
    assert summary["per_class"] == [100.0, 100.0, None]
    assert many_medium_few([80.0, 90.0], [5000, 3000])["few"] is None


def test_class_accuracy_accumulates_over_batches_and_rejects_bad_targets():
    acc = ClassAccuracy(2)
    acc.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    acc.update(torch.tensor([1]), torch.tensor([1]))
    assert acc.per_class().tolist() == [50.0, 100.0]
    assert acc.top1() == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="targets outside"):
        acc.update(torch.tensor([0]), torch.tensor([2]))
    with pytest.raises(ValueError, match="3 per-class accuracies but 2"):
        many_medium_few([1.0, 2.0, 3.0], [1, 2])
    assert math.isnan(ClassAccuracy(2).top1())
