r"""Difficulty-aware Balancing Margin (DBM): the class-wise and instance-wise margins and the
margin loss built on a cosine classifier.

For a sample with label ``y`` and raw cosines ``c`` (from :class:`dbm_ltr.nn.CosineClassifier`):

.. math::

    m_C(y) &= K \,(n_y / n_{\min})^{-\tau} \\
    h &= \mathbb{1}[\operatorname{argmax}_c c_c \ne y] \quad\text{(raw cosines, no margin, no prior)} \\
    m &= m_C(y)\,\bigl(1 + \lambda\, h\, (1 - c_y)/2\bigr) \\
    z_y &= s \cos(\theta_y + m), \quad z_c = s\, c_c \ (c \ne y)

Only the ``B`` target entries go through ``arccos``/``cos``; every other logit is ``s * c``
directly (no ``cos(arccos(c))`` round trip, no infinite derivative at ``c = +-1``), and
``max_margin=0`` returns ``s * c`` exactly. When ``theta + m > pi`` the exact formula would
*grow* again as the sample gets harder; ``overflow_mode="arcface"`` (default) then uses the
ArcFace fallback ``c - m sin m``. With total margins up to ``pi / 2`` (enforced) the target
logit is then never above ``s * c`` and never increases as ``c`` decreases: the fallback's
slope is ``1 + lambda h m_C / 2 (sin m + m cos m) > 0``, and it starts below ``-1`` (the
lowest value of the exact branch) because ``cos m + m sin m >= 1`` for ``m <= pi / 2``.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .balanced import BalancedLoss, check_logits_and_target, class_counts

__all__ = [
    "INSTANCE_MARGINS",
    "OVERFLOW_MODES",
    "DBMLoss",
    "MarginLoss",
    "class_margins",
    "dbm_target_cosine",
    "hard_positive_mask",
]

#: Values of ``instance_margin=``: on hard positives only (DBM), on every positive, or never.
INSTANCE_MARGINS = ("hard", "all", "none")
#: Values of ``overflow_mode=``: ArcFace fallback for theta + m > pi, or the raw formula.
OVERFLOW_MODES = ("arcface", "none")
# 0-dim constants: an op with a 0-dim tensor costs about half of one with a Python float,
# which matters for the B-element vectors below. float64 keeps pi exact for float64 inputs.
_ONE = torch.tensor(1.0)
_PI = torch.tensor(math.pi, dtype=torch.float64)


def class_margins(
    cls_num_list: Sequence[int] | torch.Tensor,
    max_margin: float = 0.1,
    tau: float = 1.0,
    reference: str = "min",
) -> torch.Tensor:
    r"""Class-wise margins ``m_C(c) = K (n_c / n_ref)^{-tau}`` as a float32 tensor.

    Args:
        cls_num_list: training images per class, in label order (any order of frequencies).
        max_margin: ``K``, the margin of the reference class. Default 0.1.
        tau: exponent ``tau``. Default 1.0; ``tau = 0`` gives ``K`` for every class.
        reference: ``"min"`` (paper: ``n_ref`` = count of the rarest class, which gets exactly
            ``K``) or ``"last"`` (original code: ``n_ref`` = count of class ``C-1``).

    Example:
        >>> class_margins([500, 48, 5])
        tensor([0.0010, 0.0104, 0.1000])
    """
    counts = class_counts(cls_num_list)
    _check_margin_args(max_margin, tau)
    if reference == "min":
        ref = counts.min()
    elif reference == "last":
        ref = counts[-1]
        if ref != counts.min():
            warnings.warn(
                f"margin_reference='last': class {counts.numel() - 1} has {ref.item():g} images "
                f"but the rarest class has {counts.min().item():g}; rarer classes get margins "
                f"above max_margin={max_margin}. Use reference='min' for the paper's definition.",
                stacklevel=2,
            )
    else:
        raise ValueError(f"unknown margin reference {reference!r}; choose 'min' or 'last'")
    return (max_margin * (counts / ref) ** (-tau)).float()


def _check_margin_args(max_margin: float, tau: float) -> None:
    if not math.isfinite(max_margin) or max_margin < 0:
        raise ValueError(f"max_margin must be a finite number >= 0, got {max_margin}")
    if not math.isfinite(tau):
        raise ValueError(f"tau must be finite, got {tau}")


def hard_positive_mask(cosine: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1[argmax_c cosine[b, c] != target[b]]`` as float32, first-max-index tie-breaking.

    Evaluated on the raw cosines (before scale, margin or prior); no gradient. This is the
    reference definition; :class:`MarginLoss` computes the same mask with a faster reduction.
    """
    with torch.no_grad():
        return (cosine.argmax(dim=1) != target).to(torch.float32)


