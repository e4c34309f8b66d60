r"""Balanced supervised contrastive loss of BCL (Zhu et al., CVPR 2022).

Anchors are the ``N`` projections ``u_i`` (both contrastive views of every image); the
contrast set adds one prototype ``q_c`` per class. With ``N_c`` = anchors of class ``c``
plus its prototype, every anchor ``i`` of class ``y_i``:

.. math::

    D_i = \sum_{j \in S, j \ne i} \frac{\exp(u_i \cdot s_j / T)}{N_{y_j} - \mathbb 1[y_j = y_i]},
    \qquad
    L_i = -\frac{1}{|P(i)|} \sum_{p \in P(i)} \Big(\frac{u_i \cdot s_p}{T} - \log D_i\Big)

``P(i)``: the other members of ``S`` with the anchor's class (other view, other samples of the
class, the prototype). Dividing each class's terms by its size ("class-averaging") stops
head classes from dominating the denominator; prototypes make every class present
("class-complement").
"""

from __future__ import annotations

import torch

__all__ = ["balanced_contrastive_loss"]


def balanced_contrastive_loss(
    anchors: torch.Tensor,
    labels: torch.Tensor,
    prototypes: torch.Tensor,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Mean of ``L_i`` over the anchors.

    Args:
        anchors: L2-normalised projections ``(N, d)``.
        labels: their classes ``(N,)``.
        prototypes: L2-normalised class prototypes ``(C, d)``, row ``c`` for class ``c``.
        temperature: ``T``. Default 0.1.
    """
    if anchors.ndim != 2 or prototypes.ndim != 2 or anchors.shape[1] != prototypes.shape[1]:
        raise ValueError(
            f"anchors (N, d) and prototypes (C, d) must share d, got {tuple(anchors.shape)} and "
            f"{tuple(prototypes.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n, num_classes = anchors.shape[0], prototypes.shape[0]
    device = anchors.device
    contrast = torch.cat([anchors, prototypes.to(anchors.dtype)])
    contrast_labels = torch.cat([labels, torch.arange(num_classes, device=device)])
    logits = anchors @ contrast.t() / temperature  # (N, N + C)
    class_size = torch.bincount(labels, minlength=num_classes).to(logits.dtype) + 1.0
    same = labels.unsqueeze(1) == contrast_labels.unsqueeze(0)
    not_self = torch.ones_like(same)
    not_self[:, :n].fill_diagonal_(False)
    divisor = class_size[contrast_labels].unsqueeze(0) - same.to(logits.dtype)
    shift = logits.detach().amax(dim=1, keepdim=True)
    weighted = torch.exp(logits - shift) * not_self / divisor
    log_denominator = torch.log(weighted.sum(dim=1, keepdim=True)) + shift
    positive = same & not_self
    log_prob = (logits - log_denominator) * positive
    return -(log_prob.sum(dim=1) / positive.sum(dim=1)).mean()
