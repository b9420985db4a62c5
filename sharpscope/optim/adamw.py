"""AdamW under its registry name: the adaptive baseline, and SAM's base with ``--base-optimizer adamw``.

``torch.optim.AdamW`` (Loshchilov & Hutter, ICLR 2019) unchanged: m <- b1 m + (1 - b1) g,
v <- b2 v + (1 - b2) g^2, w <- w (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps);
b1 = ``momentum``, b2 = ``beta2``, eps = ``adam_eps``, wd = ``weight_decay`` (:func:`.registry.adamw_options`).
"""

from __future__ import annotations

from typing import Any

import torch

from .registry import Registered, RunOptions, adamw_options, register

__all__ = ["AdamW"]


@register
class AdamW(Registered, torch.optim.AdamW):
    """``torch.optim.AdamW``, registered as ``adamw``."""

    name = "adamw"
    default_rho = 0.0
    summary = "AdamW alone; SAM over AdamW: --base-optimizer adamw"
    supports_scaler = True
    supports_ranks = True

    @classmethod
    def from_config(cls, config: RunOptions, model: Any) -> AdamW:
        return cls(model.parameters(), **adamw_options(config))
