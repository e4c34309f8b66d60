"""The one interface between the training engine and a method (CE, DRW, BS, LDAM, DBM-*,
BCL, NCL, ...): a method owns its model, says which views of an image it trains on, turns a
batch into a loss, and turns images into class scores for evaluation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from ..losses import loss_input

__all__ = [
    "COMMON_ARGS",
    "Method",
    "SingleModelMethod",
    "StepOutput",
    "check_head_matches_loss",
    "constructor_params",
    "gather_from_all",
]

#: Arguments every method builder receives from the engine (not configurable per method).
COMMON_ARGS = ("trunk", "classifier", "num_classes", "cls_num_list", "loss", "loss_name")


class StepOutput(NamedTuple):
    loss: torch.Tensor  # scalar to minimise
    scores: torch.Tensor  # (B, C) class scores of the batch, for the running training accuracy


class Method(nn.Module):
    """Base class of every training method.

    Subclasses implement :meth:`forward` (training step) and :meth:`predict`; the engine
    wraps the method in ``DistributedDataParallel`` when several processes run, so all
    trainable state must live in this module.
    """

    #: Kind of each training view, in order: ``"regular"`` (the data set's regular training
    #: augmentation) or ``"contrastive"`` (SimCLR-style). One view -> a tensor per batch;
    #: several -> a list of tensors, one per view.
    views: tuple[str, ...] = ("regular",)

    #: ``True``: the engine passes ``indices=`` (each sample's position in the training set) to
    #: :meth:`forward`.
    uses_indices: bool = False

    def forward(self, images, targets: torch.Tensor, epoch: int) -> StepOutput:
        raise NotImplementedError

    def no_weight_decay(self) -> set[str]:
        """Names of parameters the optimizer must not decay (default: none)."""
        return set()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores ``(B, C)`` (raw classifier output; no prior, no scale)."""
        raise NotImplementedError

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The pooled features the classifier sees, ``(B, D)``."""
        raise NotImplementedError

    def class_weights(self) -> torch.Tensor:
        """Classifier weight vectors, one row per class ``(C, D)``."""
        raise NotImplementedError

    @torch.no_grad()
    def features_and_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features(images), predict(images))``; single-trunk methods override it to run
        the trunk once."""
        return self.features(images), self.predict(images)


class SingleModelMethod(Method):
    """A method whose prediction is ``self.model(images)`` (a
    :class:`~dbm_ltr.models.TrunkClassifier`), whatever extra branches it trains."""

    model: nn.Module

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)

    def class_weights(self) -> torch.Tensor:
        return self.model.class_weights()

    @torch.no_grad()
    def features_and_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(images)
        return features, self.model.head(features)


def constructor_params(cls: type, params: dict) -> dict:
    """The keyword parameters of ``cls``'s constructor among ``params`` (a ``build``'s
    ``**params``, which also holds the engine's common arguments); any other name is an error."""
    from ..registry import keyword_defaults

    accepted = keyword_defaults(cls.__init__)
    unknown = sorted(set(params) - set(accepted) - set(COMMON_ARGS))
    if unknown:
        raise TypeError(
            f"{cls.__name__} takes no parameter(s) {', '.join(unknown)}; it takes "
            f"{', '.join(sorted(accepted)) or 'none'}"
        )
    return {k: v for k, v in params.items() if k in accepted}


def check_head_matches_loss(classifier: str, loss: nn.Module, loss_name: str) -> None:
    """A margin loss needs raw cosines; a logit loss on raw cosines would train unscaled."""
    kind = loss_input(loss)
    if kind == "cosine" and classifier != "cosine":
        raise ValueError(f"loss {loss_name!r} works on raw cosines: set model.classifier=cosine")
    if kind == "logits" and classifier == "cosine":
        raise ValueError(
            f"loss {loss_name!r} on a cosine classifier would see unscaled cosines in [-1, 1]; "
            "for the scaled cosine classifier use loss 'dbm' with max_margin=0 (and its base)"
        )


def gather_from_all(tensor: torch.Tensor) -> torch.Tensor:
    """The tensors (equal shapes) of all processes concatenated in rank order; the tensor
    itself in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)
