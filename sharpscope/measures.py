"""Worst-case and average-case sharpness, plain or adaptive (Andriushchenko et al., ICML 2023,
"A modern look at the relationship between sharpness and generalization"; reference code
tml-epfl/sharpness-vs-generalization ``sharpness.py``).

The examples are split (seeded shuffle) into disjoint subsets b of m examples, as for
m-sharpness (:func:`sharpscope.sharpness.m_sharpness`). With the elementwise scale
T = 1 (plain) or T = |w| + eta (adaptive; the reference uses eta = 0) and the set

    B = {e : ||e / T||_p <= rho},  p = 2 (a ball or an ellipsoid) or p = inf (a box),

- worst-case:   S_b = max_{e in B} L_b(w + e) - L_b(w),
- average-case: A_b = E_e [L_b(w + e)] - L_b(w), e = rho T z elementwise with z ~ N(0, 1)
  (p = 2) or z ~ U[-1, 1] (p = inf), as the reference draws it,

and the same for the error rate (the error at the worst-loss point; the mean error under the
noise). Each measure is the mean over subsets, with its standard error over subsets where there
are at least :data:`MIN_SUBSETS_FOR_STDERR` (5) subsets (None below, with ``stderr_note``: an
estimate with fewer than 4 degrees of freedom can be off by orders of magnitude); the average
case also gives the Monte Carlo standard error of the mean, sqrt(sum_b var_b / S) / k for k
subsets of S draws with per-draw variances var_b, for any k.

Restarts. The ascent finds local maxima: on a small MLP at full batch the single ascent from
e = 0 stopped 1-8 % below the best of 16 starts after 100 steps, 5-40 % after 5-20 (issue 23
reports 14-16 % and 4.7 %). Each subset therefore runs ``restarts`` ascents (default
:data:`DEFAULT_RESTARTS` = 4: e = 0, or a random point with ``random_start``, then seeded
uniform points of the boundary) and keeps the best; every restart's value is kept and a relative
spread (max - min) / max above :data:`RESTART_TOLERANCE` (1 %) warns
(:class:`~sharpscope.errors.RestartsDisagreeWarning`): the value is then a lower bound.

Two rules shared with :mod:`sharpscope.sharpness` and :mod:`sharpscope.objective`:

- zero gradient: where the gradient at w is exactly 0 (a minimum, a saddle, a zero-initialised
  model) e = 0 has no ascent direction; the e = 0 restart starts from a seeded random point of
  the boundary instead, with :class:`~sharpscope.errors.ZeroGradientWarning` (at a minimum the
  value is then rho^2 lambda_max / 2, not 0);
- non-finite values: NaN or infinite weights or buffers, or a NaN or infinite loss or gradient at
  w, at any ascent point or at any noise draw (a NaN in the data, a pole of the loss inside the
  ball) raise :class:`~sharpscope.errors.NonFiniteLossError`, as the Hessian analyses do.

The worst case is found by the reference's Auto-PGD-style ascent (Croce & Hein, ICML 2020),
run in u = e / T, where B is the ball or box ||u||_p <= rho: the step size starts at 2 rho;
with dir the dual-norm direction of the gradient in u, T g (T g / ||T g||_2 for p = 2,
sign(g) for p = inf),

    z_{k+1} = Proj(u_k + eta_k dir),   u_{k+1} = 0.75 z_{k+1} + 0.25 u_{k-1},   e = T u,

(the reference code's momentum; APGD's paper writes it with u_k, the code with u_{k-1}); at
the checkpoints ceil(p_j K) of K steps (p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03,
0.06)) the step is halved when fewer than 75 % of the steps since the last checkpoint raised
the best loss, or when neither the step nor the best loss changed, and the ascent restarts
from the best point. The value is the best loss over every point visited, the start
included, so S_b >= 0. Plain sharpness (T = 1) and the adaptive box (p = inf) take exactly
the reference's steps (tested against a re-implementation of its loop).

Differences from the reference code, on purpose:

- adaptive p = 2: the reference steps along T g / ||g|| and projects onto the ellipsoid in
  Euclidean distance. At a fixed point of that pair T g is normal to the ellipsoid (along
  e / T^2), while a maximum needs g itself normal to it (KKT), so it can stop short of the
  maximum: 2.89 % below it on a quadratic (``tests/test_measures.py``). Here the step is the
  gradient step in u (T g / ||T g||, ASAM's geometry) with the projection onto the ball in u,
  whose fixed points are the KKT points;
- at a step reduction the reference reloads the best weights for the next gradient but keeps
  stepping from the current perturbation; here the ascent restarts from the best point
  (perturbation, previous point and gradient), as APGD does;
- its random start for p = 2 draws rho T N(0, 1) per element (norm about rho sqrt(n), far
  outside B) and its first momentum step keeps a quarter of it, so the first iterate it scores
  lies outside B; here the random start (``random_start=True``; the default is e = 0, the
  reference's ``rand_init=False`` used in its evaluations) is a uniform point of the boundary;
- each step costs one gradient, which also gives the loss at that point (the reference spends
  a gradient and a forward pass).

All functions use eval mode and never modify the model.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad_and_value, vmap

from . import distributed as dist_utils
from .batches import higher_order_attention, take
from .checks import int_at_least
from .errors import ConfigError, NonFiniteLossError, RestartsDisagreeWarning
from .objective import eval_mode
from .sharpness import (dual_direction, flat_examples, project, rank_groups, seeded_generator, seeded_subsets,
                        warn_zero_gradient)

__all__ = ["worst_case_sharpness", "average_case_sharpness", "sharpness", "MEASURES", "MeasureValue",
           "MeasureResult", "ascent_direction", "apgd_checkpoints", "DEFAULT_RESTARTS", "RESTART_TOLERANCE",
           "MIN_SUBSETS_FOR_STDERR"]

LossFn = Callable[[Tensor, Tensor], Tensor]
MOMENTUM = 0.75           # the reference's (and APGD's) alpha
MIN_UPDATE_RATIO = 0.75   # halve the step when fewer than this share of steps raised the best loss
#: Restarts of the worst-case ascent per subset (e = 0 and seeded random points of the boundary).
DEFAULT_RESTARTS = 4
#: Relative spread (max - min) / max between restarts above which the worst case warns.
RESTART_TOLERANCE = 0.01
#: The fewest subsets for which a standard error over subsets is reported (4 degrees of freedom).
MIN_SUBSETS_FOR_STDERR = 5


# -- the geometry: pure functions on rows of flat vectors (G, n), in u = e / T -----------------------
def ascent_direction(g: Tensor, p: float, scale: Tensor | None) -> Tensor:
    """The ascent direction in u = e / T, where B is the ball or box ||u||_p <= rho: the dual-norm
    direction of the gradient in u, T g (T g / ||T g||_2 for p = 2, sign(g) for p = inf); rows
    of a zero gradient give zero."""
    return dual_direction(g if scale is None else g * scale, p)


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations (0-based) after which APGD may halve its step: ceil(p_j * steps) for
    p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), below ``steps``."""
    p = [0.0, 0.22]
    w = [0, math.ceil(steps * 0.22)]
    while w[-1] < steps and w[-1] != w[-2]:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
        w.append(math.ceil(p[-1] * steps))
    return w[1:]


