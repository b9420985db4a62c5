"""Worst-case and average-case sharpness, plain or adaptive (Andriushchenko et al., ICML 2023,
"A modern look at the relationship between sharpness and generalization"; reference code
tml-epfl/sharpness-vs-generalization ``sharpness.py``), on seeded disjoint subsets b of m
examples, with T = 1 (plain) or |w| + eta (adaptive) and B = {e : ||e / T||_p <= rho}, p = 2 or inf:

- worst case: S_b = max_{e in B} L_b(w + e) - L_b(w) by the APGD-style ascent of
  :mod:`sharpscope.ascent`, ``restarts`` times per subset, keeping the best: a lower bound, so
  a spread (max - min) / max above :data:`RESTART_TOLERANCE` warns (RestartsDisagreeWarning);
- average case: A_b = E_e[L_b(w + e)] - L_b(w), e = rho T z, z ~ N(0, 1) (p = 2) or U[-1, 1];

and the same for the error rate, averaged over subsets, with the standard error over subsets
from :data:`MIN_SUBSETS_FOR_STDERR` on (else None and ``stderr_note``) and, for the average
case, the Monte Carlo error sqrt(sum_b var_b / S) / k. Zero gradients, non-finite values and
eval mode as in :mod:`sharpscope.sharpness`.
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

from .ascent import (MIN_UPDATE_RATIO, MOMENTUM, apgd_checkpoints, ascend_with_restarts,  # noqa: F401
                     ascent_direction, group_generator, random_start, random_start_rows, require_finite, setup)
from .batches import higher_order_attention
from .checks import int_at_least
from .errors import ConfigError, RestartsDisagreeWarning
from .objective import eval_mode
from .sharpness import checked_lists, over_subsets, warn_zero_gradient

__all__ = ["worst_case_sharpness", "average_case_sharpness", "sharpness", "MEASURES", "MeasureValue",
           "MeasureResult", "ascent_direction", "apgd_checkpoints", "DEFAULT_RESTARTS", "RESTART_TOLERANCE",
           "MIN_SUBSETS_FOR_STDERR"]

LossFn = Callable[[Tensor, Tensor], Tensor]
#: Restarts of the worst-case ascent per subset (e = 0 and seeded random points of the boundary).
DEFAULT_RESTARTS = 4
#: Relative spread (max - min) / max between restarts above which the worst case warns.
RESTART_TOLERANCE = 0.01
#: The fewest subsets for which a standard error over subsets is reported (4 degrees of freedom).
MIN_SUBSETS_FOR_STDERR = 5


def noise(shape: tuple[int, int], rho: float, p: float, scale: Tensor | None, gen: torch.Generator,
          dtype: torch.dtype, device: torch.device) -> Tensor:
    """The reference's average-case perturbation rho T z, z ~ N(0, 1) (p = 2) or U[-1, 1] (p = inf)."""
    z = (2 * torch.rand(shape, generator=gen, dtype=torch.float64) - 1 if p == math.inf
         else torch.randn(shape, generator=gen, dtype=torch.float64))
    z = z.to(device=device, dtype=dtype) * rho
    return z if scale is None else z * scale


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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["p"] = "inf" if self.p == math.inf else self.p
        return d


def _summary(size: int, rho: float, loss: Tensor, err: Tensor) -> MeasureValue:
    """Per-subset values (all ranks) -> mean and standard error s / sqrt(k) over k subsets
    (None below :data:`MIN_SUBSETS_FOR_STDERR`, with ``stderr_note``)."""
    k = loss.numel()
    enough = k >= MIN_SUBSETS_FOR_STDERR

    def se(t: Tensor) -> float | None:
        return float(t.std(unbiased=True) / math.sqrt(k)) if enough else None

    note = None if enough else (f"no standard error over {k} subset(s): it needs at least {MIN_SUBSETS_FOR_STDERR} "
                                "(use a smaller m or more examples)")
    return MeasureValue(size, float(rho), float(loss.mean()), se(loss), float(err.mean()), se(err), k,
                        loss.tolist(), err.tolist(), stderr_note=note)


