"""Cross-entropy family for long-tailed data: plain CE, class-balanced weights (CB), deferred
re-weighting (DRW) and balanced softmax (BS).

All four share one module, :class:`BalancedLoss`, so the linear baselines and the DBM variants
(which feed margin logits into the same module) run the same code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import at_least_float32

__all__ = [
    "BASES",
    "BalancedLoss",
    "class_balanced_weights",
    "class_counts",
    "drw_phase",
    "log_prior",
]

#: Names accepted by ``base=``.
BASES = ("ce", "cb", "drw", "bs")


def class_counts(cls_num_list: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Validate training counts per class and return them as a float64 tensor.

    Raises:
        ValueError: if the list is empty, not one-dimensional, or holds a count that is zero,
            negative, or not finite.
    """
    counts = torch.as_tensor(cls_num_list, dtype=torch.float64).detach().cpu()
    if counts.ndim != 1 or counts.numel() == 0:
        raise ValueError(
            f"cls_num_list must be a non-empty 1-D list of per-class training counts, got shape {tuple(counts.shape)}"
        )
    bad = torch.nonzero(~torch.isfinite(counts) | (counts <= 0)).flatten().tolist()
    if bad:
        shown = ", ".join(f"class {c}: {counts[c].item():g}" for c in bad[:5])
        raise ValueError(
            f"cls_num_list must hold a positive count for every class ({shown}); drop classes "
            "without training images or relabel the data set"
        )
    return counts


def class_balanced_weights(cls_num_list: Sequence[int] | torch.Tensor, beta: float = 0.9999) -> torch.Tensor:
    r"""Effective-number weights of Cui et al. (2019), normalised to sum to ``C``.

    .. math:: w_c = \frac{1-\beta}{1-\beta^{n_c}}, \qquad w \leftarrow w \cdot C / \textstyle\sum_c w_c

    ``beta = 0`` gives all-ones weights (plain CE).
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    counts = class_counts(cls_num_list)
    # (1 - beta) / (1 - beta**n) is 1 for beta = 0; expm1/log1p keep it exact for beta near 1.
    if beta == 0.0:
        w = torch.ones_like(counts)
    else:
        w = -(1.0 - beta) / torch.expm1(counts * math.log(beta))
    w = w * (counts.numel() / w.sum())
    return w.to(torch.get_default_dtype())


def log_prior(cls_num_list: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Per-class log prior ``log(n_c / N)`` (the balanced-softmax offset), computed in float64
    and returned in the default dtype (float32 unless set otherwise)."""
    counts = class_counts(cls_num_list)
    return (counts / counts.sum()).log().to(torch.get_default_dtype())


