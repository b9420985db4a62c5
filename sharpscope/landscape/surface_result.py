"""What a surface or interpolation computed (:class:`SurfaceResult`): a 1-, 2- or 3-D grid of loss,
accuracy and custom metrics, its summary, topology and ``.npz`` file; ``loss[i, j]`` is at ``(xs[j], ys[i])``."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..io import atomic_write_bytes
from .directions import Direction

__all__ = ["SurfaceResult", "load_directions"]


@dataclass
class SurfaceResult:
    """Loss / accuracy (and ``metrics``, {name: array shaped like ``loss``}) on a 1-, 2- or 3-D grid."""

    xs: np.ndarray
    ys: np.ndarray | None
    loss: np.ndarray
    accuracy: np.ndarray
    kind: str  # random, hessian, interpolation, plane or trajectory
    options: dict[str, Any]
    n_examples: int
    wall_time: float
    explained_variance: list[float] | None = None
    path: np.ndarray | None = None
    name_a: str | None = None
    name_b: str | None = None
    path_residual: np.ndarray | None = None  # (E,): each path point's distance to the plane
    zs: np.ndarray | None = None  # 3-D grids: loss[k, i, j] at (xs[j], ys[i], zs[k])
    metrics: dict[str, np.ndarray] = field(default_factory=dict)

    def values(self, metric: str) -> np.ndarray:
        """The grid of ``metric``: "loss", "accuracy" or a custom metric's name."""
        if metric in ("loss", "accuracy"):
            return getattr(self, metric)
        if metric not in self.metrics:
            raise KeyError(f"no metric {metric!r} (have loss, accuracy{''.join(', ' + m for m in self.metrics)})")
        return self.metrics[metric]

    @property
    def dim(self) -> int:
        return 1 if self.ys is None else 2 if self.zs is None else 3

    def slice(self, k: int) -> SurfaceResult:
        """The 2-D surface at the third coordinate ``zs[k]`` of a 3-D grid (custom metrics too)."""
        if self.zs is None:
            raise ConfigError("slice() is for 3-D surfaces")
        return SurfaceResult(xs=self.xs, ys=self.ys, loss=self.loss[k], accuracy=self.accuracy[k], kind=self.kind,
                             options={**self.options, "slice_z": float(self.zs[k])}, n_examples=self.n_examples,
                             wall_time=self.wall_time, path=self.path if self.zs[k] == 0 else None,
                             metrics={name: values[k] for name, values in self.metrics.items()})

    def centre_slice(self) -> int:
        """Index of the slice of a 3-D grid nearest the centre (third coordinate 0)."""
        return int(np.argmin(np.abs(self.zs)))

    @property
    def n_points(self) -> int:
        return int(self.loss.size)

    def value_at(self, x: float, y: float = 0.0, metric: str = "loss") -> float:
        """Linear (1-D) or bilinear (2-D) interpolation of the grid; NaN outside it."""
        z = self.values(metric)
        if self.ys is None:  # np.interp of a one-point grid is its value
            return float(np.interp(x, self.xs, z)) if self.xs[0] <= x <= self.xs[-1] else math.nan
        inside = self.xs[0] <= x <= self.xs[-1] and self.ys[0] <= y <= self.ys[-1]
        if not inside or len(self.xs) < 2 or len(self.ys) < 2:
            return math.nan
        return float(self._interpolator(metric)((y, x)))

    def _interpolator(self, metric: str) -> Any:
        """Bilinear interpolator of a 2-D metric, built once per (metric, array)."""
        from scipy.interpolate import RegularGridInterpolator
        z = self.values(metric)
        cache = self.__dict__.setdefault("_interpolators", {})  # not a field: never saved
        if metric not in cache or cache[metric][0] is not z:
            cache[metric] = (z, RegularGridInterpolator((self.ys, self.xs), z))
        return cache[metric][1]

    def summary(self, radii: Sequence[float] = (0.1, 0.25, 0.5, 1.0), delta: float = 0.1,
                n_angles: int = 72) -> dict[str, Any]:
        """Centre loss; increase at r: the mean of L over the rays (+-1 in 1-D, ``n_angles`` in 2-D) at
        distance r, minus L(0); basin width: where L - L(0) first exceeds delta, summed over the two
        1-D rays or 2 x the 2-D mean (None off the grid); interpolation: L(1) and the barrier
        max_{[0, 1]} L - max(L(0), L(1)) >= 0; 3-D: the slice nearest z = 0."""
        if self.dim == 3:
            k = self.centre_slice()
            return {**self.slice(k).summary(radii, delta, n_angles), "dim": 3, "n_points": self.n_points,
                    "min_loss": _num(float(np.nanmin(self.loss))), "slice_z": float(self.zs[k])}
        centre = self.value_at(0.0, 0.0)
        out: dict[str, Any] = {"dim": self.dim, "kind": self.kind, "n_points": self.n_points,
                               "n_examples": self.n_examples, "centre_loss": _num(centre),
                               "centre_accuracy": _num(self.value_at(0.0, 0.0, "accuracy")),
                               "min_loss": _num(float(np.nanmin(self.loss))), "basin_delta": delta}
        rays = [(1.0, 0.0), (-1.0, 0.0)] if self.dim == 1 else \
            [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * np.pi, n_angles, endpoint=False)]
        increases = {}
        for r in radii:
            vals = [self.value_at(r * ux, r * uy) for ux, uy in rays]
            increases[str(r)] = None if any(math.isnan(v) for v in vals) else float(np.mean(vals) - centre)
        out["loss_increase_at_radius"] = increases
        crossings = [self._ray_crossing(ux, uy, centre + delta) for ux, uy in rays]
        widths = [dist for dist, _ in crossings]
        out["basin_width"] = _num(widths[0] + widths[1] if self.dim == 1 else 2 * float(np.mean(widths)))
        out["basin_reaches_grid_edge"] = not all(hit for _, hit in crossings)
        if self.kind == "interpolation":
            l1 = self.value_at(1.0)
            inside = (self.xs >= 0) & (self.xs <= 1)
            out["loss_at_b"] = _num(l1)
            if not (math.isnan(l1) or math.isnan(centre)):
                ends = max(centre, l1)
                seg = self.loss[inside][np.isfinite(self.loss[inside])]
                top = float(seg.max()) if seg.size else ends
                out["barrier"] = max(top, ends) - ends
                out["barrier_endpoints_on_grid"] = bool(np.isin([0.0, 1.0], self.xs).all())
        if self.metrics:  # each custom metric at the centre (alpha = 0), its extremes (and at B)
            out["metrics"] = {name: {"centre": _num(self.value_at(0.0, 0.0, name)),
                                     "min": _num(float(np.nanmin(z))) if np.isfinite(z).any() else None,
                                     "max": _num(float(np.nanmax(z))) if np.isfinite(z).any() else None,
                                     **({"at_b": _num(self.value_at(1.0, 0.0, name))}
                                        if self.kind == "interpolation" else {})}
                              for name, z in self.metrics.items()}
        return out

    def _ray_crossing(self, ux: float, uy: float, level: float, steps: int = 400) -> tuple[float, bool]:
        """Distance along the ray from the centre to where the loss first exceeds ``level``."""
        if self.dim == 1:
            reach = self.xs[-1] if ux > 0 else -self.xs[0]
        else:
            tx = (self.xs[-1] if ux > 0 else -self.xs[0]) / abs(ux) if abs(ux) > 1e-12 else math.inf
            ty = (self.ys[-1] if uy > 0 else -self.ys[0]) / abs(uy) if abs(uy) > 1e-12 else math.inf
            reach = min(tx, ty)
        if not reach > 0:
            return 0.0, False
        prev_t, prev_v = 0.0, self.value_at(0.0, 0.0)
        for t in np.linspace(0, reach, steps + 1)[1:]:
            v = self.value_at(t * ux, t * uy)
            if math.isnan(v):
                break
            if v > level:
                frac = (level - prev_v) / (v - prev_v) if v != prev_v else 0.0
                return float(prev_t + frac * (t - prev_t)), True
            prev_t, prev_v = t, v
        return float(prev_t), False

    def topology(self, connectivity: str = "full", threshold: float = 0.0) -> Any:
        """:func:`~sharpscope.landscape.topology.surface_topology` of the loss grid (array order: (y, x))."""
        from .topology import surface_topology
        return surface_topology(self.loss, axes=(self.xs,) if self.ys is None else (self.ys, self.xs) if self.zs is None
                                else (self.zs, self.ys, self.xs),
                                connectivity=connectivity, threshold=threshold)

    def to_dict(self, radii: Sequence[float] = (0.1, 0.25, 0.5, 1.0), delta: float = 0.1) -> dict[str, Any]:
        """JSON summary: options, axes, :meth:`summary` and (2-D, 3-D) :meth:`topology`; arrays go in the npz."""
        return {**({"topology": self.topology().to_dict()} if self.dim >= 2 else {}),
                "summary": self.summary(radii, delta), "options": self.options,
                "xs": [float(v) for v in self.xs], "ys": None if self.ys is None else [float(v) for v in self.ys],
                **({"zs": [float(v) for v in self.zs]} if self.zs is not None else {}),
                "explained_variance": self.explained_variance, "wall_time": self.wall_time,
                "points_per_second": self.n_points / self.wall_time if self.wall_time > 0 else None,
                **({"name_a": self.name_a, "name_b": self.name_b} if self.kind == "interpolation" else {}),
                **({"path": np.asarray(self.path).tolist()} if self.path is not None else {}),
                **({"path_residual": [float(v) for v in self.path_residual]} if self.path_residual is not None else {})}

    def save(self, path: str | Path, directions: Sequence[Direction] = ()) -> Path:
        """Write an ``.npz`` (grid, values, options as JSON, directions as d{k}/{name})."""
        arrays: dict[str, np.ndarray] = {"xs": self.xs, "loss": self.loss, "accuracy": self.accuracy,
                                         "kind": np.array(self.kind), "n_examples": np.array(self.n_examples),
                                         "options_json": np.array(json.dumps(self.options))}
        optional = {"ys": self.ys, "zs": self.zs, "path": self.path, "path_residual": self.path_residual,
                    **{f"metric/{name}": z for name, z in self.metrics.items()},
                    "explained_variance": self.explained_variance}
        arrays.update({key: np.asarray(v) for key, v in optional.items() if v is not None})
        for k, d in enumerate(directions):
            for name, t in d.items():
                arrays[f"d{k}/{name}"] = t.detach().cpu().numpy()
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return atomic_write_bytes(path, lambda fh: fh.write(buf.getvalue()))

    @classmethod
    def load(cls, path: str | Path) -> SurfaceResult:
        """Read a file written by :meth:`save` (``allow_pickle=False``)."""
        with np.load(path, allow_pickle=False) as z:
            found = {key: z[key] if key in z else None for key in ("ys", "zs", "path", "path_residual")}
            variance = z["explained_variance"].tolist() if "explained_variance" in z else None
            return cls(xs=z["xs"], loss=z["loss"], accuracy=z["accuracy"], kind=str(z["kind"]),
                       options=json.loads(str(z["options_json"])), n_examples=int(z["n_examples"]), wall_time=0.0,
                       explained_variance=variance, **found,
                       metrics={k.partition("/")[2]: z[k] for k in z.files if k.startswith("metric/")})


def load_directions(path: str | Path) -> list[Direction]:
    """The directions a :meth:`SurfaceResult.save` call stored (``d0/<name>``, ``d1/<name>``)."""
    found: dict[int, Direction] = {}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            head, _, name = key.partition("/")
            if name and head.startswith("d") and head[1:].isdigit():
                found.setdefault(int(head[1:]), {})[name] = torch.from_numpy(z[key])
    return [found[k] for k in sorted(found)]


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)
