"""Every figure sharpscope draws, and nothing else draws.

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot global state, no
display needed) and written as PNG, plus PDF when asked. Each function takes results
keyed by a label (e.g. ``{"SGD": ..., "SAM": ...}``) so comparisons share one axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

__all__ = ["save_figure", "plot_density", "plot_eigenvalues", "plot_m_sharpness", "plot_tracking", "plot_training_curves",
           "plot_correlations", "COLORS"]

# one colour per optimizer (tab10), so that five on one figure stay apart and keep their colour
# from figure to figure
COLORS = {"SGD": "#d62728", "SAM": "#1f77b4", "ASAM": "#2ca02c", "RSAM": "#7f7f7f", "GSAM": "#9467bd",
          "WSAM": "#ff7f0e", "LOOKSAM": "#8c564b", "FSAM": "#17becf"}
_CYCLE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def _color(label: str, i: int) -> str:
    return COLORS.get(label.upper(), _CYCLE[i % len(_CYCLE)])


def save_figure(fig: Figure, path: str | Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Write ``fig`` as ``path`` with each suffix in ``formats``; returns the files written."""
    base = Path(path).with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        out = base.with_suffix(f".{fmt}")
        fig.savefig(out, dpi=150, bbox_inches="tight")
        written.append(out)
    return written


def _get(result: Any, key: str) -> Any:
    return result[key] if isinstance(result, Mapping) else getattr(result, key)


def _seed_runs(value: Any) -> list[Any]:
    """One run (a list of records, or a result) or several runs (a list of them, one per seed)."""
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)):
        return list(value)
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], Mapping) and "eigenvalues" in value[0]:
        return list(value)  # eigenvalue results, one per seed
    return [value]


# the values a tracked quantity can take (its confidence band is drawn clipped to them)
_TRACK_BOUNDS = {"gradcos": (-1.0, 1.0), "lambda_max": (-np.inf, np.inf), "trace": (-np.inf, np.inf),
                 "m_sharpness": (-np.inf, np.inf)}


def _band_alpha(n_labels: int) -> float:
    """Opacity of each label's confidence band: fainter when many bands overlap, so that five
    optimizers on one axis stay apart."""
    return 0.18 if n_labels <= 3 else 0.5 / n_labels


def _seed_lines(ax, series: Sequence[tuple[Sequence[float], Sequence[float]]], color: str, label: str,
                semilogy: bool = False, band_alpha: float = 0.18, bounds: tuple[float, float] | None = None,
                **style: Any) -> None:
    """Each seed's (x, y) as a thin line; with several seeds also their mean (bold) and its
    95 % Student-t band at the x values every seed has (:func:`sharpscope.stats.summarize`),
    drawn clipped to ``bounds`` (the values the metric can take, e.g. [0, 1] for accuracy)."""
    from . import stats

    plot = ax.semilogy if semilogy else ax.plot
    if len(series) == 1:
        plot(series[0][0], series[0][1], color=color, label=label, **style)
        return
    for xs, ys in series:
        plot(xs, ys, color=color, lw=0.7, alpha=0.35, **{k: v for k, v in style.items() if k != "marker"})
    points: dict[float, list[float]] = {}
    for xs, ys in series:
        for x, y in zip(xs, ys):
            if y is not None and np.isfinite(y):
                points.setdefault(x, []).append(y)
    common = sorted(x for x, v in points.items() if len(v) == len(series))
    summaries = [stats.summarize(points[x]) for x in common]
    plot(common, [t.mean for t in summaries], color=color, lw=1.8, label=f"{label} (mean of {len(series)})", **style)
    low, high = [t.ci_low for t in summaries], [t.ci_high for t in summaries]
    if bounds is not None:
        low, high = np.clip(low, *bounds), np.clip(high, *bounds)
    ax.fill_between(common, low, high, color=color, alpha=band_alpha, lw=0)


