"""A small convolutional trunk for tiny images (the 8x8 digits of the offline demo)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SmallConvNet"]


class SmallConvNet(nn.Module):
    """conv3x3(32)-BN-ReLU -> conv3x3(64)-BN-ReLU -> maxpool 2 -> conv3x3(64)-BN-ReLU -> avg pool.

    Returns a 64-d post-ReLU feature, like the CIFAR ResNets.
    """

    def __init__(self, in_channels: int = 1, width: int = 64) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *block(in_channels, width // 2),
            *block(width // 2, width),
            nn.MaxPool2d(2),
            *block(width, width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.out_features = width
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
