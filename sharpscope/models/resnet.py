"""CIFAR ResNet of He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, Sec. 4.2
(``resnet``; depth 6n+2, projection shortcuts = option B)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ._checks import check_bool, check_depth, check_int, image_shape
from ._layers import conv3x3, init_weights, norm2d, residual_stages

__all__ = ["BasicBlock", "CifarResNet", "build_resnet"]


class BasicBlock(nn.Module):
    """Post-activation block: conv-BN-ReLU-conv-BN, add, ReLU; a 1x1 strided conv + BN shortcut
    (option B) when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, bn: bool = True) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride, bias=not bn)
        self.bn1 = norm2d(out_ch, bn)
        self.conv2 = conv3x3(out_ch, out_ch, 1, bias=not bn)
        self.bn2 = norm2d(out_ch, bn)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=not bn), norm2d(out_ch, bn))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A 3x3 conv stem of ``width`` channels, three stages of (depth - 2) / 6 BasicBlocks of widths
    ``width, 2 width, 4 width``, average pooling, a linear head (ResNet-20 on CIFAR-10: 272,474
    parameters); ``bn=False``: identity for every BatchNorm, convs with biases."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, depth: int = 20, width: int = 16,
                 bn: bool = True) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.stem = nn.Sequential(conv3x3(input_shape[0], width, bias=not bn), norm2d(width, bn), nn.ReLU())
        self.stages, in_ch = residual_stages(lambda i, o, stride: BasicBlock(i, o, stride, bn), width,
                                             [width * 2**i for i in range(3)], n)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.stages(self.stem(x)))
        return self.fc(torch.flatten(out, 1))


def build_resnet(input_shape: Sequence[int], num_classes: int, *, depth: int = 20, width: int = 16,
                 bn: bool = True) -> CifarResNet:
    """Build :class:`CifarResNet`; depth must be 6n+2."""
    return CifarResNet(image_shape("resnet", input_shape), check_int("num_classes", num_classes),
                       check_depth("resnet", depth, offset=2, minimum=8), check_int("resnet option 'width'", width),
                       check_bool("resnet option 'bn'", bn))
