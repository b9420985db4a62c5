"""LookSAM (Liu et al., CVPR 2022, "Towards Efficient and Scalable Sharpness-Aware
Minimization", Algorithm 1).

Every k-th step is SAM's (g = grad L(w), g_s = grad L(w + e), update with g_s) and keeps

    g_v = g_s - (<g_s, g> / ||g||^2) g;

the k - 1 steps in between take one pass at w and update with g + alpha (||g|| / ||g_v||) g_v:
about (k + 1) / k passes per step. Norms are global, as in the paper. Defaults: k = 5,
alpha = 0.7 (the paper's), rho = 0.05. pytorch-optimizer 4.1 takes per-tensor norms, runs the
pass at w twice and defaults to k = 10, rho = 0.1 (measured in the tests). The step counter and
g_v are in :meth:`state_dict`. By hand, ``first_step`` only where
:meth:`LookSAM.perturbs_this_step`; elsewhere ``second_step`` right after the backward at w.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import ConfigError
from .registry import register
from .sam import SAM, flat_dot, require_nonnegative

__all__ = ["LookSAM"]

_STEP = "looksam_step"
_GV = "looksam_gv"


@register
class LookSAM(SAM):
    """SAM every ``k`` steps, its orthogonal component reused with weight ``alpha`` in between (module
    docstring); the other arguments as for :class:`SAM`."""

    name = "looksam"
    option_names = ("k", "alpha")
    keeps_clean_gradient = True
    _saved_state_keys = (_GV,)
    _shown = ("k", "alpha")

    def __init__(self, params: Any, base_optimizer: type[torch.optim.Optimizer], rho: float = 0.05,
                 k: int = 5, alpha: float = 0.7, **kwargs: Any) -> None:
        if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
            raise ConfigError(f"LookSAM k must be an integer >= 1, got {k!r}")
        require_nonnegative("LookSAM ", alpha=alpha)
        super().__init__(params, base_optimizer, rho=rho, **kwargs)
        self.k, self.alpha = k, float(alpha)
        for group in self.param_groups:
            group.setdefault(_STEP, 0)

    def perturbs_this_step(self) -> bool:
        """A full SAM step at every k-th step, and whenever there is no g_v to reuse yet."""
        has_gv = any(_GV in self.state[w] for _, w in self._each_param())
        return self.param_groups[0].get(_STEP, 0) % self.k == 0 or not has_gv

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> torch.Tensor:
        """SAM's first step on a full step; on a step that reuses g_v it raises (nothing changed),
        so that the two-step recipe cannot silently run plain SAM."""
        if not self.perturbs_this_step():
            step = self.param_groups[0].get(_STEP, 0)
            raise ConfigError(
                f"LookSAM step {step + 1} reuses its stored direction (one pass at w, no perturbation): call "
                "second_step() now, after the backward at w; call first_step() only when perturbs_this_step() "
                "is true, or drive LookSAM with step(closure) or sam_step")
        return super().first_step(zero_grad=zero_grad)

    @torch.no_grad()
    def _update_gradient(self) -> None:
        params = [w for _, w in self._each_param() if w.grad is not None]
        full = any("clean_grad" in self.state[w] for w in params)
        if full:  # grad = g_s; keep g_v = g_s - (<g_s, g> / ||g||^2) g
            clean = [self._clean_gradient(w) for w in params]
            gg = flat_dot(clean, clean)
            coef = float(flat_dot([w.grad for w in params], clean) / gg) if gg > 0 else 0.0
            for w, g in zip(params, clean):
                self.state[w][_GV] = w.grad - coef * g
        else:  # grad = g; add alpha ||g|| / ||g_v|| g_v
            with_gv = [w for w in params if _GV in self.state[w]]
            gv = [self.state[w][_GV] for w in with_gv]
            gv_norm = math.sqrt(float(flat_dot(gv, gv)))
            if gv_norm > 0:
                g_norm = math.sqrt(float(flat_dot([w.grad for w in params], [w.grad for w in params])))
                for w, v in zip(with_gv, gv):
                    w.grad.add_(v, alpha=self.alpha * g_norm / gv_norm)
        for group in self.param_groups:
            group[_STEP] = group.get(_STEP, 0) + 1
