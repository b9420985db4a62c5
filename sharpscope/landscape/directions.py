"""Directions in parameter space for loss-surface plots.

A direction is a ``dict`` from parameter name to a tensor of that parameter's shape,
covering every parameter of the model (``model.named_parameters()`` order).

Random directions follow Li, Xu, Taylor, Studer, Goldstein, "Visualizing the Loss Landscape
of Neural Nets" (NeurIPS 2018), Sec. 4: d ~ N(0, I), then

- ``norm="filter"``: each filter (one output slice ``[i, ...]`` of a weight tensor) is
  rescaled to the norm of the same slice of the weights: d_i <- d_i ||w_i|| / ||d_i||;
- ``norm="layer"``: each tensor rescaled to its weight tensor's norm;
- ``norm="weight"``: d <- d * w elementwise;
- ``norm="none"``: the raw Gaussian.

``ignore="biasbn"`` (the default, as in the paper's figures) zeroes the direction on biases
and normalization-layer parameters (and any 1-D parameter); with ``ignore="none"`` those
1-D parameters take d = w under filter/layer normalization, as in the paper's code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..objective import biasbn_names

__all__ = ["Direction", "NORMS", "IGNORES", "random_direction", "normalize_direction", "orthogonalize",
           "difference", "dot", "norm", "zero_like", "scaled_sum", "ignored_names"]

Direction = dict[str, Tensor]
NORMS = ("filter", "layer", "weight", "none")
IGNORES = ("biasbn", "none")


def _check(norm_: str, ignore: str) -> None:
    if norm_ not in NORMS:
        raise ConfigError(f"direction norm must be one of {', '.join(NORMS)}, got {norm_!r}")
    if ignore not in IGNORES:
        raise ConfigError(f"ignore must be one of {', '.join(IGNORES)}, got {ignore!r}")


def ignored_names(model: nn.Module, ignore: str) -> set[str]:
    """Parameters whose direction entries are zero under ``ignore``."""
    if ignore == "none":
        return set()
    return biasbn_names(model) | {n for n, p in model.named_parameters() if p.dim() <= 1}


def normalize_direction(direction: Direction, model: nn.Module, norm: str = "filter",
                        ignore: str = "biasbn") -> Direction:
    """A new direction: ``direction`` rescaled against the model's weights (module docstring)."""
    _check(norm, ignore)
    skip = ignored_names(model, ignore)
    out: Direction = {}
    for name, w in model.named_parameters():
        d = direction[name].detach().to(w.device, w.dtype).clone()
        w = w.detach()
        if name in skip:
            d.zero_()
        elif norm == "none":
            pass
        elif norm == "weight":
            d.mul_(w)
        elif d.dim() <= 1:
            d.copy_(w)  # Li et al.'s code: 1-D parameters follow the weights when not ignored
        elif norm == "layer":
            dn = d.norm()
            d.mul_(torch.where(dn > 0, w.norm() / dn, torch.zeros_like(dn)))
        else:  # filter
            dn = d.reshape(d.shape[0], -1).norm(dim=1)
            wn = w.reshape(w.shape[0], -1).norm(dim=1)
            scale = torch.where(dn > 0, wn / dn, torch.zeros_like(dn))
            d.mul_(scale.view(-1, *([1] * (d.dim() - 1))))
        out[name] = d
    return out


def random_direction(model: nn.Module, norm: str = "filter", ignore: str = "biasbn", seed: int = 0) -> Direction:
    """A seeded Gaussian direction, normalized (Li et al. 2018). Draws on the CPU with its
    own generator, so the same seed gives the same direction on any device."""
    _check(norm, ignore)
    gen = torch.Generator().manual_seed(seed)
    raw = {n: torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
           for n, p in model.named_parameters()}
    return normalize_direction(raw, model, norm, ignore)


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
