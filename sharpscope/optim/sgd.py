"""SGD under its registry name: the baseline, ``torch.optim.SGD`` plus the registry facts."""

from __future__ import annotations

from typing import Any

import torch

from .registry import Registered, RunOptions, base_options, register

__all__ = ["SGD"]


@register
class SGD(Registered, torch.optim.SGD):
    """``torch.optim.SGD``, registered as ``sgd``."""

    name = "sgd"
    default_rho = 0.0
    supports_scaler = True
    supports_ranks = True

    @classmethod
    def from_config(cls, config: RunOptions, model: Any) -> SGD:
        return cls(model.parameters(), **base_options(config))