def random_start(shape: tuple[int, int], rho: float, p: float, gen: torch.Generator, dtype: torch.dtype,
                 device: torch.device) -> Tensor:
    """A uniform point of the boundary of {||u||_p <= rho} (u = e / T): a Gaussian rescaled to
    norm rho (p = 2) or a uniformly random vertex rho sign(z) (p = inf)."""
    z = torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    if p == math.inf:
        return rho * torch.sign(z)
    return z * (rho / z.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny))


def noise(shape: tuple[int, int], rho: float, p: float, scale: Tensor | None, gen: torch.Generator,
          dtype: torch.dtype, device: torch.device) -> Tensor:
    """The reference's average-case perturbation: rho T z with z ~ N(0, 1) (p = 2) or U[-1, 1]
    (p = inf), elementwise."""
    if p == math.inf:
        z = 2 * torch.rand(shape, generator=gen, dtype=torch.float64) - 1
    else:
        z = torch.randn(shape, generator=gen, dtype=torch.float64)
    z = z.to(device=device, dtype=dtype) * rho
    return z if scale is None else z * scale


# -- results -------------------------------------------------------------------------------------
@dataclass
class MeasureValue:
    """One measure at one (m, rho): the mean over subsets of the loss and error increases."""

    m: int
    rho: float
    loss_increase: float
    loss_stderr: float | None  # over subsets; None below MIN_SUBSETS_FOR_STDERR subsets (stderr_note)
    error_increase: float
    error_stderr: float | None
    n_subsets: int
    values: list[float] = field(default_factory=list)        # per-subset loss increase
    error_values: list[float] = field(default_factory=list)  # per-subset error increase
    restart_values: list[list[float]] = field(default_factory=list)  # worst: per subset, every restart's value
    restart_spread: float | None = None  # worst: max over subsets of (max - min) / max over restarts
    stderr_note: str | None = None       # why the standard errors are None
    loss_mc_stderr: float | None = None  # average: the Monte Carlo standard error of the mean (draws only)


