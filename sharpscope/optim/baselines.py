"""The baselines under their registry names, unchanged: ``torch.optim.SGD`` and ``torch.optim.AdamW``
(Loshchilov & Hutter, ICLR 2019; alone, or SAM's base with ``--base-optimizer adamw``):

    m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2,
    w <- w (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps),

b1 = ``momentum``, b2 = ``beta2``, eps = ``adam_eps``, wd = ``weight_decay`` (:func:`.registry.adamw_options`).
"""

from __future__ import annotations

from typing import Any

import torch

from .registry import Registered, RunOptions, adamw_options, base_options, register

__all__ = ["SGD", "AdamW"]


@register
class SGD(Registered, torch.optim.SGD):
    """``torch.optim.SGD``, registered as ``sgd``."""

    name = "sgd"
    supports_scaler = True
    supports_ranks = True

    @classmethod
    def from_config(cls, config: RunOptions, model: Any) -> SGD:
        return cls(model.parameters(), **base_options(config))


@register
class AdamW(Registered, torch.optim.AdamW):
    """``torch.optim.AdamW``, registered as ``adamw``."""

    name = "adamw"
    summary = "AdamW alone; SAM over AdamW: --base-optimizer adamw"
    supports_scaler = True
    supports_ranks = True

    @classmethod
    def from_config(cls, config: RunOptions, model: Any) -> AdamW:
        return cls(model.parameters(), **adamw_options(config))
