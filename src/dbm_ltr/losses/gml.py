r"""The losses of GML (Gaussian-mixture likelihood; Du et al., CVPR 2023) that are not plain
cross-entropy, as pure functions.

A student query ``q_b`` is compared with a class-partitioned queue of teacher keys ``k_j``
(labels ``l_j``). The class-wise similarity is a log-mean-exp over the keys of each class,

.. math:: S_{b,c} = \log \frac{1}{|J_c|} \sum_{j \in J_c} \exp(q_b \cdot k_j / T),
          \qquad J_c = \{j : l_j = c\},

and the contrastive terms are balanced-softmax cross-entropies over classes:

* ``L_con = CE(S + log p, y)`` with ``T`` detached (trains the student and the embeddings);
* ``L_conT = CE(S^T + log p, y)``: ``q . k`` detached, ``T`` live, and each sample's own
  entries (same data-set index) left out of ``J_c`` (trains only the temperature).

``L_kd = KL(softmax(t / tau) || softmax(z / tau)) * tau_factor**2`` distils the teacher's scaled
cosines ``t`` into the student's ``z`` (GML: ``z = 30 cos``, ``tau = 4``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..nn import at_least_float32

__all__ = [
    "EMPTY_CLASS_LOGIT",
    "class_log_mean_exp",
    "distillation_kl",
    "gml_contrastive_losses",
    "queue_segments",
]

#: Log-mean-exp of a class with no (remaining) queue entries: a very unlikely class with a zero
#: gradient, instead of ``log(0 / 0)``. Only reachable when a class segment holds nothing but
#: copies of the sample itself (a class with a single training image).
EMPTY_CLASS_LOGIT = -1e4


def queue_segments(cls_num_list: Sequence[int], size: int, base_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(start, length)`` of each class's circular segment of a queue of ``size`` entries.

    Class ``c`` ends at ``ceil(P_c)``, ``P_c = (c + 1) base_k + (size - C base_k) sum_{c' <= c} p_c'``
    and starts where class ``c - 1`` ends (class 0 at 0): every class gets at least ``base_k``
    entries, the rest in proportion to its share ``p_c`` of the training set.
    """
    counts = torch.as_tensor(list(cls_num_list), dtype=torch.float64)
    C = counts.numel()
    if C == 0 or bool((counts <= 0).any()):
        raise ValueError("queue_segments needs a positive training count for every class")
    if base_k < 1 or size < C * base_k:
        raise ValueError(
            f"a queue of {size} entries cannot give {C} classes {base_k} entries each (size >= {C * base_k} needed)"
        )
    share = counts / counts.sum()
    ends = torch.arange(1, C + 1, dtype=torch.float64) * base_k + (size - C * base_k) * share.cumsum(0)
    ends = ends.ceil().long().clamp(max=size)
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])
    return starts, ends - starts


def class_log_mean_exp(
    logits: torch.Tensor, key_labels: torch.Tensor, num_classes: int, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """``S[b, c] = log mean_{j: key_labels[j] = c, keep[b, j]} exp(logits[b, j])``, ``(B, C)``.

    ``logits`` ``(B, K)``; ``keep`` an optional ``(B, K)`` 0/1 mask of the entries each row may
    use. Computed stably (the row maximum is subtracted, detached); a class without entries gets
    :data:`EMPTY_CLASS_LOGIT`.
    """
    top = logits.detach().amax(dim=1, keepdim=True)
    weight = torch.exp(logits - top)
    count = torch.ones_like(logits) if keep is None else keep.to(logits.dtype)
    if keep is not None:
        weight = weight * count
    B = logits.shape[0]
    sums = logits.new_zeros(B, num_classes).index_add(1, key_labels, weight)
    members = logits.new_zeros(B, num_classes).index_add(1, key_labels, count)
    empty = members == 0
    value = torch.log(sums.clamp_min(torch.finfo(sums.dtype).tiny)) - torch.log(members.clamp_min(1)) + top
    return torch.where(empty, torch.full_like(value, EMPTY_CLASS_LOGIT), value)


def gml_contrastive_losses(
    query: torch.Tensor,
    keys: torch.Tensor,
    key_labels: torch.Tensor,
    key_index: torch.Tensor,
    targets: torch.Tensor,
    sample_index: torch.Tensor,
    log_temperature: torch.Tensor,
    log_prior: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_con, L_conT)``; see the module docstring.

    ``query`` ``(B, d)`` and ``keys`` ``(K, d)`` L2-normalised; ``key_labels``/``key_index``
    ``(K,)``; ``targets``/``sample_index`` ``(B,)``; ``log_temperature`` ``(1,)`` (one shared
    temperature, as the GML code) or ``(C,)`` (one per class, applied to the keys of that
    class); ``log_prior`` ``(C,)`` = ``log p_c``.
    """
    C = log_prior.shape[0]
    temperature = log_temperature.exp()
    per_key = temperature if temperature.numel() == 1 else temperature[key_labels]
    similarity = query @ keys.t()
    s_con = class_log_mean_exp(similarity / per_key.detach(), key_labels, C)
    not_self = sample_index[:, None] != key_index[None, :]
    s_temp = class_log_mean_exp(similarity.detach() / per_key, key_labels, C, keep=not_self)
    return F.cross_entropy(s_con + log_prior, targets), F.cross_entropy(s_temp + log_prior, targets)


def distillation_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """``KL(softmax(teacher / T) || softmax(student / T)) * T**2``, summed over classes and
    averaged over the batch (Hinton et al.; the teacher side carries no gradient)."""
    log_student = F.log_softmax(at_least_float32(student) / temperature, dim=1)
    log_teacher = F.log_softmax(at_least_float32(teacher.detach()) / temperature, dim=1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1).mean()
    return kl * temperature**2