def _hard_mask_from_scaled(
    cosine: torch.Tensor, scaled: torch.Tensor, index: torch.Tensor, scaled_y: torch.Tensor
) -> torch.Tensor:
    """:func:`hard_positive_mask` (as bool) computed on ``scaled = s * cosine``, whose target
    column is overwritten with ``-inf`` (the caller rewrites that column afterwards).

    On the CPU ``amax`` is about ten times faster than ``argmax``: a row is hard when another
    class scores higher. Scaling is monotone, so only rows where the best other class *equals*
    the target after scaling are ambiguous (an exact tie, or two cosines one ulp apart); those
    few rows are settled with ``argmax`` on the raw cosines.
    """
    target = index.squeeze(1)
    if cosine.device.type != "cpu":
        return cosine.argmax(dim=1) != target
    best_other = scaled.scatter_(1, index, float("-inf")).amax(dim=1)
    hard = best_other > scaled_y
    ambiguous = torch.nonzero(best_other == scaled_y).squeeze(1)
    if ambiguous.numel():
        hard[ambiguous] = cosine[ambiguous].argmax(dim=1) != target[ambiguous]
    return hard


def dbm_target_cosine(
    cos_y: torch.Tensor,
    class_margin: torch.Tensor,
    hard: torch.Tensor | float,
    lambda_inst: float = 1.0,
    overflow_mode: str = "arcface",
    return_grad: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""``psi = cos(theta_y + m)`` with the DBM margin ``m = m_C (1 + lambda h (1 - c_y) / 2)``.

    All tensor arguments are per-sample vectors of length ``B`` (``hard`` may be a number or
    a bool/float mask). The difficulty ``(1 - c_y) / 2`` is *not* detached: the margin itself
    carries gradient, as in the reference implementation. ``c_y`` is clamped to ``[-1, 1]``
    (round-off can put a cosine of unit vectors at 1.0000001); keep the total margin within
    ``pi / 2`` for the fallback to be monotone (:class:`DBMLoss` enforces it).

    With ``return_grad=True`` also returns ``d psi / d c_y`` (elementwise, taken at the
    clamped value): ``sin(theta + m) (1 / sin(theta) + lambda h m_C / 2)`` in the exact
    branch, where the unbounded ``1 / sin(theta)`` is dropped at ``|c_y| = 1`` (it is the
    derivative of ``theta``, which the clamp stops), and ``1 + lambda h m_C / 2 (sin m +
    m cos m)`` in the ArcFace fallback ``c - m sin m``.
    """
    slope = class_margin * (0.5 * lambda_inst) * hard
    return _dbm_psi(cos_y, class_margin, slope, overflow_mode, return_grad)


def _dbm_psi(
    cos_y: torch.Tensor,
    margin_y: torch.Tensor,
    slope: torch.Tensor | None,
    overflow_mode: str,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None] | torch.Tensor:
    """Core of :func:`dbm_target_cosine`: total margin ``m = margin_y + slope (1 - c)``.

    Written for few operations: the loss runs it every step on ``B`` values, where the cost
    is per operation, not per element.
    """
    if overflow_mode not in OVERFLOW_MODES:
        raise ValueError(f"unknown overflow_mode {overflow_mode!r}; choose one of {OVERFLOW_MODES}")
    c = cos_y.clamp(-1.0, 1.0)
    one_minus_c = torch.sub(_ONE, c)
    margin = margin_y if slope is None else torch.addcmul(margin_y, slope, one_minus_c)
    theta_m = torch.acos(c).add_(margin)
    psi = torch.cos(theta_m)
    grad = None
    if need_grad:
        # 1 / sin(theta) = (1 - c^2)^(-1/2); its infinity at |c| = 1 becomes 0.
        inv_sin = torch.rsqrt(one_minus_c.mul_(torch.add(_ONE, c))).nan_to_num_(posinf=0.0)
        grad = torch.sin(theta_m).mul_(inv_sin if slope is None else inv_sin.add_(slope))
    if overflow_mode == "arcface":
        overflow = torch.gt(theta_m, _PI)
        if c.device.type != "cpu" or bool(overflow.any()):  # rare: skipped on the CPU if none
            sin_m = margin.sin()
            psi = torch.where(overflow, c - margin * sin_m, psi)
            if grad is not None:
                fallback = torch.addcmul(sin_m, margin, margin.cos())
                fallback = 1.0 + fallback if slope is None else 1.0 + slope * fallback
                grad = torch.where(overflow, fallback, grad)
    return (psi, grad) if need_grad else psi


def _margin_logits(cosine, target, offset, scale, target_cosine, wants_hard, need_grad):
    """``s * cosine (+ offset)`` with entry ``(b, y_b)`` replaced by ``s * psi(cos_{b,y_b})
    (+ offset_{y_b})``; also returns the target index ``(B, 1)`` and ``d psi / d cos_y``."""
    index = target.unsqueeze(1)
    cos_y = cosine.gather(1, index).squeeze(1)
    logits = cosine * scale
    hard = None
    if wants_hard:
        hard = _hard_mask_from_scaled(cosine, logits, index, cos_y * scale)
    if offset is not None:
        logits.add_(offset)
    psi, dpsi = target_cosine(cos_y, target, hard, need_grad)
    if offset is None:
        new_y = psi.mul_(scale)
    else:
        new_y = torch.add(offset.index_select(0, target), psi, alpha=scale)
    return logits.scatter_(1, index, new_y.unsqueeze(1)), index, dpsi


def _scale_target_grad_(grad, index, dpsi):
    """Chain rule through ``psi``: multiply the target entries of ``grad`` by ``dpsi``."""
    if dpsi is not None:  # None means d psi / d cos_y = 1
        grad.scatter_(1, index, grad.gather(1, index) * dpsi.unsqueeze(1))
    return grad


class _TargetMarginLogits(torch.autograd.Function):
    """:func:`_margin_logits` as one autograd function.

    Its backward pass costs what scaling costs in plain scaled cross-entropy: one ``B x C``
    multiply, plus ``B`` target entries scaled by ``d psi / d cos_y``. (Autograd through
    ``gather``/``scatter`` would materialise and add extra ``B x C`` gradient tensors, and
    autograd through the elementwise ops of ``psi`` costs more than the rest.) ``psi`` acts
    elementwise on the target cosines, so ``target_cosine`` returns its derivative alongside;
    the tests check it with ``gradcheck``.
    """

    @staticmethod
    def forward(ctx, cosine, target, offset, scale, target_cosine, wants_hard):
        logits, index, dpsi = _margin_logits(
            cosine, target, offset, scale, target_cosine, wants_hard, ctx.needs_input_grad[0]
        )
        ctx.save_for_backward(index, dpsi)
        ctx.scale = scale
        return logits

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logits):
        index, dpsi = ctx.saved_tensors
        return _scale_target_grad_(grad_logits * ctx.scale, index, dpsi), None, None, None, None, None


class MarginLoss(nn.Module):
    """Base of the margin losses on a cosine classifier (DBM, LDAM).

    A subclass overrides :meth:`target_cosine`, the modified cosine of the target class as an
    elementwise function of the target cosines; this class scales it, writes it into the
    target column, adds the base loss's offset and applies the base loss
    (:class:`~dbm_ltr.losses.BalancedLoss`). A subclass that needs the hard-positive mask
    sets ``wants_hard_mask``.
    """

    def __init__(
        self,
        cls_num_list: Sequence[int] | torch.Tensor,
        scale: float,
        base: str = "ce",
        drw_epoch: int = 160,
        cb_beta: float = 0.9999,
    ) -> None:
        super().__init__()
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a finite number > 0, got {scale}")
        self.scale = float(scale)
        self.base_loss = BalancedLoss(cls_num_list, base=base, drw_epoch=drw_epoch, cb_beta=cb_beta)
        self.num_classes = self.base_loss.num_classes

    @property
    def base(self) -> str:
        return self.base_loss.base

    @property
    def wants_hard_mask(self) -> bool:
        return False

    def target_cosine(
        self, cos_y: torch.Tensor, target: torch.Tensor, hard: torch.Tensor | None, need_grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Modified cosine ``psi`` of the target class and ``d psi / d cos_y``, each ``(B,)``.

        Args:
            cos_y: raw target cosines, shape ``(B,)``, float32.
            target: labels, shape ``(B,)``.
            hard: hard-positive mask (float 0/1, shape ``(B,)``) if ``wants_hard_mask``.
            need_grad: whether the derivative is needed; return ``None`` for it otherwise
                (``None`` is also read as a derivative of exactly 1).
        """
        raise NotImplementedError

    def _checked(self, cosine: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_logits_and_target(cosine, target, self.num_classes)
        # float16/bfloat16 are upcast (float64 stays); no op of the margin is one that
        # autocast runs in lower precision, so the arithmetic is float32 under autocast too.
        if cosine.dtype not in (torch.float32, torch.float64):
            cosine = cosine.float()
        return cosine

    def margin_logits(self, cosine: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scaled logits with the margin on the target column, before any base-loss offset.

        Returns float32 logits of shape ``(B, C)`` for float16/bfloat16/float32 cosines.
        """
        return _TargetMarginLogits.apply(
            self._checked(cosine, target), target, None, self.scale, self.target_cosine,
            self.wants_hard_mask,
        )

    def forward(
        self, cosine: torch.Tensor, target: torch.Tensor, epoch: int | None = None
    ) -> torch.Tensor:
        """``base(margin_logits(cosine, target) + offset, target)``."""
        logits = _TargetMarginLogits.apply(
            self._checked(cosine, target), target, self.base_loss.logit_offset, self.scale,
            self.target_cosine, self.wants_hard_mask,
        )
        return self.base_loss.cross_entropy(logits, target, epoch)


class DBMLoss(MarginLoss):
    r"""Difficulty-aware Balancing Margin loss on raw cosines.

    ``loss = base(s * cos(theta_y + m_C(y) (1 + lambda h (1 - cos_y) / 2)), y)``; see the module
    docstring for the formula and the fallback beyond ``pi``.

    Args:
        cls_num_list: training images per class (defines ``C``).
        base: base loss the margin logits feed: ``"ce"``, ``"cb"``, ``"drw"`` or ``"bs"``
            (:class:`~dbm_ltr.losses.BalancedLoss`). Default ``"ce"``.
        max_margin: ``K``, margin of the rarest class. Default 0.1. ``0`` gives the plain
            scaled cosine classifier ``s * cos``.
        tau: class-margin exponent. Default 1.0.
        scale: ``s``. Default 32.
        lambda_inst: weight ``lambda`` of the instance margin. Default 1.0.
        instance_margin: ``"hard"`` (DBM: only for samples the plain cosine classifier gets
            wrong), ``"all"`` (every positive) or ``"none"`` (class margin only).
        margin_reference: ``"min"`` (paper) or ``"last"`` (original code), see
            :func:`class_margins`.
        overflow_mode: ``"arcface"`` (default) or ``"none"`` (raw ``cos(theta + m)`` even
            beyond ``pi``, as the original code).
        drw_epoch: switch epoch for ``base="drw"``. Default 160.
        cb_beta: beta of the class-balanced weights. Default 0.9999.

    Example:
        >>> from dbm_ltr.nn import CosineClassifier
        >>> head, crit = CosineClassifier(64, 3), DBMLoss([500, 48, 5], base="bs")
        >>> loss = crit(head(torch.randn(8, 64)), torch.tensor([0, 0, 0, 0, 1, 1, 2, 2]))
        >>> loss.backward()
    """

    def __init__(
        self,
        cls_num_list: Sequence[int] | torch.Tensor,
        base: str = "ce",
        max_margin: float = 0.1,
        tau: float = 1.0,
        scale: float = 32.0,
        lambda_inst: float = 1.0,
        instance_margin: str = "hard",
        margin_reference: str = "min",
        overflow_mode: str = "arcface",
        drw_epoch: int = 160,
        cb_beta: float = 0.9999,
    ) -> None:
        super().__init__(cls_num_list, scale, base=base, drw_epoch=drw_epoch, cb_beta=cb_beta)
        if instance_margin not in INSTANCE_MARGINS:
            raise ValueError(
                f"unknown instance_margin {instance_margin!r}; choose one of "
                f"{', '.join(INSTANCE_MARGINS)}"
            )
        if overflow_mode not in OVERFLOW_MODES:
            raise ValueError(
                f"unknown overflow_mode {overflow_mode!r}; choose one of {', '.join(OVERFLOW_MODES)}"
            )
        if not math.isfinite(lambda_inst) or lambda_inst < 0:
            raise ValueError(f"lambda_inst must be a finite number >= 0, got {lambda_inst}")
        self.max_margin = float(max_margin)
        self.tau = float(tau)
        self.lambda_inst = float(lambda_inst)
        self.instance_margin = instance_margin
        self.margin_reference = margin_reference
        self.overflow_mode = overflow_mode
        margins = class_margins(cls_num_list, max_margin, tau, reference=margin_reference)
        largest = margins.max().item() * (1.0 + (lambda_inst if instance_margin != "none" else 0))
        if largest > math.pi / 2:
            raise ValueError(
                f"the largest total margin m_C * (1 + lambda_inst) is {largest:.3g} rad, above "
                "pi/2; lower max_margin, tau or lambda_inst (the paper uses max_margin 0.1-0.3)"
            )
        self.register_buffer("class_margin", margins, persistent=False)
        # d(margin)/d(-cos_y) for a sample that gets the instance margin: lambda m_C / 2
        self.register_buffer("margin_slope", margins * (0.5 * lambda_inst), persistent=False)

    @property
    def wants_hard_mask(self) -> bool:
        return self.instance_margin == "hard" and self.max_margin > 0

    def target_cosine(
        self, cos_y: torch.Tensor, target: torch.Tensor, hard: torch.Tensor | None, need_grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.max_margin == 0.0:  # plain cosine classifier, exactly
            return cos_y, None
        slope = None
        if self.instance_margin != "none":
            slope = self.margin_slope.index_select(0, target)
            if hard is not None:
                slope.mul_(hard)
        result = _dbm_psi(
            cos_y, self.class_margin.index_select(0, target), slope, self.overflow_mode, need_grad
        )
        return result if need_grad else (result, None)

    def extra_repr(self) -> str:
        return (
            f"base={self.base!r}, max_margin={self.max_margin}, tau={self.tau}, "
            f"scale={self.scale}, lambda_inst={self.lambda_inst}, "
            f"instance_margin={self.instance_margin!r}, overflow_mode={self.overflow_mode!r}"
        )
