"""Small convolutional nets: the VGG-style :class:`SimpleCNN` (``cnn``) and the MNIST-1D
paper's :class:`Conv1dNet` (``cnn1d``)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from sharpscope.errors import ModelSpecError

from ._checks import check_bool, check_input_shape, check_int, check_prob, check_widths, image_shape
from ._layers import conv3x3, init_weights, norm2d

__all__ = ["SimpleCNN", "Conv1dNet", "build_cnn", "build_cnn1d"]


class SimpleCNN(nn.Module):
    """``[Conv3x3 -> (BN) -> ReLU] * len(channels) -> MaxPool2x2 -> Linear(hidden) -> ReLU -> (Dropout) ->
    Linear``, conv biases only without BN; 85,066 parameters on (1, 8, 8) input with 10 classes."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, channels: Sequence[int] = (32, 64),
                 hidden: int = 64, bn: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        in_ch, height, width = input_shape
        layers: list[nn.Module] = []
        for out_ch in channels:
            layers += [conv3x3(in_ch, out_ch, bias=not bn), norm2d(out_ch, bn), nn.ReLU()]
            in_ch = out_ch
        layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        flat = in_ch * (height // 2) * (width // 2)
        head: list[nn.Module] = [nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU()]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(hidden, num_classes))
        self.classifier = nn.Sequential(*head)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Conv1dNet(nn.Module):
    """MNIST-1D's ``ConvBase`` (Greydanus & Kobak 2020): ``[Conv1d(kernel 5, then 3; stride 2, padding 1) ->
    (BN) -> ReLU] * len(channels) -> Linear`` on ``(N, L)``, default init; 5,210 parameters on 40 features."""

    def __init__(self, length: int, num_classes: int, channels: Sequence[int] = (25, 25, 25),
                 bn: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 1
        for i, out_ch in enumerate(channels):
            layers += [nn.Conv1d(in_ch, out_ch, 5 if i == 0 else 3, stride=2, padding=1, bias=not bn),
                       nn.BatchNorm1d(out_ch) if bn else nn.Identity(), nn.ReLU()]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_ch * _conv1d_length(length, len(channels)), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x.unsqueeze(1)), 1))


def _conv1d_length(length: int, n_convs: int) -> int:
    """Signal length after :class:`Conv1dNet`'s convs (kernel 5 then 3, stride 2, padding 1)."""
    for i in range(n_convs):
        length = (length + 2 - (5 if i == 0 else 3)) // 2 + 1
    return length


def build_cnn(input_shape: Sequence[int], num_classes: int, *, channels: int | Sequence[int] = (32, 64),
              hidden: int = 64, bn: bool = False, dropout: float = 0.0) -> SimpleCNN:
    """Build :class:`SimpleCNN`; needs image input at least 2x2."""
    shape = image_shape("cnn", input_shape)
    if shape[1] < 2 or shape[2] < 2:
        raise ModelSpecError(f"model 'cnn' needs images of at least 2x2, got {list(shape)}")
    return SimpleCNN(shape, check_int("num_classes", num_classes),
                     check_widths("cnn option 'channels'", channels, allow_empty=False),
                     check_int("cnn option 'hidden'", hidden), check_bool("cnn option 'bn'", bn),
                     check_prob("cnn option 'dropout'", dropout))


def build_cnn1d(input_shape: Sequence[int], num_classes: int, *, channels: int | Sequence[int] = (25, 25, 25),
                bn: bool = False) -> Conv1dNet:
    """Build :class:`Conv1dNet`; needs 1-D input (L,) long enough for its convs."""
    shape = check_input_shape(input_shape)
    if len(shape) != 1:
        raise ModelSpecError(f"model 'cnn1d' needs 1-D input (L,) such as mnist1d's 40 features; "
                             f"got input_shape {list(shape)}")
    widths = check_widths("cnn1d option 'channels'", channels, allow_empty=False)
    if any(_conv1d_length(shape[0], k) < 1 for k in range(1, len(widths) + 1)):
        raise ModelSpecError(f"model 'cnn1d' with {len(widths)} conv(s) needs longer inputs than {shape[0]} "
                             "(each conv halves the length; the first needs at least 3)")
    return Conv1dNet(shape[0], check_int("num_classes", num_classes), widths, check_bool("cnn1d option 'bn'", bn))
