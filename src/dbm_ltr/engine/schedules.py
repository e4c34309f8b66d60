"""Learning-rate schedules, set once per epoch. ``t = epoch + 1``."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["SCHEDULES", "learning_rate"]

SCHEDULES = ("cosine", "cosine_reference", "cosine_shifted", "step", "step_gml", "constant")


def learning_rate(
    epoch: int,
    base_lr: float,
    epochs: int,
    schedule: str = "cosine",
    warmup_epochs: int = 5,
    milestones: Sequence[int] = (160, 180),
    lr_decay: float = 0.01,
) -> float:
    """Learning rate of (0-based) ``epoch``.

    * warm-up: ``lr * t / W`` for ``t <= W`` (``W`` is capped at ``E``);
    * ``"cosine"``: then ``lr * (1 + cos(pi * (t - W) / (E - W + 1))) / 2``: decreasing every
      epoch towards zero, which it reaches when the run ends, for any length (t=6: 0.099994,
      t=101: 0.0516, t=200: 6.4e-6 for lr 0.1, W = 5, E = 200);
    * ``"cosine_reference"``: the DBM code's cosine, ``(1 + cos(pi * (t - W + 1) / (E - W))) / 2``
      (with ``W = 5``, ``E = 200`` its ``(t - 4) / 195`` phase: t=6: 0.099974, t=199: 0.0,
      t=200: 6.5e-6). Its phase runs one step past the end, so the rate reaches zero one epoch
      early and the last epoch's turns back up. At 200 epochs the two differ by at most 1.2 %
      of the peak rate (mid-run); in a 5-epoch run without warm-up the reference gives 0 in
      epoch 4 and 9.5 % of the peak again in epoch 5;
    * ``"step"``: then ``lr * lr_decay ** k``, ``k`` = number of milestones ``m`` with
      ``t > m`` (CIFAR: 160/180; NCL at 400 epochs: 320/360);
    * ``"step_gml"``: the GML code's CIFAR schedule: ``step``, but its warm-up ``lr * t / W``
      runs one epoch longer, through ``t = W + 1`` (with ``W = 5``: 0.2, 0.4, ..., 1.0 and then
      1.2 x lr in epoch 6);
    * ``"constant"``: then ``lr``;
    * ``"cosine_shifted"`` (the large-scale BCL / DBM code; no warm-up, ``W`` shifts the
      phase): ``lr * (1 + cos(pi * (epoch - W) / (E - W))) / 2`` for 0-based ``epoch``
      (W = 4, E = 90: 0.9947 lr at epoch 0, the peak at epoch 4; W = 0: plain per-epoch
      cosine annealing).
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if schedule == "cosine_shifted":  # no warm-up: warmup_epochs is the phase shift
        span = max(epochs - warmup_epochs, 1)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / span))
    t = epoch + 1
    warmup_epochs = min(warmup_epochs, epochs)
    if t <= warmup_epochs or (schedule == "step_gml" and warmup_epochs and t == warmup_epochs + 1):
        return base_lr * t / warmup_epochs
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * (t - warmup_epochs) / (epochs - warmup_epochs + 1)))
    if schedule == "cosine_reference":
        span = max(epochs - warmup_epochs, 1)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * (t - warmup_epochs + 1) / span))
    if schedule in ("step", "step_gml"):
        return base_lr * lr_decay ** sum(t > m for m in milestones)
    if schedule == "constant":
        return base_lr
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