def worst_case_sharpness(
    model: nn.Module, loss_fn: LossFn, data: Iterable, m: int | Sequence[int] = 128,
    rho: float | Sequence[float] = 0.05, p: float = 2.0, adaptive: bool = False, eta: float = 0.0,
    steps: int = 20, random_start: bool = False, seed: int = 0, max_subsets: int | None = None,
    group_examples: int = 256, callback: Callable[[int], None] | None = None,
    restarts: int = DEFAULT_RESTARTS, params: Any = None,
) -> MeasureResult:
    """max_{||e / T||_p <= rho} L_b(w + e) - L_b(w) averaged over subsets of m examples (module
    docstring): ``steps`` APGD steps, ``restarts`` times per subset, the first from e = 0 (or a
    seeded random point with ``random_start``); results keep ``restart_values`` and
    ``restart_spread``. ``params``: the parameters e moves."""
    ms, rhos = checked_lists(m, rho, p, steps, "steps", max_subsets, "each sharpness measure", eta)
    int_at_least("restarts", restarts, 1)
    start_time = time.perf_counter()
    s = setup(model, loss_fn, data, adaptive, eta, params)
    zero_rows: list[int] = []

    def one_group(batch: Any, rows: int, r: float, keys: tuple[int, ...]) -> tuple[int, Tensor, Tensor, Tensor]:
        best, err, n, values = ascend_with_restarts(s, batch, rows, r, p, steps, restarts, random_start, seed, keys,
                                                    zero_rows)
        return n, best, err, values

    with eval_mode(model), higher_order_attention():
        out, n_grad = over_subsets(s, ms, rhos, seed, max_subsets, group_examples, callback, one_group,
                                   [(), (), (restarts,)])
    results = [_summary(size, r, loss, err) for size, r, (loss, err, _) in out]
    for res, (_, _, (_, _, values)) in zip(results, out):  # the largest (max - min) / max over restarts
        res.restart_values = values.tolist()
        top, low = values.amax(1), values.amin(1)
        rel = torch.where(top > 0, (top - low) / top.clamp_min(torch.finfo(top.dtype).tiny), torch.zeros_like(top))
        res.restart_spread = float(rel.max())
    if sum(zero_rows):
        warn_zero_gradient("worst-case sharpness", f"on {sum(zero_rows)} subset(s)", "their e = 0 restart started "
                           "from a seeded random point of the boundary instead")
    r = max(results, key=lambda v: v.restart_spread or 0.0)
    if (r.restart_spread or 0.0) > RESTART_TOLERANCE:
        warnings.warn(f"worst-case sharpness: the {restarts} restarts of the ascent disagree by up to "
                      f"{100 * (r.restart_spread or 0.0):.1f} % (m = {r.m}, rho = {r.rho:g}; margin "
                      f"{100 * RESTART_TOLERANCE:g} %): the ascent stops at local maxima, so the value is a lower "
                      f"bound that more restarts or steps may raise", RestartsDisagreeWarning, stacklevel=2)
    return MeasureResult("worst", p, adaptive, eta, steps, random_start, seed, results, s.n, n_grad, 0,
                         time.perf_counter() - start_time, restarts=restarts)


def average_case_sharpness(
    model: nn.Module, loss_fn: LossFn, data: Iterable, m: int | Sequence[int] = 128,
    rho: float | Sequence[float] = 0.01, p: float = 2.0, adaptive: bool = False, eta: float = 0.0,
    samples: int = 100, seed: int = 0, max_subsets: int | None = None, group_examples: int = 256,
    callback: Callable[[int], None] | None = None, params: Any = None,
) -> MeasureResult:
    """E_e[L_b(w + e)] - L_b(w) over ``samples`` noise draws per subset, averaged over subsets of
    m examples (module docstring); ``loss_mc_stderr``: the Monte Carlo error of the mean from
    the draws alone (``samples`` >= 2). ``params``: the parameters the noise moves."""
    ms, rhos = checked_lists(m, rho, p, samples, "samples", max_subsets, "each sharpness measure", eta)
    start_time = time.perf_counter()
    s = setup(model, loss_fn, data, adaptive, eta, params)
    def one_group(batch: Any, rows: int, r: float, keys: tuple[int, ...]) -> tuple[int, Tensor, Tensor, Tensor]:
        draw_gen = group_generator(seed, *keys)
        w0 = s.w0.expand(rows, -1)
        base_loss, base_err = s.value(w0, batch)
        require_finite(base_loss, None, "at the weights themselves (NaN or infinite values in the data or the model?)")
        total_loss = torch.zeros(rows, dtype=torch.float64, device=w0.device)
        total_sq, total_err = torch.zeros_like(total_loss), torch.zeros_like(total_loss)
        for _ in range(samples):
            li, ei = s.value(w0 + noise(tuple(w0.shape), r, p, s.scale, draw_gen, w0.dtype, w0.device), batch)
            require_finite(li, None, f"at a noise draw of scale rho = {r:g}: the average case is not finite")
            d = li.double() - base_loss.double()
            total_loss += d
            total_sq += d * d
            total_err += ei.double()
        mean = total_loss / samples
        var = ((total_sq - samples * mean * mean).clamp_min(0) / (samples - 1) / samples if samples > 1
               else torch.full_like(mean, math.nan))
        return samples + 1, mean, total_err / samples - base_err.double(), var

    with eval_mode(model), torch.no_grad():
        out, n_fwd = over_subsets(s, ms, rhos, seed, max_subsets, group_examples, callback, one_group, [(), (), ()])
    results = [_summary(size, r, loss, err) for size, r, (loss, err, _) in out]
    for res, (_, _, (_, _, var)) in zip(results, out):
        # the Monte Carlo error of the mean over k subsets: sqrt(sum_b var_b) / k, var_b = s_b^2 / S
        res.loss_mc_stderr = float(var.sum().sqrt() / res.n_subsets) if bool(torch.isfinite(var).all()) else None
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
