"""Directions in parameter space for loss-surface plots.

A direction is a ``dict`` from parameter name to a tensor of that parameter's shape,
covering every parameter of the model (``model.named_parameters()`` order) and, for
``dir_type="states"``, also the model's floating-point state buffers (BatchNorm's
running mean and variance): see :func:`state_buffer_names`.

Random directions follow Li, Xu, Taylor, Studer, Goldstein, "Visualizing the Loss Landscape
of Neural Nets" (NeurIPS 2018), Sec. 4, and their code (tomgoldstein/loss-landscape,
``net_plotter.py`` at 64ef4d5, "the reference" below): d ~ N(0, I), then per tensor w of
the model with direction d,

- a tensor with at most one dimension (biases, normalization weights, BN running
  statistics, scalars) is set to zero under ``ignore="biasbn"`` and to ``d = w`` (a copy of
  the weights) under ``ignore="none"``, whatever the norm (the reference's
  ``normalize_directions_for_weights`` / ``_for_states``);
- any other tensor is normalized by ``norm``, a filter being one output slice ``[i, ...]``:

  - ``"filter"``: d_i <- d_i ||w_i|| / (||d_i|| + 1e-10);
  - ``"layer"``: d <- d ||w|| / ||d||;
  - ``"weight"``: d <- d * w elementwise;
  - ``"dfilter"``: d_i <- d_i / (||d_i|| + 1e-10) (unit filters);
  - ``"dlayer"``: d <- d / ||d|| (unit tensors);
  - ``"none"``: the raw Gaussian (the reference's default, an empty ``--xnorm``).

Where sharpscope chooses differently from the reference (all deliberate, none changes the
paper's setting ``norm="filter", ignore="biasbn"`` on the usual nets):

- ``ignore="biasbn"`` zeroes every tensor of at most one dimension (as the reference) and
  also every bias and every parameter of a normalization layer whatever its shape (e.g. a
  ``LayerNorm((C, H, W))`` weight), which the reference would filter-normalize.
- ``"layer"`` / ``"dlayer"`` of an all-zero direction tensor give zero (the reference
  divides by zero: NaN).
- ``dir_type="states"`` covers the floating-point buffers of ``model.state_dict()``; the
  integer ``num_batches_tracked`` counters are held fixed (the reference adds step x count
  to them, cast to an integer, which changes nothing in eval mode). As in the reference, BN
  running statistics are one-dimensional, so they move only under ``ignore="none"``, where
  d = the statistic itself: the running variance at coordinate t is (1 + t) var, negative
  for t < -1, where the loss is then NaN (the reference gives the same).
- The draws: float64 Gaussians from a private generator seeded by ``seed``, parameters in
  ``named_parameters()`` order, then buffers in ``state_dict()`` order (so a "states"
  direction agrees with the "weights" direction of the same seed on the parameters); the
  reference draws float32 from the global generator in ``state_dict()`` order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..objective import biasbn_names, moved_parameters

__all__ = ["Direction", "NORMS", "IGNORES", "DIR_TYPES", "random_direction", "random_directions", "normalize_direction", "orthogonalize",
           "difference", "dot", "norm", "zero_like", "scaled_sum", "scale_to_norm", "ignored_names",
           "state_buffer_names", "check_options", "restrict"]

Direction = dict[str, Tensor]
NORMS = ("filter", "layer", "weight", "dfilter", "dlayer", "none")
IGNORES = ("biasbn", "none")
DIR_TYPES = ("weights", "states")
FILTER_EPS = 1e-10  # the reference's guard in ||d_i|| + 1e-10 (filter, dfilter)


def check_options(norm_: str, ignore: str, dir_type: str = "weights") -> None:
    """A :class:`ConfigError` unless ``norm_``, ``ignore`` and ``dir_type`` are known."""
    if norm_ not in NORMS:
        raise ConfigError(f"direction norm must be one of {', '.join(NORMS)}, got {norm_!r}")
    if ignore not in IGNORES:
        raise ConfigError(f"ignore must be one of {', '.join(IGNORES)}, got {ignore!r}")
    if dir_type not in DIR_TYPES:
        raise ConfigError(f"dir_type must be one of {', '.join(DIR_TYPES)}, got {dir_type!r}")


def state_buffer_names(model: nn.Module) -> list[str]:
    """The floating-point buffers of ``model.state_dict()`` (BatchNorm's running mean and
    variance), in its order: what ``dir_type="states"`` adds to a direction. Integer buffers
    (``num_batches_tracked``) and non-persistent buffers are left out."""
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
    """Entries of a direction that are zero under ``ignore``: under ``"biasbn"`` biases,
    normalization-layer parameters and every tensor of at most one dimension (for
    ``dir_type="states"`` this includes BN running statistics); nothing under ``"none"``."""
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
        dn = d.norm()
        top = w.norm() if norm == "layer" else torch.ones_like(dn)
        return d.mul_(torch.where(dn > 0, top / dn, torch.zeros_like(dn)))  # zero d: zero, not NaN
    return d  # "none"


def normalize_direction(direction: Direction, model: nn.Module, norm: str = "filter",
                        ignore: str = "biasbn") -> Direction:
    """A new direction: ``direction`` rescaled against the model's tensors (module docstring).

    ``direction`` covers every parameter and, for a "states" direction, any of the
    :func:`state_buffer_names` (normalized against the buffers themselves)."""
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
    """``direction`` with the entries of the parameters that ``params`` does not select set to
    zero (:func:`sharpscope.objective.moved_parameters`: glob patterns, ``"no-biasbn"``, a
    callable; None selects every trainable parameter, so a frozen one, ``requires_grad=False``
    as a LoRA model's base weights, stays put, unless none is trainable). Buffer entries (a
    "states" direction) are kept.
    ``direction`` itself when every parameter is selected."""
    chosen = set(moved_parameters(model, params))
    drop = [n for n, _ in model.named_parameters() if n not in chosen and n in direction]
    if not drop:
        return direction
    return {n: torch.zeros_like(d) if n in drop else d for n, d in direction.items()}


def random_direction(model: nn.Module, norm: str = "filter", ignore: str = "biasbn", seed: int = 0,
                     dir_type: str = "weights", params: object = None) -> Direction:
    """A seeded Gaussian direction, normalized (Li et al. 2018; module docstring). Draws on the
    CPU with its own generator, so the same seed gives the same direction on any device.
    ``dir_type="states"`` also covers the floating-point state buffers (BN statistics).
    ``params`` restricts it to some parameters (:func:`restrict`): the draw is the same, the
    other parameters' entries are zero."""
    check_options(norm, ignore, dir_type)
    gen = torch.Generator().manual_seed(seed)
    raw = {n: torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)
           for n, t in _targets(model, dir_type).items()}
    return restrict(normalize_direction(raw, model, norm, ignore), model, params)


