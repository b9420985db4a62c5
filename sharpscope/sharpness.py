"""SAM's own diagnostics (Foret et al., ICLR 2021, Sec. 4.1 and App. C.4).

m-sharpness: on seeded disjoint subsets b of m examples, S_b = max_{||e||_p <= rho}
L_b(w + e) - L_b(w) by ``steps`` of projected normalized ascent from e = 0,
e <- Proj(e + rho dual(grad L_b(w + e))) (the first step is SAM's e_hat), keeping the best
iterate, the start included; the mean over subsets with its standard error.

First- vs second-order SAM gradient: with e_hat = rho g / ||g||, grad L(w + e_hat(w)) =
grad L|_{w + e_hat} + (d e_hat / dw)^T grad L|_{w + e_hat}, d e_hat / dw = (rho / ||g||)
(I - g_hat g_hat^T) H(w); SAM drops the second term, one HVP: H (rho / ||g||) (v - g_hat (g_hat . v)).

At a zero gradient m-sharpness steps first in a seeded random direction and the quantities
defined by e_hat read NaN (:class:`~sharpscope.errors.ZeroGradientWarning`); non-finite values
raise :class:`~sharpscope.errors.NonFiniteLossError`. Eval mode; the model is not modified.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import vmap

from . import distributed as dist_utils
from .batches import BatchLoss, higher_order_attention, take, tensor_leaves
from .checks import int_at_least
from .errors import ConfigError, ZeroGradientWarning
from .objective import Objective, eval_mode, moved_parameters, require_finite
from .reductions import SMALL_REDUCTION, large_inner, large_norm

__all__ = ["m_sharpness", "MSharpness", "SharpnessResult", "surrogate_gap", "surrogate_gaps", "sam_gradient_cosine",
           "GradientCosine", "dual_direction", "project", "FlatExamples", "flat_examples", "seeded_subsets",
           "rank_groups", "over_subsets", "checked_lists"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def dual_direction(g: Tensor, p: float) -> Tensor:
    """argmax_{||e||_p <= 1} <e, g> along the last dimension (rows of a batch of flat vectors)."""
    if p == math.inf:
        return torch.sign(g)
    t = g if p == 2 else torch.sign(g) * g.abs() ** (p / (p - 1) - 1)
    n = t.norm(dim=-1, keepdim=True) if p == 2 else t.norm(p=p, dim=-1, keepdim=True)
    return torch.where(n > 0, t / n.clamp_min(torch.finfo(g.dtype).tiny), torch.zeros_like(g))


def project(e: Tensor, rho: float, p: float) -> Tensor:
    """The Euclidean projection onto {||e||_p <= rho}: clamp for p = inf, rescaling for p = 2."""
    if p == math.inf:
        return e.clamp(-rho, rho)
    if p != 2:
        raise ConfigError("projected ascent supports p = 2 and p = inf")
    n = e.norm(dim=-1, keepdim=True)
    return torch.where(n > rho, e * (rho / n.clamp_min(torch.finfo(e.dtype).tiny)), e)


@dataclass
class MSharpness:
    """m-sharpness for one (m, rho)."""

    m: int
    rho: float
    mean: float
    stderr: float
    n_subsets: int
    values: list[float]


@dataclass
class SharpnessResult:
    """m-sharpness for every m (and rho) asked, plus cost."""

    p: float
    steps: int
    results: list[MSharpness]
    n_examples: int
    n_gradients: int
    wall_time: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["p"] = "inf" if self.p == math.inf else self.p
        return d


@dataclass
class FlatExamples:
    """The examples as one batch and the model's state as a function of its flat parameters ``w0``."""

    batch_loss: BatchLoss
    examples: Any
    n: int
    w0: Tensor
    names: list[str]
    shapes: list[torch.Size]
    sizes: list[int]
    buffers: dict[str, Tensor]

    def state(self, w_flat: Tensor) -> dict[str, Tensor]:
        """The model's buffers and the parameters ``w_flat`` by name (for ``functional_call``)."""
        params = {nm: c.view(s) for nm, c, s in zip(self.names, w_flat.split(self.sizes), self.shapes)}
        return {**self.buffers, **params}