def plot_density(densities: Mapping[str, Any], path: str | Path, log: bool = False,
                 formats: Sequence[str] = ("png",), title: str | None = None) -> list[Path]:
    """Hessian eigenvalue densities (SLQ), overlaid; ``log=True`` puts the density on a log
    axis (the usual view: a bulk near zero and a few outliers many decades lower)."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for i, (label, res) in enumerate(densities.items()):
        grid = np.asarray(_get(res, "grid"))
        dens = np.asarray(_get(res, "density"))
        if log:
            floor = max(dens.max() * 1e-7, 1e-300)  # seven decades below the peak: the outliers stay visible
            ax.semilogy(grid, np.maximum(dens, floor), color=_color(label, i), label=label, lw=1.2)
        else:
            ax.plot(grid, dens, color=_color(label, i), label=label, lw=1.2)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)" if log else "density")
    ax.set_title(title or "Hessian spectral density (SLQ)")
    ax.grid(alpha=0.3)
    if len(densities) > 1 or next(iter(densities), ""):
        ax.legend()
    return save_figure(fig, path, formats)


def plot_eigenvalues(results: Mapping[str, Any], path: str | Path, formats: Sequence[str] = ("png",),
                     title: str | None = None) -> list[Path]:
    """Top Hessian eigenvalues per label, index 1 = largest, as markers joined by lines
    (log y-axis when every value is positive; bars would mislead on a log axis). A label may
    hold one result per seed: each seed thin, the mean with its 95 % band."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    all_positive = True
    for i, (label, res) in enumerate(results.items()):
        series = []
        for one in _seed_runs(res):
            values = np.asarray(_get(one, "eigenvalues"), dtype=float)
            all_positive &= bool((values > 0).all())
            series.append((np.arange(1, len(values) + 1).tolist(), values.tolist()))
        _seed_lines(ax, series, _color(label, i), label, marker="o", band_alpha=_band_alpha(len(results)))
    if all_positive:
        ax.set_yscale("log")
    ax.set_xlabel("eigenvalue index (1 = largest)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("Hessian eigenvalue")
    ax.set_title(title or "Top Hessian eigenvalues")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    return save_figure(fig, path, formats)


# ---------------------------------------------------------------------------------------
# Loss-landscape figures: 1-D curves, 2-D contours, 3-D surfaces, PCA trajectories.
#
# A surface result has ``xs`` (nx,), ``ys`` (ny,) or None, ``loss`` / ``accuracy`` of shape
# (nx,) or (ny, nx) with ``loss[i, j]`` the value at (xs[j], ys[i]) -- the ``contour(X, Y, Z)``
# convention with ``X, Y = np.meshgrid(xs, ys)``. Nothing here ever transposes: a 2-D array of
# any other shape is an error.
# ---------------------------------------------------------------------------------------

__all__ += ["plot_curve", "plot_contour", "plot_surface3d", "plot_trajectory", "plot_eigen_curve"]

_LANDSCAPE_CMAP = "viridis"
_LOG_DECADES = 8  # log scales reach at most this many decades below the maximum
_PATH_STAR = "#ffd700"


def _opt(result: Any, key: str, default: Any = None) -> Any:
    """Like ``_get`` but for optional fields: ``default`` when absent."""
    if isinstance(result, Mapping):
        return result.get(key, default)
    return getattr(result, key, default)


def _kind(result: Any) -> str:
    return str(_opt(result, "kind") or "random")


def _endpoint_names(result: Any) -> tuple[str, str]:
    return str(_opt(result, "name_a") or "A"), str(_opt(result, "name_b") or "B")


def _pc_label(result: Any, k: int) -> str:
    ev = _opt(result, "explained_variance")
    if ev is not None:
        ev = np.asarray(ev, dtype=float).ravel()
        if ev.size > k and np.isfinite(ev[k]):
            return f"PC {k + 1} ({100.0 * ev[k]:.1f}%)"
    return f"PC {k + 1}"


def _eigen_label(result: Any, k: int) -> str:
    values = (_opt(result, "options") or {}).get("eigenvalues") or []
    return f"eigenvector {k + 1}" + (f" (lambda = {values[k]:.4g})" if len(values) > k else "")


def _axis_labels(result: Any) -> tuple[str, str]:
    kind = _kind(result)
    if kind == "trajectory":
        return _pc_label(result, 0), _pc_label(result, 1)
    if kind == "hessian":
        return _eigen_label(result, 0), _eigen_label(result, 1)
    if kind == "interpolation":
        a, b = _endpoint_names(result)
        return f"alpha (0 = {a}, 1 = {b})", "direction 2"
    return "direction 1", "direction 2"


def _metric_label(metric: str) -> str:
    return metric.replace("_", " ")


def _default_title(result: Any, metric: str) -> str:
    where = {"random": "random directions", "interpolation": "interpolation",
             "trajectory": "PCA plane of the training trajectory",
             "hessian": "top Hessian eigenvectors"}.get(_kind(result), _kind(result))
    return f"{_metric_label(metric).capitalize()} landscape ({where})"


def _values(result: Any, metric: str) -> Any:
    """``metric``'s grid: a custom metric of ``result.metrics`` (``SurfaceResult``), else the field."""
    custom = _opt(result, "metrics") or {}
    return custom[metric] if metric in custom else _get(result, metric)


def _curve(result: Any, metric: str) -> tuple[np.ndarray, np.ndarray]:
    xs = np.asarray(_get(result, "xs"), dtype=float).ravel()
    values = np.asarray(_values(result, metric), dtype=float)
    if _opt(result, "ys") is not None or values.shape != xs.shape:
        raise ValueError(f"plot_curve needs 1-D results: {metric} of shape (nx,) = {xs.shape}, "
                         f"got {values.shape} (use plot_contour for 2-D results)")
    return xs, values


def _surface(result: Any, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs = np.asarray(_get(result, "xs"), dtype=float).ravel()
    ys_raw = _opt(result, "ys")
    if ys_raw is None:
        raise ValueError("a 2-D plot needs a 2-D result (ys is None; use plot_curve)")
    ys = np.asarray(ys_raw, dtype=float).ravel()
    values = np.asarray(_values(result, metric), dtype=float)
    if values.shape != (ys.size, xs.size):
        raise ValueError(f"{metric} must have shape (len(ys), len(xs)) = ({ys.size}, {xs.size}), "
                         f"got {values.shape}")
    return xs, ys, values


def _has_finite(result: Any, key: str) -> bool:
    values = _opt(result, key)
    if values is None:
        return False
    values = np.asarray(values, dtype=float)
    return bool(np.isfinite(values).any())


def _log_floor(values: np.ndarray) -> float | None:
    """The positive floor of a log scale over ``values``: the smallest positive finite value,
    but at most ``_LOG_DECADES`` decades below the largest. None when nothing is positive."""
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return None
    return max(float(values.min()), float(values.max()) * 10.0 ** -_LOG_DECADES)


def _scale(values: np.ndarray, n_levels: int, log: bool):
    """(levels, norm, floor) covering the finite ``values``; geometric levels and a LogNorm
    when ``log`` and there is something positive to show (``floor`` is then the value below
    which data are clipped), otherwise linear levels (``floor`` None)."""
    from matplotlib.colors import LogNorm, Normalize

    n_levels = max(int(n_levels), 2)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.linspace(0.0, 1.0, n_levels), Normalize(0.0, 1.0), None
    vmax = float(finite.max())
    if log:
        floor = _log_floor(finite)
        if floor is not None and vmax > floor:
            return np.geomspace(floor, vmax, n_levels), LogNorm(floor, vmax), floor
    vmin = float(finite.min())
    if not vmax > vmin:  # a constant surface still gets a (narrow) scale
        pad = 0.05 * abs(vmin) or 0.5
        vmin, vmax = vmin - pad, vmax + pad
    return np.linspace(vmin, vmax, n_levels), Normalize(vmin, vmax), None


def _clip(values: np.ndarray, floor: float | None) -> np.ndarray:
    return values if floor is None else np.where(np.isfinite(values), np.maximum(values, floor), np.nan)


def _finish(fig: Figure, path: str | Path, formats: Sequence[str], return_figure: bool):
    written = save_figure(fig, path, formats)
    return (written, fig) if return_figure else written


def plot_curve(results: Mapping[str, Any], path: str | Path, metric: str = "loss",
               formats: Sequence[str] = ("png",), title: str | None = None, log: bool = False,
               return_figure: bool = False):
    """1-D landscapes: one line per label of ``r.<metric>`` against ``r.xs`` (``metric``: loss,
    accuracy, or a custom metric's name in ``r.metrics``; likewise in the 2-D plots).

    For ``metric="loss"`` a second panel below shows the accuracy of every result that has a
    finite one. ``log=True`` puts the metric on a log axis (values clipped at a small positive
    floor). Interpolation results get dotted lines at alpha = 0 and 1, named after the
    endpoints (``name_a`` / ``name_b`` when the result has them) on the top axis. NaN values
    leave gaps. Returns the files written, or ``(files, figure)`` with ``return_figure``.
    """
    if not results:
        raise ValueError("plot_curve needs at least one result")
    items = [(str(label), res) for label, res in results.items()]
    curves = [(label, *_curve(res, metric)) for label, res in items]
    with_acc = metric == "loss" and any(_has_finite(res, "accuracy") for _, res in items)

    fig = Figure(figsize=(6.4, 6.0 if with_acc else 4.0), layout="constrained")
    if with_acc:
        ax, ax_acc = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    else:
        ax, ax_acc = fig.subplots(), None

    floor = _log_floor(np.concatenate([c[2].ravel() for c in curves])) if log else None
    for i, (label, xs, values) in enumerate(curves):
        color = _color(label, i)
        ax.plot(xs, _clip(values, floor), color=color, lw=1.6, label=label or None)
        if ax_acc is not None and _has_finite(items[i][1], "accuracy"):
            ax_acc.plot(*_curve(items[i][1], "accuracy"), color=color, lw=1.6, label=label or None)
    if log and floor is not None:
        ax.set_yscale("log")

    first = items[0][1]
    xlabel = _axis_labels(first)[0]
    interp = [res for _, res in items if _kind(res) == "interpolation"]
    if interp:
        names_a = list(dict.fromkeys(_endpoint_names(r)[0] for r in interp))
        names_b = list(dict.fromkeys(_endpoint_names(r)[1] for r in interp))
        name_a, name_b = " / ".join(names_a), " / ".join(names_b)
        xlabel = f"alpha (0 = {name_a}, 1 = {name_b})"
        for a in [ax] + ([ax_acc] if ax_acc is not None else []):
            for x0 in (0.0, 1.0):
                a.axvline(x0, color="0.35", ls=":", lw=1.2, zorder=0)
        top = ax.secondary_xaxis("top")
        top.set_xticks([0.0, 1.0], labels=[name_a, name_b])
        top.tick_params(length=0, labelsize=10)

    ax.set_ylabel(_metric_label(metric) + (" (log scale)" if log and floor is not None else ""), fontsize=11)
    default = ("linear interpolation" if interp else "the PCA plane" if _kind(first) == "trajectory" else
               "the top Hessian eigenvector" if _kind(first) == "hessian" else "a random direction")
    ax.set_title(title or f"{_metric_label(metric).capitalize()} along {default}", fontsize=12)
    ax.grid(alpha=0.3)
    if any(label for label, _ in items):
        ax.legend(fontsize=10)
    bottom = ax if ax_acc is None else ax_acc
    if ax_acc is not None:
        ax_acc.set_ylabel("accuracy", fontsize=11)
        ax_acc.grid(alpha=0.3)
    bottom.set_xlabel(xlabel, fontsize=11)
    return _finish(fig, path, formats, return_figure)


def plot_eigen_curve(eigen: Any, random: Any, eigenvalue: float, slope: float, loss0: float, path: str | Path,
                     formats: Sequence[str] = ("png",), title: str | None = None, return_figure: bool = False):
    """The loss along the top Hessian eigenvector next to the loss along a random direction,
    both unit vectors in parameter space (the random one, filter-normalized or not, rescaled
    to norm 1, so equal coordinates are equal distances and the comparison is fair), over the
    same grid, with the second-order model L_0 + (g . v) t + lambda t^2 / 2 dashed. Accuracy
    below when finite. Returns the files written, or ``(files, figure)``."""
    xs, le = _curve(eigen, "loss")
    xr, lr = _curve(random, "loss")
    with_acc = _has_finite(eigen, "accuracy") or _has_finite(random, "accuracy")
    fig = Figure(figsize=(6.4, 6.0 if with_acc else 4.0), layout="constrained")
    if with_acc:
        ax, ax_acc = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    else:
        ax, ax_acc = fig.subplots(), None
    c_eig, c_rand = _CYCLE[1], _CYCLE[0]
    ax.plot(xs, le, color=c_eig, lw=1.8, label=f"top eigenvector (lambda = {eigenvalue:.4g})")
    ax.plot(xr, lr, color=c_rand, lw=1.8, label="random direction, rescaled to unit norm")
    t = np.linspace(float(xs.min()), float(xs.max()), 201)
    quad = loss0 + slope * t + 0.5 * eigenvalue * t * t
    finite = le[np.isfinite(le)]
    if finite.size:  # keep the parabola from stretching the axis far beyond the data
        span = float(finite.max() - finite.min()) or 1.0
        quad = np.where(quad <= float(finite.max()) + 0.25 * span, quad, np.nan)
    ax.plot(t, quad, color=c_eig, lw=1.2, ls="--", label="second-order model at the centre")
    ax.set_ylabel("loss", fontsize=11)
    ax.set_title(title or "Loss along the top Hessian eigenvector and a random direction", fontsize=12)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    if ax_acc is not None:
        for res, color in ((eigen, c_eig), (random, c_rand)):
            if _has_finite(res, "accuracy"):
                ax_acc.plot(*_curve(res, "accuracy"), color=color, lw=1.6)
        ax_acc.set_ylabel("accuracy", fontsize=11)
        ax_acc.grid(alpha=0.3)
    (ax_acc or ax).set_xlabel("distance along the unit direction (parameter space)", fontsize=11)
    return _finish(fig, path, formats, return_figure)


def _draw_path(ax, result: Any, filled: bool, color: str) -> bool:
    raw = _opt(result, "path")
    if raw is None:
        return False
    pts = np.asarray(raw, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"path must have shape (E, 2), got {pts.shape}")
    if len(pts) == 0:
        return False
    ax.plot(pts[:, 0], pts[:, 1], "-o", color="white" if filled else color, mec="black", mew=0.6,
            ms=4, lw=1.6, label="trajectory (per epoch)", zorder=4)
    ax.plot(pts[-1:, 0], pts[-1:, 1], ls="none", marker="*", ms=15, color=_PATH_STAR, mec="black",
            mew=0.8, label="final model", zorder=5)
    return True


def _draw_path3d(ax, result: Any, xs: np.ndarray, ys: np.ndarray, z: np.ndarray, color: str) -> bool:
    """A result's ``path`` (E, 2) on a 3-D surface view, at the height of the (bilinearly
    interpolated) grid values; points off the grid are left out."""
    raw = _opt(result, "path")
    if raw is None:
        return False
    pts = np.asarray(raw, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
        return False
    from scipy.interpolate import RegularGridInterpolator

    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if len(xs) < 2 or len(ys) < 2:
        return False
    heights = RegularGridInterpolator((ys, xs), np.asarray(z, dtype=float), bounds_error=False,
                                      fill_value=np.nan)(pts[:, ::-1])
    ax.plot(pts[:, 0], pts[:, 1], heights, "-o", color=color, mec="black", mew=0.5, ms=3, lw=1.6, zorder=10,
            label="trajectory (per epoch)")
    ax.plot(pts[-1:, 0], pts[-1:, 1], heights[-1:], ls="none", marker="*", ms=12, color=_PATH_STAR, mec="black",
            mew=0.8, zorder=11)
    return True


def plot_contour(results: Mapping[str, Any], path: str | Path, metric: str = "loss", filled: bool = False,
                 levels: int = 30, log_levels: bool | None = True, formats: Sequence[str] = ("png",),
                 title: str | None = None, shared_scale: bool = True, return_figure: bool = False):
    """2-D landscapes as contour plots, one panel per label side by side.

    With ``shared_scale`` (the default) every panel uses the same contour levels and the same
    colour normalisation, computed from the union of all finite values, and one colorbar serves
    them all: this is the SGD-vs-SAM comparison figure, and unequal scales would make the
    sharper minimum look as flat as the other. ``log_levels`` spaces the levels geometrically
    (loss surfaces span decades; values are clipped at a small positive floor, at most
    ``_LOG_DECADES`` decades below the maximum); ``None`` means "geometric unless the metric is
    accuracy". The centre (0, 0) is marked with a "+", and a result's ``path`` (E, 2), if any,
    is drawn over the contours with its last point highlighted (Li et al. 2018, Fig. 9). The
    aspect is equal when the x and y ranges have equal spans. NaN values are masked. Returns
    the files written, or ``(files, figure)`` with ``return_figure``.
    """
    if not results:
        raise ValueError("plot_contour needs at least one result")
    items = [(str(label), res, *_surface(res, metric)) for label, res in results.items()]
    if log_levels is None:
        log_levels = metric != "accuracy"
    from matplotlib.patheffects import withStroke
    from matplotlib.ticker import MaxNLocator

    cmap = _LANDSCAPE_CMAP
    n = len(items)
    fig = Figure(figsize=(4.2 * n + 1.2, 4.2), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    if shared_scale:
        shared = _scale(np.concatenate([z.ravel() for *_, z in items]), levels, log_levels)

    mappables = []
    for i, ((label, res, xs, ys, z), ax) in enumerate(zip(items, axes)):
        lv, norm, floor = shared if shared_scale else _scale(z.ravel(), levels, log_levels)
        data = np.ma.masked_invalid(_clip(z, floor))
        X, Y = np.meshgrid(xs, ys)
        cs = None
        if data.count() > 0:
            draw = ax.contourf if filled else ax.contour
            kwargs = {} if filled else {"linewidths": 1.0}
            cs = draw(X, Y, data, levels=lv, cmap=cmap, norm=norm, **kwargs)
        else:
            ax.text(0.5, 0.5, f"no finite {_metric_label(metric)} values", transform=ax.transAxes,
                    ha="center", va="center", fontsize=10, color="0.4")
            ax.set_xlim(xs.min(), xs.max())
            ax.set_ylim(ys.min(), ys.max())
        mappables.append((cs, norm))
        ax.plot([0.0], [0.0], ls="none", marker="+", ms=12, mew=2.0, color="white" if filled else "black",
                label="centre", zorder=3,
                path_effects=[withStroke(linewidth=3.5, foreground="black" if filled else "white")])
        has_path = _draw_path(ax, res, filled, _color(label, i))
        if has_path:
            ax.legend(fontsize=8, loc="best", framealpha=0.85)
        xlabel, ylabel = _axis_labels(res)
        ax.set_xlabel(xlabel, fontsize=11)
        ax.set_ylabel(ylabel, fontsize=11)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.yaxis.set_major_locator(MaxNLocator(6))
        if label:
            ax.set_title(label, fontsize=12, color=COLORS.get(label.upper(), "black"))
        if np.isclose(np.ptp(xs), np.ptp(ys), rtol=1e-6):
            ax.set_aspect("equal")
        if not shared_scale:
            _colorbar(fig, cs, norm, cmap, ax, metric)
    if shared_scale:
        cs = next((m for m, _ in mappables if m is not None), None)
        _colorbar(fig, cs, shared[1], cmap, list(axes), metric)
    fig.suptitle(title or _default_title(items[0][1], metric), fontsize=13)
    return _finish(fig, path, formats, return_figure)


def _log_ticks(vmin: float, vmax: float) -> np.ndarray:
    """Readable ticks for a log colorbar over [vmin, vmax]: decades when there are at least
    three of them (thinned to at most eight), else 1-2-5 steps, else 1..9 steps, else a few
    round linear values."""
    lo, hi = int(np.floor(np.log10(vmin))), int(np.ceil(np.log10(vmax)))
    inside = lambda t: t[(t >= vmin * (1 - 1e-9)) & (t <= vmax * (1 + 1e-9))]  # noqa: E731
    for mantissas in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = inside(np.array([m * 10.0 ** k for k in range(lo, hi + 1) for m in mantissas]))
        if len(ticks) >= 3:
            return ticks[:: int(np.ceil(len(ticks) / 8))]
    from matplotlib.ticker import MaxNLocator
    return inside(np.asarray(MaxNLocator(4).tick_values(vmin, vmax)))


def _colorbar(fig: Figure, mappable, norm, cmap, ax, metric: str, **kwargs):
    from matplotlib.colors import LogNorm

    if mappable is None:
        from matplotlib.cm import ScalarMappable
        mappable = ScalarMappable(norm=norm, cmap=cmap)
    cbar = fig.colorbar(mappable, ax=ax, **kwargs)
    if isinstance(norm, LogNorm):
        ticks = _log_ticks(norm.vmin, norm.vmax)
        cbar.set_ticks(ticks, labels=[f"{t:.3g}" for t in ticks])
        cbar.ax.minorticks_off()
    else:  # round values, not the (many, arbitrary) contour levels
        from matplotlib.ticker import MaxNLocator
        ticks = np.asarray(MaxNLocator(6).tick_values(norm.vmin, norm.vmax))
        span = norm.vmax - norm.vmin
        cbar.set_ticks(ticks[(ticks >= norm.vmin - 1e-9 * span) & (ticks <= norm.vmax + 1e-9 * span)])
    cbar.ax.tick_params(labelsize=10)
    cbar.set_label(_metric_label(metric) + (" (log scale)" if isinstance(norm, LogNorm) else ""), fontsize=11)
    return cbar


def plot_surface3d(results: Mapping[str, Any], path: str | Path, metric: str = "loss",
                   formats: Sequence[str] = ("png",), title: str | None = None, shared_scale: bool = True,
                   log: bool = False, return_figure: bool = False):
    """2-D landscapes as 3-D surfaces, one panel per label. With ``shared_scale`` all panels share
    the z range and the colour normalisation (from the union of finite values) and one colorbar.
    ``log=True`` draws log10 of the metric (clipped at a small positive floor) -- the linear
    view of a surface spanning decades is one spike. NaN values leave holes. A result's ``path``
    (E, 2), if any, is drawn on the surface at the interpolated grid height. Returns the files
    written, or ``(files, figure)`` with ``return_figure``."""
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    if not results:
        raise ValueError("plot_surface3d needs at least one result")
    items = [(str(label), res, *_surface(res, metric)) for label, res in results.items()]
    zlabel = _metric_label(metric)
    if log:
        floor = _log_floor(np.concatenate([z.ravel() for *_, z in items]))
        if floor is not None:
            items = [(lb, r, xs, ys, np.log10(_clip(z, floor))) for lb, r, xs, ys, z in items]
            zlabel = f"log10 {zlabel}"
    cmap = _LANDSCAPE_CMAP
    n = len(items)
    fig = Figure(figsize=(4.6 * n + 1.0, 4.4), layout="constrained")
    axes = [fig.add_subplot(1, n, k + 1, projection="3d") for k in range(n)]

    def zrange(values):
        _, norm, _ = _scale(values, 2, False)
        return Normalize(norm.vmin, norm.vmax)

    if shared_scale:
        shared = zrange(np.concatenate([z.ravel() for *_, z in items]))
    for (label, res, xs, ys, z), ax in zip(items, axes):
        norm = shared if shared_scale else zrange(z.ravel())
        X, Y = np.meshgrid(xs, ys)
        if np.isfinite(z).any():
            ax.plot_surface(X, Y, z, cmap=cmap, norm=Normalize(norm.vmin, norm.vmax),
                            rcount=min(z.shape[0], 200), ccount=min(z.shape[1], 200),
                            linewidth=0, antialiased=False)
        ax.set_zlim(norm.vmin, norm.vmax)
        _draw_path3d(ax, res, xs, ys, z, _color(label, 0))
        xlabel, ylabel = _axis_labels(res)
        ax.set_xlabel(xlabel, fontsize=9, labelpad=2)
        ax.set_ylabel(ylabel, fontsize=9, labelpad=2)
        ax.set_zlabel(zlabel, fontsize=9, labelpad=2)
        ax.tick_params(labelsize=8, pad=0)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(5))
        if label:
            ax.set_title(label, fontsize=12, color=COLORS.get(label.upper(), "black"))
        if not shared_scale:
            _colorbar(fig, None, norm, cmap, ax, zlabel if log else metric, shrink=0.6, pad=0.1)
    if shared_scale:
        _colorbar(fig, None, shared, cmap, axes, zlabel if log else metric, shrink=0.6, pad=0.05)
    fig.suptitle(title or _default_title(items[0][1], metric), fontsize=13)
    return _finish(fig, path, formats, return_figure)


def plot_slices(result: Any, path: str | Path, metric: str = "loss", indices: Sequence[int] | None = None,
                formats: Sequence[str] = ("png",), title: str | None = None, return_figure: bool = False,
                **contour_kwargs):
    """A 3-D grid (``loss[k, i, j]`` at (xs[j], ys[i], zs[k])) as 2-D contour panels at fixed
    third coordinates, side by side on one shared scale: by default at the smallest, the
    nearest-to-centre and the largest ``zs`` (``result.slice(k)`` for each index). ``contour_kwargs``
    go to :func:`plot_contour` (``filled``, ``levels``, ``log_levels``)."""
    zs = _opt(result, "zs")
    if zs is None:
        raise ValueError("plot_slices needs a 3-D result (with zs)")
    zs = np.asarray(zs, dtype=float)
    if indices is None:
        indices = sorted({0, int(np.argmin(np.abs(zs))), len(zs) - 1})
    panels = {f"direction 3 = {zs[k]:.3g}": result.slice(k) for k in indices}
    return plot_contour(panels, path, metric=metric, formats=formats, return_figure=return_figure,
                        title=title or f"{_default_title(result.slice(indices[0]), metric)}: slices of a 3-D grid",
                        **contour_kwargs)


def plot_trajectory(result: Any, path: str | Path, formats: Sequence[str] = ("png",), title: str | None = None,
                    label: str = "", return_figure: bool = False, **contour_kwargs):
    """The optimisation trajectory in the PCA plane over the loss contours (Li et al. 2018,
    Fig. 9): ``plot_contour({label: result})`` with the result's ``path``, axes labelled with
    the explained variance of each component. ``contour_kwargs`` go to ``plot_contour``
    (``metric``, ``filled``, ``levels``, ``log_levels``)."""
    if _opt(result, "path") is None:
        raise ValueError("plot_trajectory needs a result with a path (E, 2)")
    return plot_contour({label: result}, path, formats=formats,
                        title=title or "Training trajectory in the PCA plane",
                        return_figure=return_figure, **contour_kwargs)


# --------------------------------------------------------------------------------------
# SAM diagnostics
# --------------------------------------------------------------------------------------
_LINESTYLES = ["-", "--", ":", "-."]


def plot_m_sharpness(results: Mapping[str, Any], path: str | Path, against: str = "m",
                     formats: Sequence[str] = ("png",), title: str | None = None) -> list[Path]:
    """m-sharpness with standard-error bars against m (log axis; one line per label and rho)
    or against rho (one line per label and m). ``results`` hold ``.results`` lists of
    objects with m, rho, mean, stderr (``sharpscope.sharpness.SharpnessResult``)."""
    if against not in ("m", "rho"):
        raise ValueError("against must be 'm' or 'rho'")
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for i, (label, res) in enumerate(results.items()):
        rows = _get(res, "results")
        rows = [r if isinstance(r, Mapping) else r.__dict__ for r in rows]
        groups = sorted({r["rho" if against == "m" else "m"] for r in rows})
        for j, key in enumerate(groups):
            sel = sorted((r for r in rows if r["rho" if against == "m" else "m"] == key), key=lambda r: r[against])
            xs = [r[against] for r in sel]
            ys = [r["mean"] for r in sel]
            err = [r["stderr"] if np.isfinite(r["stderr"]) else 0.0 for r in sel]
            name = label if len(groups) == 1 else f"{label}, {'rho' if against == 'm' else 'm'} = {key:g}"
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color=_color(label, i),
                        linestyle=_LINESTYLES[j % len(_LINESTYLES)], label=name)
    if against == "m":
        from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter
        ax.set_xscale("log", base=2)
        ms = sorted({(r if isinstance(r, Mapping) else r.__dict__)["m"]
                     for res in results.values() for r in _get(res, "results")})
        ax.xaxis.set_major_locator(FixedLocator(ms))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel("m (examples per perturbation)")
    else:
        ax.set_xlabel("rho")
    ax.set_ylabel("m-sharpness  max L_b(w+e) - L_b(w)")
    ax.set_title(title or f"m-sharpness against {against}")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path, formats)


def plot_tracking(runs: Mapping[str, Sequence[Mapping[str, Any]]], keys: Sequence[str], path: str | Path,
                  formats: Sequence[str] = ("png",), title: str | None = None) -> list[Path]:
    """Quantities tracked during training (``metrics.jsonl`` records with ``epoch`` and the
    given keys), one panel per key, one line per run; a label may hold one run per seed
    (each seed thin, the mean with its 95 % band)."""
    keys = [k for k in keys if any(k in rec for value in runs.values() for recs in _seed_runs(value) for rec in recs)]
    if not keys:
        raise ValueError("none of the keys appear in the metrics")
    fig = Figure(figsize=(max(4.2 * len(keys), 6.4), 3.8))
    axes = np.atleast_1d(fig.subplots(1, len(keys)))
    for ax, key in zip(axes, keys):
        for i, (label, value) in enumerate(runs.items()):
            series = []
            for records in _seed_runs(value):
                pts = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
                if pts:
                    series.append(tuple(map(list, zip(*pts))))
            if series:
                _seed_lines(ax, series, _color(label, i), label, marker="o", ms=3, band_alpha=_band_alpha(len(runs)),
                            bounds=_TRACK_BOUNDS.get(key))
                if key == "lambda_max":
                    _edge_lines(ax, _seed_runs(value), _color(label, i), label)
        ax.set_xlabel("epoch")
        ax.set_title(key.replace("_", " "))
        ax.grid(alpha=0.3)
        if key == "lambda_max":
            ax.legend(fontsize=7)
    axes[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, formats)


_EDGES = (("edge_of_stability", "--", "(2 + 2 beta) / lr"), ("sam_edge_of_stability", ":", "SAM's edge"))


def _edge_lines(ax, seeds: Sequence[Sequence[Mapping[str, Any]]], color: str, label: str) -> None:
    """The edges of stability recorded beside lambda_max (first seed's; the learning rate is the
    same on every seed, the gradient norm of SAM's edge nearly so), on a log axis whose top
    stops at 3x the largest lambda_max so that the edge's climb as lr -> 0 does not flatten
    the curves."""
    records = seeds[0]
    top = max((r["lambda_max"] for recs in seeds for r in recs if r.get("lambda_max") is not None), default=None)
    drawn = False
    for key, style, name in _EDGES:
        pts = [(r["epoch"], r[key]) for r in records if r.get(key) is not None and np.isfinite(r[key])]
        if pts:
            ax.plot(*zip(*pts), ls=style, color=color, lw=1.2, label=f"{label}: {name}")
            drawn = True
    if drawn and top is not None and top > 0:
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        ax.set_ylim(low, max(min(high, 3.0 * top), top * 1.5))


def plot_training_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path,
                         formats: Sequence[str] = ("png",), title: str | None = None) -> list[Path]:
    """Train loss (log), test loss and test accuracy per epoch, one line per run; with label
    noise also the training accuracy on the clean labels (dashed). A label may hold one run
    per seed: each seed thin, the mean with its 95 % band."""
    fig = Figure(figsize=(13.0, 3.8))
    axes = fig.subplots(1, 3)
    band = _band_alpha(len(runs))
    for i, (label, value) in enumerate(runs.items()):
        seeds = _seed_runs(value)
        color = _color(label, i)

        def series(key: str) -> list[tuple[list, list]]:
            return [([r["epoch"] for r in recs], [r.get(key) for r in recs]) for recs in seeds]

        _seed_lines(axes[0], series("train_loss"), color, label, semilogy=True, band_alpha=band,
                    bounds=(1e-12, np.inf))
        _seed_lines(axes[1], series("test_loss"), color, label, band_alpha=band, bounds=(0.0, np.inf))
        _seed_lines(axes[2], series("test_acc"), color, f"{label} test", band_alpha=band, bounds=(0.0, 1.0))
        if any(r.get("train_acc_clean") != r.get("train_acc") for recs in seeds for r in recs):
            _seed_lines(axes[2], series("train_acc_clean"), color, f"{label} train (clean labels)", ls="--",
                        band_alpha=band, bounds=(0.0, 1.0))
    for ax, name in zip(axes, ("train loss", "test loss", "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    axes[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, formats)


__all__ += ["plot_m_sharpness_seeds", "plot_paired_differences"]


def plot_m_sharpness_seeds(results: Mapping[str, Sequence[Any]], path: str | Path,
                           formats: Sequence[str] = ("png",), title: str | None = None) -> list[Path]:
    """m-sharpness against m over seeds: each seed's mean over subsets as a point, the mean
    over seeds with its 95 % Student-t interval as error bars (one line per label and rho)."""
    from . import stats

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    ms_all: set[int] = set()
    for i, (label, per_seed) in enumerate(results.items()):
        rows = [r if isinstance(r, Mapping) else r.__dict__ for res in per_seed for r in _get(res, "results")]
        rhos = sorted({r["rho"] for r in rows})
        dodge = 2.0 ** (0.06 * (i - (len(results) - 1) / 2))  # labels side by side around each m (log axis)
        for j, rho in enumerate(rhos):
            ms = sorted({r["m"] for r in rows if r["rho"] == rho})
            ms_all.update(ms)
            values = [[r["mean"] for r in rows if r["rho"] == rho and r["m"] == m] for m in ms]
            for m, vs in zip(ms, values):
                ax.plot([m * dodge] * len(vs), vs, "o", ms=3, alpha=0.4, color=_color(label, i))
            summaries = [stats.summarize(vs) for vs in values]
            means = [t.mean for t in summaries]
            err = [0.0 if not np.isfinite(t.ci_high) else t.ci_high - t.mean for t in summaries]
            name = label if len(rhos) == 1 else f"{label}, rho = {rho:g}"
            n = len(per_seed)
            ax.errorbar([m * dodge for m in ms], means, yerr=err, marker="o", capsize=3, color=_color(label, i),
                        linestyle=_LINESTYLES[j % len(_LINESTYLES)], label=f"{name} (mean of {n}, 95% CI)")
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(ms_all)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("m (examples per perturbation)")
    ax.set_ylabel("m-sharpness  max L_b(w+e) - L_b(w)")
    ax.set_title(title or "m-sharpness against m (points: seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, formats)


def plot_paired_differences(differences: Mapping[str, Mapping[str, Any]], metrics: Sequence[str],
                            path: str | Path, baseline: str = "SGD", formats: Sequence[str] = ("png",),
                            title: str | None = None) -> list[Path]:
    """Paired differences to ``baseline`` (``{label: {metric: PairedDifference dict}}``), one
    panel per metric: the mean difference with its confidence interval per label, and a line
    at zero; a difference whose interval holds zero is drawn hollow."""
    metrics = [m for m in metrics if any(m in d for d in differences.values())]
    if not metrics:
        raise ValueError("none of the metrics has a paired difference")
    labels = list(differences)
    fig = Figure(figsize=(max(2.6, 0.55 * len(labels) + 1.2) * len(metrics), 3.4))
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    for ax, metric in zip(axes, metrics):
        for i, label in enumerate(labels):
            d = differences[label].get(metric)
            if d is None:
                continue
            low, high = d["ci_low"], d["ci_high"]
            spans_zero = not (np.isfinite(low) and np.isfinite(high)) or low <= 0 <= high
            color = _color(label, i + 1)
            if np.isfinite(low) and np.isfinite(high):
                ax.plot([i, i], [low, high], color=color, lw=2)
            ax.plot([i], [d["mean"]], "o", ms=7, color=color, mfc="white" if spans_zero else color)
        ax.axhline(0.0, color="0.4", lw=0.8, ls="--")
        if len(labels) > 2:  # several names side by side: slanted so they do not run into each other
            ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=9)
        else:
            ax.set_xticks(range(len(labels)), labels)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        ax.set_title(metric.replace("_", " "), fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title or f"difference to {baseline} over paired seeds (mean, 95% CI; hollow: CI holds 0)",
                 fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, formats)



__all__ += ["plot_sweep"]


def plot_sweep(groups: Mapping[str, Mapping[Any, Mapping[Any, float | None]]], path: str | Path, *,
               xlabel: str, ylabel: str, formats: Sequence[str] = ("png",), title: str | None = None,
               confidence: float = 0.95) -> list[Path]:
    """A metric against one swept option, one line per group of the other options.

    ``groups[label][seed] = {x: value}``. Each seed is a thin line with points; the mean over
    the seeds that have a finite value at x is the bold line, with its Student-t confidence
    band (:func:`sharpscope.stats.summarize`; no band with one seed). A group whose only x is
    None (the option does not apply, e.g. SGD against rho) is a horizontal reference: its
    mean dashed across the axis with its band. x values that are not all numbers are drawn
    as categories in the order first met, with the seeds as points and the mean with its
    interval as an error bar (no lines between categories); positive numbers spanning a decade or more get a
    log axis ticked at the values swept. The y-axis spans the values with a margin of 60 %
    of their range: the wide bands of two or three seeds run off it rather than flatten
    every line. Each group has its own colour (SGD its usual one).
    """
    from . import stats

    xs_all: list[Any] = []
    for per_seed in groups.values():
        for points in per_seed.values():
            xs_all += [x for x in points if x is not None and x not in xs_all]
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs_all)
    if numeric:
        xs_all = sorted(xs_all)
    position = (lambda x: float(x)) if numeric else (lambda x: float(xs_all.index(x)))
    fig = Figure(figsize=(7.2, 4.2))
    ax = fig.subplots()

    def summary(values: list[float]) -> Any:
        return stats.summarize(values, confidence) if values else None

    colors: list[str] = []
    for label in groups:
        fixed = COLORS.get(label.upper())
        free = [c for c in _CYCLE if c not in colors and c not in COLORS.values()] or _CYCLE
        colors.append(fixed if fixed and fixed not in colors else free[0])
    shown: list[float] = []
    for (label, per_seed), color in zip(groups.items(), colors):
        shown += [v for points in per_seed.values() for v in points.values() if v is not None and np.isfinite(v)]
        n_seeds = len(per_seed)
        if all(set(points) <= {None} for points in per_seed.values()):  # a reference level
            t = summary([v for points in per_seed.values() for v in points.values()
                         if v is not None and np.isfinite(v)])
            if t is None:
                continue
            ax.axhline(t.mean, color=color, ls="--", lw=1.5, label=f"{label} (mean of {t.n})")
            if np.isfinite(t.ci_low):
                ax.axhspan(t.ci_low, t.ci_high, color=color, alpha=0.12, lw=0)
            continue
        by_x: dict[Any, list[float]] = {}
        for points in per_seed.values():
            pts = sorted(((position(x), v) for x, v in points.items()
                          if x is not None and v is not None and np.isfinite(v)), key=lambda p: p[0])
            for (x, v) in pts:
                by_x.setdefault(x, []).append(v)
            if n_seeds > 1 and pts:  # categories are not joined: a line between them would mean nothing
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if numeric else "o", color=color, lw=0.7,
                        ms=2.5, alpha=0.35)
        xs = sorted(by_x)
        if not xs:
            continue
        summaries = [summary(by_x[x]) for x in xs]
        name = label if n_seeds == 1 else f"{label} (mean of {n_seeds})"
        band = [(x, t) for x, t in zip(xs, summaries) if np.isfinite(t.ci_low)]
        if not numeric:  # categories: the mean with its interval as an error bar at each
            err = [[t.mean - t.ci_low if np.isfinite(t.ci_low) else 0.0 for t in summaries],
                   [t.ci_high - t.mean if np.isfinite(t.ci_high) else 0.0 for t in summaries]]
            ax.errorbar(xs, [t.mean for t in summaries], yerr=err, fmt="o", color=color, ms=5, capsize=4, label=name)
            continue
        ax.plot(xs, [t.mean for t in summaries], "o-", color=color, lw=1.8, ms=4, label=name)
        if band:
            ax.fill_between([x for x, _ in band], [t.ci_low for _, t in band], [t.ci_high for _, t in band],
                            color=color, alpha=0.18, lw=0)
    from matplotlib.ticker import FixedLocator, NullLocator
    if numeric and xs_all and min(xs_all) > 0 and max(xs_all) >= 10 * min(xs_all):
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
    if xs_all:
        ticks = [position(x) for x in xs_all]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.set_xticklabels([f"{x:g}" if numeric else str(x) for x in xs_all])
    if shown:
        lo, hi = min(shown), max(shown)
        pad = 0.6 * (hi - lo) or 0.05 * abs(hi) or 0.05
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{ylabel} against {xlabel} (thin: seeds; band: {confidence:.0%} CI)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return save_figure(fig, path, formats)


