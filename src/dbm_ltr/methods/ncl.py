"""NCL: nested collaborative learning (Li et al., CVPR 2022), with or without DBM (DBM paper, Table 2).

Several experts, each a full trunk with its own classifier, see the same two views of every
image (regular ``x_p`` and SimCLR-style ``x_k``). Per expert ``i`` with raw classifier output
``r_i`` (cosines for DBM, logits otherwise):

* balanced logits ``a_i = z_i + log n_c``, ``z_i`` the DBM margin logits of ``r_i`` (DBM-NCL) or
  ``r_i`` itself (NCL); hard-category logits ``a_i^H = a_i * M``, with ``M`` mined once from
  expert 0's raw output (unselected classes get logit 0, as in the reference code);
* ``CE(a_i) + CE(a_i^H)`` and a MoCo term (query head on the expert's feature of ``x_p``, key
  from a momentum copy of the expert on ``x_k``, a queue of negatives);
* nested balanced online distillation over ``{a_i}`` and over ``{a_i^H}``.

Under torchrun the key branch uses shuffle-BN (MoCo): the processes' ``x_k`` are gathered,
permuted with one permutation shared by all processes, each process runs the key encoders on
its slice of the permuted batch, and the keys are gathered and un-permuted, so a key's
BatchNorm statistics do not come from the query's own sub-batch. The queue receives the keys
of all processes.

Prediction averages the experts' raw outputs.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..losses import BalancedLoss, MarginLoss, class_counts
from ..losses.ncl import (
    hard_category_mask,
    moco_loss,
    nested_balanced_online_distillation,
)
from ..models import create_model, create_trunk, projection_mlp
from ..nn import at_least_float32
from ..registry import keyword_defaults
from .base import Method, StepOutput, check_head_matches_loss, constructor_params, gather_from_all

__all__ = ["NCLMethod"]

KEY_INITS = ("copy", "random")
KEY_HEADS = ("ema", "frozen")
MOMENTUM_UPDATES = ("before_keys", "after_keys")


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _same_batch_everywhere(batch: int, device: torch.device) -> bool:
    sizes = gather_from_all(torch.tensor([batch], device=device))
    return bool((sizes == batch).all())


class NCLMethod(Method):
    """NCL with balanced softmax (NCL) or DBM with base bs (DBM-NCL) in every expert.

    Args:
        experts: one trunk + classifier per expert.
        key_trunks: the momentum (key) trunk of each expert.
        loss: balanced softmax, or DBM with base bs.
        cls_num_list: training images per class.
        hard_fraction: share of the classes mined as hard categories (k = 30 of 100). Default 0.3.
        distill_weight: weight of the nested balanced online distillation. Default 0.6.
        queue_size: MoCo queue length. Default 1024.
        moco_dim: width of the MoCo heads. Default 64.
        moco_temperature: MoCo temperature. Default 0.2.
        moco_momentum: key-encoder momentum per step. Default 0.999 (the presets: 0.997002999,
            the NCL code's effective value with 3 experts).
        key_init: ``"copy"`` (MoCo: the key trunk starts as the expert's) or ``"random"`` (the
            NCL code).
        key_head: ``"ema"`` (the key head follows the query head) or ``"frozen"`` (the NCL code).
        momentum_update: ``"before_keys"`` (MoCo: the key encoders move, then encode the batch's
            keys) or ``"after_keys"`` (the NCL code: the keys come from the encoders as they
            were, then the encoders move). Both before the optimizer step.
        shuffle_bn: under torchrun, shuffle the key batch across processes (MoCo). Default true.
        head_init: ``"kaiming"`` (Kaiming-normal, the default) or ``"pytorch"`` (``nn.Linear``'s
            own, as the NCL code) weights of the MoCo heads and of linear classifiers (a cosine
            classifier keeps its own).
        num_experts: number of experts (``build`` only). Default 3.
    """

    views = ("regular", "contrastive")

    def __init__(
        self,
        experts: list[nn.Module],
        key_trunks: list[nn.Module],
        loss: nn.Module,
        cls_num_list: list[int],
        hard_fraction: float = 0.3,
        distill_weight: float = 0.6,
        queue_size: int = 1024,
        moco_dim: int = 64,
        moco_temperature: float = 0.2,
        moco_momentum: float = 0.999,
        key_init: str = "copy",
        key_head: str = "ema",
        momentum_update: str = "before_keys",
        shuffle_bn: bool = True,
        head_init: str = "kaiming",
    ) -> None:
        super().__init__()
        if not isinstance(loss, (BalancedLoss, MarginLoss)) or loss.base != "bs":
            raise ValueError(
                "NCL trains on balanced logits: use loss 'bs' (NCL) or loss 'dbm' with base 'bs' (DBM-NCL)"
            )
        if key_init not in KEY_INITS or key_head not in KEY_HEADS:
            raise ValueError(
                f"key_init must be one of {KEY_INITS} and key_head one of {KEY_HEADS}, got {key_init!r}, {key_head!r}"
            )
        if momentum_update not in MOMENTUM_UPDATES:
            raise ValueError(f"momentum_update must be one of {MOMENTUM_UPDATES}, got {momentum_update!r}")
        if not 0.0 <= moco_momentum <= 1.0:
            raise ValueError(f"moco_momentum must be in [0, 1], got {moco_momentum}")
        if not 0 < hard_fraction <= 1:
            raise ValueError(f"hard_fraction must be in (0, 1], got {hard_fraction}")
        # k = 30 for CIFAR-100, 3 for CIFAR-10 (and 300 / 2442 for ImageNet-LT / iNat)
        self.hard_k = max(1, int(hard_fraction * len(cls_num_list)))
        self.experts = nn.ModuleList(experts)
        self.loss = loss
        self.distill_weight = float(distill_weight)
        self.moco_temperature = float(moco_temperature)
        self.moco_momentum = float(moco_momentum)
        self.key_head_mode = key_head
        self.momentum_update = momentum_update
        self.shuffle_bn = bool(shuffle_bn)
        dim = experts[0].trunk.out_features
        if head_init == "pytorch":
            for expert in experts:
                if isinstance(expert.head, nn.Linear):
                    expert.head.reset_parameters()
        self.query_heads = nn.ModuleList(projection_mlp(dim, dim, moco_dim, init=head_init) for _ in experts)
        self.key_trunks = nn.ModuleList(key_trunks)
        if key_init == "copy":  # MoCo: the key encoder starts as the query encoder
            self.key_heads = nn.ModuleList(copy.deepcopy(h) for h in self.query_heads)
        else:  # reference code: separately initialised (and, with key_head="frozen", fixed)
            self.key_heads = nn.ModuleList(projection_mlp(dim, dim, moco_dim, init=head_init) for _ in experts)
        for p in list(self.key_trunks.parameters()) + list(self.key_heads.parameters()):
            p.requires_grad_(False)
        queue = F.normalize(torch.randn(len(experts), queue_size, moco_dim), dim=2)
        self.register_buffer("queues", queue)
        self.register_buffer("queue_ptr", torch.zeros(len(experts), dtype=torch.long))
        log_counts = class_counts(cls_num_list).log().to(torch.get_default_dtype())
        self.register_buffer("log_counts", log_counts, persistent=False)

    @classmethod
    def build(
        cls,
        *,
        trunk: str,
        classifier: str,
        num_classes: int,
        cls_num_list: list[int],
        loss: nn.Module,
        loss_name: str,
        num_experts: int = 3,
        **params,
    ) -> NCLMethod:
        check_head_matches_loss(classifier, loss, loss_name)
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        params = constructor_params(cls, params)
        experts = [create_model(trunk, num_classes, classifier) for _ in range(num_experts)]
        if params.get("key_init", keyword_defaults(cls.__init__)["key_init"]) == "copy":
            key_trunks = [copy.deepcopy(e.trunk) for e in experts]
        else:
            key_trunks = [create_trunk(trunk) for _ in experts]
        return cls(experts, key_trunks, loss, cls_num_list, **params)

    @torch.no_grad()
    def _momentum_update(self) -> None:
        m = self.moco_momentum
        pairs = list(zip(self.experts, self.key_trunks, self.query_heads, self.key_heads))
        for expert, key_trunk, query_head, key_head in pairs:
            sources = [(expert.trunk, key_trunk)]
            if self.key_head_mode == "ema":
                sources.append((query_head, key_head))
            for src, dst in sources:
                for p_src, p_dst in zip(src.parameters(), dst.parameters()):
                    p_dst.mul_(m).add_(p_src.detach(), alpha=1.0 - m)

    @torch.no_grad()
    def _key(self, expert: int, images: torch.Tensor) -> torch.Tensor:
        key = self.key_heads[expert](self.key_trunks[expert](images))
        return F.normalize(at_least_float32(key), dim=1)

    @torch.no_grad()
    def keys(self, x_k: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per expert: (this process's keys ``(B, d)``, all processes' keys in rank order).

        One process: the key encoders on ``x_k``. Under torchrun with ``shuffle_bn``: shuffle-BN
        over the global batch (see the module docstring); without it, each process encodes
        its own batch and the keys are gathered for the queue.
        """
        experts = range(len(self.experts))
        if _world_size() == 1:
            keys = [self._key(i, x_k) for i in experts]
            return keys, keys
        batch, rank = x_k.shape[0], dist.get_rank()
        mine = slice(rank * batch, (rank + 1) * batch)
        if not (self.shuffle_bn and _same_batch_everywhere(batch, x_k.device)):
            keys = [self._key(i, x_k) for i in experts]
            return keys, [gather_from_all(k) for k in keys]
        everything = gather_from_all(x_k)
        perm = torch.randperm(everything.shape[0], device=x_k.device)
        dist.broadcast(perm, src=0)  # one permutation for all processes
        shuffled = everything[perm[mine]]
        own, every = [], []
        for i in experts:
            gathered = gather_from_all(self._key(i, shuffled))  # row j belongs to image perm[j]
            keys = torch.empty_like(gathered)
            keys[perm] = gathered
            own.append(keys[mine])
            every.append(keys)
        return own, every

    @torch.no_grad()
    def _enqueue(self, expert: int, keys: torch.Tensor) -> None:
        size = self.queues.shape[1]
        index = (self.queue_ptr[expert] + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queues[expert, index] = keys.to(self.queues.dtype)
        self.queue_ptr[expert] = (self.queue_ptr[expert] + keys.shape[0]) % size

    def balanced_logits(self, raw: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``a = z + log n_c``: DBM margin logits of the cosines, or the linear logits."""
        z = self.loss.margin_logits(raw, targets) if isinstance(self.loss, MarginLoss) else at_least_float32(raw)
        return z + self.log_counts

    def forward(self, images, targets: torch.Tensor, epoch: int) -> StepOutput:
        if not isinstance(images, (list, tuple)) or len(images) != 2:
            raise ValueError("NCL trains on two views per image (regular, contrastive)")
        x_p, x_k = images
        if self.momentum_update == "before_keys":
            self._momentum_update()
        features = [expert.trunk(x_p) for expert in self.experts]
        raws = [expert.head(f) for expert, f in zip(self.experts, features)]
        mask = hard_category_mask(raws[0], targets, self.hard_k)
        full = [self.balanced_logits(r, targets) for r in raws]
        hard = [a * mask for a in full]
        ce = sum(F.cross_entropy(a, targets) for a in full)
        hcm = sum(F.cross_entropy(a, targets) for a in hard)
        contrastive = full[0].new_zeros(())
        own_keys, all_keys = self.keys(x_k)
        if self.momentum_update == "after_keys":
            self._momentum_update()
        for i, f in enumerate(features):
            query = F.normalize(at_least_float32(self.query_heads[i](f)), dim=1)
            queue = self.queues[i].clone()  # the enqueue below writes in place
            contrastive = contrastive + moco_loss(query, own_keys[i], queue, self.moco_temperature)
            self._enqueue(i, all_keys[i])
        distill = nested_balanced_online_distillation(full, self.distill_weight) + (
            nested_balanced_online_distillation(hard, self.distill_weight)
        )
        loss = ce + hcm + contrastive + distill
        return StepOutput(loss, at_least_float32(torch.stack(raws)).mean(dim=0))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return at_least_float32(torch.stack([expert(images) for expert in self.experts])).mean(dim=0)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Features of expert 0 (each expert has its own feature space)."""
        return self.experts[0].forward_features(images)

    def class_weights(self) -> torch.Tensor:
        """Classifier weights of expert 0."""
        return self.experts[0].class_weights()