@dataclass
class MeasureResult:
    """A sharpness measure for every m and rho asked, with what it cost."""

    measure: str           # "worst" or "average"
    p: float
    adaptive: bool
    eta: float
    steps: int             # ascent steps (worst) or noise draws per subset (average)
    random_start: bool
    seed: int
    results: list[MeasureValue]
    n_examples: int
    n_gradients: int       # per-subset gradients (worst case)
    n_forwards: int        # per-subset loss evaluations without a gradient (average case)
    wall_time: float
    restarts: int = 1      # worst case: ascents per subset (the best is kept)

    def table(self) -> list[tuple[int, float, float, float, float, float]]:
        return [(r.m, r.rho, r.loss_increase, r.loss_stderr, r.error_increase, r.error_stderr) for r in self.results]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["p"] = "inf" if self.p == math.inf else self.p
        return d


# -- shared set-up ---------------------------------------------------------------------------------
@dataclass
class _Setup:
    """The examples as one batch, the flat weights, and per-subset loss/error evaluators."""

    examples: Any
    n: int
    w0: Tensor
    scale: Tensor | None
    value_and_grad: Callable[[Tensor, Any], tuple[Tensor, tuple[Tensor, Tensor]]]  # (grad, (loss, error))
    value: Callable[[Tensor, Any], tuple[Tensor, Tensor]]


def _setup(model: nn.Module, loss_fn: LossFn, data: Iterable, adaptive: bool, eta: float) -> _Setup:
    flat = flat_examples(model, loss_fn, data)

    def loss_and_error(w_flat: Tensor, batch: Any) -> tuple[Tensor, Tensor]:
        outputs, loss = flat.batch_loss.outputs_and_loss(flat.state(w_flat), batch)
        return loss, _error_rate(outputs, batch, flat.batch_loss.takes_model, loss.detach())

    bad = [nm for nm, t in [*zip(flat.names, flat.w0.split(flat.sizes)), *flat.buffers.items()]
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise NonFiniteLossError(f"the model's parameters or buffers hold NaN or infinite values ({', '.join(bad[:3])}"
                                 f"{', ...' if len(bad) > 3 else ''}): there is nothing to analyse")
    scale = (flat.w0.abs() + eta) if adaptive else None
    value = vmap(lambda w, b: tuple(t.detach() for t in loss_and_error(w, b)), in_dims=(0, 0))
    return _Setup(flat.examples, flat.n, flat.w0, scale,
                  vmap(grad_and_value(loss_and_error, has_aux=True), in_dims=(0, 0)), value)


def _error_rate(outputs: Any, batch: Any, takes_model: bool, like: Tensor) -> Tensor:
    """The classification error of a batch (argmax of class scores against integer targets);
    NaN when the outputs are not class scores."""
    if takes_model or not isinstance(outputs, Tensor) or outputs.dim() != 2 or outputs.shape[1] < 2:
        return torch.full_like(like, math.nan)
    targets = batch[1]
    if not isinstance(targets, Tensor) or targets.dtype.is_floating_point or targets.dim() != 1:
        return torch.full_like(like, math.nan)
    return (outputs.argmax(-1) != targets).to(like.dtype).mean()


def _lists(m: int | Sequence[int], rho: float | Sequence[float], p: float, eta: float, count: int, what: str,
           max_subsets: int | None) -> tuple[list[int], list[float]]:
    """The m and rho lists of a measure's call, every option checked."""
    ms, rhos = ([m] if isinstance(m, int) else list(m)), ([rho] if isinstance(rho, (int, float)) else list(rho))
    _check(ms, rhos, p, eta, count, what)
    if max_subsets is not None:
        int_at_least("max_subsets", max_subsets, 1)
    return ms, rhos


def _check(ms: Sequence[int], rhos: Sequence[float], p: float, eta: float, count: int, what: str) -> None:
    if not ms or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in ms):
        raise ConfigError(f"m must be positive integers, got {list(ms)!r}")
    if not rhos or any(not (isinstance(r, (int, float)) and math.isfinite(r) and r >= 0) for r in rhos):
        raise ConfigError(f"rho must be finite numbers >= 0, got {list(rhos)!r}")
    if p not in (2, 2.0, math.inf):
        raise ConfigError(f"sharpness measures support p = 2 and p = inf, got {p}")
    if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
        raise ConfigError(f"eta must be a finite number >= 0, got {eta!r}")
    int_at_least(what, count, 1)


