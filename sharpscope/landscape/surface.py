"""Loss and accuracy on 1-, 2- and 3-D grids of parameter-space displacements (Li et al. 2018):
``loss[i, j]`` is the mean loss, in eval mode, at theta_0 + xs[j] d_1 + ys[i] d_2. Points are
evaluated one at a time by ``torch.func.functional_call`` (the user's model is untouched); buffers
are the centre's except those a "states" direction moves (Li et al.'s ``set_states``). With
``resume_path`` progress is saved atomically and resumed; with ``memory_gb`` a point and its chunk of
examples stay within a budget (:mod:`.budget`). The result: :mod:`.surface_result`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call
from .. import distributed as dist_utils
from ..batches import BatchLoss, Prepared, concat, take, tensor_leaves
from ..io import atomic_write_bytes
from ..checks import require_grid_memory
from ..errors import ConfigError, NonFiniteLossError
from ..objective import eval_mode, require_finite_tensors
from .budget import LivePeak, PointPlan, budget_bytes, fitting_chunks, plan_point
from .directions import Direction, difference, restrict, state_buffer_names
from .metrics import MetricCall, MetricFn, check_metrics, metric_value
from .surface_result import SurfaceResult, load_directions

__all__ = ["SurfaceResult", "surface", "interpolate", "parse_grid", "evaluate_points", "load_directions",
           "point_chunks", "point_plan"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def parse_grid(text: str) -> np.ndarray:
    """``"-1:1:51"`` -> 51 evenly spaced points from -1 to 1; one point only as ``"a:a:1"``."""
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
    memory_gb: float | None = None,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Mean loss, accuracy (argmax == class-index targets, else NaN) and ``metrics`` (returned third)
    at the ``n_points`` parameter settings ``points(k)`` (params, buffers or None) not ``done``;
    ``chunk_size=None`` times ``CHUNK_CANDIDATES``; distributed: points round robin, all-reduced.
    ``memory_gb``: one point's state and one chunk's activations within it (:mod:`.budget`), the
    chunk among those that fit, or a :class:`~sharpscope.errors.MemoryBudgetError` before the first point."""
    metric_fns = check_metrics(metrics)
    budget = budget_bytes(memory_gb)
    calls = {name: MetricCall(model, fn) for name, fn in metric_fns.items()}
    distributed = dist_utils.is_distributed() if distributed is None else distributed
    first = next(iter(model.parameters()))
    at = _evaluator(model, loss_fn, data, calls, points, channels_last)
    prepared = at.prepared
    loss, acc = np.full(n_points, np.nan), np.full(n_points, np.nan)
    extra = {name: np.full(n_points, np.nan) for name in calls}
    todo = [k for k in range(n_points) if done is None or not done[k]]
    if distributed:
        todo = todo[dist_utils.rank()::dist_utils.world_size()]
    with eval_mode(model), torch.inference_mode():
        if budget is None:
            batches = prepared.chunks(_timed_chunk_size(at, todo) if chunk_size is None else chunk_size)
        else:  # the chunks that fit (refused here, before the first point, if none does)
            fits = fitting_chunks(_point_plan(model, at, budget), CHUNK_CANDIDATES, chunk_size)
            batches = prepared.chunks(_timed_chunk_size(at, todo, fits))
        for k in todo:
            loss[k], acc[k], got = at.run(at.state_at(k), batches)
            for name, v in got.items():
                extra[name][k] = v
            if on_metrics is not None and calls:
                on_metrics(k, got)
            if on_point is not None:
                on_point(k, loss[k], acc[k])
    if distributed:
        loss, acc, extra = _all_ranks(loss, acc, extra, todo, first.device)
    return (loss, acc) if metrics is None else (loss, acc, extra)


def point_plan(model: nn.Module, loss_fn: LossFn, data: Iterable[Any] | Prepared, memory_gb: float) -> PointPlan:
    """What one grid point of ``model`` on ``data`` holds, measured (:func:`.budget.plan_point`),
    within ``memory_gb``."""
    at = _evaluator(model, loss_fn, data, {}, lambda k: ({}, None), None)
    with eval_mode(model), torch.inference_mode():
        return _point_plan(model, at, budget_bytes(memory_gb))


def point_chunks(model: nn.Module, loss_fn: LossFn, data: Iterable[Any] | Prepared, memory_gb: float,
                 chunk_size: int | None = None) -> list[int | None]:
    """The examples per chunk (None: the batches as given) with which one grid point fits in
    ``memory_gb`` (:func:`.budget.fitting_chunks`): ``chunk_size`` if it fits, else the
    ``CHUNK_CANDIDATES`` that fit, else the largest size that does; a
    :class:`~sharpscope.errors.MemoryBudgetError` if none."""
    return fitting_chunks(point_plan(model, loss_fn, data, memory_gb), CHUNK_CANDIDATES, chunk_size)


