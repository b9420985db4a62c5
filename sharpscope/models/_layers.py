"""Pieces of the built-in architectures: activations, 3x3 convs, optional BN, residual stages, init."""

from __future__ import annotations

from types import MappingProxyType
from typing import Callable, Mapping, Sequence

from torch import nn

__all__ = ["ACTIVATIONS", "norm2d", "conv3x3", "residual_stages", "init_weights"]

ACTIVATIONS: Mapping[str, Callable[[], nn.Module]] = MappingProxyType(
    {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
)


def norm2d(channels: int, bn: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if bn else nn.Identity()


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=bias)


def residual_stages(block: Callable[[int, int, int], nn.Module], in_ch: int, widths: Sequence[int],
                    n: int) -> tuple[nn.Sequential, int]:
    """Three stages of ``n`` blocks ``block(in_ch, out_ch, stride)`` of ``widths`` and strides 1, 2, 2
    (the first block of a stage strides and widens), and the channels they output."""
    stages = []
    for out_ch, stride in zip(widths, (1, 2, 2)):
        stages.append(nn.Sequential(*[block(in_ch if j == 0 else out_ch, out_ch, stride if j == 0 else 1)
                                      for j in range(n)]))
        in_ch = out_ch
    return nn.Sequential(*stages), in_ch


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convs with zero bias; BatchNorm weight 1, bias 0; Linear as PyTorch's."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
