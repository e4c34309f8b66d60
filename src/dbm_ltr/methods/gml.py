"""GML: a student distilled from a frozen long-tailed teacher through a Gaussian-mixture
likelihood over a class-partitioned queue of teacher features (Du et al., CVPR 2023), with or
without DBM (DBM paper, Tables 2-4).

Three views of every image (regular augmentation each): ``x_cls`` (classification), ``x_q``
(query) and ``x_k`` (key). The student trunk sees ``x_cls`` and ``x_q`` as one batch, the
teacher (always in eval mode, no gradient) ``x_cls`` and ``x_k``. The teacher's raw features
of ``x_k`` enter a queue of ``queue_size`` entries split into one circular segment per class
(:func:`~dbm_ltr.losses.gml.queue_segments`), **before** the loss, so the batch is in it. Every
step the whole queue is embedded by ``embed_k`` (Linear-BN-ReLU-Linear, initialised as a copy
of the query embedding ``embed_q`` and trained), the student's ``x_q`` features by
``embed_q``, and

``loss = gamma * L_sup + beta * (L_con + L_conT) + alpha * L_kd``

* ``L_sup``: the configured loss on the student's cosines of ``x_cls``: balanced softmax with
  ``s = 30`` (GML: loss ``dbm`` with ``max_margin=0, scale=30, base=bs``) or DBM with base
  ``bs`` (DBM-GML, ``s = 32`` as the paper);
* ``L_con``, ``L_conT``: :func:`~dbm_ltr.losses.gml.gml_contrastive_losses` with a learnable
  temperature (log-parameterised, no weight decay; one shared value as the GML code, or one per
  class with ``temperature_mode="per_class"``);
* ``L_kd``: :func:`~dbm_ltr.losses.gml.distillation_kl` of the plain scaled cosines
  (``kd_scale * cos``, no margin) at temperature ``kd_temperature``.

The teacher is a finished ``dbm-ltr train`` run (the ``gml_teacher`` presets), named by
``teacher=RUN_DIR`` or its ``checkpoint.pt``; it must have been trained on the same data set,
imbalance factor and split seed, with the trunk ``teacher_trunk`` and a cosine classifier.
Under torchrun the queue receives the keys of all processes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import class_counts
from ..losses.gml import distillation_kl, gml_contrastive_losses, queue_segments
from ..models import TrunkClassifier, create_model, projection_mlp
from ..nn import at_least_float32
from .base import SingleModelMethod, StepOutput, check_head_matches_loss, constructor_params, gather_from_all

__all__ = ["GMLMethod", "TEMPERATURE_MODES", "teacher_model"]

TEMPERATURE_MODES = ("shared", "per_class")


def teacher_model(state: Any, trunk: str, num_classes: int) -> TrunkClassifier:
    """The frozen teacher of a finished run's checkpoint ``state`` (the engine reads
    ``method.teacher`` and checks its data: :func:`dbm_ltr.engine.build.load_teacher`): a
    ``trunk`` with a cosine head; ``ValueError`` naming the mismatch otherwise."""
    if not isinstance(state, dict) or "method" not in state:
        raise ValueError(
            "GML needs its teacher's checkpoint state: the engine loads the run named by "
            "method.teacher (dbm_ltr.engine.build.load_teacher)"
        )
    model = (state.get("config") or {}).get("model", {})
    for what, theirs, ours in (("trunk", model.get("name"), trunk), ("classifier", model.get("classifier"), "cosine")):
        if theirs != ours:
            raise ValueError(
                f"method.teacher: the teacher was trained with {what} {theirs!r}, this student needs "
                f"{ours!r}; train a teacher for this data set (its gml_teacher preset)"
            )
    teacher = create_model(trunk, num_classes, "cosine")
    weights = {k[len("model.") :]: v for k, v in state["method"].items() if k.startswith("model.")}
    try:
        teacher.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(
            f"method.teacher: the checkpoint does not hold a {trunk} with a cosine head "
            f"({str(err).splitlines()[0][:160]})"
        ) from None
    return teacher


class GMLMethod(SingleModelMethod):
    """GML (loss ``dbm`` with ``max_margin=0``, ``scale=30``, base bs) or DBM-GML (DBM margins).

    Args:
        model: the student: trunk + cosine classifier.
        teacher: a finished run directory of the teacher, or its checkpoint (``build``; the
            constructor takes the loaded, frozen teacher model).
        loss: L_sup on the student's cosines.
        cls_num_list: training images per class.
        queue_size: entries of the class-partitioned queue of teacher features. Default 4096.
        base_k: entries every class gets at least. Default 2.
        embed_dim: output width of the query and key embeddings. Default 32.
        temperature: initial temperature of the contrastive terms. Default 0.1.
        temperature_mode: ``"shared"`` (one learnable temperature, as the GML code) or
            ``"per_class"``.
        alpha: weight of the distillation term. Default 1.0.
        beta: weight of the contrastive terms. Default 1.0.
        gamma: weight of L_sup. Default 1.0.
        kd_temperature: distillation temperature. Default 4.0.
        kd_scale: scale of the plain cosines that are distilled (GML's 1 / T_s). Default 30.0.
        head_init: ``"kaiming"`` (Kaiming-normal, the default) or ``"pytorch"`` (``nn.Linear``'s
            own, as the GML code) weights of the query and key embeddings.
        teacher_trunk: the teacher's trunk (``build``). Default ``"resnet56"``.
    """

    views = ("regular", "regular", "regular")
    uses_indices = True  # the queue remembers which image each key came from

    def __init__(
        self,
        model: nn.Module,
        teacher: nn.Module,
        loss: nn.Module,
        cls_num_list: list[int],
        queue_size: int = 4096,
        base_k: int = 2,
        embed_dim: int = 32,
        temperature: float = 0.1,
        temperature_mode: str = "shared",
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 1.0,
        kd_temperature: float = 4.0,
        kd_scale: float = 30.0,
        head_init: str = "kaiming",
    ) -> None:
        super().__init__()
        if temperature_mode not in TEMPERATURE_MODES:
            raise ValueError(
                f"temperature_mode must be one of {', '.join(TEMPERATURE_MODES)}, got {temperature_mode!r}"
            )
        for name, value in (("temperature", temperature), ("kd_temperature", kd_temperature), ("kd_scale", kd_scale)):
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if min(alpha, beta, gamma) < 0:
            raise ValueError(f"GML weights must be >= 0, got alpha={alpha}, beta={beta}, gamma={gamma}")
        self.model, self.teacher, self.loss = model, teacher, loss
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.kd_temperature, self.kd_scale = float(kd_temperature), float(kd_scale)
        dim, teacher_dim = model.trunk.out_features, teacher.trunk.out_features
        self.embed_q = projection_mlp(dim, dim, embed_dim, batchnorm=True, init=head_init)
        self.embed_k = projection_mlp(teacher_dim, teacher_dim, embed_dim, batchnorm=True, init=head_init)
        if dim == teacher_dim:  # the key embedding starts as a copy of the query embedding
            self.embed_k.load_state_dict(self.embed_q.state_dict())
        C = len(cls_num_list)
        self.log_temperature = nn.Parameter(
            torch.full((1 if temperature_mode == "shared" else C,), math.log(temperature))
        )
        starts, lengths = queue_segments(cls_num_list, queue_size, base_k)
        self.register_buffer("segment_start", starts, persistent=False)
        self.register_buffer("segment_length", lengths, persistent=False)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, teacher_dim), dim=1))
        self.register_buffer("queue_labels", torch.repeat_interleave(torch.arange(C), lengths))
        self.register_buffer("queue_index", torch.arange(-queue_size, 0))
        self.register_buffer("queue_ptr", torch.zeros(C, dtype=torch.long))
        prior = class_counts(cls_num_list)
        self.register_buffer("log_prior", (prior / prior.sum()).log().to(torch.get_default_dtype()), persistent=False)
        self.train()

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
        teacher: Any = "",
        teacher_trunk: str = "resnet56",
        **params,
    ) -> GMLMethod:
        if classifier != "cosine":
            raise ValueError("GML trains a cosine student: set model.classifier=cosine")
        check_head_matches_loss(classifier, loss, loss_name)
        teacher = teacher_model(teacher, teacher_trunk, num_classes)
        return cls(
            create_model(trunk, num_classes, classifier), teacher, loss, cls_num_list, **constructor_params(cls, params)
        )

    def train(self, mode: bool = True) -> GMLMethod:
        super().train(mode)
        self.teacher.eval()  # frozen: its BatchNorm statistics never move
        return self

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters trained without weight decay (the temperature)."""
        return {"log_temperature"}

    @torch.no_grad()
    def enqueue(self, features: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
        """Write the teacher ``features`` of all processes into their classes' segments: the
        ``i``-th sample of class ``c`` in the batch goes to ``ptr_c + i`` (mod the segment
        length); samples beyond the segment's length are dropped."""
        features, labels, indices = (gather_from_all(t) for t in (features, labels, indices))
        one_hot = F.one_hot(labels, self.queue_ptr.numel())
        rank_in_class = (one_hot.cumsum(0) - 1).gather(1, labels[:, None]).squeeze(1)
        length = self.segment_length[labels]
        keep = rank_in_class < length
        slot = self.segment_start[labels] + (self.queue_ptr[labels] + rank_in_class) % length
        slot, keep_labels = slot[keep], labels[keep]
        self.queue[slot] = features[keep].to(self.queue.dtype)
        self.queue_labels[slot] = keep_labels
        self.queue_index[slot] = indices[keep].to(self.queue_index.dtype)
        added = torch.zeros_like(self.queue_ptr).index_add_(0, keep_labels, torch.ones_like(keep_labels))
        self.queue_ptr.copy_((self.queue_ptr + added) % self.segment_length)

    def forward(self, images, targets: torch.Tensor, epoch: int, indices: torch.Tensor | None = None) -> StepOutput:
        if not isinstance(images, (list, tuple)) or len(images) != 3:
            raise ValueError("GML trains on three views per image (classification, query, key)")
        if indices is None:
            raise ValueError("GML needs the data-set index of every sample (the engine passes indices=)")
        x_cls, x_q, x_k = images
        batch = targets.shape[0]
        features = self.model.trunk(torch.cat([x_cls, x_q]))
        cosine = self.model.head(features[:batch])
        with torch.no_grad():
            teacher_features = self.teacher.trunk(torch.cat([x_cls, x_k]))
            teacher_cosine = self.teacher.head(teacher_features[:batch])
        self.enqueue(teacher_features[batch:], targets, indices)
        loss = self.gamma * self.loss(cosine, targets, epoch=epoch)
        if self.beta > 0:
            query = F.normalize(at_least_float32(self.embed_q(features[batch:])), dim=1)
            keys = F.normalize(at_least_float32(self.embed_k(self.queue.clone())), dim=1)
            con, con_t = gml_contrastive_losses(
                query,
                keys,
                self.queue_labels,
                self.queue_index,
                targets,
                indices,
                at_least_float32(self.log_temperature),
                self.log_prior,
            )
            loss = loss + self.beta * (con + con_t)
        if self.alpha > 0:
            loss = loss + self.alpha * distillation_kl(
                self.kd_scale * at_least_float32(cosine),
                self.kd_scale * at_least_float32(teacher_cosine),
                self.kd_temperature,
            )
        return StepOutput(loss, cosine)
