r"""The losses of NCL (Li et al., CVPR 2022) that are not plain cross-entropy.

* :func:`hard_category_mask` - hard-category mining: the target plus the ``k - 1`` most
  confusable classes of each sample.
* :func:`nested_balanced_online_distillation` - every expert learns from every other one:

  .. math:: \mathrm{NBOD}(\{a\}) = \frac{w}{E - 1} \sum_{i \ne j}
            \mathrm{KL}\big(\mathrm{softmax}(a_j) \,\|\, \mathrm{softmax}(a_i)\big)

  batch-mean KL, ``log(softmax(a_i) + 1e-9)`` on the log side, no temperature and no detach
  on either side (as in the reference implementation). The ``p_j log p_j`` part uses
  ``log_softmax``: ``F.kl_div`` differentiates ``log(target)``, which is ``-inf`` (a NaN
  gradient) once a probability underflows to 0; the value is the same otherwise.
* :func:`moco_loss` - the per-expert MoCo contrastive term.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..nn import at_least_float32

__all__ = ["hard_category_mask", "moco_loss", "nested_balanced_online_distillation"]


def hard_category_mask(scores: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """``M (B, C)`` with ones at the target and at the ``k - 1`` highest other scores."""
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"hard-category k must be in 1..{scores.shape[1]}, got {k}")
    with torch.no_grad():
        ranked = at_least_float32(scores.detach()).clone()
        ranked.scatter_(1, target.unsqueeze(1), float("inf"))
        top = ranked.topk(k, dim=1).indices
        return torch.zeros_like(ranked).scatter_(1, top, 1.0)


def nested_balanced_online_distillation(logits: Sequence[torch.Tensor], weight: float = 0.6) -> torch.Tensor:
    """``weight / (E - 1) * sum_{i != j} KL(softmax(a_j) || softmax(a_i))`` over experts."""
    experts = len(logits)
    if experts < 2:
        return logits[0].new_zeros(())
    log_probs = [F.log_softmax(at_least_float32(a), dim=1) for a in logits]
    probs = [lp.exp() for lp in log_probs]
    log_eps = [torch.log(p + 1e-9) for p in probs]
    total = log_probs[0].new_zeros(())
    for i in range(experts):
        for j in range(experts):
            if i != j:  # KL(p_j || p_i), batch mean
                total = total + (probs[j] * (log_probs[j] - log_eps[i])).sum(dim=1).mean()
    return weight / (experts - 1) * total


def moco_loss(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """InfoNCE with the key of the same image as positive and the queue as negatives.

    ``query``/``key``: L2-normalised ``(B, d)``; ``queue``: ``(K, d)`` (not modified).
    """
    positive = (query * key).sum(dim=1, keepdim=True)
    negative = query @ queue.t()
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(query.shape[0], dtype=torch.long, device=query.device))
