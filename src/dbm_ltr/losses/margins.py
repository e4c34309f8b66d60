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
from collections.abc import Sequence

import torch
from torch import nn

from ..nn import at_least_float32
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


def class_margins(
    cls_num_list: Sequence[int] | torch.Tensor,
    max_margin: float = 0.1,
    tau: float = 1.0,
    reference: str = "min",
) -> torch.Tensor:
    r"""Class-wise margins ``m_C(c) = K (n_c / n_ref)^{-tau}``, computed in float64 and returned
    in the default dtype (float32 unless set otherwise: a float64 model gets float64 margins).

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
    return (max_margin * (counts / ref) ** (-tau)).to(torch.get_default_dtype())


def _check_margin_args(max_margin: float, tau: float) -> None:
    if not math.isfinite(max_margin) or max_margin < 0:
        raise ValueError(f"max_margin must be a finite number >= 0, got {max_margin}")
    if not math.isfinite(tau) or tau < 0:
        raise ValueError(
            f"tau must be finite and >= 0 (0: every class gets max_margin; larger: rarer classes get larger "
            f"margins), got {tau}"
        )


def hard_positive_mask(cosine: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1[argmax_c cosine[b, c] != target[b]]`` as float32, first-max-index tie-breaking.

    Evaluated on the raw cosines (before scale, margin or prior); no gradient. This is the
    reference definition; :class:`MarginLoss` computes the same mask with a faster reduction.
    """
    with torch.no_grad():
        return (cosine.argmax(dim=1) != target).to(torch.float32)


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
    if overflow_mode not in OVERFLOW_MODES:
        raise ValueError(f"unknown overflow_mode {overflow_mode!r}; choose one of {OVERFLOW_MODES}")
    slope = class_margin * (0.5 * lambda_inst) * hard
    psi, grad = _dbm_psi(cos_y, class_margin, slope, overflow_mode, return_grad)
    return (psi, grad) if return_grad else psi


def _dbm_psi(cos_y, margin_y, slope, overflow_mode: str, need_grad: bool):
    """Core of :func:`dbm_target_cosine`: total margin ``m = margin_y + slope (1 - c)``.

    Takes per-sample tensors (``slope`` may be ``None``); returns ``(psi, d psi / d c)``, the
    second ``None`` unless ``need_grad``. Written for few operations: the loss runs it every
    step on ``B`` values, where the cost is per operation, not per element.
    """
    c = cos_y.clamp(-1.0, 1.0)
    one_minus_c = 1.0 - c
    margin = margin_y if slope is None else margin_y + slope * one_minus_c
    theta_m = torch.acos(c) + margin
    psi = torch.cos(theta_m)
    grad = None
    if need_grad:
        # 1 / sin(theta) = (1 - c^2)^(-1/2); its infinity at |c| = 1 becomes 0.
        inv_sin = torch.rsqrt(one_minus_c * (1.0 + c)).nan_to_num_(posinf=0.0)
        grad = torch.sin(theta_m) * (inv_sin if slope is None else inv_sin + slope)
    if overflow_mode == "arcface":
        overflow = theta_m > math.pi
        # rare; on an accelerator reading the mask back would stall the stream: always blend
        if overflow.device.type != "cpu" or bool(overflow.any()):
            sin_m = torch.sin(margin)
            psi = torch.where(overflow, c - margin * sin_m, psi)
            if grad is not None:  # d/dc of c - m sin m; m depends on c only through slope
                if slope is None:
                    fallback = torch.ones_like(grad)
                else:
                    fallback = 1.0 + slope * (sin_m + margin * torch.cos(margin))
                grad = torch.where(overflow, fallback, grad)
    return psi, grad