def drw_phase(epoch: int, drw_epoch: int) -> int:
    """Phase of deferred re-weighting: 0 (plain CE) before ``drw_epoch``, 1 from it on.

    The original code indexes ``[0, beta][epoch // 160]`` and fails at epoch 320; the phase is
    clamped to 1 here.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return min(epoch // drw_epoch, 1)


def check_logits_and_target(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> None:
    """Shared input checks of every loss in this package; raises ``ValueError``."""
    if logits.ndim != 2:
        raise ValueError(f"expected logits or cosines of shape (B, C), got {tuple(logits.shape)}")
    if logits.shape[1] != num_classes:
        raise ValueError(
            f"the loss was built for {num_classes} classes (len(cls_num_list)) but the "
            f"classifier outputs {logits.shape[1]} columns; pass the training counts of the "
            "same data set the classifier was built for"
        )
    if target.ndim != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"expected target of shape ({logits.shape[0]},) for logits of shape "
            f"{tuple(logits.shape)}, got {tuple(target.shape)}"
        )
    if target.device != logits.device:
        raise ValueError(
            f"target is on {target.device} but the logits/cosines are on {logits.device}; move both to the same device"
        )
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
    if target.numel() == 0:
        return
    if target.device.type != "cpu" or torch.compiler.is_compiling():  # reading the range would
        # wait for the device every step (or break a compiled graph): the check runs on the
        # device instead and fails there (an asynchronous device error)
        torch._assert_async(
            ((target >= 0) & (target < num_classes)).all(),
            f"target holds class indices outside 0..{num_classes - 1} ({num_classes} classes)",
        )
        return
    lo, hi = torch.aminmax(target)
    lo, hi = lo.item(), hi.item()
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"target holds class indices in [{lo}, {hi}] but the loss has {num_classes} classes "
            f"(valid: 0..{num_classes - 1})"
        )


class BalancedLoss(nn.Module):
    r"""Cross-entropy with an optional long-tail correction, on ordinary logits.

    ``base`` selects the correction:

    * ``"ce"``: plain cross-entropy.
    * ``"cb"``: class-balanced weights (:func:`class_balanced_weights`, ``beta=cb_beta``).
    * ``"drw"``: deferred re-weighting: plain CE for epochs ``< drw_epoch``, CB weights after.
    * ``"bs"``: balanced softmax, ``CE(z + log p, y)`` with ``p_c = n_c / N``.

    Weighted variants use the weighted mean ``sum_b w_{y_b} l_b / sum_b w_{y_b}`` (PyTorch's
    ``reduction="mean"`` with ``weight``), as the reference implementation does.

    Args:
        cls_num_list: training images per class.
        base: one of :data:`BASES`.
        drw_epoch: first (0-based) epoch of the re-weighted phase for ``"drw"``. Default 160.
        cb_beta: beta of the effective number. Default 0.9999.

    Example:
        >>> crit = BalancedLoss([500, 50, 5], base="bs")
        >>> loss = crit(torch.randn(8, 3), torch.randint(0, 3, (8,)))
    """

    def __init__(
        self,
        cls_num_list: Sequence[int] | torch.Tensor,
        base: str = "ce",
        drw_epoch: int = 160,
        cb_beta: float = 0.9999,
    ) -> None:
        super().__init__()
        if base not in BASES:
            raise ValueError(f"unknown base {base!r}; choose one of {', '.join(BASES)}")
        if drw_epoch < 1:
            raise ValueError(f"drw_epoch must be >= 1, got {drw_epoch}")
        counts = class_counts(cls_num_list)
        self.base = base
        self.num_classes = counts.numel()
        self.drw_epoch = int(drw_epoch)
        self.cb_beta = float(cb_beta)
        weights = class_balanced_weights(counts, cb_beta) if base in ("cb", "drw") else None
        offset = log_prior(counts) if base == "bs" else None
        self.register_buffer("class_weights", weights, persistent=False)
        self.register_buffer("logit_offset", offset, persistent=False)

    def weight_at(self, epoch: int | None) -> torch.Tensor | None:
        """Class weights in force at ``epoch`` (``None`` means uniform)."""
        if self.base == "cb":
            return self.class_weights
        if self.base == "drw":
            if epoch is None:
                raise ValueError("base 'drw' switches weights at an epoch: call loss(logits, target, epoch=e)")
            return self.class_weights if drw_phase(epoch, self.drw_epoch) == 1 else None
        return None

    def cross_entropy(
        self, adjusted_logits: torch.Tensor, target: torch.Tensor, epoch: int | None = None
    ) -> torch.Tensor:
        """CE (weighted per ``base`` and ``epoch``) of logits that already carry the offset."""
        weight = self.weight_at(epoch)
        if weight is not None and weight.dtype != adjusted_logits.dtype:
            weight = weight.to(adjusted_logits.dtype)
        return F.cross_entropy(adjusted_logits, target, weight=weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, epoch: int | None = None) -> torch.Tensor:
        check_logits_and_target(logits, target, self.num_classes)
        logits = at_least_float32(logits)  # half-precision logits: the loss in float32 all the same
        if self.logit_offset is not None:
            logits = logits + self.logit_offset
        return self.cross_entropy(logits, target, epoch)

    def extra_repr(self) -> str:
        extra = f", drw_epoch={self.drw_epoch}" if self.base == "drw" else ""
        return f"base={self.base!r}, num_classes={self.num_classes}{extra}"