def _summary(size: int, rho: float, loss: Tensor, err: Tensor) -> MeasureValue:
    """The all-reduced per-subset values -> mean and standard error over subsets.

    The standard error over k subsets, s / sqrt(k) with s the sample standard deviation of the
    per-subset values, is reported only for k >= :data:`MIN_SUBSETS_FOR_STDERR` (with fewer, s
    has k - 1 < 4 degrees of freedom and can be off by orders of magnitude: with two subsets it
    read 3.5e-8 where the Monte Carlo error alone was 6.3e-6); otherwise it is None and
    ``stderr_note`` says why."""
    loss, err = dist_utils.all_reduce_sum(loss).cpu(), dist_utils.all_reduce_sum(err).cpu()
    k = loss.numel()
    enough = k >= MIN_SUBSETS_FOR_STDERR

    def se(t: Tensor) -> float | None:
        return float(t.std(unbiased=True) / math.sqrt(k)) if enough else None

    note = None if enough else (f"no standard error over {k} subset(s): it needs at least {MIN_SUBSETS_FOR_STDERR} "
                                "(use a smaller m or more examples)")
    return MeasureValue(size, float(rho), float(loss.mean()), se(loss), float(err.mean()), se(err), k,
                        loss.tolist(), err.tolist(), stderr_note=note)


def _group_generator(seed: int, *keys: int) -> torch.Generator:
    """A generator for one (m, rho, group): the draws do not depend on how groups are shared out."""
    return seeded_generator(seed, *keys)


# -- worst case ----------------------------------------------------------------------------------
def _require_finite(loss: Tensor, g: Tensor | None, where: str) -> None:
    """One rule for non-finite values (as :mod:`sharpscope.objective`): a NaN or infinite loss
    (or gradient) at any point a measure evaluates raises :class:`NonFiniteLossError`."""
    ok = torch.isfinite(loss).all() if g is None else torch.isfinite(loss).all() & torch.isfinite(g).all()
    if not bool(ok):  # one device sync per evaluation
        raise NonFiniteLossError(f"the loss or its gradient is NaN or infinite {where}")


