"""Grid extents chosen from the loss (``--range auto``) and snapshots projected onto a plane.

:func:`auto_range`: per direction d and sign s, the smallest t with L(centre + s t d) >= ``factor``
L(centre), bracketed by doubling from ``start`` and refined by ``bisect`` bisections; the extent is
max(t_+, t_-), capped (with a warning) at ``max_extent``. :func:`project_snapshots`: the least-squares
coordinates a = (D^T D)^-1 D^T (theta_e - centre) and the residual ||theta_e - centre - D a||_2.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .directions import Direction

__all__ = ["AutoRange", "auto_range", "auto_grid", "PathProjection", "project_snapshots"]


@dataclass
class AutoRange:
    """Per direction: the extent, the (t_plus, t_minus) distances and whether each side reached the factor."""

    extents: list[float]
    sides: list[tuple[float, float]]
    reached: list[tuple[bool, bool]]
    centre_loss: float
    factor: float
    max_extent: float
    n_evaluations: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"rule": f"smallest t with L(centre +/- t d) >= {self.factor:g} * L(centre) (doubling, then bisection);"
                        f" extent = max over the two sides, capped at {self.max_extent:g}",
                "extents": self.extents, "sides": [list(s) for s in self.sides],
                "reached": [list(r) for r in self.reached], "centre_loss": self.centre_loss, "factor": self.factor,
                "max_extent": self.max_extent, "n_evaluations": self.n_evaluations, "warnings": self.warnings}


def auto_range(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], data: Iterable[Any],
               directions: Sequence[Direction], factor: float = 2.0, *, start: float = 0.05,
               max_extent: float = 10.0, bisect: int = 6, center: dict[str, Tensor] | None = None,
               chunk_size: int | None = None, memory_gb: float | None = None) -> AutoRange:
    """Extent per direction where the loss has risen to ``factor`` x the centre loss (module docstring);
    ``memory_gb``: each point within it (the largest chunk of at most 1,024 examples that fits, :mod:`.budget`)."""
    from .surface import evaluate_points, point_chunks, read_batches

    if not (factor > 1 and math.isfinite(factor)):
        raise ConfigError(f"the range factor must be a finite number > 1, got {factor!r}")
    if not (0 < start <= max_extent and math.isfinite(max_extent)):
        raise ConfigError(f"need 0 < start <= max_extent (finite), got start={start!r}, max_extent={max_extent!r}")
    if bisect < 0:
        raise ConfigError(f"bisect must be >= 0, got {bisect!r}")
    params = {n: (center[n] if center is not None and n in center else p).detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    prepared = read_batches(model, loss_fn, data)
    if memory_gb is not None:  # refused here, before the first point, if none fits
        fits = point_chunks(model, loss_fn, prepared, memory_gb, chunk_size)
        chunk_size = chunk_size if chunk_size is not None else max((s for s in fits if s is not None and s <= 1024),
                                                                   default=fits[0])
    if chunk_size is None and prepared.per_example():
        chunk_size = min(1024, prepared.n_examples)
    count = [0]

    def loss_at(d: Direction | None, t: float) -> float:
        def point(_: int):
            if d is None:
                return params, None
            moved = {n: params[n] + t * d[n] if n in d else params[n] for n in params}
            bufs = {n: (center[n] if center is not None and n in center else buffers[n]).detach() + t * d[n]
                    for n in d if n not in params}
            return moved, (bufs or None)
        count[0] += 1
        values = evaluate_points(model, loss_fn, prepared, point, 1, chunk_size=chunk_size, distributed=False)
        return float(values[0][0])

    l0 = loss_at(None, 0.0)
    if not (l0 > 0 and math.isfinite(l0)):
        raise ConfigError(f"--range auto needs a positive, finite centre loss, got {l0!r}")
    target = factor * l0
    extents, sides, reached, notes = [], [], [], []
    for k, d in enumerate(directions):
        pair, hits = [], []
        for sign in (1.0, -1.0):
            lo, t = 0.0, start
            while not (hit := loss_at(d, sign * t) >= target) and t < max_extent:  # doubling
                lo, t = t, min(2 * t, max_extent)
            for _ in range(bisect if hit else 0):  # bisection of [lo, t], the loss reaching the target at t
                mid = 0.5 * (lo + t)
                lo, t = (lo, mid) if loss_at(d, sign * mid) >= target else (mid, t)
            pair.append(float(t))
            hits.append(hit)
            if not hit:
                notes.append(f"direction {k + 1}, {'+' if sign > 0 else '-'} side: the loss stays below "
                             f"{factor:g} x the centre loss up to the cap {max_extent:g}; the extent is capped")
        extents.append(max(pair))
        sides.append(tuple(pair))
        reached.append(tuple(hits))
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return AutoRange(extents, sides, reached, l0, float(factor), float(max_extent), count[0], notes)


def auto_grid(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], data: Iterable[Any],
              directions: Sequence[Direction], axes: Sequence[np.ndarray | None], factor: float = 2.0,
              max_extent: float = 10.0, chunk_size: int | None = None, memory_gb: float | None = None
              ) -> tuple[AutoRange, list[np.ndarray | None]]:
    """:func:`auto_range` and its grid: axis k (None stays None) becomes len(axes[k]) points over
    [-extent_k, extent_k]; the warnings are returned in ``AutoRange.warnings``, not issued."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rng = auto_range(model, loss_fn, data, directions, factor, max_extent=max_extent, chunk_size=chunk_size,
                         memory_gb=memory_gb)
    return rng, [None if a is None else np.linspace(-rng.extents[k], rng.extents[k], len(a))
                 for k, a in enumerate(axes)]


@dataclass
class PathProjection:
    coords: np.ndarray  # (E, k): least-squares coordinates of every snapshot in the plane
    residual: np.ndarray  # (E,): ||theta_e - centre - sum_k coords[e, k] d_k||_2


def project_snapshots(center: dict[str, Tensor], directions: Sequence[Direction],
                      snapshots: Sequence[dict[str, Tensor]]) -> PathProjection:
    """Coordinates and residual distances of ``snapshots`` on the plane centre + span(directions)."""
    if not directions:
        raise ConfigError("project_snapshots needs at least one direction")
    names = sorted(directions[0])
    for i, s in enumerate([center, *snapshots]):
        missing = [n for n in names if n not in s]
        if missing:
            raise ConfigError(f"{'the centre' if i == 0 else f'snapshot {i - 1}'} lacks {missing[0]}")

    def flat(t: dict[str, Tensor]) -> Tensor:
        return torch.cat([t[n].detach().cpu().double().reshape(-1) for n in names])

    D = torch.stack([flat(d) for d in directions], dim=1)  # (P, k)
    gram = D.T @ D
    if torch.linalg.matrix_rank(gram) < len(directions):
        raise ConfigError("the directions are linearly dependent: no plane to project onto")
    c = flat(center)
    coords, residual = [], []
    for s in snapshots:
        r = flat(s) - c
        a = torch.linalg.solve(gram, D.T @ r)
        coords.append(a.numpy())
        residual.append(float((r - D @ a).norm()))
    return PathProjection(np.array(coords).reshape(len(snapshots), len(directions)), np.array(residual))
