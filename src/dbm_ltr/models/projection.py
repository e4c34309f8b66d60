"""The projection MLP of the multi-branch methods (BCL projection and prototype heads, NCL
MoCo heads, GML embeddings)."""

from __future__ import annotations

from torch import nn

__all__ = ["projection_mlp"]


def projection_mlp(in_dim: int, hidden_dim: int, out_dim: int, batchnorm: bool = False) -> nn.Sequential:
    """``Linear -> [BatchNorm1d] -> ReLU -> Linear``, Kaiming-normal weights (CIFAR init)."""
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(hidden_dim))
    layers += [nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)]
    head = nn.Sequential(*layers)
    for m in head:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight)
    return head
