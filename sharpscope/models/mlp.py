"""Multi-layer perceptron (``mlp``)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from sharpscope.errors import ModelSpecError

from ._checks import check_bool, check_input_shape, check_int, check_widths
from ._layers import ACTIVATIONS, init_weights

__all__ = ["MLP", "build_mlp"]


class MLP(nn.Module):
    """flatten -> [Linear -> (BatchNorm1d) -> act] * len(hidden) -> Linear; with ``bn=True`` the
    hidden Linear layers have no bias (BatchNorm's shift replaces it)."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int, bn: bool = False,
                 activation: str = "relu") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers.append(nn.Linear(width, h, bias=not bn))
            if bn:
                layers.append(nn.BatchNorm1d(h))
            layers.append(ACTIVATIONS[activation]())
            width = h
        self.flatten = nn.Flatten()
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.flatten(x)))


def build_mlp(input_shape: Sequence[int], num_classes: int, *, hidden: int | Sequence[int] = (128, 128),
              bn: bool = False, activation: str = "relu") -> MLP:
    """Build :class:`MLP`; accepts vector (D,) or image (C, H, W) input."""
    shape = check_input_shape(input_shape)
    widths = check_widths("mlp option 'hidden'", hidden, allow_empty=True)
    if activation not in ACTIVATIONS:
        raise ModelSpecError(f"mlp option 'activation' must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    return MLP(math.prod(shape), widths, check_int("num_classes", num_classes), check_bool("mlp option 'bn'", bn),
               activation)
