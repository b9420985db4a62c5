"""ASAM's parameter groups: which parameters get the adaptive scale T_w = |w| + eta.

Kwon et al. (ICML 2021, "ASAM: Adaptive Sharpness-Aware Minimization") perturb within
||T_w^-1 e||_p <= rho (p = 2: e = rho T_w^2 g / ||T_w g||). Their code (SamsungLabs/ASAM,
``asam.py``, ``ascent_step``) scales only parameters whose name contains ``weight`` (batch-norm
scales too); biases keep T = 1, and the norm runs over all of them. ``rule="official"`` (the
default of ``--optimizer asam``) is that rule; ``rule="all"`` scales every parameter (kept for
runs made with it). :class:`ASAM` is SAM, every parameter adaptive by default, registered as
``asam`` (rho 0.5).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .registry import RunOptions, register
from .sam import SAM

__all__ = ["ASAM", "asam_groups", "ASAM_RULES"]

ASAM_RULES = ("official", "all")


def asam_groups(model: nn.Module, eta: float = 0.01, rule: str = "official") -> list[dict[str, Any]]:
    """SAM parameter groups for ASAM under ``rule`` (module docstring); empty groups are left out."""
    if rule not in ASAM_RULES:
        raise ConfigError(f"ASAM rule must be one of {', '.join(ASAM_RULES)}, got {rule!r}")
    named = [(n, w) for n, w in model.named_parameters() if w.requires_grad]
    if rule == "all":
        return [{"params": [w for _, w in named], "adaptive": True, "eta": eta}]
    scaled = [w for n, w in named if "weight" in n]
    plain = [w for n, w in named if "weight" not in n]
    groups = [{"params": scaled, "adaptive": True, "eta": eta}, {"params": plain, "adaptive": False, "eta": eta}]
    return [g for g in groups if g["params"]]


@register
class ASAM(SAM):
    """ASAM (Kwon et al.): :class:`SAM` with ``adaptive=True`` and rho = 0.5 by default (SAM's own
    steps); a training configuration builds it on :func:`asam_groups` under its ``asam_rule``."""

    name = "asam"
    default_rho = 0.5
    reads = SAM.reads | {"eta"}
    supports_m = True
    supports_scaler = True
    supports_ranks = True

    def __init__(self, params: Any, base_optimizer: type[torch.optim.Optimizer], rho: float = 0.5,
                 p: float = 2.0, adaptive: bool = True, eta: float = 0.01, **kwargs: Any) -> None:
        super().__init__(params, base_optimizer, rho=rho, p=p, adaptive=adaptive, eta=eta, **kwargs)

    @classmethod
    def config_params(cls, config: RunOptions, model: Any) -> Any:
        return asam_groups(model, config.eta, config.asam_rule)
