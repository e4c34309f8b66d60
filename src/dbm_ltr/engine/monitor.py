"""What the loop says and records beside its numbers: the running loss and accuracy of an epoch
(with the non-finite-loss check), the run's description when it starts, the spread of the
classifier's class vectors each evaluation (with a warning, once, when they collapse onto one
direction) and TensorBoard events."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from ..metrics import class_vector_cosines
from .precision import amp_dtype

__all__ = ["COLLAPSED_CLASS_COSINE", "EpochMonitor", "StepTally", "describe_run"]

#: Mean cosine between two classes' vectors above which the classifier counts as collapsed
#: (trained heads of the CIFAR runs: linear about -0.1, cosine 0.2-0.88 (DBM at IF 10: 0.84-0.88);
#: collapsed DBM runs on balanced data: 0.95-1.0).
COLLAPSED_CLASS_COSINE = 0.95


class StepTally:
    """An epoch's running sums (loss x images, correct, images) and its first step with a
    non-finite loss (``nan_policy="stop"``).

    On a GPU the sums stay on the device, updated in place, so nothing in a step waits for the
    GPU; the first bad step is found there too and read only when :meth:`check` is called. On
    the CPU a read costs nothing, so each step reads its loss and count of correct predictions
    into Python numbers: fewer operators a step, the same float64 sums.
    """

    def __init__(self, device: torch.device, stop_on_nan: bool, sums: list[float] | None = None) -> None:
        self.on_host = device.type == "cpu"
        self.stop_on_nan = stop_on_nan
        sums = list(sums) if sums is not None else [0.0, 0.0, 0.0]
        if self.on_host:
            self.sums, self.first_bad = sums, -1
        else:
            self.sums = torch.tensor(sums, dtype=torch.float64, device=device)
            self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def add(self, step: int, loss: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """Count one step: its mean ``loss``, ``scores`` against ``targets`` (nothing of it is
        kept for autograd)."""
        n = targets.shape[0]
        if self.on_host:
            value = loss.item()
            self.sums[0] += value * n
            self.sums[1] += int((scores.argmax(dim=1) == targets).sum())
            self.sums[2] += n
            if self.stop_on_nan and self.first_bad < 0 and not math.isfinite(value):
                self.first_bad = step
            return
        loss = loss.detach()
        self.sums[0] += loss.double() * n  # in place on the device: no copy from the host
        self.sums[1] += (scores.argmax(dim=1) == targets).sum()
        self.sums[2] += n
        if self.stop_on_nan:
            self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss), step, self.first_bad)

    def bad_step(self) -> int:
        """The first step with a non-finite loss, or -1 (a read of the device on a GPU)."""
        return self.first_bad if self.on_host else int(self.first_bad.item())

    def values(self) -> list[float]:
        """``[loss x images, correct, images]`` of this process (a read of the device on a GPU)."""
        return list(self.sums) if self.on_host else self.sums.tolist()

    def all_reduce(self) -> list[float]:
        """:meth:`values` summed over the processes under torchrun."""
        import torch.distributed as dist

        sums = torch.tensor(self.values(), dtype=torch.float64, device=None if self.on_host else self.sums.device)
        dist.all_reduce(sums)
        return sums.tolist()


class EpochMonitor:
    """Per-epoch records of a run: :meth:`class_vectors` for the log row, :meth:`write` the row
    to TensorBoard (in ``tensorboard_dir``, when tensorboard is installed)."""

    def __init__(self, tensorboard_dir: Path, log: Callable[[str], None]) -> None:
        self.tensorboard_dir, self.log = tensorboard_dir, log
        self._collapse_reported = False
        self._writer = None  # None: not opened yet; False: tensorboard is not installed

    def class_vectors(self, method, epoch: int) -> dict:
        """``class_cos_mean`` / ``class_cos_max`` of the classifier's class vectors for the log
        row, and a warning (once) when they have collapsed onto one direction."""
        with torch.no_grad():
            cos = class_vector_cosines(method.class_weights())
        if cos["mean"] is None:
            return {}
        if cos["mean"] > COLLAPSED_CLASS_COSINE and not self._collapse_reported:
            self._collapse_reported = True
            self.log(
                f"warning: after epoch {epoch + 1} the classifier's class vectors point nearly the "
                f"same way (mean cosine between two classes' vectors {cos['mean']:.3f}): every "
                "class scores alike and accuracy stays near chance. A margin loss does this when "
                "every class gets a large margin (e.g. DBM, whose rarest class gets "
                "loss.max_margin, on balanced data); lower loss.max_margin (docs/method.md, "
                "'Collapsed class vectors')"
            )
        return {"class_cos_mean": cos["mean"], "class_cos_max": cos["max"]}

    def write(self, row: dict) -> None:
        """The log row's numbers as TensorBoard scalars of its epoch."""
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.tensorboard_dir))
            except ImportError:  # tensorboard not installed
                self._writer = False
        if self._writer:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)) and value is not None:
                    self._writer.add_scalar(key, value, row["epoch"])
            self._writer.flush()

    def close(self) -> None:
        if self._writer:
            self._writer.close()


def describe_run(config, train_set, device: torch.device, dist_info, pipeline: str, amp: bool) -> list[str]:
    """The lines a run starts with: what trains on what, where and how; notes on a warm-up
    longer than the run and on a smoke test's data.limit."""
    c, o = config, config.optim
    lines = [
        f"{c.name or 'run'}: {c.method.name}/{c.loss.name} on {c.data.name} ("
        + (f"IF {c.data.imbalance_factor:g}, " if hasattr(train_set, "imbalance_factor") else "")
        + f"{len(train_set)} train images), "
        f"{c.model.name}+{c.model.classifier}, {o.epochs} epoch{'s' * (o.epochs != 1)}, device {device}"
        + (f" x{dist_info.world_size}" if dist_info.enabled else "")
        + f", {pipeline} pipeline"
        + (", amp " + str(amp_dtype(device)).split(".")[1] if amp else "")
        + (", channels-last" if c.train.channels_last else "")
    ]
    if o.warmup_epochs > o.epochs and o.schedule != "cosine_shifted":
        lines.append(
            f"note: optim.warmup_epochs={o.warmup_epochs} is longer than the run ({o.epochs} "
            f"epoch{'s' * (o.epochs != 1)}); the warm-up spans the whole run"
        )
    if c.data.test_limit:
        lines.append(
            f"note: data.test_limit={c.data.test_limit}: evaluating on that many images of the test split "
            "(a smoke test; not comparable with full runs)"
        )
    if c.data.limit:
        lines.append(
            f"note: data.limit={c.data.limit}: training on {len(train_set)} images of the "
            "training split (a smoke test; not comparable with full runs)"
        )
    return lines
