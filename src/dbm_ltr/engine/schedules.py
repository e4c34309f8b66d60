"""Learning-rate schedules, set once per epoch (SPEC 5.2). ``t = epoch + 1``."""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["learning_rate"]


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

    * warm-up: ``lr * t / W`` for ``t <= W``;
    * ``"cosine"``: then ``lr * (1 + cos(pi * (t - W + 1) / (E - W))) / 2``; with ``W = 5``,
      ``E = 200`` this is the reference code's ``(t - 4) / 195`` phase (t=6: 0.099974,
      t=101: 0.0504, t=199: 0.0, t=200: 6.5e-6 for lr 0.1; the last epoch overshoots by one
      step, as in the original);
    * ``"step"``: then ``lr * lr_decay ** k``, ``k`` = number of milestones ``m`` with
      ``t > m`` (CIFAR: 160/180; NCL at 400 epochs: 320/360);
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
    if t <= warmup_epochs:
        return base_lr * t / warmup_epochs
    if schedule == "cosine":
        span = max(epochs - warmup_epochs, 1)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * (t - warmup_epochs + 1) / span))
    if schedule == "step":
        return base_lr * lr_decay ** sum(t > m for m in milestones)
    if schedule == "constant":
        return base_lr
    raise ValueError(f"unknown schedule {schedule!r}; choose cosine, cosine_shifted, step or constant")
