"""WSAM: Weighted SAM (Yue et al., KDD 2023, "Sharpness-Aware Minimization Revisited:
Weighted Sharpness as a Regularization Term").

WSAM minimizes L(w) + gamma / (1 - gamma) [L(w + e) - L(w)] (gamma = 1/2: SAM). With
g = grad L(w), g_p = grad L(w + e) and alpha = gamma / (1 - gamma) its gradient is
g + alpha (g_p - g): with ``decouple`` (default) the base optimizer updates with g, then
w <- w - lr alpha (g_p - g) apart (like AdamW's weight decay); else it updates with the sum.
Defaults: gamma = 0.9, decouple (pytorch-optimizer 4.1's, after the authors' code), rho = 0.05;
pytorch-optimizer's rounding details (a float32 norm, ||g|| + 1e-12, eta = 0) are bounded in
the tests.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import ConfigError
from .registry import register
from .sam import SAM

__all__ = ["WSAM"]


@register
class WSAM(SAM):
    """SAM with WSAM's weighted sharpness (module docstring): ``gamma`` in [0, 1) weighs g_p - g by
    gamma / (1 - gamma), ``decouple`` applies it after the base optimizer's update; the rest as SAM's."""

    name = "wsam"
    option_names = ("gamma", "decouple")
    keeps_clean_gradient = True
    _shown = ("gamma", "decouple")

    def __init__(self, params: Any, base_optimizer: type[torch.optim.Optimizer], rho: float = 0.05,
                 gamma: float = 0.9, decouple: bool = True, **kwargs: Any) -> None:
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and 0 <= gamma < 1):
            raise ConfigError(f"WSAM gamma must be in [0, 1), got {gamma!r}")
        if not isinstance(decouple, bool):  # bool("no") is True: only a real bool is taken
            raise ConfigError(f"WSAM decouple must be True or False, got {decouple!r}")
        super().__init__(params, base_optimizer, rho=rho, **kwargs)
        self.gamma, self.decouple = float(gamma), decouple

    @property
    def alpha(self) -> float:
        return self.gamma / (1.0 - self.gamma)

    @torch.no_grad()
    def _update_gradient(self) -> None:
        """decouple: keep g_p - g for :meth:`_after_base_step`, grad <- g; else grad <- g + alpha (g_p - g)."""
        for w in (w for _, w in self._each_param() if w.grad is not None):
            clean = self._clean_gradient(w)
            if self.decouple:
                self.state[w]["sharpness_grad"] = w.grad - clean
                w.grad.copy_(clean)
            else:
                w.grad.sub_(clean).mul_(self.alpha).add_(clean)

    @torch.no_grad()
    def _after_base_step(self) -> None:
        """The decoupled sharpness step w <- w - lr * alpha * (g_p - g)."""
        for group, w, sharp in self._popped("sharpness_grad"):
            w.add_(sharp, alpha=-group["lr"] * self.alpha)
