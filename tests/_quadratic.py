"""A model whose MSE loss is an exact quadratic in its parameters, shared by the landscape tests."""

from __future__ import annotations

import torch
from torch import nn


class LinearRegression(nn.Module):
    """f(x) = W x + c; with MSE the loss is an exact quadratic in (W, c)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.W = nn.Parameter(torch.randn(3, 4, generator=g, dtype=torch.float64))
        self.c = nn.Parameter(torch.randn(3, generator=g, dtype=torch.float64))

    def forward(self, x):
        return x @ self.W.T + self.c


def regression_data():
    """(x, y, batches of 8, 8, 8, 6) in float64."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = torch.randn(30, 3, generator=g, dtype=torch.float64)
    return x, y, [(x[i:i + 8], y[i:i + 8]) for i in range(0, 30, 8)]
