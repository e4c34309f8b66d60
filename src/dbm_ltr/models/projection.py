"""The projection MLP of the multi-branch methods (BCL projection and prototype heads, NCL
MoCo heads, GML embeddings)."""

from __future__ import annotations

from torch import nn

__all__ = ["HEAD_INITS", "projection_mlp"]

#: Initialisations of a method's extra Linear layers: ``kaiming`` (Kaiming-normal weights, as the
#: CIFAR ResNet code applies to every Linear of its model) or ``pytorch`` (``nn.Linear``'s own,
#: as the reference code leaves the heads it builds beside the trunk).
HEAD_INITS = ("kaiming", "pytorch")


def projection_mlp(
    in_dim: int, hidden_dim: int, out_dim: int, batchnorm: bool = False, init: str = "kaiming"
) -> nn.Sequential:
    """``Linear -> [BatchNorm1d] -> ReLU -> Linear`` with :data:`HEAD_INITS` weights."""
    if init not in HEAD_INITS:
        raise ValueError(f"head_init must be one of {', '.join(HEAD_INITS)}, got {init!r}")
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(hidden_dim))
    layers += [nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)]
    head = nn.Sequential(*layers)
    if init == "kaiming":
        for m in head:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
    return head
