"""Friendly SAM (F-SAM; Li et al., CVPR 2024, "Friendly Sharpness-Aware Minimization").

F-SAM perturbs along the batch gradient minus a moving average of past ones (the full-gradient
component does not help generalization):

    d_t = g_t - sigma m_{t-1},    m_t = lambda m_{t-1} + (1 - lambda) g_t,    m_1 = g_1,
    e_t = SAM's perturbation of d_t,

then updates with grad L(w + e_t). Defaults: sigma = 1, lambda = 0.9 (nblt/F-SAM ``utils.py``),
rho = 0.05. m is in :meth:`state_dict`. The reference codes' ||d|| + 1e-12 (and float32 norm)
are bounded in the tests.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from .registry import register
from .sam import SAM, require_nonnegative, substituted_gradients

__all__ = ["FriendlySAM"]

_MOMENTUM = "fsam_momentum"


@register
class FriendlySAM(SAM):
    """SAM perturbing along g - ``sigma`` m, m the moving average of g with decay ``lmbda`` (module
    docstring); the other arguments as for :class:`SAM`."""

    name = "fsam"
    summary = "Friendly SAM"
    option_names = ("sigma", "lmbda")
    _saved_state_keys = (_MOMENTUM,)
    _shown = ("sigma", "lambda=lmbda")

    def __init__(self, params: Any, base_optimizer: type[torch.optim.Optimizer], rho: float = 0.05,
                 sigma: float = 1.0, lmbda: float = 0.9, **kwargs: Any) -> None:
        require_nonnegative("Friendly SAM ", sigma=sigma, lmbda=lmbda)
        if lmbda > 1:
            raise ConfigError(f"Friendly SAM lmbda must be in [0, 1], got {lmbda!r}")
        super().__init__(params, base_optimizer, rho=rho, **kwargs)
        self.sigma, self.lmbda = float(sigma), float(lmbda)

    def _perturbation(self) -> tuple[torch.Tensor, list[tuple[list[torch.Tensor], list[torch.Tensor]]]]:
        """SAM's rule applied to d = g - sigma m (g itself on the first step); updates m."""
        params = [w for g in self.param_groups for w in g["params"] if w.grad is not None]
        directions = []
        for w in params:
            g = w.grad
            if g.is_sparse:
                raise ConfigError("Friendly SAM needs dense gradients")
            m = self.state[w].get(_MOMENTUM)
            if m is None:
                self.state[w][_MOMENTUM] = g.detach().clone()
                directions.append(g)
            else:
                directions.append(g - self.sigma * m)
                m.mul_(self.lmbda).add_(g, alpha=1.0 - self.lmbda)
        with substituted_gradients(params, directions):
            return super()._perturbation()