def _apgd(s: _Setup, batch: Any, rows: int, rho: float, p: float, steps: int, start: Tensor | None,
          base: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, int]:
    """The ascent of the module docstring for ``rows`` subsets at once, in u = e / T, from u = 0
    (``start`` None) or from ``start``; ``base`` = (gradient, loss, error) at u = 0, which is a
    candidate too. Returns (best loss, error at the best point, gradients per subset)."""
    w0 = s.w0.expand(rows, -1)

    def at(u: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        g, (loss, err) = s.value_and_grad(w0 + (u if s.scale is None else u * s.scale), batch)
        _require_finite(loss, g, f"at a point within rho = {rho:g} of the weights: the worst case is not finite")
        return g, (loss, err)

    g, (best_loss, best_err) = base[0].clone(), (base[1].clone(), base[2].clone())
    u = torch.zeros_like(w0)
    best_u, best_g, n_grad = u.clone(), g.clone(), 0
    if start is not None:  # a random start: one more gradient, and the start is a candidate too
        u = start
        g, (loss, err) = at(u)
        n_grad += 1
        up = loss > best_loss
        best_loss, best_err = torch.where(up, loss, best_loss), torch.where(up, err, best_err)
        best_u, best_g = torch.where(up[:, None], u, best_u), torch.where(up[:, None], g, best_g)
    u_prev = u.clone()
    step = torch.full((rows,), 2.0 * rho, dtype=w0.dtype, device=w0.device)
    prev_step, prev_best, updates, prev_cp = step.clone(), best_loss.clone(), torch.zeros_like(step), 0
    checkpoints = set(apgd_checkpoints(steps))
    for i in range(steps):
        z = project(u + step[:, None] * ascent_direction(g, p, s.scale), rho, p)
        u, u_prev = MOMENTUM * z + (1.0 - MOMENTUM) * u_prev, u
        g, (loss, err) = at(u)
        n_grad += 1
        up = loss > best_loss
        best_loss, best_err = torch.where(up, loss, best_loss), torch.where(up, err, best_err)
        best_u, best_g = torch.where(up[:, None], u, best_u), torch.where(up[:, None], g, best_g)
        updates += up.to(updates.dtype)
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


def _restarts(s: _Setup, batch: Any, rows: int, rho: float, p: float, steps: int, restarts: int,
              random_first: bool, seed: int, keys: tuple[int, ...], zero_rows: list[int]
              ) -> tuple[Tensor, Tensor, int, Tensor]:
    """``restarts`` ascents (:func:`_apgd`) per subset: restart 0 from u = 0 (from a seeded random
    point of the boundary when ``random_first``, or for the rows whose gradient at u = 0 is
    exactly zero, counted in ``zero_rows``), restart r >= 1 from seeded random points of the
    boundary. Returns (best loss increase, its error increase, gradients per subset, loss
    increases (rows, restarts))."""
    w0 = s.w0.expand(rows, -1)
    g0, (loss0, err0) = s.value_and_grad(w0, batch)
    _require_finite(loss0, g0, "at the weights themselves (NaN or infinite values in the data or the model?)")
    zero = g0.norm(dim=-1) == 0
    zero_rows.append(int(zero.sum()))
    n_grad, per_restart, best_err = 1, [], torch.zeros_like(err0)
    for r in range(restarts):
        start = None
        if r > 0 or random_first or bool(zero.any()):
            start = random_start_rows(s, rows, rho, p, seed, *keys, *((r,) if r > 0 else ()))
            if r == 0 and not random_first:
                start = torch.where(zero[:, None], start, torch.zeros_like(start))
        loss, err, k = _apgd(s, batch, rows, rho, p, steps, start, (g0, loss0, err0))
        n_grad += k
        if per_restart:
            best_err = torch.where(loss > torch.stack(per_restart).amax(0), err, best_err)
        else:
            best_err = err
        per_restart.append(loss)
    values = (torch.stack(per_restart, dim=1) - loss0[:, None]).double()
    return values.amax(1), (best_err - err0).double(), n_grad, values


def worst_case_sharpness(
    model: nn.Module, loss_fn: LossFn, data: Iterable, m: int | Sequence[int] = 128,
    rho: float | Sequence[float] = 0.05, p: float = 2.0, adaptive: bool = False, eta: float = 0.0,
    steps: int = 20, random_start: bool = False, seed: int = 0, max_subsets: int | None = None,
    group_examples: int = 256, callback: Callable[[int], None] | None = None,
    restarts: int = DEFAULT_RESTARTS,
) -> MeasureResult:
    """max_{||e / T||_p <= rho} L_b(w + e) - L_b(w), averaged over subsets of m examples
    (module docstring), by ``steps`` steps of the APGD-style ascent, ``restarts`` times per
    subset: from e = 0 (a seeded random point of the boundary with ``random_start``) and from
    ``restarts - 1`` seeded random points of the boundary; each subset keeps its best. The
    ascent finds local maxima, so the value is a lower bound of the maximum: each result records
    every restart's value (``restart_values``) and the largest relative spread between restarts
    (``restart_spread``), and :class:`~sharpscope.errors.RestartsDisagreeWarning` is raised when
    that spread exceeds :data:`RESTART_TOLERANCE` (1 %). A subset whose gradient at w is exactly
    zero starts its e = 0 restart at a seeded random point instead
    (:class:`~sharpscope.errors.ZeroGradientWarning`). A NaN or infinite loss or gradient at w
    or at any visited point raises :class:`~sharpscope.errors.NonFiniteLossError`."""
    ms, rhos = _lists(m, rho, p, eta, steps, "steps", max_subsets)
    int_at_least("restarts", restarts, 1)
    start_time = time.perf_counter()
    s = _setup(model, loss_fn, data, adaptive, eta)
    zero_rows: list[int] = []

    def one_group(batch: Any, rows: int, r: float, keys: tuple[int, ...]) -> tuple[Tensor, Tensor, int, Tensor]:
        return _restarts(s, batch, rows, r, p, steps, restarts, random_start, seed, keys, zero_rows)

    with eval_mode(model), higher_order_attention():
        results, n_grad, per_restart = _over_subsets(s, ms, rhos, seed, max_subsets, group_examples, callback,
                                                     one_group)
    for res, values in zip(results, per_restart):
        _record_restarts(res, values)
    if sum(zero_rows):
        warn_zero_gradient("worst-case sharpness", f"on {sum(zero_rows)} subset(s)", "their e = 0 restart started "
                           "from a seeded random point of the boundary instead")
    _warn_spread(results, restarts)
    return MeasureResult("worst", p, adaptive, eta, steps, random_start, seed, results, s.n, n_grad, 0,
                         time.perf_counter() - start_time, restarts=restarts)


def _record_restarts(res: MeasureValue, values: Tensor | None) -> None:
    """Every restart's value per subset, (subsets, restarts), and the largest relative spread
    (max - min) / max over the subsets whose best is positive."""
    if values is None:
        return
    res.restart_values = values.tolist()
    top, low = values.amax(1), values.amin(1)
    rel = torch.where(top > 0, (top - low) / top.clamp_min(torch.finfo(top.dtype).tiny), torch.zeros_like(top))
    res.restart_spread = float(rel.max())


def _warn_spread(results: Sequence[MeasureValue], restarts: int) -> None:
    worst = [r for r in results if r.restart_spread is not None and r.restart_spread > RESTART_TOLERANCE]
    if worst:
        r = max(worst, key=lambda v: v.restart_spread or 0.0)
        warnings.warn(f"worst-case sharpness: the {restarts} restarts of the ascent disagree by up to "
                      f"{100 * (r.restart_spread or 0.0):.1f} % (m = {r.m}, rho = {r.rho:g}; margin "
                      f"{100 * RESTART_TOLERANCE:g} %): the ascent stops at local maxima, so the value is a lower "
                      f"bound that more restarts or steps may raise", RestartsDisagreeWarning, stacklevel=3)


def _over_subsets(s: _Setup, ms: Sequence[int], rhos: Sequence[float], seed: int, max_subsets: int | None,
                  group_examples: int, callback: Callable[[int], None] | None,
                  one_group: Callable[[Any, int, float, tuple[int, ...]], tuple[Tensor, ...]]
                  ) -> tuple[list[MeasureValue], int, list[Tensor | None]]:
    """For each m and rho, ``one_group(batch, rows, rho, keys)`` -> (loss increases, error
    increases, evaluations per subset[, a per-subset extra of shape (rows, ...)]) over this
    rank's groups of subsets; the per-subset values (and extras) are all-reduced into one
    :class:`MeasureValue` (and one (subsets, ...) tensor, None without extras) each. Returns
    them and the total number of per-subset evaluations (all ranks)."""
    gen = torch.Generator().manual_seed(seed)
    results, extras, count = [], [], 0
    for size in ms:
        subsets = seeded_subsets(s.n, size, gen, max_subsets, s.w0.device)
        for j, r in enumerate(rhos):
            loss = torch.zeros(subsets.shape[0], dtype=torch.float64, device=s.w0.device)
            err, extra = torch.zeros_like(loss), None
            for rows in rank_groups(subsets, group_examples):
                batch = take(s.examples, subsets[rows.to(subsets.device)])
                out = one_group(batch, len(rows), float(r), (size, j, int(rows[0])))
                loss[rows], err[rows] = out[0], out[1]
                if len(out) > 3:
                    if extra is None:
                        extra = torch.zeros((subsets.shape[0], *out[3].shape[1:]), dtype=torch.float64,
                                            device=s.w0.device)
                    extra[rows] = out[3].double()
                count += int(out[2]) * len(rows)
                if callback is not None:
                    callback(len(rows))
            results.append(_summary(size, float(r), loss, err))
            extras.append(None if extra is None else dist_utils.all_reduce_sum(extra).cpu())
    return results, int(dist_utils.all_reduce_sum(torch.tensor(float(count), dtype=torch.float64)).item()), extras


def random_start_rows(s: _Setup, rows: int, rho: float, p: float, seed: int, *keys: int) -> Tensor:
    """Seeded random starts (:func:`random_start`, in u = e / T) for one group of subsets."""
    gen = _group_generator(seed, *keys)
    return random_start((rows, s.w0.numel()), rho, p, gen, s.w0.dtype, s.w0.device)


# -- average case --------------------------------------------------------------------------------
def average_case_sharpness(
    model: nn.Module, loss_fn: LossFn, data: Iterable, m: int | Sequence[int] = 128,
    rho: float | Sequence[float] = 0.01, p: float = 2.0, adaptive: bool = False, eta: float = 0.0,
    samples: int = 100, seed: int = 0, max_subsets: int | None = None, group_examples: int = 256,
    callback: Callable[[int], None] | None = None,
) -> MeasureResult:
    """E_e[L_b(w + e)] - L_b(w) over ``samples`` draws of the reference's noise per subset
    (module docstring), averaged over subsets of m examples. The standard error is over subsets
    (each subset's value already averages ``samples`` draws), reported from
    :data:`MIN_SUBSETS_FOR_STDERR` subsets on; ``loss_mc_stderr`` is the Monte Carlo error of
    the mean from the draws alone (``samples`` >= 2). A NaN or infinite loss at w or at any
    draw raises :class:`~sharpscope.errors.NonFiniteLossError`."""
    ms, rhos = _lists(m, rho, p, eta, samples, "samples", max_subsets)
    start_time = time.perf_counter()
    s = _setup(model, loss_fn, data, adaptive, eta)
    def one_group(batch: Any, rows: int, r: float, keys: tuple[int, ...]) -> tuple[Tensor, Tensor, int, Tensor]:
        draw_gen = _group_generator(seed, *keys)
        w0 = s.w0.expand(rows, -1)
        base_loss, base_err = s.value(w0, batch)
        _require_finite(base_loss, None, "at the weights themselves (NaN or infinite values in the data or the model?)")
        total_loss = torch.zeros(rows, dtype=torch.float64, device=w0.device)
        total_sq, total_err = torch.zeros_like(total_loss), torch.zeros_like(total_loss)
        for _ in range(samples):
            li, ei = s.value(w0 + noise(tuple(w0.shape), r, p, s.scale, draw_gen, w0.dtype, w0.device), batch)
            _require_finite(li, None, f"at a noise draw of scale rho = {r:g}: the average case is not finite")
            d = li.double() - base_loss.double()
            total_loss += d
            total_sq += d * d
            total_err += ei.double()
        mean = total_loss / samples
        var = ((total_sq - samples * mean * mean).clamp_min(0) / (samples - 1) / samples if samples > 1
               else torch.full_like(mean, math.nan))
        return mean, total_err / samples - base_err.double(), samples + 1, var

    with eval_mode(model), torch.no_grad():
        results, n_fwd, mc_vars = _over_subsets(s, ms, rhos, seed, max_subsets, group_examples, callback, one_group)
    for res, var in zip(results, mc_vars):
        # the Monte Carlo error of the mean over k subsets: sqrt(sum_b var_b) / k, var_b = s_b^2 / S
        res.loss_mc_stderr = (float(var.sum().sqrt() / res.n_subsets)
                              if var is not None and bool(torch.isfinite(var).all()) else None)
    return MeasureResult("average", p, adaptive, eta, samples, False, seed, results, s.n, 0, n_fwd,
                         time.perf_counter() - start_time)


#: The measures by name (``sharpscope sharpness --measure``).
MEASURES: dict[str, Callable[..., MeasureResult]] = {"worst": worst_case_sharpness, "average": average_case_sharpness}


def sharpness(model: nn.Module, loss_fn: LossFn, data: Iterable, measure: str = "worst", **options: Any
              ) -> MeasureResult:
    """The measure named ``measure`` (:data:`MEASURES`) with its ``options``."""
    if measure not in MEASURES:
        raise ConfigError(f"unknown sharpness measure {measure!r}; choose from {', '.join(MEASURES)}")
    return MEASURES[measure](model, loss_fn, data, **options)