def flat_examples(model: nn.Module, loss_fn: LossFn, data: Iterable, params: Any = None) -> FlatExamples:
    """:class:`FlatExamples` of ``model`` on every example of ``data``, over the parameters
    ``params`` selects (:func:`sharpscope.objective.select_parameters`), the others fixed."""
    first = next(iter(model.parameters()))
    batch_loss = BatchLoss(model, loss_fn)
    examples = batch_loss.read(data, first.device, first.dtype).joined()
    theta = dict(model.named_parameters())
    names = moved_parameters(model, params)
    chosen = set(names)
    fixed = {nm: p.detach() for nm, p in theta.items() if nm not in chosen}
    return FlatExamples(batch_loss, examples, tensor_leaves(examples)[0].shape[0],
                        torch.cat([theta[nm].detach().reshape(-1) for nm in names]), names,
                        [theta[nm].shape for nm in names], [theta[nm].numel() for nm in names],
                        {**fixed, **{nm: b.detach() for nm, b in model.named_buffers()}})


def checked_lists(m: int | Sequence[int], rho: float | Sequence[float], p: float, count: int, what: str,
                  max_subsets: int | None, name: str, eta: float = 0.0) -> tuple[list[int], list[float]]:
    """The m and rho lists of a per-subset measure's call, every option checked (ConfigError)."""
    ms, rhos = ([m] if isinstance(m, int) else list(m)), ([rho] if isinstance(rho, (int, float)) else list(rho))
    if not ms or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in ms):
        raise ConfigError(f"m must be positive integers, got {ms!r}")
    if not rhos or any(not (isinstance(r, (int, float)) and math.isfinite(r) and r >= 0) for r in rhos):
        raise ConfigError(f"rho must be finite numbers >= 0, got {rhos!r}")
    if p not in (2, 2.0, math.inf):
        raise ConfigError(f"{name} supports p = 2 and p = inf, got {p}")
    if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
        raise ConfigError(f"eta must be a finite number >= 0, got {eta!r}")
    int_at_least(what, count, 1)
    if max_subsets is not None:
        int_at_least("max_subsets", max_subsets, 1)
    return ms, rhos