def _check_cosines(cos_y: torch.Tensor, on_device: bool | None = None) -> None:
    """Cosines far outside [-1, 1] are logits passed by mistake: say so (on an accelerator the
    check runs on the device, so nothing waits for it). NaN passes on every device: it comes
    from a diverged step, which the loss shows and the engine's ``train.nan_policy`` handles
    (a device-side assert would end the process instead). ``on_device``: the accelerator's
    check (default: where ``cos_y`` is not on the CPU)."""
    message = (
        "the margin losses take raw cosines in [-1, 1] (the output of CosineClassifier, "
        "before any scale), got values beyond; logits of a linear layer are not cosines"
    )
    if cos_y.numel() == 0:
        return
    # element by element: a NaN compares False here, while it would make both the minimum and
    # the maximum of the whole vector NaN and hide a logit beside it
    beyond = cos_y.abs() > 1.01
    outside = beyond.any()
    if on_device is None:
        on_device = cos_y.device.type != "cpu"
    if not on_device:
        if outside:
            lo, hi = torch.aminmax(cos_y[beyond])
            raise ValueError(f"{message} (found {float(lo):.3g} .. {float(hi):.3g})")
    else:
        torch._assert_async(~outside, message)


def _margin_logits(cosine, target, loss, offset, need_grad):
    """``s * cosine (+ offset)`` with entry ``(b, y_b)`` replaced by ``s * psi(cos_{b,y_b})
    (+ offset_{y_b})``: the ``B x C`` passes on the matrix, the per-sample work on
    ``B``-vectors. ``cosine`` is only read.

    Returns the (contiguous, new) logits, the flat positions of the target entries and
    ``d psi / d cos_y`` (``None`` for a derivative of 1).
    """
    cosine = cosine.contiguous()
    B, C = cosine.shape
    index = torch.arange(0, B * C, C, device=cosine.device) + target
    cos_y = cosine.detach().view(-1)[index]
    _check_cosines(cos_y)
    scale = loss.scale
    logits = torch.mul(cosine.detach(), scale)  # our own buffer from here on
    hard = _hard_positives(cosine, logits, index, cos_y * scale, target) if loss.wants_hard_mask else None
    if offset is not None:
        logits += offset
    psi, dpsi = loss.target_cosine(cos_y, *loss.per_sample_margins(target, hard), need_grad)
    new_y = psi * scale
    if offset is not None:
        new_y = new_y + offset.index_select(0, target)
    logits.view(-1)[index] = new_y.to(logits.dtype)
    return logits, index, dpsi


def _hard_positives(cosine, scaled, index, scaled_y, target):
    """:func:`hard_positive_mask` (bool) from ``scaled = s * cosine`` (a fresh buffer of the
    caller, overwritten at the target entries).

    A row is hard when another class scores higher. On the CPU ``amax`` is many times faster
    than ``argmax``, so the target entries of ``scaled`` are set to ``-inf`` for one ``amax``.
    Scaling by ``s > 0`` keeps every strict order; rows where the best other class ties with
    the target after scaling are settled by ``argmax`` of the raw cosines (first index wins).
    """
    scaled.view(-1)[index] = -math.inf
    best_other = scaled.amax(dim=1)
    hard = best_other > scaled_y
    tied = best_other == scaled_y
    if tied.device.type != "cpu" or bool(tied.any()):  # rare on the CPU; always blended elsewhere
        hard = torch.where(tied, cosine.detach().argmax(dim=1) != target, hard)
    return hard


# Softmax values at or above these are normal floating-point numbers, computed from normal
# exponentials (exp(z - max) >= p_y): full relative precision. Below, the value may have been
# subnormal or flushed to zero, so its logarithm is taken from logsumexp instead.
_LOG_SAFE = {torch.float32: 1e-36, torch.float64: 1e-306}


def _no_double_backward() -> None:
    # cheaper than @once_differentiable, whose wrapping shows in the loss's time at (256, 1000)
    if torch.is_grad_enabled():
        raise RuntimeError("the margin losses do not support double backward (backward(create_graph=True))")


class _TargetMarginLogits(torch.autograd.Function):
    """:func:`_margin_logits` as one autograd function (for ``MarginLoss.margin_logits``).

    Its backward pass costs what scaling costs in plain scaled cross-entropy: one ``B x C``
    multiply, plus ``B`` target entries scaled by ``d psi / d cos_y``. (Autograd through
    gathers and scatters would materialise and add extra ``B x C`` gradient tensors, and
    autograd through the elementwise ops of ``psi`` costs more than the rest.) ``psi`` acts
    elementwise on the target cosines, so the loss's ``target_cosine`` returns its derivative
    alongside; the tests check it with ``gradcheck``.
    """

    @staticmethod
    def forward(ctx, cosine, target, loss, offset):
        logits, ctx.index, ctx.dpsi = _margin_logits(cosine, target, loss, offset, ctx.needs_input_grad[0])
        ctx.scale = loss.scale
        return logits

    @staticmethod
    def backward(ctx, grad_logits):
        _no_double_backward()
        grad = (grad_logits * ctx.scale).contiguous()
        if ctx.dpsi is not None:
            flat = grad.view(-1)
            flat[ctx.index] = flat[ctx.index] * ctx.dpsi.to(grad.dtype)
        return grad, None, None, None


