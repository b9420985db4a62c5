"""Loss-landscape figures: 1-D curves, 2-D contours, 3-D surfaces, PCA trajectories."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ._grids import (LANDSCAPE_CMAP, PATH_STAR, axis_labels, clip_to, colour_scale, curve_of,
                     default_title, endpoint_names, has_finite, kind_of, log_floor, metric_label,
                     opt_of, surface_of)
from ._style import COLORS, CYCLE, color_of, finish


def plot_curve(results: Mapping[str, Any], path: str | Path, metric: str = "loss",
               formats: Sequence[str] = ("png",), title: str | None = None, log: bool = False,
               return_figure: bool = False):
    """1-D landscapes: one line per label of ``r.<metric>`` (loss, accuracy, or a custom metric
    of ``r.metrics``; likewise in the 2-D plots) against ``r.xs``, with the accuracy in a panel
    below for the loss. ``log``: a log axis (values clipped at a small positive floor).
    Interpolations get dotted lines at alpha = 0 and 1, named after the endpoints on the top
    axis. NaN values leave gaps. Returns the files written, or ``(files, figure)``."""
    if not results:
        raise ValueError("plot_curve needs at least one result")
    items = [(str(label), res) for label, res in results.items()]
    curves = [(label, *curve_of(res, metric)) for label, res in items]
    fig, ax, ax_acc = _with_accuracy_panel(metric == "loss" and any(has_finite(res, "accuracy") for _, res in items))
    floor = log_floor(np.concatenate([c[2].ravel() for c in curves])) if log else None
    for i, (label, xs, values) in enumerate(curves):
        color = color_of(label, i)
        ax.plot(xs, clip_to(values, floor), color=color, lw=1.6, label=label or None)
        if ax_acc is not None and has_finite(items[i][1], "accuracy"):
            ax_acc.plot(*curve_of(items[i][1], "accuracy"), color=color, lw=1.6, label=label or None)
    if log and floor is not None:
        ax.set_yscale("log")
    first = items[0][1]
    xlabel = axis_labels(first)[0]
    interp = [res for _, res in items if kind_of(res) == "interpolation"]
    if interp:
        name_a, name_b = (" / ".join(dict.fromkeys(endpoint_names(r)[k] for r in interp)) for k in (0, 1))
        xlabel = f"alpha (0 = {name_a}, 1 = {name_b})"
        for a in [ax] + ([ax_acc] if ax_acc is not None else []):
            for x0 in (0.0, 1.0):
                a.axvline(x0, color="0.35", ls=":", lw=1.2, zorder=0)
        top = ax.secondary_xaxis("top")
        top.set_xticks([0.0, 1.0], labels=[name_a, name_b])
        top.tick_params(length=0, labelsize=10)
    ax.set_ylabel(metric_label(metric) + (" (log scale)" if log and floor is not None else ""), fontsize=11)
    default = ("linear interpolation" if interp else "the PCA plane" if kind_of(first) == "trajectory" else
               "the top Hessian eigenvector" if kind_of(first) == "hessian" else "a random direction")
    ax.set_title(title or f"{metric_label(metric).capitalize()} along {default}", fontsize=12)
    ax.grid(alpha=0.3)
    if any(label for label, _ in items):
        ax.legend(fontsize=10)
    _finish_accuracy_panel(ax, ax_acc, xlabel)
    return finish(fig, path, formats, return_figure)


def _with_accuracy_panel(with_acc: bool) -> tuple[Figure, Any, Any]:
    """A figure with the metric's axes and, when ``with_acc``, an accuracy panel below (else None)."""
    fig = Figure(figsize=(6.4, 6.0 if with_acc else 4.0), layout="constrained")
    if with_acc:
        return fig, *fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    return fig, fig.subplots(), None