def seeded_subsets(n: int, size: int, gen: torch.Generator, max_subsets: int | None,
                   device: torch.device) -> Tensor:
    """(k, size) disjoint subsets: slices of a seeded shuffle of the n examples, at most ``max_subsets``."""
    if size > n:
        raise ConfigError(f"m = {size} is larger than the {n} examples")
    order = torch.randperm(n, generator=gen)[: (n // size) * size].to(device)
    subsets = order.view(-1, size)
    return subsets[:max_subsets] if max_subsets is not None else subsets


def seeded_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded by ``seed`` and ``keys`` (m, rho index, first subset of a group)."""
    mixed = seed
    for k in keys:
        mixed = (mixed * 1_000_003 + k * 7919 + 17) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def warn_zero_gradient(what: str, where: str, how: str) -> None:
    """:class:`~sharpscope.errors.ZeroGradientWarning`: the gradient is zero ``where``, so ``what`` did ``how``."""
    warnings.warn(f"{what}: the gradient at the weights is exactly zero {where} (a minimum, a saddle or a "
                  f"zero-initialised model), so the ascent direction rho g / ||g|| is undefined; {how}",
                  ZeroGradientWarning, stacklevel=3)


def rank_groups(subsets: Tensor, group_examples: int) -> list[Tensor]:
    """This rank's groups of subset rows, about ``group_examples`` examples each, dealt round robin."""
    per_call = max(1, group_examples // subsets.shape[1])
    starts = list(range(0, subsets.shape[0], per_call))[dist_utils.rank()::dist_utils.world_size()]
    return [torch.arange(lo, min(lo + per_call, subsets.shape[0])) for lo in starts]


def over_subsets(flat: Any, ms: Sequence[int], rhos: Sequence[float], seed: int, max_subsets: int | None,
                 group_examples: int, callback: Callable[[int], None] | None,
                 one_group: Callable[[Any, int, float, tuple[int, ...]], tuple[Any, ...]],
                 shapes: Sequence[tuple[int, ...]]) -> tuple[list[tuple[int, float, list[Tensor]]], int]:
    """``one_group(batch, rows, rho, keys)`` -> (evaluations per subset, a (rows, *shape) tensor per
    ``shapes``) over this rank's groups of ``flat``'s seeded subsets, for each m and rho. Returns
    [(m, rho, the tensors of all subsets, all-reduced)] and the evaluations on all ranks."""
    gen = torch.Generator().manual_seed(seed)
    out, count = [], 0
    for size in ms:
        subsets = seeded_subsets(flat.n, size, gen, max_subsets, flat.w0.device)
        for j, r in enumerate(rhos):
            full = [torch.zeros((subsets.shape[0], *shape), dtype=torch.float64, device=flat.w0.device)
                    for shape in shapes]
            for rows in rank_groups(subsets, group_examples):
                batch = take(flat.examples, subsets[rows.to(subsets.device)])
                evaluations, *values = one_group(batch, len(rows), float(r), (size, j, int(rows[0])))
                for whole, part in zip(full, values):
                    whole[rows.to(whole.device)] = part.double()
                count += int(evaluations) * len(rows)
                if callback is not None:
                    callback(len(rows))
            out.append((size, float(r), [dist_utils.all_reduce_sum(whole).cpu() for whole in full]))
    return out, int(dist_utils.all_reduce_sum(torch.tensor(float(count), dtype=torch.float64)).item())


def m_sharpness(
    model: nn.Module, loss_fn: LossFn, data: Iterable[tuple[Tensor, Tensor]], m: int | Sequence[int] = 32,
    rho: float | Sequence[float] = 0.05, steps: int = 5, p: float = 2.0, seed: int = 0,
    max_subsets: int | None = None, group_examples: int = 512,
    callback: Callable[[int], None] | None = None, params: Any = None) -> SharpnessResult:
    """m-sharpness for each m and rho, on subsets slicing ``torch.randperm(n, generator=seed)`` over
    the examples in ``data``'s order (at most ``max_subsets`` per m), about ``group_examples``
    examples per vectorized call, perturbing ``params``."""
    ms, rhos = checked_lists(m, rho, p, steps, "steps", max_subsets, "m-sharpness")
    start = time.perf_counter()
    flat = flat_examples(model, loss_fn, data, params)
    w0 = flat.w0
    require_finite(w0, "a parameter of the model")

    def subset_loss(w_flat: Tensor, batch: Any) -> Tensor:
        return flat.batch_loss(flat.state(w_flat), batch)

    value_and_grad = vmap(torch.func.grad_and_value(subset_loss), in_dims=(0, 0))
    zero_rows: list[int] = []

    def one_group(group: Any, rows: int, r: float, keys: tuple[int, ...]) -> tuple[int, Tensor]:
        e = torch.zeros(rows, w0.numel(), dtype=w0.dtype, device=w0.device)
        best = torch.zeros(rows, dtype=torch.float64, device=w0.device)  # e = 0 is in the ball: never below 0
        g, base = value_and_grad(w0.expand(rows, -1), group)  # L_b(w) and its gradient
        base = base.detach()
        require_finite(torch.cat([base[:, None], g], 1), "the loss or its gradient at the weights")
        zero = g.norm(dim=-1) == 0  # no ascent direction: the first step goes a seeded random way
        zero_rows.append(int(zero.sum()))
        if bool(zero.any()):  # a uniformly random unit direction of the p-norm instead
            z = torch.randn((rows, w0.numel()), generator=seeded_generator(seed, *keys), dtype=torch.float64)
            z = z.to(device=g.device, dtype=g.dtype)
            g = torch.where(zero[:, None], torch.sign(z) if p == math.inf else z / z.norm(dim=-1, keepdim=True), g)
        for _ in range(steps):
            e = project(e + r * dual_direction(g, p), r, p)
            g, val = value_and_grad(w0 + e, group)
            require_finite(torch.cat([val[:, None], g], 1).detach(),
                           f"the loss or its gradient at a point within rho = {r:g} of the weights")
            best = torch.maximum(best, (val - base).double().detach())
        return steps + 1, best

    with eval_mode(model), higher_order_attention():  # the math attention kernel has vmap rules
        out, n_grad = over_subsets(flat, ms, rhos, seed, max_subsets, group_examples, callback, one_group, [()])
    results = []
    for size, r, (t,) in out:
        se = float(t.std(unbiased=True) / math.sqrt(t.numel())) if t.numel() > 1 else math.nan
        results.append(MSharpness(size, r, float(t.mean()), se, t.numel(), t.tolist()))
    if sum(zero_rows):
        warn_zero_gradient("m-sharpness", f"on {sum(zero_rows)} subset(s)", "their first step went in a seeded random "
                           "direction instead")
    return SharpnessResult(p, steps, results, flat.n, n_grad, time.perf_counter() - start)


def surrogate_gaps(model: nn.Module | Objective, loss_fn: LossFn | None = None,
                   data: Iterable[tuple[Tensor, Tensor]] | None = None, rhos: Sequence[float] = (0.05,),
                   p: float = 2.0, params: Any = None) -> dict[float, float]:
    """rho -> L(w + e_hat) - L(w) on the whole data, e_hat = rho dual(grad L(w)) (what SAM's
    second pass sees); one gradient for all rho; ``params``: the parameters e_hat moves."""
    obj = model if isinstance(model, Objective) else Objective(model, loss_fn, data, params=params)
    loss_w, g = obj.value_and_grad()
    if not bool((g != 0).any()):
        warn_zero_gradient("surrogate gap", "on the data set", "SAM's e_hat and the surrogate gap are undefined "
                           "and read NaN (worst-case sharpness measures the maximum there)")
        return {float(r): math.nan for r in rhos}
    direction = dual_direction(g, p)
    w = obj.parameters_vector()
    return {float(r): obj.loss(w + r * direction) - loss_w for r in rhos}


def surrogate_gap(model: nn.Module | Objective, loss_fn: LossFn | None = None,
                  data: Iterable[tuple[Tensor, Tensor]] | None = None, rho: float = 0.05, p: float = 2.0,
                  params: Any = None) -> float:
    """L(w + e_hat) - L(w) for one rho (see :func:`surrogate_gaps`)."""
    return surrogate_gaps(model, loss_fn, data, rhos=(rho,), p=p, params=params)[float(rho)]


@dataclass
class GradientCosine:
    """First- vs second-order SAM gradient at one point (p = 2)."""

    rho: float
    cosine: float                # cos(g_sam, g_sam + second-order term)
    sam_gradient_norm: float     # ||grad L(w + e_hat)||
    second_order_norm: float     # ||(d e_hat / dw)^T grad L(w + e_hat)||
    full_gradient_norm: float
    gradient_norm: float         # ||grad L(w)||
    surrogate_gap: float         # L(w + e_hat) - L(w), free from the same two passes
    n_hvp: int
    wall_time: float

    def to_dict(self) -> dict:
        return asdict(self)


def cosine(a: Tensor, b: Tensor) -> float:
    """a . b / (||a|| ||b||), clipped to [-1, 1] (float32 rounding reaches about sqrt(n) eps); the
    sums of vectors over 2^20 entries in float64 blocks (:mod:`sharpscope.reductions`)."""
    tiny = torch.finfo(b.dtype).tiny
    if a.numel() > SMALL_REDUCTION:
        value = large_inner(a, b) / max(large_norm(a) * large_norm(b), tiny)
    else:
        value = float((a @ b) / (a.norm() * b.norm()).clamp_min(tiny))
    return min(1.0, max(-1.0, value)) if math.isfinite(value) else value


def sam_gradient_cosine(model: nn.Module | Objective, loss_fn: LossFn | None = None,
                        data: Iterable[tuple[Tensor, Tensor]] | None = None, rho: float = 0.05,
                        params: object = None) -> GradientCosine:
    """Cosine between SAM's gradient and the full gradient of L(w + e_hat(w)) (p = 2)."""
    if not (math.isfinite(rho) and rho >= 0):
        raise ConfigError(f"rho must be >= 0, got {rho}")
    start = time.perf_counter()
    obj = model if isinstance(model, Objective) else Objective(model, loss_fn, data, params=params)
    n_hvp0 = obj.n_hvp
    w = obj.parameters_vector()
    loss_w, g = obj.value_and_grad()
    gn = g.new_tensor(large_norm(g))
    if gn == 0:
        warn_zero_gradient("SAM gradient cosine", "on the data set", "SAM's e_hat, its gradient and the cosine are "
                           "undefined and read NaN")
        nan = math.nan
        return GradientCosine(rho, nan, nan, nan, nan, 0.0, nan, obj.n_hvp - n_hvp0, time.perf_counter() - start)
    g_hat = g / gn
    loss_e, g_sam = obj.value_and_grad(w + rho * g_hat)
    u = (rho / gn) * (g_sam - g_hat * large_inner(g_hat, g_sam))
    second = obj.hvp(u)
    full = g_sam + second
    cos = cosine(g_sam, full)
    return GradientCosine(rho, cos, large_norm(g_sam), large_norm(second), large_norm(full), large_norm(g),
                          loss_e - loss_w, obj.n_hvp - n_hvp0, time.perf_counter() - start)
