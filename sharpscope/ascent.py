"""The worst case's ascent (:func:`sharpscope.measures.worst_case_sharpness`) and the flat set-up
both measures of :mod:`sharpscope.measures` evaluate on.

The reference's Auto-PGD-style ascent (Croce & Hein, ICML 2020) in u = e / T over
||u||_p <= rho, dir the dual-norm direction of T g, first step 2 rho:
z_{k+1} = Proj(u_k + eta_k dir), u_{k+1} = 0.75 z_{k+1} + 0.25 u_{k-1}, e = T u; at the
checkpoints ceil(p_j K) (p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)) the step
halves and the ascent restarts from the best point when under 75 % of the steps since the last
raised the best loss, or nothing changed. The value is the best loss visited, the start
included. On purpose unlike the reference code: adaptive p = 2 steps along T g / ||T g|| and
projects in u (ASAM's geometry: its fixed points are KKT points; the reference's stops 2.89 %
short on a quadratic); a step cut restarts from the best perturbation, previous point and
gradient, as APGD does; the p = 2 random start is a uniform point of the boundary, not
rho T N(0, 1) far outside; one gradient per step also gives the loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad_and_value, vmap

from .errors import NonFiniteLossError
from .objective import require_finite_tensors
from .sharpness import dual_direction, flat_examples, project, seeded_generator

__all__ = ["MOMENTUM", "MIN_UPDATE_RATIO", "ascent_direction", "apgd_checkpoints", "random_start", "Setup", "setup",
           "group_generator", "require_finite", "apgd", "ascend_with_restarts", "random_start_rows"]

LossFn = Callable[[Tensor, Tensor], Tensor]
MOMENTUM = 0.75           # the reference's (and APGD's) alpha
MIN_UPDATE_RATIO = 0.75   # halve the step when fewer than this share of steps raised the best loss


def ascent_direction(g: Tensor, p: float, scale: Tensor | None) -> Tensor:
    """The dual-norm direction of the gradient in u = e / T, T g (T g / ||T g||_2 for p = 2,
    sign(g) for p = inf); zero for a zero gradient."""
    return dual_direction(g if scale is None else g * scale, p)


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations (0-based) after which APGD may halve its step (module docstring)."""
    p = [0.0, 0.22]
    w = [0, math.ceil(steps * 0.22)]
    while w[-1] < steps and w[-1] != w[-2]:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
        w.append(math.ceil(p[-1] * steps))
    return w[1:]


def random_start(shape: tuple[int, int], rho: float, p: float, gen: torch.Generator, dtype: torch.dtype,
                 device: torch.device) -> Tensor:
    """A uniform point of the boundary of {||u||_p <= rho} (a rescaled Gaussian, or rho sign(z))."""
    z = torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    if p == math.inf:
        return rho * torch.sign(z)
    return z * (rho / z.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny))


@dataclass
class Setup:
    """The examples as one batch, the flat weights, and per-subset loss/error evaluators."""

    examples: Any
    n: int
    w0: Tensor
    scale: Tensor | None
    value_and_grad: Callable[[Tensor, Any], tuple[Tensor, tuple[Tensor, Tensor]]]  # (grad, (loss, error))
    value: Callable[[Tensor, Any], tuple[Tensor, Tensor]]


def setup(model: nn.Module, loss_fn: LossFn, data: Iterable, adaptive: bool, eta: float,
          params: Any = None) -> Setup:
    """The per-subset evaluators over the parameters ``params`` selects (the rest fixed)."""
    flat = flat_examples(model, loss_fn, data, params)

    def loss_and_error(w_flat: Tensor, batch: Any) -> tuple[Tensor, Tensor]:
        outputs, loss = flat.batch_loss.outputs_and_loss(flat.state(w_flat), batch)
        return loss, _error_rate(outputs, batch, flat.batch_loss.takes_model, loss.detach())

    require_finite_tensors({**dict(zip(flat.names, flat.w0.split(flat.sizes))), **flat.buffers},
                           "the model's parameters or buffers")
    scale = (flat.w0.abs() + eta) if adaptive else None
    value = vmap(lambda w, b: tuple(t.detach() for t in loss_and_error(w, b)), in_dims=(0, 0))
    return Setup(flat.examples, flat.n, flat.w0, scale,
                  vmap(grad_and_value(loss_and_error, has_aux=True), in_dims=(0, 0)), value)


def _error_rate(outputs: Any, batch: Any, takes_model: bool, like: Tensor) -> Tensor:
    """The classification error of a batch (argmax against integer targets); NaN without class scores."""
    targets = None if takes_model else batch[1]
    if (not isinstance(outputs, Tensor) or outputs.dim() != 2 or outputs.shape[1] < 2 or not isinstance(targets, Tensor)
            or targets.dtype.is_floating_point or targets.dim() != 1):
        return torch.full_like(like, math.nan)
    return (outputs.argmax(-1) != targets).to(like.dtype).mean()


group_generator = seeded_generator  # one (m, rho, group)'s draws, however groups are shared out


