"""Loss and accuracy on 1-D and 2-D grids of parameter-space displacements.

For a centre theta_0, directions d_1 (, d_2) and grid coordinates (x_j, y_i), the value at
grid point (i, j) is the mean loss over the data of the model with parameters
theta_0 + x_j d_1 + y_i d_2, in eval mode (Li et al. 2018). Arrays follow the matplotlib
convention: ``loss[i, j]`` is the value at ``(xs[j], ys[i])``, shape (len(ys), len(xs)),
so non-square grids need no transposing.

Evaluation never touches the user's model: parameters are passed to
``torch.func.functional_call``. On the CPU, conv nets are evaluated in channels-last
memory format (mkldnn runs these small convolutions faster that way), and the number of
examples per forward pass is picked by timing (``evaluate_points``); see
``benchmarks/bench_surface.py``. Evaluating many grid points at once with ``vmap``
was measured slower than one at a time on the CPU (grouped convolutions), so points are
evaluated one by one.

Batch norm running statistics: every point uses the centre model's buffers, except those a
direction covers (a "states" direction, :func:`~sharpscope.landscape.random_direction` with
``dir_type="states"``): those move with the parameters, theta_0 + x d_1 + y d_2 for the
buffers too, and the perturbed statistics are the ones eval mode uses (as Li et al.'s code,
``set_states``). Interpolation between two checkpoints can interpolate them
(``buffers="interpolate"``, the buffers being "states" in the sense of Li et al.'s code).

Large grids are resumable: with ``resume_path`` the values computed so far are saved
atomically every ``save_every`` points and reloaded when the same grid is asked again.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call
from .. import distributed as dist_utils
from ..batches import BatchLoss, Prepared
from ..io import atomic_write_bytes
from ..checks import require_grid_memory
from ..errors import ConfigError, NonFiniteLossError
from ..objective import eval_mode, require_finite_tensors
from .directions import Direction, difference, state_buffer_names
from .metrics import MetricCall, MetricFn, check_metrics, metric_value

__all__ = ["SurfaceResult", "surface", "interpolate", "parse_grid", "evaluate_points", "load_directions"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def parse_grid(text: str) -> np.ndarray:
    """``"-1:1:51"`` -> 51 evenly spaced points from -1 to 1 (both included).

    One point is a grid only where it is unambiguous: ``"a:a:1"`` is the point a (``"0:0:1"``
    the centre alone); ``"-1:1:1"`` is refused, as linspace would silently keep MIN alone."""
    parts = text.split(":")
    try:
        lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        raise ConfigError(f"grid must look like MIN:MAX:POINTS (e.g. -1:1:51), got {text!r}") from None
    if len(parts) != 3 or n < 1 or not (math.isfinite(lo) and math.isfinite(hi)) or (n > 1 and hi <= lo):
        raise ConfigError(f"grid must look like MIN:MAX:POINTS with MIN < MAX and POINTS >= 1, got {text!r}")
    if n == 1 and lo != hi:
        raise ConfigError(f"grid MIN:MAX:POINTS with MIN < MAX needs POINTS >= 2 (one point is MIN = MAX, e.g. "
                          f"0:0:1 for the centre alone), got {text!r}")
    require_grid_memory(n)  # before allocating: POINTS can be any size
    return np.linspace(lo, hi, n)


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------
CHUNK_CANDIDATES = (64, 256, 1024, 4096)


def _image_inputs(prepared: Prepared) -> bool:
    """(inputs, targets) batches whose inputs are 4-D image tensors."""
    return not prepared.loss.takes_model and not prepared.streamed and all(
        isinstance(b[0], Tensor) and b[0].dim() == 4 for b in prepared.batches)


def _class_indices(outputs: Any, targets: Any) -> bool:
    """Whether accuracy is defined: (N, C) logits and (N,) integer class indices."""
    return (isinstance(outputs, Tensor) and isinstance(targets, Tensor) and outputs.dim() == 2
            and targets.dim() == 1 and not targets.is_floating_point())


def evaluate_points(
    model: nn.Module, loss_fn: LossFn, data: Iterable[tuple[Tensor, Tensor]] | list,
    points: Callable[[int], tuple[dict[str, Tensor], dict[str, Tensor] | None]], n_points: int,
    chunk_size: int | None = None, channels_last: bool | None = None, done: np.ndarray | None = None,
    on_point: Callable[[int, float, float], None] | None = None, distributed: bool | None = None,
    metrics: Mapping[str, MetricFn] | None = None, on_metrics: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Mean loss and accuracy at ``n_points`` parameter settings.

    ``points(k)`` returns the parameters (and optionally buffers; None keeps the model's)
    of point k. ``data`` holds batches in either loss convention of :mod:`sharpscope.batches`
    (or is already :class:`~sharpscope.batches.Prepared`). Accuracy is the fraction of
    argmax(outputs) == targets for class-index targets, NaN otherwise (and under ModelLoss). Points with ``done[k]`` True are skipped (their entries NaN).
    The examples are fed in chunks of ``chunk_size``; ``None`` times the first point with
    each of ``CHUNK_CANDIDATES`` and keeps the fastest for every point (small conv nets
    prefer small chunks on the CPU, MLPs large ones; the values agree to rounding).
    Under torch.distributed the points are split round robin over the ranks and the
    values all-reduced, so every rank returns every value.
    ``metrics`` ({name: fn(model, batch)}, :mod:`sharpscope.landscape.metrics`): their means
    too, returned as a third element {name: values}; ``on_metrics(k, {name: value})`` is called
    before ``on_point`` for each point.
    """
    metric_fns = check_metrics(metrics)
    calls = {name: MetricCall(model, fn) for name, fn in metric_fns.items()}
    distributed = dist_utils.is_distributed() if distributed is None else distributed
    first = next(iter(model.parameters()))
    prepared = data if isinstance(data, Prepared) else BatchLoss(model, loss_fn).read(data, first.device, first.dtype)
    batch_loss, n_examples, total_weight = prepared.loss, prepared.n_examples, prepared.total_weight
    if channels_last is None:
        channels_last = first.device.type == "cpu" and _image_inputs(prepared)
    if channels_last and _image_inputs(prepared):
        prepared = Prepared(batch_loss, [(x.contiguous(memory_format=torch.channels_last), y)
                                         for x, y in prepared.batches], prepared.counts, weights=prepared.weights)
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    loss = np.full(n_points, np.nan)
    acc = np.full(n_points, np.nan)
    extra = {name: np.full(n_points, np.nan) for name in calls}

    def state_at(k: int) -> dict[str, Tensor]:
        params, bufs = points(k)
        if channels_last:
            params = {n: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
                      for n, t in params.items()}
        return {**buffers, **(bufs or {}), **params}

    def run(state: dict[str, Tensor], batches: list[tuple[Any, int]]) -> tuple[float, float, dict[str, float]]:
        total = torch.zeros((), dtype=torch.float64, device=first.device)
        sums = {name: torch.zeros((), dtype=torch.float64, device=first.device) for name in calls}
        wrapped = {f"model.{n}": t for n, t in state.items()} if calls else {}
        correct = torch.zeros((), dtype=torch.long, device=first.device)
        classify = not batch_loss.takes_model
        for batch, count in batches:
            if not count:  # nothing counted in the batch (every token label -100): it adds nothing
                continue
            out, value = batch_loss.outputs_and_loss(state, batch)
            total += value.double() * count
            for name, call in calls.items():
                sums[name] += metric_value(name, functional_call(call, wrapped, (batch,))).to(first.device) * count
            if classify and _class_indices(out, batch[1]):
                correct += (out.argmax(1) == batch[1]).sum()
            else:
                classify = False
        return (float(total) / total_weight, (float(correct) / n_examples if classify else math.nan),
                {name: float(v) / total_weight for name, v in sums.items()})

    todo = [k for k in range(n_points) if done is None or not done[k]]
    if distributed:
        todo = todo[dist_utils.rank()::dist_utils.world_size()]
    with eval_mode(model), torch.inference_mode():
        if chunk_size is None:
            sizes = sorted({min(c, n_examples) for c in CHUNK_CANDIDATES}) if prepared.per_example() else [None]
            if todo and len(sizes) > 1:
                probe = state_at(todo[0])
                timings = []
                for size in sizes:
                    batches = prepared.chunks(size)
                    run(probe, batches)  # warm-up
                    t0 = time.perf_counter()
                    run(probe, batches)
                    timings.append(time.perf_counter() - t0)
                chunk_size = sizes[int(np.argmin(timings))]
            else:
                chunk_size = sizes[-1]
        batches = prepared.chunks(chunk_size)
        for k in todo:
            loss[k], acc[k], got = run(state_at(k), batches)
            for name, v in got.items():
                extra[name][k] = v
            if on_metrics is not None and calls:
                on_metrics(k, got)
            if on_point is not None:
                on_point(k, loss[k], acc[k])
    if distributed:
        mine = torch.zeros(3 + len(extra), n_points, dtype=torch.float64, device=first.device)
        idx = torch.tensor(todo, dtype=torch.long, device=first.device)
        mine[0, idx] = torch.as_tensor(loss[todo], dtype=torch.float64, device=first.device)
        mine[1, idx] = torch.as_tensor(np.nan_to_num(acc[todo]), dtype=torch.float64, device=first.device)
        mine[2, idx] = torch.as_tensor(np.isnan(acc[todo]).astype(float), device=first.device)
        mine[2, idx] += 2.0  # marks "computed somewhere"
        for row, values in enumerate(extra.values(), start=3):
            mine[row, idx] = torch.as_tensor(values[todo], dtype=torch.float64, device=first.device)
        total = dist_utils.all_reduce_sum(mine).cpu().numpy()
        computed = total[2] >= 2.0
        loss = np.where(computed, total[0], loss)
        acc = np.where(computed, np.where(total[2] >= 3.0, np.nan, total[1]), acc)
        extra = {name: np.where(computed, total[row], extra[name]) for row, name in enumerate(extra, start=3)}
    return (loss, acc) if metrics is None else (loss, acc, extra)


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------
@dataclass
class SurfaceResult:
    """Loss / accuracy on a 1-D (``ys is None``) or 2-D grid; ``loss[i, j]`` at (xs[j], ys[i]).
    ``metrics``: each custom metric's grid ({name: array shaped like ``loss``})."""

    xs: np.ndarray
    ys: np.ndarray | None
    loss: np.ndarray
    accuracy: np.ndarray
    kind: str  # "random" | "hessian" | "interpolation" | "plane" | "trajectory"
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
        if self.ys is None:
            if len(self.xs) == 1:
                return float(z[0]) if x == self.xs[0] else math.nan
            if not self.xs[0] <= x <= self.xs[-1]:
                return math.nan
            return float(np.interp(x, self.xs, z))
        if not (self.xs[0] <= x <= self.xs[-1] and self.ys[0] <= y <= self.ys[-1]):
            return math.nan
        if len(self.xs) < 2 or len(self.ys) < 2:
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
        """Loss at the centre, mean loss increase at each radius, and the basin width.

        1-D: increase at r = mean of L(-r), L(r) minus L(0); basin = the interval around 0
        where L - L(0) <= delta (its width, and whether it reached the grid's edge).
        2-D: increase at r = mean over ``n_angles`` points of the circle of radius r;
        basin width = 2 x the mean over rays of the distance at which L - L(0) first
        exceeds delta. Values that need points outside the grid are None.
        For interpolation also the loss at alpha = 1 and the barrier
        max_{alpha in [0,1]} L(alpha) - max(L(0), L(1)) of the piecewise-linear curve through
        the grid: the max runs over the grid points inside [0, 1] and the curve's values at 0
        and 1 themselves (interpolated where 0 or 1 is not a grid point, see
        ``barrier_endpoints_on_grid``), so the barrier is >= 0 by construction (0: the loss
        never rises above the higher endpoint).
        3-D: the 2-D summary of the slice nearest z = 0 (``slice_z``), over all the points.
        """
        if self.dim == 3:
            k = self.centre_slice()
            return {**self.slice(k).summary(radii, delta, n_angles), "dim": 3, "n_points": self.n_points,
                    "min_loss": _num(float(np.nanmin(self.loss))), "slice_z": float(self.zs[k])}
        centre = self.value_at(0.0, 0.0)
        out: dict[str, Any] = {"dim": self.dim, "kind": self.kind, "n_points": self.n_points,
                               "n_examples": self.n_examples, "centre_loss": _num(centre),
                               "centre_accuracy": _num(self.value_at(0.0, 0.0, "accuracy")),
                               "min_loss": _num(float(np.nanmin(self.loss))), "basin_delta": delta}
        increases = {}
        for r in radii:
            if self.dim == 1:
                vals = [self.value_at(-r), self.value_at(r)]
            else:
                angles = np.linspace(0, 2 * np.pi, n_angles, endpoint=False)
                vals = [self.value_at(r * math.cos(t), r * math.sin(t)) for t in angles]
            increases[str(r)] = None if any(math.isnan(v) for v in vals) else float(np.mean(vals) - centre)
        out["loss_increase_at_radius"] = increases
        widths, capped = [], 0
        rays = [(1.0, 0.0), (-1.0, 0.0)] if self.dim == 1 else \
            [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * np.pi, n_angles, endpoint=False)]
        for ux, uy in rays:
            dist, hit = self._ray_crossing(ux, uy, centre + delta)
            widths.append(dist)
            capped += not hit
        if self.dim == 1:
            out["basin_width"] = _num(widths[0] + widths[1])
        else:
            out["basin_width"] = _num(2 * float(np.mean(widths)))
        out["basin_reaches_grid_edge"] = capped > 0
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
        """Minima, merge tree and saddle-minimum depths of the loss grid
        (:func:`sharpscope.landscape.topology.surface_topology`; coordinates in array order, (y, x) in 2-D)."""
        from .topology import surface_topology
        return surface_topology(self.loss, axes=(self.xs,) if self.ys is None else (self.ys, self.xs) if self.zs is None
                                else (self.zs, self.ys, self.xs),
                                connectivity=connectivity, threshold=threshold)

    def to_dict(self, radii: Sequence[float] = (0.1, 0.25, 0.5, 1.0), delta: float = 0.1) -> dict[str, Any]:
        """JSON summary: the options, the grid axes and :meth:`summary` (arrays go in the npz); 2-D: also
        ``topology`` (:meth:`topology`, default settings)."""
        return {**({"topology": self.topology().to_dict()} if self.dim >= 2 else {}),"summary": self.summary(radii, delta), "options": self.options,
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
        if self.ys is not None:
            arrays["ys"] = self.ys
        if self.zs is not None:
            arrays["zs"] = self.zs
        if self.path is not None:
            arrays["path"] = self.path
        if self.path_residual is not None:
            arrays["path_residual"] = np.asarray(self.path_residual)
        for name, z in self.metrics.items():
            arrays[f"metric/{name}"] = z
        if self.explained_variance is not None:
            arrays["explained_variance"] = np.asarray(self.explained_variance)
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
            return cls(xs=z["xs"], ys=z["ys"] if "ys" in z else None, loss=z["loss"], accuracy=z["accuracy"],
                       kind=str(z["kind"]), options=json.loads(str(z["options_json"])),
                       n_examples=int(z["n_examples"]), wall_time=0.0,
                       explained_variance=z["explained_variance"].tolist() if "explained_variance" in z else None,
                       path=z["path"] if "path" in z else None,
                       path_residual=z["path_residual"] if "path_residual" in z else None,
                       zs=z["zs"] if "zs" in z else None,
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


# --------------------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------------------
def _fingerprint(options: dict[str, Any], directions: Sequence[Direction], xs: np.ndarray,
                 ys: np.ndarray | None, zs: np.ndarray | None = None, metric_names: Sequence[str] = ()) -> str:
    h = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    if metric_names:  # without metrics the fingerprint is unchanged (older partial files still resume)
        h.update(json.dumps(["metrics", list(metric_names)]).encode())
    h.update(np.ascontiguousarray(xs).tobytes())
    if ys is not None:
        h.update(np.ascontiguousarray(ys).tobytes())
    if zs is not None:
        h.update(b"zs" + np.ascontiguousarray(zs).tobytes())
    for d in directions:
        for name in sorted(d):
            h.update(name.encode())
            h.update(d[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def surface(
    model: nn.Module, loss_fn: LossFn, data: Iterable[tuple[Tensor, Tensor]], directions: Sequence[Direction],
    xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray | None = None, *,
    center: dict[str, Tensor] | None = None, kind: str = "random", options: dict[str, Any] | None = None,
    chunk_size: int | None = None, resume_path: str | Path | None = None, save_every: int = 100,
    on_point: Callable[[int, float, float], None] | None = None, cache: bool | str = "auto",
    cache_bytes: int | None = None, zs: Sequence[float] | np.ndarray | None = None,
    metrics: Mapping[str, MetricFn] | None = None,
) -> SurfaceResult:
    """Loss and accuracy over the grid ``xs`` (x ``ys`` (x ``zs``)) along ``directions`` (1, 2 or 3).

    ``center`` defaults to the model's parameters (and, for the buffers a states direction
    covers, its buffers). With ``resume_path``, progress is saved
    there (atomically, every ``save_every`` points) and an interrupted call with the same
    grid, directions and options continues where it stopped. ``cache``/``cache_bytes``: keep
    the batches on the device or stream them (:meth:`sharpscope.batches.BatchLoss.read`;
    streamed batches are used as the loader gives them, without re-chunking).
    With ``zs`` (and ``ys``), a 3-D grid along three directions: ``loss[k, i, j]`` at
    (xs[j], ys[i], zs[k]), shape (len(zs), len(ys), len(xs)); ``result.slice(k)`` is the 2-D
    surface at zs[k].
    ``metrics``: {name: fn(model, batch) -> scalar tensor}, each averaged over the batches as the
    loss is and stored in ``result.metrics[name]`` (shaped like ``loss``; also in the npz and the
    resume file); see :mod:`sharpscope.landscape.metrics` for how ``fn`` sees the perturbed model
    and how non-finite values are kept.
    """
    metric_fns = check_metrics(metrics)
    if zs is not None and ys is None:
        raise ConfigError("a 3-D surface needs ys as well as zs")
    require_grid_memory(len(xs) * (1 if ys is None else len(ys)) * (1 if zs is None else len(zs)))
    start = time.perf_counter()
    xs = np.asarray(xs, dtype=np.float64)
    ys = None if ys is None else np.asarray(ys, dtype=np.float64)
    zs = None if zs is None else np.asarray(zs, dtype=np.float64)
    ndim = 1 if ys is None else 2 if zs is None else 3
    if len(directions) != ndim:
        raise ConfigError(f"a {ndim}-D surface needs {ndim} direction(s), got {len(directions)}")
    if xs.ndim != 1 or xs.size == 0 or (ys is not None and (ys.ndim != 1 or ys.size == 0)) or (
            zs is not None and (zs.ndim != 1 or zs.size == 0)):
        raise ConfigError("grid coordinates must be non-empty 1-D sequences")
    names = [n for n, _ in model.named_parameters()]
    states = set(state_buffer_names(model))
    for d in directions:
        if not set(names) <= set(d) or not set(d) <= set(names) | states:
            raise ConfigError("a direction must cover exactly the model's parameters, plus for a states direction "
                              f"floating-point buffers (missing {sorted(set(names) - set(d))[:3]}, "
                              f"extra {sorted(set(d) - set(names) - states)[:3]})")
    moved = sorted(set().union(*(set(d) for d in directions)) - set(names))  # state buffers along the directions
    buffers = dict(model.named_buffers())
    base = {n: (center[n] if center is not None else p).detach() for n, p in model.named_parameters()}
    base_buffers = {n: (center[n] if center is not None and n in center else buffers[n]).detach() for n in moved}
    ny = 1 if ys is None else len(ys)
    coords = [(float(x), None if ys is None else float(y), None if zs is None else float(z))
              for z in (zs if zs is not None else [0.0]) for y in (ys if ys is not None else [0.0]) for x in xs]

    def shifted(start: dict[str, Tensor], cx: float, cy: float | None, cz: float | None = None) -> dict[str, Tensor]:
        out = {}
        for n, t in start.items():
            v = t + cx * directions[0][n] if cx and n in directions[0] else t
            if cy and n in directions[1]:
                v = v + cy * directions[1][n]
            if cz and n in directions[2]:
                v = v + cz * directions[2][n]
            out[n] = v
        return out

    def point(k: int) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
        cx, cy, cz = coords[k]
        return shifted(base, cx, cy, cz), (shifted(base_buffers, cx, cy, cz) if moved else None)

    opts = dict(options or {})
    loss = np.full(len(coords), np.nan)
    acc = np.full(len(coords), np.nan)
    done = np.zeros(len(coords), dtype=bool)
    extra = {name: np.full(len(coords), np.nan) for name in metric_fns}
    fingerprint = _fingerprint(opts, directions, xs, ys, zs, list(metric_fns)) if resume_path else ""
    if resume_path and Path(resume_path).is_file():
        with np.load(resume_path, allow_pickle=False) as z:
            if str(z["fingerprint"]) == fingerprint and all(f"metric/{name}" in z.files for name in extra):
                loss, acc, done = z["loss"].copy(), z["accuracy"].copy(), z["done"].copy()
                extra = {name: z[f"metric/{name}"].copy() for name in extra}

    def save_partial() -> None:
        if not dist_utils.is_main():  # one writer; other ranks' points are recomputed on resume
            return
        buf = io.BytesIO()
        np.savez(buf, loss=loss, accuracy=acc, done=done, fingerprint=np.array(fingerprint),
                 **{f"metric/{name}": values for name, values in extra.items()})
        atomic_write_bytes(resume_path, lambda fh: fh.write(buf.getvalue()))

    def record_metrics(k: int, got: dict[str, float]) -> None:
        for name, v in got.items():
            extra[name][k] = v

    def record(k: int, lv: float, av: float) -> None:
        loss[k], acc[k], done[k] = lv, av, True
        if resume_path and done.sum() % save_every == 0:
            save_partial()
        if on_point is not None:
            on_point(k, lv, av)

    require_finite_tensors({**base, **base_buffers}, "the centre's weights")
    first = done.copy()
    prepared = read_batches(model, loss_fn, data, cache, cache_bytes)
    new_loss, new_acc, *new_extra = evaluate_points(model, loss_fn, prepared, point, len(coords), chunk_size=chunk_size,
                                                    done=first, on_point=record, metrics=metric_fns or None,
                                                    on_metrics=record_metrics)
    fresh = ~first & ~np.isnan(new_loss)  # includes the points other ranks computed
    loss[fresh], acc[fresh], done[fresh] = new_loss[fresh], new_acc[fresh], True
    for name, values in (new_extra[0] if new_extra else {}).items():
        extra[name][fresh] = values[fresh]
    if resume_path:
        save_partial()
    centre = next((k for k, c in enumerate(coords) if all(v in (None, 0.0) for v in c)), None)
    require_finite_reference(loss, centre, "the centre")
    shape = (len(xs),) if ys is None else (ny, len(xs)) if zs is None else (len(zs), ny, len(xs))
    return SurfaceResult(xs=xs, ys=ys, loss=loss.reshape(shape), accuracy=acc.reshape(shape), kind=kind,
                         options=opts, n_examples=prepared.n_examples, wall_time=time.perf_counter() - start, zs=zs,
                         metrics={name: values.reshape(shape) for name, values in extra.items()})


def require_finite_reference(loss: np.ndarray, reference: int | None, what: str) -> None:
    """A non-finite loss at the reference point (the surface's centre, interpolation's A) when
    it is on the grid, or at every point when it is not, raises :class:`NonFiniteLossError`
    (NaN data, a loss undefined at the trained weights). Non-finite values elsewhere are kept:
    they are what the landscape holds there (a loss that blows up far out), counted by
    :func:`sharpscope.landscape.topology` as ``n_nonfinite``."""
    flat = np.asarray(loss, dtype=np.float64).ravel()
    if reference is not None and not math.isfinite(flat[reference]):
        raise NonFiniteLossError(f"the loss at {what} is {flat[reference]}: NaN in the data, or a loss undefined "
                                 "at these weights; there is nothing to map")
    if reference is None and flat.size and not np.isfinite(flat).any():
        raise NonFiniteLossError(f"the loss is NaN or infinite at every grid point (NaN in the data?); {what} is "
                                 "not on the grid")


def read_batches(model: nn.Module, loss_fn: LossFn, data: Iterable[Any], cache: bool | str = "auto",
                 cache_bytes: int | None = None) -> Prepared:
    """``data`` prepared for ``model``'s device and dtype by :meth:`BatchLoss.read` (kept or streamed per ``cache``)."""
    first = next(iter(model.parameters()))
    return BatchLoss(model, loss_fn).read(data, first.device, first.dtype, cache, cache_bytes)


def interpolate(
    model_a: nn.Module, model_b: nn.Module, loss_fn: LossFn, data: Iterable[tuple[Tensor, Tensor]],
    alphas: Sequence[float] | np.ndarray, *, buffers: str = "interpolate", chunk_size: int | None = None,
    name_a: str = "A", name_b: str = "B", on_point: Callable[[int, float, float], None] | None = None,
    cache: bool | str = "auto", cache_bytes: int | None = None, metrics: Mapping[str, MetricFn] | None = None,
) -> SurfaceResult:
    """Loss and accuracy along theta(alpha) = (1 - alpha) theta_A + alpha theta_B
    (Goodfellow, Vinyals, Saxe 2015), alpha = 0 at A. ``buffers="interpolate"`` also
    interpolates floating-point buffers (BN running statistics); ``"keep"`` uses A's.
    ``cache``/``cache_bytes`` and ``metrics`` as in :func:`surface` (the metrics see model A's
    module with theta(alpha) swapped in)."""
    metric_fns = check_metrics(metrics)
    require_grid_memory(len(alphas))
    if buffers not in ("interpolate", "keep"):
        raise ConfigError(f"buffers must be 'interpolate' or 'keep', got {buffers!r}")
    start = time.perf_counter()
    pa = {n: p.detach() for n, p in model_a.named_parameters()}
    pb = {n: p.detach() for n, p in model_b.named_parameters()}
    direction = difference(pb, pa)
    ba = {n: b.detach() for n, b in model_a.named_buffers()}
    bb = {n: b.detach() for n, b in model_b.named_buffers()}
    if buffers == "interpolate" and ba.keys() != bb.keys():
        raise ConfigError("the two models have different buffers; use buffers='keep'")
    alphas = np.asarray(alphas, dtype=np.float64)

    def point(k: int) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
        a = float(alphas[k])
        params = {n: pa[n] + a * direction[n] for n in pa}
        if buffers == "keep":
            return params, None
        bufs = {n: (ba[n] + a * (bb[n].to(ba[n].device) - ba[n]) if ba[n].is_floating_point() else ba[n]) for n in ba}
        return params, bufs

    require_finite_tensors({**pa, **(ba if buffers == "interpolate" else {})}, f"{name_a}'s weights")
    require_finite_tensors({**pb, **(bb if buffers == "interpolate" else {})}, f"{name_b}'s weights")
    prepared = read_batches(model_a, loss_fn, data, cache, cache_bytes)
    loss, acc, *extra = evaluate_points(model_a, loss_fn, prepared, point, len(alphas), chunk_size=chunk_size,
                                        on_point=on_point, metrics=metric_fns or None)
    require_finite_reference(loss, next((k for k, a in enumerate(alphas) if a == 0.0), None), f"{name_a} (alpha = 0)")
    return SurfaceResult(xs=alphas, ys=None, loss=loss, accuracy=acc, kind="interpolation",
                         options={"buffers": buffers}, n_examples=prepared.n_examples, wall_time=time.perf_counter() - start,
                         name_a=name_a, name_b=name_b, metrics=extra[0] if extra else {})