def plot_correlations(panels: Mapping[str, Mapping[str, Sequence[Any]]], path: str | Path, *, ylabel: str,
                      notes: Mapping[str, str] | None = None, formats: Sequence[str] = ("png",),
                      title: str | None = None) -> list[Path]:
    """One panel per measure: each run's measure (x) against its generalization gap (y),
    coloured by its group (e.g. the optimizer). ``panels[measure]`` holds equal-length
    lists ``x``, ``y`` and ``group``; ``notes[measure]`` is written in the panel's title
    (e.g. "tau 0.41 [0.20, 0.60]"). Measures spanning two decades or more of positive
    values get a log x-axis."""
    names = list(panels)
    if not names:
        raise ValueError("plot_correlations: no measures to draw")
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(3.6 * cols, 3.0 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    groups = list(dict.fromkeys(g for p in panels.values() for g in p["group"]))
    colors = {g: _color(str(g), i) for i, g in enumerate(groups)}
    for ax, name in zip(axes, names):
        p = panels[name]
        for g in groups:
            pts = [(x, y) for x, y, gg in zip(p["x"], p["y"], p["group"]) if gg == g]
            if pts:
                ax.scatter([q[0] for q in pts], [q[1] for q in pts], s=14, color=colors[g], alpha=0.75,
                           label=str(g))
        xs = [x for x in p["x"] if x is not None and np.isfinite(x)]
        if xs and min(xs) > 0 and max(xs) >= 100 * min(xs):
            ax.set_xscale("log")
        ax.set_title(f"{name}\n{notes[name]}" if notes and name in notes else name, fontsize=8.5)
        ax.set_xlabel(name, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    if len(groups) > 1:
        axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, formats)