def _point_plan(model: nn.Module, at: _PointEvaluator, budget: float) -> PointPlan:
    """:func:`.budget.plan_point` from forwards (loss, metrics, accuracy) at the model's own
    weights on the first examples, measured by :class:`.budget.LivePeak`."""
    prepared = at.prepared
    splittable = prepared.per_example()
    state = at.state_of({n: p.detach() for n, p in model.named_parameters()})

    def measure(size: int | None) -> float:
        scale = 1.0
        if size is not None:  # the first ``size`` examples
            first, held = [], 0
            for batch, count in zip(prepared.batches, prepared.counts):
                first, held = first + [batch], held + count
                if held >= size:
                    break
            batch = take(concat(first), slice(0, size))
        elif prepared.streamed:  # the first batch, scaled to the largest count
            batch = next(iter(prepared.batches))
            scale = max(prepared.counts) / max(prepared.counts[0], 1)
        else:  # the largest batch, whole
            batch = max(prepared.batches, key=lambda b: sum(t.numel() for t in tensor_leaves(b)))
        with LivePeak() as peak:
            at.run(state, [(batch, 1)])
        return peak.peak * scale

    return plan_point(model, measure, prepared.n_examples, splittable, budget, at.channels_last)


def _evaluator(model: nn.Module, loss_fn: LossFn, data: Iterable[Any] | Prepared, calls: dict[str, MetricCall],
               points: Callable[[int], tuple[dict[str, Tensor], dict[str, Tensor] | None]],
               channels_last: bool | None) -> _PointEvaluator:
    """The points' evaluator on ``data`` read for the model (image inputs channels-last on CPU by default)."""
    first = next(iter(model.parameters()))
    prepared = data if isinstance(data, Prepared) else BatchLoss(model, loss_fn).read(data, first.device, first.dtype)
    if channels_last is None:
        channels_last = first.device.type == "cpu" and _image_inputs(prepared)
    if channels_last and _image_inputs(prepared):
        prepared = Prepared(prepared.loss, [(x.contiguous(memory_format=torch.channels_last), y)
                                            for x, y in prepared.batches], prepared.counts, weights=prepared.weights)
    return _PointEvaluator(prepared, calls, points, {n: b.detach() for n, b in model.named_buffers()}, channels_last,
                           first.device)


