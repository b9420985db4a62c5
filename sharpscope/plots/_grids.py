"""What every landscape figure reads from a surface result: its grid and values, axis labels
and titles, and the colour scale (linear, or log over at most LOG_DECADES decades).

A surface result has ``xs`` (nx,), ``ys`` (ny,) or None, and ``loss`` / ``accuracy`` of shape
(nx,) or (ny, nx), ``loss[i, j]`` at (xs[j], ys[i]) as in ``contour(*np.meshgrid(xs, ys), Z)``;
nothing is ever transposed: another 2-D shape is an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ._style import value_of

LANDSCAPE_CMAP = "viridis"
LOG_DECADES = 8  # log scales reach at most this many decades below the maximum
PATH_STAR = "#ffd700"


def opt_of(result: Any, key: str, default: Any = None) -> Any:
    """An optional field of a result (dict or object): ``default`` when absent."""
    if isinstance(result, Mapping):
        return result.get(key, default)
    return getattr(result, key, default)


def kind_of(result: Any) -> str:
    return str(opt_of(result, "kind") or "random")


def endpoint_names(result: Any) -> tuple[str, str]:
    return str(opt_of(result, "name_a") or "A"), str(opt_of(result, "name_b") or "B")


def axis_labels(result: Any) -> tuple[str, str]:
    """A surface result's axis labels: principal components with their explained variance,
    eigenvectors with their eigenvalue, the interpolation's alpha, or random directions."""
    kind = kind_of(result)
    if kind == "trajectory":
        ev = opt_of(result, "explained_variance")
        ev = np.asarray([] if ev is None else ev, dtype=float).ravel()
        pcs = [f"PC {k + 1}" + (f" ({100.0 * ev[k]:.1f}%)" if ev.size > k and np.isfinite(ev[k]) else "")
               for k in (0, 1)]
        return pcs[0], pcs[1]
    if kind == "hessian":
        values = (opt_of(result, "options") or {}).get("eigenvalues") or []
        eigs = [f"eigenvector {k + 1}" + (f" (lambda = {values[k]:.4g})" if len(values) > k else "") for k in (0, 1)]
        return eigs[0], eigs[1]
    if kind == "interpolation":
        a, b = endpoint_names(result)
        return f"alpha (0 = {a}, 1 = {b})", "direction 2"
    return "direction 1", "direction 2"


def metric_label(metric: str) -> str:
    return metric.replace("_", " ")


def default_title(result: Any, metric: str) -> str:
    where = {"random": "random directions", "interpolation": "interpolation",
             "trajectory": "PCA plane of the training trajectory",
             "hessian": "top Hessian eigenvectors"}.get(kind_of(result), kind_of(result))
    return f"{metric_label(metric).capitalize()} landscape ({where})"


def values_of(result: Any, metric: str) -> Any:
    """``metric``'s grid: a custom metric of ``result.metrics`` (``SurfaceResult``), else the field."""
    custom = opt_of(result, "metrics") or {}
    return custom[metric] if metric in custom else value_of(result, metric)


def curve_of(result: Any, metric: str) -> tuple[np.ndarray, np.ndarray]:
    xs = np.asarray(value_of(result, "xs"), dtype=float).ravel()
    values = np.asarray(values_of(result, metric), dtype=float)
    if opt_of(result, "ys") is not None or values.shape != xs.shape:
        raise ValueError(f"plot_curve needs 1-D results: {metric} of shape (nx,) = {xs.shape}, "
                         f"got {values.shape} (use plot_contour for 2-D results)")
    return xs, values


def surface_of(result: Any, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs = np.asarray(value_of(result, "xs"), dtype=float).ravel()
    ys_raw = opt_of(result, "ys")
    if ys_raw is None:
        raise ValueError("a 2-D plot needs a 2-D result (ys is None; use plot_curve)")
    ys = np.asarray(ys_raw, dtype=float).ravel()
    values = np.asarray(values_of(result, metric), dtype=float)
    if values.shape != (ys.size, xs.size):
        raise ValueError(f"{metric} must have shape (len(ys), len(xs)) = ({ys.size}, {xs.size}), "
                         f"got {values.shape}")
    return xs, ys, values


def has_finite(result: Any, key: str) -> bool:
    values = opt_of(result, key)
    return values is not None and bool(np.isfinite(np.asarray(values, dtype=float)).any())


def log_floor(values: np.ndarray) -> float | None:
    """The smallest positive finite value, at most ``LOG_DECADES`` decades below the largest (None: none)."""
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return None
    return max(float(values.min()), float(values.max()) * 10.0 ** -LOG_DECADES)


def colour_scale(values: np.ndarray, n_levels: int, log: bool):
    """(levels, norm, floor) over the finite ``values``: geometric with a LogNorm when ``log`` and
    something is positive (values below ``floor`` are clipped), else linear (``floor`` None)."""
    from matplotlib.colors import LogNorm, Normalize

    n_levels = max(int(n_levels), 2)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.linspace(0.0, 1.0, n_levels), Normalize(0.0, 1.0), None
    vmax = float(finite.max())
    if log:
        floor = log_floor(finite)
        if floor is not None and vmax > floor:
            return np.geomspace(floor, vmax, n_levels), LogNorm(floor, vmax), floor
    vmin = float(finite.min())
    if not vmax > vmin:  # a constant surface still gets a (narrow) scale
        pad = 0.05 * abs(vmin) or 0.5
        vmin, vmax = vmin - pad, vmax + pad
    return np.linspace(vmin, vmax, n_levels), Normalize(vmin, vmax), None


def clip_to(values: np.ndarray, floor: float | None) -> np.ndarray:
    return values if floor is None else np.where(np.isfinite(values), np.maximum(values, floor), np.nan)


