"""BCL: balanced contrastive learning (Zhu et al., CVPR 2022), with or without DBM (DBM paper,
Sec. 4 and Table 2).

Three views per image go through the trunk as one ``3B`` batch (shared BatchNorm statistics):
the classifier sees view 1 (regular augmentation), the contrastive loss the projections of
views 2 and 3 (SimCLR-style). A prototype head maps the raw classifier weight vectors to class
prototypes.

``projection_views`` says which features the projection head (Linear-BN-ReLU-Linear) runs on:
``"all"`` (default, as the BCL code): all ``3B``, view 1's projections discarded, so the head's
BatchNorm statistics cover the three views and the contrastive gradient also reaches view 1
through them; ``"contrastive"``: only the ``2B`` features of views 2 and 3.

``loss = alpha * L_cls(head(f_1), y) + beta * L_BSC(proj(f_2, f_3), prototypes)``, where
``L_cls`` is the configured loss: balanced softmax for BCL, DBM with base ``bs`` for DBM-BCL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..losses.contrastive import balanced_contrastive_loss
from ..models import create_model, projection_mlp
from ..nn import at_least_float32
from .base import SingleModelMethod, StepOutput, check_head_matches_loss, constructor_params

__all__ = ["BCLMethod", "PROJECTION_VIEWS"]

PROJECTION_VIEWS = ("all", "contrastive")


class BCLMethod(SingleModelMethod):
    """BCL with any classification loss (balanced softmax: BCL; DBM with base bs: DBM-BCL).

    Args:
        model: trunk + classifier head.
        loss: the classification loss on view 1.
        alpha: weight of the classification loss. Default 2.0 (the BCL and DBM code).
        beta: weight of the balanced contrastive loss. Default 0.6.
        temperature: temperature of the contrastive loss. Default 0.1.
        hidden_dim: hidden width of the projection and prototype heads. Default 512.
        proj_dim: output width of the projection and prototype heads. Default 128.
        projection_views: ``"all"`` (the BCL code: the projection head's batch holds all three
            views) or ``"contrastive"`` (views 2 and 3 only).
        head_init: ``"kaiming"`` (Kaiming-normal, as the CIFAR code; the default) or
            ``"pytorch"`` (``nn.Linear``'s own, as the large-scale code) weights of the projection
            and prototype heads.
    """

    views = ("regular", "contrastive", "contrastive")

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        alpha: float = 2.0,
        beta: float = 0.6,
        temperature: float = 0.1,
        hidden_dim: int = 512,
        proj_dim: int = 128,
        projection_views: str = "all",
        head_init: str = "kaiming",
    ) -> None:
        super().__init__()
        if alpha < 0 or beta < 0:
            raise ValueError(f"BCL weights must be >= 0, got alpha={alpha}, beta={beta}")
        if projection_views not in PROJECTION_VIEWS:
            raise ValueError(f"projection_views must be one of {', '.join(PROJECTION_VIEWS)}, got {projection_views!r}")
        self.projection_views = projection_views
        self.model = model
        self.loss = loss
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)
        dim = model.trunk.out_features
        self.projection = projection_mlp(dim, hidden_dim, proj_dim, batchnorm=True, init=head_init)
        self.prototype = projection_mlp(dim, hidden_dim, proj_dim, batchnorm=True, init=head_init)

    @classmethod
    def build(
        cls,
        *,
        trunk: str,
        classifier: str,
        num_classes: int,
        loss: nn.Module,
        loss_name: str,
        **params,
    ) -> BCLMethod:
        check_head_matches_loss(classifier, loss, loss_name)
        return cls(create_model(trunk, num_classes, classifier), loss, **constructor_params(cls, params))

    def prototypes(self) -> torch.Tensor:
        """L2-normalised class prototypes ``(C, proj_dim)`` from the raw classifier weights."""
        return F.normalize(self.prototype(self.model.class_weights()), dim=1)

    def forward(self, images, targets: torch.Tensor, epoch: int) -> StepOutput:
        if not isinstance(images, (list, tuple)) or len(images) != 3:
            raise ValueError("BCL trains on three views per image (regular, contrastive x2)")
        batch = targets.shape[0]
        features = self.model.trunk(torch.cat(list(images)))
        scores = self.model.head(features[:batch])
        cls_loss = self.loss(scores, targets, epoch=epoch)
        if self.projection_views == "all":
            projected = self.projection(features)[batch:]
        else:
            projected = self.projection(features[batch:])
        anchors = F.normalize(projected, dim=1)
        bsc = balanced_contrastive_loss(
            at_least_float32(anchors), targets.repeat(2), at_least_float32(self.prototypes()), self.temperature
        )
        return StepOutput(self.alpha * cls_loss + self.beta * bsc, scores)