def _finish_accuracy_panel(ax: Any, ax_acc: Any, xlabel: str) -> None:
    if ax_acc is not None:
        ax_acc.set_ylabel("accuracy", fontsize=11)
        ax_acc.grid(alpha=0.3)
    (ax_acc or ax).set_xlabel(xlabel, fontsize=11)


def plot_eigen_curve(eigen: Any, random: Any, eigenvalue: float, slope: float, loss0: float, path: str | Path,
                     formats: Sequence[str] = ("png",), title: str | None = None, return_figure: bool = False):
    """The loss along the top Hessian eigenvector beside the loss along a random direction, both
    unit vectors in parameter space (equal coordinates are equal distances), with the
    second-order model L_0 + (g . v) t + lambda t^2 / 2 dashed; accuracy below when finite.
    Returns the files written, or ``(files, figure)``."""
    xs, le = curve_of(eigen, "loss")
    xr, lr = curve_of(random, "loss")
    fig, ax, ax_acc = _with_accuracy_panel(has_finite(eigen, "accuracy") or has_finite(random, "accuracy"))
    c_eig, c_rand = CYCLE[1], CYCLE[0]
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
    for res, color in ((eigen, c_eig), (random, c_rand)):
        if ax_acc is not None and has_finite(res, "accuracy"):
            ax_acc.plot(*curve_of(res, "accuracy"), color=color, lw=1.6)
    _finish_accuracy_panel(ax, ax_acc, "distance along the unit direction (parameter space)")
    return finish(fig, path, formats, return_figure)


def _warn_path_off_grid(pts: np.ndarray, xs: Any, ys: Any) -> None:
    """Warn when a path drawn over a grid leaves it: the loss around those points is not known."""
    if xs is None or ys is None:
        return
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    off = ((pts[:, 0] < xs.min()) | (pts[:, 0] > xs.max()) | (pts[:, 1] < ys.min()) | (pts[:, 1] > ys.max()))
    if off.any():
        import warnings
        warnings.warn(f"{int(off.sum())} of the path's {len(pts)} points lie off the grid (x in [{xs.min():.4g}, "
                      f"{xs.max():.4g}], y in [{ys.min():.4g}, {ys.max():.4g}]; the path spans x in "
                      f"[{pts[:, 0].min():.4g}, {pts[:, 0].max():.4g}], y in [{pts[:, 1].min():.4g}, "
                      f"{pts[:, 1].max():.4g}]): widen the grid to see the loss there", UserWarning, stacklevel=3)


def _path(result: Any, strict: bool) -> np.ndarray | None:
    """A result's ``path`` (E, 2), None when it has none (or, unless ``strict``, a bad shape)."""
    raw = opt_of(result, "path")
    pts = None if raw is None else np.asarray(raw, dtype=float)
    if pts is not None and (pts.ndim != 2 or pts.shape[1] != 2):
        if strict:
            raise ValueError(f"path must have shape (E, 2), got {pts.shape}")
        return None
    return pts if pts is not None and len(pts) else None


def _draw_path(ax, result: Any, filled: bool, color: str) -> bool:
    pts = _path(result, strict=True)
    if pts is None:
        return False
    _warn_path_off_grid(pts, opt_of(result, "xs"), opt_of(result, "ys"))
    ax.plot(pts[:, 0], pts[:, 1], "-o", color="white" if filled else color, mec="black", mew=0.6,
            ms=4, lw=1.6, label="trajectory (per epoch)", zorder=4)
    ax.plot(pts[-1:, 0], pts[-1:, 1], ls="none", marker="*", ms=15, color=PATH_STAR, mec="black",
            mew=0.8, label="final model", zorder=5)
    return True


