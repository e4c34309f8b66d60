r"""LDAM: label-distribution-aware margin loss (Cao et al., 2019), for the comparison rows.

.. math::

    \Delta_c = M\,(n_{\min} / n_c)^{1/4}, \qquad
    z_y = s\,(\cos_y - \Delta_y), \quad z_c = s \cos_c \ (c \ne y)

LDAM-DRW is the same loss with ``base="drw"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .balanced import class_counts
from .margins import MarginLoss, _check_margin_args

__all__ = ["LDAMLoss", "ldam_margins"]


def ldam_margins(cls_num_list: Sequence[int] | torch.Tensor, max_margin: float = 0.5) -> torch.Tensor:
    """Per-class LDAM margins ``M (n_min / n_c)^(1/4)`` (rarest class gets ``M``), computed in
    float64 and returned in the default dtype (float32 unless set otherwise)."""
    _check_margin_args(max_margin, 0.25)
    counts = class_counts(cls_num_list)
    return (max_margin * (counts.min() / counts) ** 0.25).to(torch.get_default_dtype())


class LDAMLoss(MarginLoss):
    """LDAM on raw cosines.

    Args:
        cls_num_list: training images per class.
        max_margin: ``M``, margin of the rarest class. Default 0.5 (original LDAM; the DBM
            repository overrides it with its ``max_margin`` of 0.1).
        scale: ``s``. Default 30.
        base: ``"ce"`` (LDAM) or ``"drw"`` (LDAM-DRW); ``"cb"`` and ``"bs"`` also work.
        drw_epoch: switch epoch for ``base="drw"``. Default 160.
        cb_beta: beta of the class-balanced weights. Default 0.9999.

    Example:
        >>> crit = LDAMLoss([500, 48, 5], base="drw")
        >>> loss = crit(torch.rand(4, 3) * 2 - 1, torch.tensor([0, 1, 2, 2]), epoch=0)
    """

    def __init__(
        self,
        cls_num_list: Sequence[int] | torch.Tensor,
        max_margin: float = 0.5,
        scale: float = 30.0,
        base: str = "ce",
        drw_epoch: int = 160,
        cb_beta: float = 0.9999,
    ) -> None:
        super().__init__(cls_num_list, scale, base=base, drw_epoch=drw_epoch, cb_beta=cb_beta)
        self.max_margin = float(max_margin)
        self.register_buffer("class_margin", ldam_margins(cls_num_list, max_margin), persistent=False)

    def target_cosine(self, cos_y, margin_y, slope_y, need_grad: bool):
        return cos_y - margin_y, None

    def extra_repr(self) -> str:
        return f"base={self.base!r}, max_margin={self.max_margin}, scale={self.scale}"
