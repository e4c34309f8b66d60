"""A trunk plus a classification head (linear, or the cosine classifier of DBM)."""

from __future__ import annotations

import torch
from torch import nn

from ..nn import CosineClassifier

__all__ = ["HEADS", "TrunkClassifier", "make_head"]

#: Head names: ``linear`` (``nn.Linear`` with bias, logits) or ``cosine`` (raw cosines).
HEADS = ("linear", "cosine")


def make_head(kind: str, in_features: int, num_classes: int) -> nn.Module:
    """``nn.Linear(D, C)`` (Kaiming-normal weight) or ``CosineClassifier(D, C)``."""
    if kind == "linear":
        head = nn.Linear(in_features, num_classes)
        nn.init.kaiming_normal_(head.weight)
        return head
    if kind == "cosine":
        return CosineClassifier(in_features, num_classes)
    raise ValueError(f"unknown classifier {kind!r}; choose one of {', '.join(HEADS)}")


def head_weights(head: nn.Module) -> torch.Tensor:
    """Class vectors of a head, one row per class ``(C, D)`` (a linear head's bias is ignored)."""
    if isinstance(head, CosineClassifier):
        return head.class_vectors()
    return head.weight


class TrunkClassifier(nn.Module):
    """``head(trunk(x))``. ``forward_features`` gives the pooled feature the head sees."""

    def __init__(self, trunk: nn.Module, num_classes: int, classifier: str = "linear") -> None:
        super().__init__()
        self.trunk = trunk
        self.classifier = classifier
        self.num_classes = num_classes
        self.head = make_head(classifier, trunk.out_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))

    def class_weights(self) -> torch.Tensor:
        return head_weights(self.head)
