"""SGD under its registry name: the baseline every SAM-family optimizer is compared with.

:class:`SGD` is ``torch.optim.SGD`` (momentum, Nesterov, weight decay) unchanged; it only adds
the registry facts (:mod:`.registry`): no perturbation, so it reads none of the perturbation
options; it runs under fp16's gradient scaler and on several ranks, not per m-SAM chunk.
"""

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
