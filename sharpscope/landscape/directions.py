"""Directions in parameter space for loss-surface plots: dicts from parameter name to a tensor of
its shape over every parameter (and, for ``dir_type="states"``, the floating-point state buffers).

Random directions follow Li, Xu, Taylor, Studer, Goldstein, "Visualizing the Loss Landscape of
Neural Nets" (NeurIPS 2018), Sec. 4, and their code (tomgoldstein/loss-landscape, ``net_plotter.py``
at 64ef4d5, "the reference"): d ~ N(0, I); a tensor of at most one dimension is zero under
``ignore="biasbn"`` and d = w under ``ignore="none"``; any other is normalized by ``norm``, a
filter being one output slice ``[i, ...]``: ``"filter"`` d_i <- d_i ||w_i|| / (||d_i|| + 1e-10),
``"layer"`` d <- d ||w|| / ||d||, ``"weight"`` d <- d * w, ``"dfilter"`` d_i <- d_i / (||d_i|| +
1e-10), ``"dlayer"`` d <- d / ||d||, ``"none"`` the raw Gaussian.

Deliberate differences from the reference (none changes the paper's ``norm="filter",
ignore="biasbn"`` on the usual nets): ``"biasbn"`` also zeroes every bias and normalization-layer
parameter whatever its shape; ``"layer"`` / ``"dlayer"`` of a zero tensor give zero (not NaN);
"states" leaves the integer ``num_batches_tracked`` fixed; the draws are float64 from a private
generator seeded by ``seed``, parameters in ``named_parameters()`` order, then buffers in
``state_dict()`` order (so a "states" direction agrees with the "weights" one on the parameters).
BN running statistics are 1-D, so they move only under ``ignore="none"`` (variance (1 + t) var).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..objective import biasbn_names, moved_parameters
from .. import reductions

__all__ = ["Direction", "NORMS", "IGNORES", "DIR_TYPES", "random_direction", "random_directions",
           "normalize_direction", "orthogonalize", "difference", "dot", "norm", "scale_to_norm", "ignored_names",
           "state_buffer_names", "check_options", "restrict"]

Direction = dict[str, Tensor]
NORMS = ("filter", "layer", "weight", "dfilter", "dlayer", "none")
IGNORES = ("biasbn", "none")
DIR_TYPES = ("weights", "states")
FILTER_EPS = 1e-10  # the reference's guard in ||d_i|| + 1e-10 (filter, dfilter)


def check_options(norm_: str, ignore: str, dir_type: str = "weights") -> None:
    """A :class:`ConfigError` unless ``norm_``, ``ignore`` and ``dir_type`` are known."""
    for what, value, known in (("direction norm", norm_, NORMS), ("ignore", ignore, IGNORES),
                               ("dir_type", dir_type, DIR_TYPES)):
        if value not in known:
            raise ConfigError(f"{what} must be one of {', '.join(known)}, got {value!r}")


def state_buffer_names(model: nn.Module) -> list[str]:
    """The persistent floating-point buffers of ``model.state_dict()`` in its order (BN running
    statistics): what ``dir_type="states"`` adds to a direction."""
    buffers = dict(model.named_buffers())
    return [n for n in model.state_dict(keep_vars=True)
            if n in buffers and buffers[n] is not None and buffers[n].is_floating_point()]


def _targets(model: nn.Module, dir_type: str) -> dict[str, Tensor]:
    """The tensors a direction of ``dir_type`` covers (detached): parameters, then state buffers."""
    out = {n: p.detach() for n, p in model.named_parameters()}
    if dir_type == "states":
        buffers = dict(model.named_buffers())
        out.update({n: buffers[n].detach() for n in state_buffer_names(model)})
    return out


def ignored_names(model: nn.Module, ignore: str, dir_type: str = "weights") -> set[str]:
    """Entries zero under ``ignore="biasbn"``: biases, normalization-layer parameters and every
    tensor of at most one dimension; none under ``"none"``."""
    if ignore == "none":
        return set()
    return biasbn_names(model) | {n for n, t in _targets(model, dir_type).items() if t.dim() <= 1}


def _normalize_tensor(d: Tensor, w: Tensor, norm: str) -> Tensor:
    """One tensor of at least two dimensions, normalized in place by ``norm`` (module docstring)."""
    if norm == "weight":
        return d.mul_(w)
    if norm in ("filter", "dfilter"):
        dn = d.reshape(d.shape[0], -1).norm(dim=1) + FILTER_EPS
        scale = (w.reshape(w.shape[0], -1).norm(dim=1) if norm == "filter" else torch.ones_like(dn)) / dn
        return d.mul_(scale.view(-1, *([1] * (d.dim() - 1))))
    if norm in ("layer", "dlayer"):
        dn = reductions.norm(d)
        top = reductions.norm(w) if norm == "layer" else torch.ones_like(dn)
        return d.mul_(torch.where(dn > 0, top / dn, torch.zeros_like(dn)))  # zero d: zero, not NaN
    return d  # "none"


def normalize_direction(direction: Direction, model: nn.Module, norm: str = "filter",
                        ignore: str = "biasbn") -> Direction:
    """A new direction: ``direction`` (every parameter, and any :func:`state_buffer_names`)
    rescaled against the model's tensors (module docstring)."""
    check_options(norm, ignore)
    targets = _targets(model, "states")
    params = {n for n, _ in model.named_parameters()}
    missing, extra = sorted(params - set(direction)), sorted(set(direction) - set(targets))
    if missing or extra:
        raise ConfigError("a direction must cover the model's parameters (and, for states, only its floating-point "
                          f"buffers): missing {missing[:3]}, unknown {extra[:3]}")
    skip = ignored_names(model, ignore, "states")
    out: Direction = {}
    for name, w in targets.items():
        if name not in direction:
            continue
        d = direction[name].detach().to(w.device, w.dtype).clone()
        if name in skip:
            d.zero_()
        elif d.dim() <= 1:
            d.copy_(w)  # the reference: 1-D tensors follow the weights when not ignored, under every norm
        else:
            _normalize_tensor(d, w, norm)
        out[name] = d
    return out