def random_directions(model: nn.Module, k: int, seed: int = 0, orthogonal: bool = False, norm: str = "filter",
                      ignore: str = "biasbn", dir_type: str = "weights", params: object = None) -> list[Direction]:
    """``k`` seeded random directions (:func:`random_direction`), direction i drawn with seed
    ``seed + i``. With ``orthogonal``, each is made orthogonal to the ones before it by
    Gram-Schmidt in the flat parameter space (:func:`orthogonalize` against each earlier
    direction in turn: d_i <- d_i - (d_i . d_j / d_j . d_j) d_j for j = 0, ..., i - 1), which
    changes its norm; the first is left as drawn. ``params``: as in :func:`random_direction`."""
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
    """``direction`` rescaled so that its norm over all entries (the flat parameter space) is
    ``target``: e.g. a random direction at the scale of a unit eigenvector."""
    n = norm(direction)
    if not n > 0:
        raise ConfigError("cannot rescale a zero direction")
    return {k: v * (target / n) for k, v in direction.items()}


def dot(a: Direction, b: Direction) -> float:
    return float(sum((a[n].double() * b[n].double()).sum() for n in a))


def norm(a: Direction) -> float:
    return dot(a, a) ** 0.5


def orthogonalize(d2: Direction, d1: Direction) -> Direction:
    """d2 minus its projection on d1 (Gram-Schmidt over all entries). Applied after
    normalization, so per-filter norms of d2 change slightly (random high-dimensional
    directions are nearly orthogonal already)."""
    d1_sq = dot(d1, d1)
    if d1_sq == 0:
        raise ConfigError("cannot orthogonalize against a zero direction")
    c = dot(d2, d1) / d1_sq
    return {n: d2[n] - c * d1[n] for n in d2}


def difference(b: dict[str, Tensor], a: dict[str, Tensor]) -> Direction:
    """b - a for two parameter dicts with the same names and shapes."""
    if a.keys() != b.keys():
        raise ConfigError("the two models have different parameters: "
                          f"{sorted(set(a) ^ set(b))[:3]}")
    for n in a:
        if a[n].shape != b[n].shape:
            raise ConfigError(f"parameter {n} has shape {tuple(a[n].shape)} in one model and "
                              f"{tuple(b[n].shape)} in the other")
    return {n: (b[n].detach() - a[n].detach().to(b[n].device)) for n in a}


def zero_like(model: nn.Module) -> Direction:
    return {n: torch.zeros_like(p.detach()) for n, p in model.named_parameters()}


def scaled_sum(base: dict[str, Tensor], directions: Sequence[Direction], coords: Sequence[float]) -> dict[str, Tensor]:
    """base + sum_k coords[k] * directions[k]."""
    out = {}
    for n, t in base.items():
        v = t.clone()
        for d, c in zip(directions, coords):
            if c:
                v.add_(d[n], alpha=float(c))
        out[n] = v
    return out
