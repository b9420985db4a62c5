"""Wide ResNet of Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016 (``wrn``; depth
6n+4, pre-activation blocks)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ._checks import check_bool, check_depth, check_int, check_prob, image_shape
from ._layers import conv3x3, init_weights, norm2d, residual_stages

__all__ = ["WideBasicBlock", "WideResNet", "build_wrn"]


class WideBasicBlock(nn.Module):
    """Pre-activation wide block: BN-ReLU-conv3x3(stride)-BN-ReLU-(Dropout)-conv3x3, added to the
    input, or to a 1x1 strided conv of the pre-activated input when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, dropout: float = 0.0, bn: bool = True) -> None:
        super().__init__()
        self.bn1 = norm2d(in_ch, bn)
        self.conv1 = conv3x3(in_ch, out_ch, stride, bias=not bn)
        self.bn2 = norm2d(out_ch, bn)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(out_ch, out_ch, 1, bias=not bn)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=not bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-d-k: a 16-channel stem, three groups of (depth - 4) / 6 blocks of widths 16k, 32k, 64k, then
    BN-ReLU-pool-linear (WRN-28-10: 36,479,194 parameters); ``bn=False``: no BN, convs with biases."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, depth: int = 16, widen_factor: int = 4,
                 dropout: float = 0.0, bn: bool = True) -> None:
        super().__init__()
        n = (depth - 4) // 6
        self.stem = conv3x3(input_shape[0], 16, bias=not bn)
        self.groups, in_ch = residual_stages(lambda i, o, stride: WideBasicBlock(i, o, stride, dropout, bn), 16,
                                             [16 * widen_factor * 2**i for i in range(3)], n)
        self.bn = norm2d(in_ch, bn)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn(self.groups(self.stem(x))))
        return self.fc(torch.flatten(self.pool(out), 1))


def build_wrn(input_shape: Sequence[int], num_classes: int, *, depth: int = 16, widen_factor: int = 4,
              dropout: float = 0.0, bn: bool = True) -> WideResNet:
    """Build :class:`WideResNet`; depth must be 6n+4."""
    return WideResNet(image_shape("wrn", input_shape), check_int("num_classes", num_classes),
                      check_depth("wrn", depth, offset=4, minimum=10),
                      check_int("wrn option 'widen_factor'", widen_factor), check_prob("wrn option 'dropout'", dropout),
                      check_bool("wrn option 'bn'", bn))
