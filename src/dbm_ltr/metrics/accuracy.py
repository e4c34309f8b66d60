"""Per-class accuracy and the Many / Medium / Few split (the long-tailed protocol of Liu et al.
2019, as the DBM paper)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["FEW_BELOW", "MANY_ABOVE", "ClassAccuracy", "GROUPS", "group_of", "many_medium_few", "per_class_accuracy"]

GROUPS = ("many", "medium", "few")
#: Many: more than MANY_ABOVE training images; Few: fewer than FEW_BELOW; Medium: the rest
#: (the usual long-tailed protocol, e.g. Liu et al. 2019; the DBM paper's Tables 2 and 4).
MANY_ABOVE = 100
FEW_BELOW = 20


def per_class_accuracy(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Accuracy of every class in percent (``nan`` for a class without samples)."""
    acc = ClassAccuracy(num_classes)
    acc.update(predictions, targets)
    return acc.per_class()


def group_of(count: int, many_threshold: int = MANY_ABOVE, few_threshold: int = FEW_BELOW) -> str:
    """``many`` if ``count > many_threshold``, ``few`` if ``count < few_threshold``, else ``medium``."""
    if count > many_threshold:
        return "many"
    if count < few_threshold:
        return "few"
    return "medium"


def many_medium_few(
    per_class: Sequence[float] | torch.Tensor,
    cls_num_list: Sequence[int],
    many_threshold: int = MANY_ABOVE,
    few_threshold: int = FEW_BELOW,
) -> dict[str, float | None]:
    """Unweighted mean of per-class accuracies in each training-frequency group.

    Many: ``n > 100``; Medium: ``20 <= n <= 100``; Few: ``n < 20`` (training counts).
    A group without classes gives ``None`` (e.g. Few on CIFAR-10-LT); a class whose accuracy
    is undefined (``nan``: no evaluation sample) is left out of its group's mean.

    Example:
        >>> many_medium_few([90.0, 50.0, 10.0], [500, 50, 5])
        {'many': 90.0, 'medium': 50.0, 'few': 10.0}
        >>> many_medium_few([90.0, 80.0], [500, 200])['few'] is None
        True
    """
    values = torch.as_tensor(per_class, dtype=torch.float64).flatten().tolist()
    if len(values) != len(cls_num_list):
        raise ValueError(f"got {len(values)} per-class accuracies but {len(cls_num_list)} class counts")
    groups: dict[str, list[float]] = {g: [] for g in GROUPS}
    for value, count in zip(values, cls_num_list):
        if value == value:  # not nan
            groups[group_of(int(count), many_threshold, few_threshold)].append(value)
    return {g: (sum(v) / len(v) if v else None) for g, v in groups.items()}


class ClassAccuracy:
    """Running per-class correct/total counts; ``sync()`` sums them over processes (DDP).

    Example:
        >>> acc = ClassAccuracy(3)
        >>> acc.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]))
        >>> acc.per_class().tolist(), acc.top1()
        ([100.0, 100.0, 0.0], 66.66666666666667)
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.correct = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.total = torch.zeros(num_classes, dtype=torch.float64, device=device)

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        targets = targets.to(self.total.device)
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= self.num_classes):
            raise ValueError(f"targets outside 0..{self.num_classes - 1}")
        hits = (predictions.to(targets.device) == targets).to(torch.float64)
        self.total.index_add_(0, targets, torch.ones_like(hits))
        self.correct.index_add_(0, targets, hits)

    def sync(self) -> None:
        """Sum the counts over all processes of the default group (no-op without one)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            both = torch.stack([self.correct, self.total])
            dist.all_reduce(both)
            self.correct, self.total = both[0].clone(), both[1].clone()

    def per_class(self) -> torch.Tensor:
        return (100.0 * self.correct / self.total).cpu()  # nan where total == 0

    def top1(self) -> float:
        total = self.total.sum().item()
        return 100.0 * self.correct.sum().item() / total if total else float("nan")

    def summary(self, cls_num_list: Sequence[int]) -> dict:
        """``{"top1", "many", "medium", "few", "per_class"}`` (percent; ``None`` if empty)."""
        per_class = self.per_class()
        groups = many_medium_few(per_class, cls_num_list)
        return {
            "top1": self.top1(),
            **groups,
            "per_class": [None if v != v else v for v in per_class.tolist()],
        }
