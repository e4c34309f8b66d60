"""Single-branch methods: one trunk, one head, one loss (CE, CB, DRW, BS, LDAM, DBM-*)."""

from __future__ import annotations

import torch
from torch import nn

from ..models import create_model
from .base import SingleModelMethod, StepOutput, check_head_matches_loss

__all__ = ["StandardMethod"]


class StandardMethod(SingleModelMethod):
    """``loss(head(trunk(x)), y, epoch)`` on the regular view; prediction = argmax of the head."""

    def __init__(self, model: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    @classmethod
    def build(
        cls,
        *,
        trunk: str,
        classifier: str,
        num_classes: int,
        loss: nn.Module,
        loss_name: str,
        **_: object,
    ) -> StandardMethod:
        check_head_matches_loss(classifier, loss, loss_name)
        return cls(create_model(trunk, num_classes, classifier), loss)

    def forward(self, images: torch.Tensor, targets: torch.Tensor, epoch: int) -> StepOutput:
        scores = self.model(images)
        return StepOutput(self.loss(scores, targets, epoch=epoch), scores)
