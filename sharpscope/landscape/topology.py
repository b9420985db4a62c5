"""Topological summaries of a 1-, 2- or 3-D loss grid: 0-dimensional persistence of the sublevel
sets {f <= t} by union-find over the cells in increasing order. A component is born at a minimum
and dies at the saddle where it merges into an older one (elder rule); death - birth is the
saddle-minimum depth landscaper (1.3.1) averages. Conventions (``tests/test_topology.py``):
``connectivity`` ``"full"`` (diagonals too, so a diagonal valley is one valley) or ``"face"``;
non-finite cells are +inf (each finite component keeps an essential minimum, death inf); cells are
ordered by (value, flat index), so a plateau is one component and ties give zero-persistence pairs,
dropped; edge minima count; pairs with persistence <= ``threshold`` are ignored everywhere.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["SurfaceTopology", "Merge", "surface_topology", "persistence_pairs", "local_minima", "neighbour_offsets",
           "CONNECTIVITIES"]

CONNECTIVITIES = ("full", "face")


def neighbour_offsets(ndim: int, connectivity: str = "full") -> list[tuple[int, ...]]:
    """Offsets of a cell's neighbours: all 3**ndim - 1 (``"full"``) or the 2 ndim along the axes (``"face"``)."""
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be one of {CONNECTIVITIES}, got {connectivity!r}")
    offs = [o for o in itertools.product((-1, 0, 1), repeat=ndim) if any(o)]
    if connectivity == "face":
        offs = [o for o in offs if sum(map(abs, o)) == 1]
    return offs


@dataclass(frozen=True)
class Merge:
    """The minimum ``child`` (value ``birth``) merges into the older ``parent`` at ``saddle`` (value ``death``)."""

    child: tuple[int, ...]
    parent: tuple[int, ...]
    saddle: tuple[int, ...]
    birth: float
    death: float

    @property
    def persistence(self) -> float:
        return self.death - self.birth


def _persistence(values: np.ndarray, connectivity: str) -> tuple[list[tuple[int, float]], list[tuple[int, int, int]]]:
    """Union-find over the finite cells in (value, index) order: the births [(cell, value)] of every
    component and the merges [(child root, parent root, saddle cell)], cells as flat indices."""
    z = np.asarray(values, dtype=np.float64)
    flat = z.ravel()
    finite = np.isfinite(flat)
    order = np.flatnonzero(finite)
    order = order[np.argsort(flat[order], kind="stable")]  # ties by flat index
    rank = np.full(flat.size, -1, dtype=np.int64)
    rank[order] = np.arange(order.size)
    shape = z.shape
    strides = [int(np.prod(shape[k + 1:])) for k in range(z.ndim)]
    offsets = neighbour_offsets(z.ndim, connectivity)
    coords = [c.tolist() for c in np.unravel_index(np.arange(flat.size), shape)] if flat.size else []
    parent = [-1] * flat.size  # -1: not yet in the sublevel set
    rank_l = rank.tolist()

    def find(a: int) -> int:
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:  # path compression
            parent[a], a = root, parent[a]
        return root

    births: list[tuple[int, float]] = []
    merges: list[tuple[int, int, int]] = []
    values_l = flat.tolist()
    for c in order.tolist():
        cc = [coords[k][c] for k in range(z.ndim)]
        roots = set()
        for off in offsets:
            n = 0
            for k, o in enumerate(off):
                q = cc[k] + o
                if q < 0 or q >= shape[k]:
                    break
                n += q * strides[k]
            else:
                if parent[n] >= 0:
                    roots.add(find(n))
        if not roots:
            parent[c] = c
            births.append((c, values_l[c]))
            continue
        elder = min(roots, key=lambda r: rank_l[r])  # a root is its component's first cell: the elder ranks lowest
        for r in sorted(roots, key=lambda r: rank_l[r]):
            if r != elder:
                merges.append((r, elder, c))
                parent[r] = elder
        parent[c] = elder
    return births, merges