@dataclass
class _PointEvaluator:
    """One grid point's model state and its mean loss, accuracy and metrics."""

    prepared: Prepared
    calls: dict[str, MetricCall]
    points: Callable[[int], tuple[dict[str, Tensor], dict[str, Tensor] | None]]
    buffers: dict[str, Tensor]  # the model's own, for those a point leaves alone
    channels_last: bool
    device: torch.device

    def state_at(self, k: int) -> dict[str, Tensor]:
        """Buffers and parameters of point ``k`` (4-D parameters channels-last where the inputs are)."""
        params, bufs = self.points(k)
        return self.state_of(params, bufs)

    def state_of(self, params: dict[str, Tensor], bufs: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The state with these parameters and buffers (the model's own for the others)."""
        if self.channels_last:
            params = {n: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
                      for n, t in params.items()}
        return {**self.buffers, **(bufs or {}), **params}

    def run(self, state: dict[str, Tensor], batches: list[tuple[Any, int]]) -> tuple[float, float, dict[str, float]]:
        """sum_b loss_b w_b / sum_b w_b (float64; w: examples or counted tokens), metrics alike;
        accuracy NaN unless every batch has class-index targets."""
        batch_loss, n_examples, device = self.prepared.loss, self.prepared.n_examples, self.device
        total_weight = self.prepared.total_weight
        total = torch.zeros((), dtype=torch.float64, device=device)
        sums = {name: torch.zeros((), dtype=torch.float64, device=device) for name in self.calls}
        wrapped = {f"model.{n}": t for n, t in state.items()} if self.calls else {}
        correct = torch.zeros((), dtype=torch.long, device=device)
        classify = not batch_loss.takes_model
        for batch, count in batches:
            if not count:  # nothing counted in the batch (every token label -100): it adds nothing
                continue
            out, value = batch_loss.outputs_and_loss(state, batch)
            total += value.double() * count
            for name, call in self.calls.items():
                sums[name] += metric_value(name, functional_call(call, wrapped, (batch,))).to(device) * count
            if classify and _class_indices(out, batch[1]):
                correct += (out.argmax(1) == batch[1]).sum()
            else:
                classify = False
        return (float(total) / total_weight, (float(correct) / n_examples if classify else math.nan),
                {name: float(v) / total_weight for name, v in sums.items()})


def _timed_chunk_size(at: _PointEvaluator, todo: list[int], sizes: list[int | None] | None = None) -> int | None:
    """The fastest of ``sizes`` (default ``CHUNK_CANDIDATES``) on the first point (after a warm-up);
    None where the examples cannot be re-split."""
    prepared = at.prepared
    if sizes is None:
        sizes = sorted({min(c, prepared.n_examples) for c in CHUNK_CANDIDATES}) if prepared.per_example() else [None]
    if not (todo and len(sizes) > 1):
        return sizes[-1]
    probe = at.state_at(todo[0])
    timings = []
    for size in sizes:
        batches = prepared.chunks(size)
        at.run(probe, batches)  # warm-up
        t0 = time.perf_counter()
        at.run(probe, batches)
        timings.append(time.perf_counter() - t0)
    return sizes[int(np.argmin(timings))]


def _all_ranks(loss: np.ndarray, acc: np.ndarray, extra: dict[str, np.ndarray], todo: list[int],
               device: torch.device) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Every rank's points on every rank by one all-reduce of a (3 + metrics, points) table;
    row 2 marks a computed point (+2) and an undefined accuracy (+1)."""
    n_points = loss.shape[0]
    mine = torch.zeros(3 + len(extra), n_points, dtype=torch.float64, device=device)
    idx = torch.tensor(todo, dtype=torch.long, device=device)
    mine[0, idx] = torch.as_tensor(loss[todo], dtype=torch.float64, device=device)
    mine[1, idx] = torch.as_tensor(np.nan_to_num(acc[todo]), dtype=torch.float64, device=device)
    mine[2, idx] = torch.as_tensor(np.isnan(acc[todo]).astype(float) + 2.0, device=device)
    for row, values in enumerate(extra.values(), start=3):
        mine[row, idx] = torch.as_tensor(values[todo], dtype=torch.float64, device=device)
    total = dist_utils.all_reduce_sum(mine).cpu().numpy()
    computed = total[2] >= 2.0
    loss = np.where(computed, total[0], loss)
    acc = np.where(computed, np.where(total[2] >= 3.0, np.nan, total[1]), acc)
    extra = {name: np.where(computed, total[row], extra[name]) for row, name in enumerate(extra, start=3)}
    return loss, acc, extra


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
    metrics: Mapping[str, MetricFn] | None = None, memory_gb: float | None = None,
) -> SurfaceResult:
    """Loss, accuracy and ``metrics`` over the grid ``xs`` (x ``ys`` (x ``zs``)) along 1, 2 or 3
    ``directions`` around ``center`` (default: the model's weights); ``loss[k, i, j]`` at (xs[j],
    ys[i], zs[k]); ``resume_path`` saves progress every ``save_every`` points for a rerun; ``memory_gb``
    bounds what a point holds (:func:`evaluate_points`, :mod:`.budget`)."""
    metric_fns = check_metrics(metrics)
    budget_bytes(memory_gb)  # a bad budget refused before anything loads
    if zs is not None and ys is None:
        raise ConfigError("a 3-D surface needs ys as well as zs")
    require_grid_memory(len(xs) * (1 if ys is None else len(ys)) * (1 if zs is None else len(zs)))
    start = time.perf_counter()
    xs, ys, zs = _grid_axes(xs, ys, zs, len(directions))
    moved = _moved_buffers(model, directions)
    buffers = dict(model.named_buffers())
    base = {n: (center[n] if center is not None else p).detach() for n, p in model.named_parameters()}
    base_buffers = {n: (center[n] if center is not None and n in center else buffers[n]).detach() for n in moved}
    coords = [(float(x), None if ys is None else float(y), None if zs is None else float(z))
              for z in (zs if zs is not None else [0.0]) for y in (ys if ys is not None else [0.0]) for x in xs]

    def point(k: int) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
        cx, cy, cz = coords[k]
        return (_shifted(base, directions, cx, cy, cz),
                _shifted(base_buffers, directions, cx, cy, cz) if moved else None)

    opts = dict(options or {})
    fingerprint = _fingerprint(opts, directions, xs, ys, zs, list(metric_fns)) if resume_path else ""
    progress = _Progress.start(len(coords), list(metric_fns), resume_path, fingerprint, save_every, on_point)
    require_finite_tensors({**base, **base_buffers}, "the centre's weights")
    first = progress.done.copy()
    prepared = read_batches(model, loss_fn, data, cache, cache_bytes)
    progress.add(first, *evaluate_points(model, loss_fn, prepared, point, len(coords), chunk_size=chunk_size,
                                         done=first, on_point=progress.record, metrics=metric_fns or None,
                                         on_metrics=progress.record_metrics, memory_gb=memory_gb))
    centre = next((k for k, c in enumerate(coords) if all(v in (None, 0.0) for v in c)), None)
    require_finite_reference(progress.loss, centre, "the centre")
    shape = (len(xs),) if ys is None else (len(ys), len(xs)) if zs is None else (len(zs), len(ys), len(xs))
    return SurfaceResult(xs=xs, ys=ys, loss=progress.loss.reshape(shape), accuracy=progress.accuracy.reshape(shape),
                         kind=kind, options=opts, n_examples=prepared.n_examples, wall_time=time.perf_counter() - start,
                         zs=zs, metrics={name: values.reshape(shape) for name, values in progress.extra.items()})


def _grid_axes(xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray | None,
               zs: Sequence[float] | np.ndarray | None, n_directions: int
               ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The grid's coordinates as float64 arrays, checked: non-empty, 1-D, one direction each."""
    axes = [None if a is None else np.asarray(a, dtype=np.float64) for a in (xs, ys, zs)]
    ndim = 1 if ys is None else 2 if zs is None else 3
    if n_directions != ndim:
        raise ConfigError(f"a {ndim}-D surface needs {ndim} direction(s), got {n_directions}")
    if any(a is not None and (a.ndim != 1 or a.size == 0) for a in axes):
        raise ConfigError("grid coordinates must be non-empty 1-D sequences")
    return axes[0], axes[1], axes[2]


def _moved_buffers(model: nn.Module, directions: Sequence[Direction]) -> list[str]:
    """The buffers the directions move, sorted; a ConfigError unless every direction covers
    exactly the model's parameters plus floating-point state buffers."""
    names = [n for n, _ in model.named_parameters()]
    states = set(state_buffer_names(model))
    for d in directions:
        if not set(names) <= set(d) or not set(d) <= set(names) | states:
            raise ConfigError("a direction must cover exactly the model's parameters, plus for a states direction "
                              f"floating-point buffers (missing {sorted(set(names) - set(d))[:3]}, "
                              f"extra {sorted(set(d) - set(names) - states)[:3]})")
    return sorted(set().union(*(set(d) for d in directions)) - set(names))


def _shifted(start: dict[str, Tensor], directions: Sequence[Direction], cx: float, cy: float | None,
             cz: float | None = None) -> dict[str, Tensor]:
    """``start + cx d_1 + cy d_2 + cz d_3`` entry by entry (a zero or absent coordinate adds nothing)."""
    out = {}
    for n, t in start.items():
        for c, d in zip((cx, cy, cz), directions):
            if c and n in d:
                t = t + c * d[n]
        out[n] = t
    return out


@dataclass
class _Progress:
    """A grid's values so far (flat) and which points are done; with a ``path``, reloaded when
    the fingerprint matches and saved atomically (rank 0) every ``save_every`` points and at the end."""

    loss: np.ndarray
    accuracy: np.ndarray
    done: np.ndarray
    extra: dict[str, np.ndarray]
    path: str | Path | None
    fingerprint: str
    save_every: int
    on_point: Callable[[int, float, float], None] | None

    @classmethod
    def start(cls, n: int, metric_names: list[str], path: str | Path | None, fingerprint: str, save_every: int,
              on_point: Callable[[int, float, float], None] | None) -> _Progress:
        """Nothing done, or what the file at ``path`` holds for the same grid and metrics."""
        loss, acc, done = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, dtype=bool)
        extra = {name: np.full(n, np.nan) for name in metric_names}
        if path and Path(path).is_file():
            with np.load(path, allow_pickle=False) as z:
                if str(z["fingerprint"]) == fingerprint and all(f"metric/{name}" in z.files for name in extra):
                    loss, acc, done = z["loss"].copy(), z["accuracy"].copy(), z["done"].copy()
                    extra = {name: z[f"metric/{name}"].copy() for name in extra}
        return cls(loss, acc, done, extra, path, fingerprint, save_every, on_point)

    def save(self) -> None:
        if not dist_utils.is_main():  # one writer; other ranks' points are recomputed on resume
            return
        buf = io.BytesIO()
        np.savez(buf, loss=self.loss, accuracy=self.accuracy, done=self.done, fingerprint=np.array(self.fingerprint),
                 **{f"metric/{name}": values for name, values in self.extra.items()})
        atomic_write_bytes(self.path, lambda fh: fh.write(buf.getvalue()))

    def record_metrics(self, k: int, got: dict[str, float]) -> None:
        for name, v in got.items():
            self.extra[name][k] = v

    def record(self, k: int, lv: float, av: float) -> None:
        self.loss[k], self.accuracy[k], self.done[k] = lv, av, True
        if self.path and self.done.sum() % self.save_every == 0:
            self.save()
        if self.on_point is not None:
            self.on_point(k, lv, av)

    def add(self, first: np.ndarray, loss: np.ndarray, acc: np.ndarray,
            extra: dict[str, np.ndarray] | None = None) -> None:
        """The values :func:`evaluate_points` returned for the points not done at ``first``."""
        fresh = ~first & ~np.isnan(loss)
        self.loss[fresh], self.accuracy[fresh], self.done[fresh] = loss[fresh], acc[fresh], True
        for name, values in (extra or {}).items():
            self.extra[name][fresh] = values[fresh]
        if self.path:
            self.save()


def require_finite_reference(loss: np.ndarray, reference: int | None, what: str) -> None:
    """:class:`NonFiniteLossError` for a non-finite loss at the reference point (or at every point
    when it is off the grid); non-finite values elsewhere are kept (the landscape blows up there)."""
    flat = np.asarray(loss, dtype=np.float64).ravel()
    if reference is not None and not math.isfinite(flat[reference]):
        raise NonFiniteLossError(f"the loss at {what} is {flat[reference]}: NaN in the data, or a loss undefined "
                                 "at these weights; there is nothing to map")
    if reference is None and flat.size and not np.isfinite(flat).any():
        raise NonFiniteLossError(f"the loss is NaN or infinite at every grid point (NaN in the data?); {what} is "
                                 "not on the grid")


def read_batches(model: nn.Module, loss_fn: LossFn, data: Iterable[Any], cache: bool | str = "auto",
                 cache_bytes: int | None = None) -> Prepared:
    """``data`` prepared for ``model``'s device and dtype by :meth:`BatchLoss.read`."""
    first = next(iter(model.parameters()))
    return BatchLoss(model, loss_fn).read(data, first.device, first.dtype, cache, cache_bytes)


def interpolate(
    model_a: nn.Module, model_b: nn.Module, loss_fn: LossFn, data: Iterable[tuple[Tensor, Tensor]],
    alphas: Sequence[float] | np.ndarray, *, buffers: str = "interpolate", chunk_size: int | None = None,
    name_a: str = "A", name_b: str = "B", on_point: Callable[[int, float, float], None] | None = None,
    cache: bool | str = "auto", cache_bytes: int | None = None, metrics: Mapping[str, MetricFn] | None = None,
    params: object = None, memory_gb: float | None = None,
) -> SurfaceResult:
    """Loss and accuracy along (1 - alpha) theta_A + alpha theta_B (Goodfellow et al. 2015), buffers
    interpolated or A's (``"keep"``), ``params`` the parameters that move (:func:`.directions.restrict`);
    ``memory_gb`` bounds what a point holds (:func:`evaluate_points`, :mod:`.budget`)."""
    metric_fns = check_metrics(metrics)
    require_grid_memory(len(alphas))
    budget_bytes(memory_gb)  # a bad budget refused before anything loads
    if buffers not in ("interpolate", "keep"):
        raise ConfigError(f"buffers must be 'interpolate' or 'keep', got {buffers!r}")
    start = time.perf_counter()
    pa = {n: p.detach() for n, p in model_a.named_parameters()}
    pb = {n: p.detach() for n, p in model_b.named_parameters()}
    direction = restrict(difference(pb, pa), model_a, params)
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
                                        on_point=on_point, metrics=metric_fns or None, memory_gb=memory_gb)
    require_finite_reference(loss, next((k for k, a in enumerate(alphas) if a == 0.0), None), f"{name_a} (alpha = 0)")
    return SurfaceResult(xs=alphas, ys=None, loss=loss, accuracy=acc, kind="interpolation",
                         options={"buffers": buffers}, n_examples=prepared.n_examples,
                         wall_time=time.perf_counter() - start, name_a=name_a, name_b=name_b,
                         metrics=extra[0] if extra else {})