def restrict(direction: Direction, model: nn.Module, params: object = None) -> Direction:
    """``direction`` (itself if all are selected) zero on the parameters ``params`` leaves out
    (:func:`sharpscope.objective.moved_parameters`; None: every trainable one), buffers kept."""
    chosen = set(moved_parameters(model, params))
    drop = [n for n, _ in model.named_parameters() if n not in chosen and n in direction]
    if not drop:
        return direction
    return {n: torch.zeros_like(d) if n in drop else d for n, d in direction.items()}


def random_direction(model: nn.Module, norm: str = "filter", ignore: str = "biasbn", seed: int = 0,
                     dir_type: str = "weights", params: object = None) -> Direction:
    """A seeded Gaussian direction, normalized (module docstring), drawn on the CPU (the same on
    any device); ``params`` zeroes the unselected parameters' entries (:func:`restrict`)."""
    check_options(norm, ignore, dir_type)
    gen = torch.Generator().manual_seed(seed)
    raw = {n: torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)
           for n, t in _targets(model, dir_type).items()}
    return restrict(normalize_direction(raw, model, norm, ignore), model, params)


def random_directions(model: nn.Module, k: int, seed: int = 0, orthogonal: bool = False, norm: str = "filter",
                      ignore: str = "biasbn", dir_type: str = "weights", params: object = None) -> list[Direction]:
    """``k`` directions of :func:`random_direction` with seeds ``seed + i``; with ``orthogonal``,
    Gram-Schmidt: d_i <- d_i - (d_i . d_j / d_j . d_j) d_j for j = 0, ..., i - 1 in turn."""
    if k < 1:
        raise ConfigError(f"random_directions needs k >= 1, got {k}")
    directions: list[Direction] = []
    for i in range(k):
        d = random_direction(model, norm=norm, ignore=ignore, seed=seed + i, dir_type=dir_type, params=params)
        if orthogonal:
            for earlier in directions:
                d = orthogonalize(d, earlier)
        directions.append(d)
    return directions


def scale_to_norm(direction: Direction, target: float = 1.0) -> Direction:
    """``direction`` rescaled to norm ``target`` over all entries (the flat parameter space)."""
    n = norm(direction)
    if not n > 0:
        raise ConfigError("cannot rescale a zero direction")
    return {k: v * (target / n) for k, v in direction.items()}


def dot(a: Direction, b: Direction) -> float:
    return float(sum((a[n].double() * b[n].double()).sum() for n in a))


def norm(a: Direction) -> float:
    return dot(a, a) ** 0.5


def orthogonalize(d2: Direction, d1: Direction) -> Direction:
    """d2 minus its projection on d1 over all entries (per-filter norms of d2 change slightly)."""
    d1_sq = dot(d1, d1)
    if d1_sq == 0:
        raise ConfigError("cannot orthogonalize against a zero direction")
    c = dot(d2, d1) / d1_sq
    return {n: d2[n] - c * d1[n] for n in d2}


def difference(b: dict[str, Tensor], a: dict[str, Tensor]) -> Direction:
    """b - a for two parameter dicts with the same names and shapes."""
    if a.keys() != b.keys():
        raise ConfigError(f"the two models have different parameters: {sorted(set(a) ^ set(b))[:3]}")
    for n in a:
        if a[n].shape != b[n].shape:
            raise ConfigError(f"parameter {n} has shape {tuple(a[n].shape)} in one model and "
                              f"{tuple(b[n].shape)} in the other")
    return {n: (b[n].detach() - a[n].detach().to(b[n].device)) for n in a}