def _log_target_probability(logits: torch.Tensor, prob: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``log p_y`` per row: the log of the kept softmax where ``p_y`` is large enough to be
    accurate, else ``z_y - logsumexp(z)`` (on the CPU only for the rows that need it; on an
    accelerator for all, blended, so nothing waits for a read-back)."""
    p_y = prob.view(-1)[index]
    safe = _LOG_SAFE[p_y.dtype]
    if p_y.device.type == "cpu":
        log_p = torch.log(p_y)
        if p_y.numel() and float(p_y.amin()) < safe:  # rare: tiny probabilities
            rows = (p_y < safe).nonzero().squeeze(1)
            log_p[rows] = logits.view(-1)[index[rows]] - torch.logsumexp(logits.index_select(0, rows), dim=1)
        return log_p
    exact = logits.view(-1)[index] - torch.logsumexp(logits, dim=1)
    return torch.where(p_y < safe, exact, torch.log(p_y.clamp_min(safe)))


class _MarginCrossEntropy(torch.autograd.Function):
    """``cross_entropy(margin logits, target, weight)`` (weighted mean) as one autograd function.

    The training loss. The forward pass keeps the softmax ``p`` of the logits, and the
    backward pass is a single multiply: ``d loss / d cos = s * coef_b * (p - onehot)``, with
    the target entries scaled by ``d psi / d cos_y`` and ``coef_b = w_{y_b} / sum_b w_{y_b}``
    (``1 / B`` unweighted). ``F.cross_entropy`` on the output of :class:`_TargetMarginLogits`
    instead writes a one-hot gradient, runs the log-softmax backward and then the backward of
    the scaling: three ``B x C`` passes where this needs one. The loss itself is ``-log p_y``
    from the kept softmax (:func:`_log_target_probability`).
    """

    @staticmethod
    def forward(ctx, cosine, target, loss, offset, weight):
        logits, index, dpsi = _margin_logits(cosine, target, loss, offset, ctx.needs_input_grad[0])
        prob = torch.softmax(logits, dim=1)
        log_p = _log_target_probability(logits, prob, index)
        if not len(index):
            value = log_p.sum() * math.nan  # as F.cross_entropy on an empty batch
            coef = 0.0
        elif weight is None:  # the mean: one number for every row
            coef = 1.0 / len(index)
            value = log_p.sum() * -coef
        else:
            w = weight.index_select(0, target).to(log_p.dtype)
            coef = w / w.sum()
            value = -(log_p * coef).sum()
        ctx.prob, ctx.index, ctx.dpsi, ctx.coef = prob, index, dpsi, coef * loss.scale
        return value

    @staticmethod
    def backward(ctx, grad_loss):
        _no_double_backward()
        coef = ctx.coef * grad_loss
        grad = ctx.prob * (coef.unsqueeze(1) if coef.ndim else coef)
        flat = grad.view(-1)
        target_grad = flat[ctx.index] - coef  # the one-hot part
        flat[ctx.index] = target_grad if ctx.dpsi is None else target_grad * ctx.dpsi.to(grad.dtype)
        return grad, None, None, None, None


class MarginLoss(nn.Module):
    """Base of the margin losses on a cosine classifier (DBM, LDAM).

    A subclass registers the buffer ``class_margin`` (one margin per class) and, for an
    instance-wise margin, ``margin_slope``, and overrides :meth:`target_cosine`, the modified
    cosine of the target class as an elementwise function of the target cosines. This class
    scales it, writes it into the target column, adds the base loss's offset and applies the
    base loss (:class:`~dbm_ltr.losses.BalancedLoss`). A subclass that needs the hard-positive
    mask sets ``wants_hard_mask``.

    ``loss(cosine, target)`` runs the margin and the cross-entropy as one autograd function
    whose backward pass is a single ``B x C`` multiply of the kept softmax (see
    :class:`_MarginCrossEntropy`); :meth:`margin_logits` returns the logits alone.

    The per-sample work (:meth:`per_sample_margins`, :meth:`target_cosine`) runs in torch on
    ``B``-vectors on every device; the input cosines are only read.
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
        self.register_buffer("margin_slope", None, persistent=False)

    @property
    def base(self) -> str:
        return self.base_loss.base

    @property
    def wants_hard_mask(self) -> bool:
        return False

    def per_sample_margins(self, target: torch.Tensor, hard: torch.Tensor | None):
        """``(class_margin[target], margin_slope[target] * hard)`` (slope ``None`` when the
        loss has no instance margin, mask omitted when ``hard`` is ``None``)."""
        slope = self.margin_slope
        if slope is not None:
            slope = slope.index_select(0, target)
            if hard is not None:
                slope = slope * hard
        return self.class_margin.index_select(0, target), slope

    def target_cosine(self, cos_y, margin_y, slope_y, need_grad: bool):
        """Modified cosine ``psi`` of the target class and ``d psi / d cos_y``, each ``(B,)``.

        Args:
            cos_y: raw target cosines ``(B,)``, float32 or float64.
            margin_y: ``class_margin`` of each sample's class ``(B,)``.
            slope_y: ``margin_slope`` of each sample's class, times the hard-positive mask
                if ``wants_hard_mask``; ``None`` without an instance margin.
            need_grad: whether the derivative is needed; return ``None`` for it otherwise
                (``None`` is also read as a derivative of exactly 1).
        """
        raise NotImplementedError

    def _checked(self, cosine: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_logits_and_target(cosine, target, self.num_classes)
        # float16/bfloat16 are upcast (float64 stays); no op of the margin is one that
        # autocast runs in lower precision, so the arithmetic is float32 under autocast too.
        return at_least_float32(cosine)

    def margin_logits(self, cosine: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scaled logits with the margin on the target column, before any base-loss offset.

        Returns float32 logits of shape ``(B, C)`` for float16/bfloat16/float32 cosines.
        """
        return _TargetMarginLogits.apply(self._checked(cosine, target), target, self, None)

    def forward(self, cosine: torch.Tensor, target: torch.Tensor, epoch: int | None = None) -> torch.Tensor:
        """The loss ``base(margin_logits(cosine, target) + offset, target)``, a scalar.

        Args:
            cosine: raw cosines ``(B, C)`` in ``[-1, 1]`` (``CosineClassifier``'s output, no
                scale), any floating dtype.
            target: class indices ``(B,)``, on the same device.
            epoch: the current (0-based) epoch; only ``base="drw"`` uses it (plain CE before
                ``drw_epoch``, class-balanced weights from then on).
        """
        return _MarginCrossEntropy.apply(
            self._checked(cosine, target),
            target,
            self,
            self.base_loss.logit_offset,
            self.base_loss.weight_at(epoch),
        )


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
                f"unknown instance_margin {instance_margin!r}; choose one of {', '.join(INSTANCE_MARGINS)}"
            )
        if overflow_mode not in OVERFLOW_MODES:
            raise ValueError(f"unknown overflow_mode {overflow_mode!r}; choose one of {', '.join(OVERFLOW_MODES)}")
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
        if instance_margin != "none":
            # d(margin)/d(-cos_y) for a sample that gets the instance margin: lambda m_C / 2
            self.register_buffer("margin_slope", margins * (0.5 * lambda_inst), persistent=False)

    @property
    def wants_hard_mask(self) -> bool:
        return self.instance_margin == "hard" and self.max_margin > 0

    def target_cosine(self, cos_y, margin_y, slope_y, need_grad: bool):
        if self.max_margin == 0.0:  # plain cosine classifier, exactly
            return cos_y, None
        return _dbm_psi(cos_y, margin_y, slope_y, self.overflow_mode, need_grad)

    def extra_repr(self) -> str:
        return (
            f"base={self.base!r}, max_margin={self.max_margin}, tau={self.tau}, "
            f"scale={self.scale}, lambda_inst={self.lambda_inst}, "
            f"instance_margin={self.instance_margin!r}, overflow_mode={self.overflow_mode!r}"
        )
