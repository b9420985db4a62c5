"""AdamW under its registry name: the adaptive baseline beside SGD, and what SAM-family
optimizers wrap with ``--base-optimizer adamw`` (SAM over AdamW).

:class:`AdamW` is ``torch.optim.AdamW`` (Loshchilov & Hutter, ICLR 2019) unchanged: with
gradient g, m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2) g^2, and
w <- w (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps), the weight decay
decoupled from the gradient. A training configuration sets b1 = ``momentum`` (default 0.9),
b2 = ``beta2`` (0.999), eps = ``adam_eps`` (1e-8) and wd = ``weight_decay``
(:func:`.registry.adamw_options`). Like SGD it reads none of the perturbation options, runs
under fp16's gradient scaler and on several ranks, not per m-SAM chunk.
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