def _draw_path3d(ax, result: Any, xs: np.ndarray, ys: np.ndarray, z: np.ndarray, color: str) -> bool:
    """A result's path on a 3-D surface, at the bilinearly interpolated height of the grid."""
    pts = _path(result, strict=False)
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if pts is None or len(xs) < 2 or len(ys) < 2:
        return False
    from scipy.interpolate import RegularGridInterpolator

    heights = RegularGridInterpolator((ys, xs), np.asarray(z, dtype=float), bounds_error=False,
                                      fill_value=np.nan)(pts[:, ::-1])
    ax.plot(pts[:, 0], pts[:, 1], heights, "-o", color=color, mec="black", mew=0.5, ms=3, lw=1.6, zorder=10,
            label="trajectory (per epoch)")
    ax.plot(pts[-1:, 0], pts[-1:, 1], heights[-1:], ls="none", marker="*", ms=12, color=PATH_STAR, mec="black",
            mew=0.8, zorder=11)
    return True


def plot_contour(results: Mapping[str, Any], path: str | Path, metric: str = "loss", filled: bool = False,
                 levels: int = 30, log_levels: bool | None = True, formats: Sequence[str] = ("png",),
                 title: str | None = None, shared_scale: bool = True, return_figure: bool = False):
    """2-D landscapes as contour plots, one panel per label side by side. ``shared_scale``: the
    same levels and colour normalisation (from the union of finite values) and one colorbar for
    every panel, so that the sharper minimum does not look as flat as the other.
    ``log_levels``: geometric levels (values clipped at most ``LOG_DECADES`` decades below the
    maximum; None: unless the metric is accuracy). The centre is marked "+", a result's
    ``path`` drawn over the contours (Li et al. 2018, Fig. 9); NaN values are masked. Returns
    the files written, or ``(files, figure)``."""
    if not results:
        raise ValueError("plot_contour needs at least one result")
    items = [(str(label), res, *surface_of(res, metric)) for label, res in results.items()]
    if log_levels is None:
        log_levels = metric != "accuracy"
    from matplotlib.patheffects import withStroke
    from matplotlib.ticker import MaxNLocator

    cmap = LANDSCAPE_CMAP
    n = len(items)
    fig = Figure(figsize=(4.2 * n + 1.2, 4.2), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    if shared_scale:
        shared = colour_scale(np.concatenate([z.ravel() for *_, z in items]), levels, log_levels)

    mappables = []
    for i, ((label, res, xs, ys, z), ax) in enumerate(zip(items, axes)):
        lv, norm, floor = shared if shared_scale else colour_scale(z.ravel(), levels, log_levels)
        data = np.ma.masked_invalid(clip_to(z, floor))
        X, Y = np.meshgrid(xs, ys)
        cs = None
        if data.count() > 0:
            cs = (ax.contourf(X, Y, data, levels=lv, cmap=cmap, norm=norm) if filled else
                  ax.contour(X, Y, data, levels=lv, cmap=cmap, norm=norm, linewidths=1.0))
        else:
            ax.text(0.5, 0.5, f"no finite {metric_label(metric)} values", transform=ax.transAxes,
                    ha="center", va="center", fontsize=10, color="0.4")
            ax.set_xlim(xs.min(), xs.max())
            ax.set_ylim(ys.min(), ys.max())
        mappables.append(cs)
        ax.plot([0.0], [0.0], ls="none", marker="+", ms=12, mew=2.0, color="white" if filled else "black",
                label="centre", zorder=3,
                path_effects=[withStroke(linewidth=3.5, foreground="black" if filled else "white")])
        if _draw_path(ax, res, filled, color_of(label, i)):
            ax.legend(fontsize=8, loc="best", framealpha=0.85)
        xlabel, ylabel = axis_labels(res)
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
        _colorbar(fig, next((m for m in mappables if m is not None), None), shared[1], cmap, list(axes), metric)
    fig.suptitle(title or default_title(items[0][1], metric), fontsize=13)
    return finish(fig, path, formats, return_figure)


def _log_ticks(vmin: float, vmax: float) -> np.ndarray:
    """Ticks for a log colorbar: the first of decades, 1-2-5 or 1..9 steps that gives three or
    more (at most eight), else a few round linear values."""
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
    cbar.set_label(metric_label(metric) + (" (log scale)" if isinstance(norm, LogNorm) else ""), fontsize=11)
    return cbar


def _tick_chars(vmin: float, vmax: float, n: int = 5) -> int:
    """Characters of the longest of ``n`` round tick labels over [vmin, vmax]: how far a 3-D
    axis label must stand off its ticks."""
    from matplotlib.ticker import MaxNLocator

    ticks = MaxNLocator(n).tick_values(vmin, vmax)
    step = float(np.min(np.diff(ticks))) if len(ticks) > 1 else 1.0
    decimals = max(0, -int(np.floor(np.log10(step)))) if step > 0 and np.isfinite(step) else 0
    return max(len(f"{v:.{decimals}f}") for v in ticks)


def plot_surface3d(results: Mapping[str, Any], path: str | Path, metric: str = "loss",
                   formats: Sequence[str] = ("png",), title: str | None = None, shared_scale: bool = True,
                   log: bool = False, return_figure: bool = False):
    """2-D landscapes as 3-D surfaces, one panel per label (``shared_scale``: one z range, colour
    normalisation and colorbar). ``log``: log10 of the metric (clipped at a positive floor).
    NaN values leave holes; a result's ``path`` is drawn on the surface. Returns the files
    written, or ``(files, figure)``."""
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    if not results:
        raise ValueError("plot_surface3d needs at least one result")
    items = [(str(label), res, *surface_of(res, metric)) for label, res in results.items()]
    zlabel = metric_label(metric)
    if log:
        floor = log_floor(np.concatenate([z.ravel() for *_, z in items]))
        if floor is not None:
            items = [(lb, r, xs, ys, np.log10(clip_to(z, floor))) for lb, r, xs, ys, z in items]
            zlabel = f"log10 {zlabel}"
    cmap = LANDSCAPE_CMAP
    n = len(items)
    fig = Figure(figsize=(4.6 * n + 1.0, 4.4), layout="constrained")
    axes = [fig.add_subplot(1, n, k + 1, projection="3d") for k in range(n)]

    def zrange(values):
        _, norm, _ = colour_scale(values, 2, False)
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
        _draw_path3d(ax, res, xs, ys, z, color_of(label, 0))
        xlabel, ylabel = axis_labels(res)
        ax.set_xlabel(xlabel, fontsize=9, labelpad=2)
        ax.set_ylabel(ylabel, fontsize=9, labelpad=2)
        ax.set_zlabel(zlabel, fontsize=9, labelpad=2 + 1.2 * _tick_chars(norm.vmin, norm.vmax))  # clear of the ticks
        ax.set_box_aspect(None, zoom=0.92)  # room inside the panel for the z-label
        ax.tick_params(labelsize=8, pad=0)
        for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
            axis.set_major_locator(MaxNLocator(5))
        if label:
            ax.set_title(label, fontsize=12, color=COLORS.get(label.upper(), "black"))
        if not shared_scale:
            _colorbar(fig, None, norm, cmap, ax, zlabel if log else metric, shrink=0.6, pad=0.16)
    if shared_scale:
        _colorbar(fig, None, shared, cmap, axes, zlabel if log else metric, shrink=0.6, pad=0.12 / n)
    fig.suptitle(title or default_title(items[0][1], metric), fontsize=13)
    return finish(fig, path, formats, return_figure)


def plot_slices(result: Any, path: str | Path, metric: str = "loss", indices: Sequence[int] | None = None,
                formats: Sequence[str] = ("png",), title: str | None = None, return_figure: bool = False,
                **contour_kwargs):
    """A 3-D grid (``loss[k, i, j]`` at (xs[j], ys[i], zs[k])) as contour panels of
    ``result.slice(k)`` on one scale, by default at the smallest, nearest-to-centre and largest
    ``zs``; ``contour_kwargs`` go to :func:`plot_contour`."""
    zs = opt_of(result, "zs")
    if zs is None:
        raise ValueError("plot_slices needs a 3-D result (with zs)")
    zs = np.asarray(zs, dtype=float)
    if indices is None:
        indices = sorted({0, int(np.argmin(np.abs(zs))), len(zs) - 1})
    panels = {f"direction 3 = {zs[k]:.3g}": result.slice(k) for k in indices}
    return plot_contour(panels, path, metric=metric, formats=formats, return_figure=return_figure,
                        title=title or f"{default_title(result.slice(indices[0]), metric)}: slices of a 3-D grid",
                        **contour_kwargs)


def plot_trajectory(result: Any, path: str | Path, formats: Sequence[str] = ("png",), title: str | None = None,
                    label: str = "", return_figure: bool = False, **contour_kwargs):
    """The training trajectory over the loss contours of its PCA plane (Li et al. 2018, Fig. 9):
    :func:`plot_contour` of the result with its ``path``, ``contour_kwargs`` passed on."""
    if opt_of(result, "path") is None:
        raise ValueError("plot_trajectory needs a result with a path (E, 2)")
    return plot_contour({label: result}, path, formats=formats,
                        title=title or "Training trajectory in the PCA plane",
                        return_figure=return_figure, **contour_kwargs)


def plot_result(results: Mapping[str, Any], folder: str | Path, stem: str, formats: Sequence[str] = ("png",),
                metrics: Sequence[str] = (), eigen: tuple[Any, float, float, float] | None = None) -> list[Path]:
    """Every figure a surface result calls for, in ``folder`` under the names of
    :func:`figure_names`: a 1-D curve, a 3-D grid's slices, a trajectory and its 3-D surface,
    or a 2-D contour, filled contour and 3-D surface; ``eigen`` = (random result, eigenvalue,
    slope, centre loss): :func:`plot_eigen_curve` instead. Then a curve, contour (linear
    levels) or slices per custom metric in ``metrics``."""
    first = next(iter(results.values()))
    paths = [Path(folder) / name for name in figure_names(stem, first.dim, first.kind == "trajectory", metrics)]
    if eigen is not None:
        random, eigenvalue, slope, loss0 = eigen
        written = plot_eigen_curve(first, random, eigenvalue, slope, loss0, paths[0], formats=formats)
        results = {"eigenvector": first, "random": random}
    elif first.dim == 1:
        written = plot_curve(results, paths[0], formats=formats)
    elif first.dim == 3:
        written = plot_slices(first, paths[0], formats=formats)
    elif first.kind == "trajectory":
        written = plot_trajectory(first, paths[0], formats=formats) + plot_surface3d(results, paths[1], formats=formats)
    else:
        written = (plot_contour(results, paths[0], formats=formats)
                   + plot_contour(results, paths[1], filled=True, formats=formats)
                   + plot_surface3d(results, paths[2], formats=formats))
    for name, path in zip(metrics, paths[len(paths) - len(metrics):]):
        if first.dim == 1:
            written += plot_curve(results, path, metric=name, formats=formats)
        elif first.dim == 3:
            written += plot_slices(first, path, metric=name, log_levels=False, formats=formats)
        else:
            written += plot_contour(results, path, metric=name, log_levels=False, formats=formats)
    return written


def figure_names(stem: str, dim: int, trajectory: bool = False, metrics: Sequence[str] = ()) -> list[str]:
    """The names (without suffix) of the files :func:`plot_result` writes for a ``dim``-D result,
    known before any work so that a command can claim them first."""
    if dim == 1:
        names = [stem]
    elif dim == 3:
        names = [f"{stem}_slices"]
    elif trajectory:
        names = [stem, f"{stem}_3d"]
    else:
        names = [f"{stem}_contour", f"{stem}_filled", f"{stem}_3d"]
    kind = {1: "", 2: "_contour", 3: "_slices"}[dim]
    return names + [f"{stem}_{name}{kind}" for name in metrics]
