"""Classifier heads, and the precision rule of the losses.

``CosineClassifier`` is the "normed linear" layer of the DBM paper: it returns raw cosines
between L2-normalised features and L2-normalised class vectors. The scale ``s`` and any margin
are applied later, by the loss, so prediction is simply ``argmax`` of the cosines.

``at_least_float32``: the losses compute in float32 when autocast hands them float16/bfloat16,
and in the input's own precision otherwise (float64 stays float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CosineClassifier", "at_least_float32"]


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if it is float16 or bfloat16, else ``x`` itself (float32, float64).

    Example:
        >>> at_least_float32(torch.ones(2, dtype=torch.bfloat16)).dtype
        torch.float32
        >>> at_least_float32(torch.ones(2, dtype=torch.float64)).dtype
        torch.float64
    """
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class CosineClassifier(nn.Module):
    r"""Bias-free cosine classifier.

    .. math:: \cos_{b,c} = \Big\langle \frac{f_b}{\max(\|f_b\|, \epsilon)},
              \frac{w_c}{\max(\|w_c\|, \epsilon)} \Big\rangle, \quad \epsilon = 10^{-12}

    Args:
        in_features: feature dimension ``D``.
        num_classes: number of classes ``C``.

    The weight has shape ``(D, C)``, one column per class, initialised ``U(-1, 1)`` and then
    rescaled so that every class column has unit norm (as the DBM code). The cosines are
    computed in float32 (float64 for float64 inputs), also under autocast.

    Example:
        >>> head = CosineClassifier(64, 10)
        >>> cos = head(torch.randn(4, 64))
        >>> cos.shape, bool(cos.abs().max() <= 1)
        (torch.Size([4, 10]), True)
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        if in_features <= 0 or num_classes <= 0:
            raise ValueError(
                f"CosineClassifier needs positive sizes, got in_features={in_features}, num_classes={num_classes}"
            )
        self.in_features = in_features
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(in_features, num_classes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            self.weight.div_(self.weight.norm(dim=0, keepdim=True).clamp_min(1e-12))

    def class_vectors(self) -> torch.Tensor:
        """The raw (un-normalised) class vectors, one row per class: shape ``(C, D)``."""
        return self.weight.t()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # in float32 (or float64) even under autocast: the margin is added to the angle of this
        # cosine, which a bfloat16 product would round by up to ~0.01 rad near cos = 0.9
        with torch.autocast(features.device.type, enabled=False):
            features, weight = at_least_float32(features), at_least_float32(self.weight)
            return F.normalize(features, dim=1) @ F.normalize(weight.to(features.dtype), dim=0)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}"
