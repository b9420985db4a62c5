"""GSAM: Surrogate Gap Guided SAM (Zhuang et al., ICLR 2022, Algorithm 1).

With g = grad L(w), g_p = grad L(w + e) (SAM's e, radius rho_t) and
g_perp = g - (<g, g_p> / ||g_p||^2) g_p, GSAM updates with

    d = g_p - alpha * g_perp,

an ascent on L(w) orthogonal to g_p that lowers the surrogate gap L(w + e) - L(w) without
changing the perturbed loss to first order. The radius follows the learning rate at each step
(the official ``ProportionScheduler``):

    rho_t = rho_min + (rho_max - rho_min) (lr_t - lr_min) / (lr_max - lr_min).

Defaults: rho_max = ``rho`` = 0.05, rho_min = 0, alpha = 0.4 (pytorch-optimizer 4.1). The
official code (juntang-zhuang/GSAM) and pytorch-optimizer differ in rounding details (||g|| +
1e-12, a float32 norm, the inner product in the parameters' dtype, w restored by subtracting e;
eta = 0 for ``adaptive``), bounded in the tests.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from .registry import RunOptions, register
from .sam import SAM, flat_dot, require_nonnegative

__all__ = ["GSAM"]


@register
class GSAM(SAM):
    """SAM with GSAM's direction (``alpha``: the weight of g_perp) and radius, ``rho`` at ``lr_max``
    (default: the base optimizer's ``lr``) and ``rho_min`` at ``lr_min`` (module docstring); p = 2."""

    name = "gsam"
    option_names = ("alpha", "rho_min")
    keeps_clean_gradient = True
    _shown = ("rho_min", "alpha")

    def __init__(self, params: Any, base_optimizer: type[torch.optim.Optimizer], rho: float = 0.05,
                 rho_min: float = 0.0, alpha: float = 0.4, lr_max: float | None = None, lr_min: float = 0.0,
                 adaptive: bool = False, eta: float = 0.01, **kwargs: Any) -> None:
        super().__init__(params, base_optimizer, rho=rho, p=2.0, adaptive=adaptive, eta=eta, **kwargs)
        lr_max = self.param_groups[0]["lr"] if lr_max is None else lr_max
        require_nonnegative("GSAM ", alpha=alpha, rho_min=rho_min, lr_max=lr_max, lr_min=lr_min)
        if rho_min > rho:
            raise ConfigError(f"GSAM rho_min ({rho_min}) must not exceed rho ({rho})")
        self.alpha, self.rho_min, self.lr_max, self.lr_min = float(alpha), float(rho_min), float(lr_max), float(lr_min)

    @classmethod
    def config_kwargs(cls, config: RunOptions) -> dict[str, Any]:
        """SAM's, without p (Euclidean only)."""
        return {k: v for k, v in super().config_kwargs(config).items() if k != "p"}

    @classmethod
    def check_config(cls, config: RunOptions) -> None:
        if config.p != 2:
            raise ConfigError("GSAM's gradient decomposition is Euclidean: it needs p = 2")

    def _radius(self, group: dict[str, Any]) -> float:
        """rho_t from the group's current learning rate, at least 0."""
        if self.lr_max <= self.lr_min:
            return group["rho"]
        t = (group["lr"] - self.lr_min) / (self.lr_max - self.lr_min)
        return max(0.0, self.rho_min + (group["rho"] - self.rho_min) * t)

    @torch.no_grad()
    def _update_gradient(self) -> None:
        """grad <- g_p - alpha g_perp, with g the kept gradient at w (zero where there was none)."""
        params = [w for g in self.param_groups for w in g["params"] if w.grad is not None]
        if not params:
            return
        perturbed = [w.grad for w in params]
        clean = [self._clean_gradient(w) for w in params]
        pp = flat_dot(perturbed, perturbed)
        coef = float(flat_dot(clean, perturbed) / pp) if pp > 0 else 0.0
        for gp, g in zip(perturbed, clean):
            gp.add_(g - coef * gp, alpha=-self.alpha)