def require_finite(loss: Tensor, g: Tensor | None, where: str) -> None:
    """:class:`NonFiniteLossError` for a NaN or infinite loss (or gradient) ``where``."""
    ok = torch.isfinite(loss).all() if g is None else torch.isfinite(loss).all() & torch.isfinite(g).all()
    if not bool(ok):  # one device sync per evaluation
        raise NonFiniteLossError(f"the loss or its gradient is NaN or infinite {where}")


def apgd(s: Setup, batch: Any, rows: int, rho: float, p: float, steps: int, start: Tensor | None,
          base: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, int]:
    """The ascent (module docstring) for ``rows`` subsets at once from u = 0 or ``start``; ``base``
    = (gradient, loss, error) at u = 0. Returns (best loss, its error, gradients per subset)."""
    w0 = s.w0.expand(rows, -1)

    def at(u: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        g, (loss, err) = s.value_and_grad(w0 + (u if s.scale is None else u * s.scale), batch)
        require_finite(loss, g, f"at a point within rho = {rho:g} of the weights: the worst case is not finite")
        return g, (loss, err)

    g, (best_loss, best_err) = base[0].clone(), (base[1].clone(), base[2].clone())
    u = torch.zeros_like(w0)
    best_u, best_g, n_grad = u.clone(), g.clone(), 0

    def keep_best(loss: Tensor, err: Tensor) -> Tensor:
        nonlocal best_loss, best_err, best_u, best_g
        up = loss > best_loss
        best_loss, best_err = torch.where(up, loss, best_loss), torch.where(up, err, best_err)
        best_u, best_g = torch.where(up[:, None], u, best_u), torch.where(up[:, None], g, best_g)
        return up

    if start is not None:  # a random start: one more gradient, and a candidate too
        u = start
        g, (loss, err) = at(u)
        n_grad += 1
        keep_best(loss, err)
    u_prev = u.clone()
    step = torch.full((rows,), 2.0 * rho, dtype=w0.dtype, device=w0.device)
    prev_step, prev_best, updates, prev_cp = step.clone(), best_loss.clone(), torch.zeros_like(step), 0
    checkpoints = set(apgd_checkpoints(steps))
    for i in range(steps):
        z = project(u + step[:, None] * ascent_direction(g, p, s.scale), rho, p)
        u, u_prev = MOMENTUM * z + (1.0 - MOMENTUM) * u_prev, u
        g, (loss, err) = at(u)
        n_grad += 1
        updates += keep_best(loss, err).to(updates.dtype)
        if i in checkpoints:
            few = updates < MIN_UPDATE_RATIO * (i - prev_cp)
            stalled = (prev_step == step) & (prev_best == best_loss)
            prev_step, prev_best, prev_cp = step.clone(), best_loss.clone(), i
            updates.zero_()
            cut = few | stalled
            step = torch.where(cut, step * 0.5, step)
            u = torch.where(cut[:, None], best_u, u)
            u_prev = torch.where(cut[:, None], best_u, u_prev)
            g = torch.where(cut[:, None], best_g, g)
    return best_loss, best_err, n_grad


def ascend_with_restarts(s: Setup, batch: Any, rows: int, rho: float, p: float, steps: int, restarts: int,
              random_first: bool, seed: int, keys: tuple[int, ...], zero_rows: list[int]
              ) -> tuple[Tensor, Tensor, int, Tensor]:
    """``restarts`` ascents (:func:`apgd`) per subset, the first from u = 0 (a seeded random point
    when ``random_first`` or at a zero gradient, counted in ``zero_rows``), the others from seeded
    random points: (best loss increase, its error increase, gradients per subset, every increase)."""
    w0 = s.w0.expand(rows, -1)
    g0, (loss0, err0) = s.value_and_grad(w0, batch)
    require_finite(loss0, g0, "at the weights themselves (NaN or infinite values in the data or the model?)")
    zero = g0.norm(dim=-1) == 0
    zero_rows.append(int(zero.sum()))
    n_grad, per_restart, best_err = 1, [], torch.zeros_like(err0)
    for r in range(restarts):
        start = None
        if r > 0 or random_first or bool(zero.any()):
            start = random_start_rows(s, rows, rho, p, seed, *keys, *((r,) if r > 0 else ()))
            if r == 0 and not random_first:
                start = torch.where(zero[:, None], start, torch.zeros_like(start))
        loss, err, k = apgd(s, batch, rows, rho, p, steps, start, (g0, loss0, err0))
        n_grad += k
        if per_restart:
            best_err = torch.where(loss > torch.stack(per_restart).amax(0), err, best_err)
        else:
            best_err = err
        per_restart.append(loss)
    values = (torch.stack(per_restart, dim=1) - loss0[:, None]).double()
    return values.amax(1), (best_err - err0).double(), n_grad, values


def random_start_rows(s: Setup, rows: int, rho: float, p: float, seed: int, *keys: int) -> Tensor:
    """Seeded random starts (:func:`random_start`, in u = e / T) for one group of subsets."""
    gen = group_generator(seed, *keys)
    return random_start((rows, s.w0.numel()), rho, p, gen, s.w0.dtype, s.w0.device)