@dataclass
class SurfaceTopology:
    """Minima, merge tree and 0-dimensional persistence of a grid's sublevel sets (see the module doc)."""

    shape: tuple[int, ...]
    connectivity: str
    threshold: float
    minima: list[tuple[int, ...]]  # representative cells, in (value, index) order: the global minimum first
    minima_values: list[float]
    minima_interior: list[bool]
    pairs: list[tuple[float, float]]  # (birth, death), death inf for the essential minima; sorted
    merges: list[Merge]  # in the order they happen (increasing death)
    n_nonfinite: int
    axes: list[np.ndarray] | None = field(default=None, repr=False)

    @property
    def n_minima(self) -> int:
        return len(self.minima)

    @property
    def n_minima_interior(self) -> int:
        return int(sum(self.minima_interior))

    @property
    def depths(self) -> list[float]:
        """Saddle-minimum depths death - birth of the finite pairs (above the threshold)."""
        return [m.persistence for m in self.merges]

    def depth_summary(self) -> dict[str, Any]:
        d = np.asarray(self.depths, dtype=np.float64)
        stats = {"mean": np.mean, "median": np.median, "max": np.max}
        return {"n_pairs": int(d.size), **{k: None if d.size == 0 else float(f(d)) for k, f in stats.items()},
                "total_persistence": float(d.sum())}

    def summary(self) -> dict[str, Any]:
        """The numbers without the lists: minima counts and the depth summary (JSON-friendly)."""
        s = self.depth_summary()
        return {"n_minima": self.n_minima, "n_minima_interior": self.n_minima_interior,
                "n_pairs": s["n_pairs"], "mean_depth": s["mean"], "median_depth": s["median"],
                "max_persistence": s["max"], "total_persistence": s["total_persistence"]}

    def _coords(self, cell: tuple[int, ...]) -> list[float] | None:
        return None if self.axes is None else [float(a[i]) for a, i in zip(self.axes, cell)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (a death of inf is None); ``coords``: a cell's grid coordinates in array-axis order."""
        return {
            **self.summary(), "shape": list(self.shape), "connectivity": self.connectivity,
            "threshold": float(self.threshold), "n_nonfinite": self.n_nonfinite,
            "depth": self.depth_summary(),
            "minima": [{"index": list(c), "coords": self._coords(c), "value": v, "interior": i}
                       for c, v, i in zip(self.minima, self.minima_values, self.minima_interior)],
            "pairs": [[b, None if math.isinf(d) else d] for b, d in self.pairs],
            "merges": [{"child": list(m.child), "parent": list(m.parent), "saddle": list(m.saddle),
                        "saddle_coords": self._coords(m.saddle), "birth": m.birth, "death": m.death,
                        "depth": m.persistence} for m in self.merges],
        }


def surface_topology(values: np.ndarray, axes: Sequence[Sequence[float]] | None = None, connectivity: str = "full",
                     threshold: float = 0.0) -> SurfaceTopology:
    """Local minima, merge tree and saddle-minimum depths of a 1-, 2- or 3-D grid ``values``;
    ``axes``: optional coordinates per array axis (for ``coords`` in :meth:`SurfaceTopology.to_dict`)."""
    z = np.asarray(values, dtype=np.float64)
    if z.ndim not in (1, 2, 3):
        raise ValueError(f"values must be a 1-, 2- or 3-D grid, got shape {z.shape}")
    if not (math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold must be finite and >= 0, got {threshold}")
    if axes is not None:
        axes = [np.asarray(a, dtype=np.float64) for a in axes]
        if [len(a) for a in axes] != list(z.shape):
            raise ValueError(f"axes of lengths {[len(a) for a in axes]} do not match values of shape {z.shape}")
    births, raw_merges = _persistence(z, connectivity)
    flat = z.ravel()

    def cell(c: int) -> tuple[int, ...]:
        return tuple(int(i) for i in np.unravel_index(c, z.shape))

    merges = [Merge(cell(ch), cell(pa), cell(s), float(flat[ch]), float(flat[s]))
              for ch, pa, s in raw_merges if flat[s] - flat[ch] > threshold]
    died = {ch for ch, _, _ in raw_merges}
    dropped = {ch for ch, _, s in raw_merges if not flat[s] - flat[ch] > threshold}
    minima_flat = [c for c, _ in births if c not in dropped]  # births are already in (value, index) order
    minima = [cell(c) for c in minima_flat]
    interior = [all(0 < i < n - 1 for i, n in zip(m, z.shape)) for m in minima]
    pairs = sorted([(m.birth, m.death) for m in merges] + [(float(flat[c]), math.inf) for c, _ in births
                                                            if c not in died])
    return SurfaceTopology(shape=tuple(z.shape), connectivity=connectivity, threshold=float(threshold),
                           minima=minima, minima_values=[float(flat[c]) for c in minima_flat],
                           minima_interior=interior, pairs=pairs, merges=merges,
                           n_nonfinite=int((~np.isfinite(flat)).sum()), axes=axes)


def persistence_pairs(values: np.ndarray, connectivity: str = "full",
                      threshold: float = 0.0) -> list[tuple[float, float]]:
    """The sorted (birth, death) pairs of the sublevel-set filtration (death inf for the essential ones)."""
    return surface_topology(values, connectivity=connectivity, threshold=threshold).pairs


def local_minima(values: np.ndarray, connectivity: str = "full") -> list[tuple[int, ...]]:
    """Representative cells of the local minima (plateaus once), the global minimum first."""
    return surface_topology(values, connectivity=connectivity).minima
