"""Figures of many runs: m-sharpness over seeds, paired differences, sweeps, correlations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ._style import COLORS, CYCLE, LINESTYLES, color_of, m_axis, result_rows, save_figure, save_tight


def plot_m_sharpness_seeds(results: Mapping[str, Sequence[Any]], path: str | Path,
                           formats: Sequence[str] = ("png",), title: str | None = None) -> list[Path]:
    """m-sharpness against m over seeds: each seed's value as a point, the mean over seeds with
    its 95 % Student-t interval as error bars (one line per label and rho)."""
    from .. import stats

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    ms_all: set[int] = set()
    for i, (label, per_seed) in enumerate(results.items()):
        rows = [r for res in per_seed for r in result_rows(res)]
        rhos = sorted({r["rho"] for r in rows})
        dodge = 2.0 ** (0.06 * (i - (len(results) - 1) / 2))  # labels side by side around each m (log axis)
        for j, rho in enumerate(rhos):
            ms = sorted({r["m"] for r in rows if r["rho"] == rho})
            ms_all.update(ms)
            values = [[r["mean"] for r in rows if r["rho"] == rho and r["m"] == m] for m in ms]
            for m, vs in zip(ms, values):
                ax.plot([m * dodge] * len(vs), vs, "o", ms=3, alpha=0.4, color=color_of(label, i))
            summaries = [stats.summarize(vs) for vs in values]
            means = [t.mean for t in summaries]
            err = [0.0 if not np.isfinite(t.ci_high) else t.ci_high - t.mean for t in summaries]
            name = label if len(rhos) == 1 else f"{label}, rho = {rho:g}"
            n = len(per_seed)
            ax.errorbar([m * dodge for m in ms], means, yerr=err, marker="o", capsize=3, color=color_of(label, i),
                        linestyle=LINESTYLES[j % len(LINESTYLES)], label=f"{name} (mean of {n}, 95% CI)")
    m_axis(ax, ms_all)
    ax.set_ylabel("m-sharpness  max L_b(w+e) - L_b(w)")
    ax.set_title(title or "m-sharpness against m (points: seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, formats)


def plot_paired_differences(differences: Mapping[str, Mapping[str, Any]], metrics: Sequence[str],
                            path: str | Path, baseline: str = "SGD", formats: Sequence[str] = ("png",),
                            title: str | None = None) -> list[Path]:
    """Paired differences to ``baseline`` (``{label: {metric: PairedDifference dict}}``), a panel
    per metric: each label's mean with its interval, hollow when the interval holds zero."""
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
            color = color_of(label, i + 1)
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
    return save_tight(fig, path, formats, title or f"difference to {baseline} over paired seeds (mean, 95% CI; "
                      "hollow: CI holds 0)", fontsize=10)


def _group_colors(groups: Mapping[str, Any]) -> list[str]:
    """One colour per group: an optimizer's own (once), else the first free one of the cycle."""
    colors: list[str] = []
    for label in groups:
        fixed = COLORS.get(label.upper())
        free = [c for c in CYCLE if c not in colors and c not in COLORS.values()] or CYCLE
        colors.append(fixed if fixed and fixed not in colors else free[0])
    return colors


def _draw_sweep_group(ax, label: str, per_seed: Mapping[Any, Mapping[Any, float | None]], color: str, numeric: bool,
                      position: Any, summary: Any) -> list[float]:
    """One group of :func:`plot_sweep`; returns its finite values (for the y-range)."""
    shown = [v for points in per_seed.values() for v in points.values() if v is not None and np.isfinite(v)]
    n_seeds = len(per_seed)
    if all(set(points) <= {None} for points in per_seed.values()):  # a reference level
        t = summary(shown)
        if t is None:
            return shown
        ax.axhline(t.mean, color=color, ls="--", lw=1.5, label=f"{label} (mean of {t.n})")
        if np.isfinite(t.ci_low):
            ax.axhspan(t.ci_low, t.ci_high, color=color, alpha=0.12, lw=0)
        return shown
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
        return shown
    summaries = [summary(by_x[x]) for x in xs]
    name = label if n_seeds == 1 else f"{label} (mean of {n_seeds})"
    band = [(x, t) for x, t in zip(xs, summaries) if np.isfinite(t.ci_low)]
    if not numeric:  # categories: the mean with its interval as an error bar at each
        err = [[t.mean - t.ci_low if np.isfinite(t.ci_low) else 0.0 for t in summaries],
               [t.ci_high - t.mean if np.isfinite(t.ci_high) else 0.0 for t in summaries]]
        ax.errorbar(xs, [t.mean for t in summaries], yerr=err, fmt="o", color=color, ms=5, capsize=4, label=name)
        return shown
    ax.plot(xs, [t.mean for t in summaries], "o-", color=color, lw=1.8, ms=4, label=name)
    if band:
        ax.fill_between([x for x, _ in band], [t.ci_low for _, t in band], [t.ci_high for _, t in band],
                        color=color, alpha=0.18, lw=0)
    return shown


def plot_sweep(groups: Mapping[str, Mapping[Any, Mapping[Any, float | None]]], path: str | Path, *,
               xlabel: str, ylabel: str, formats: Sequence[str] = ("png",), title: str | None = None,
               confidence: float = 0.95) -> list[Path]:
    """A metric against one swept option, one line per group (``groups[label][seed] = {x: value}``):
    each seed thin, the mean over seeds bold with its Student-t band. A group whose only x is
    None (e.g. SGD against rho) is a dashed reference level with its band. Non-numeric x are
    categories (points and error bars, no lines); positive x spanning a decade get a log axis.
    The y-axis spans the values with a 60 % margin (a wide band of few seeds runs off it)."""
    from .. import stats

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

    shown: list[float] = []
    for (label, per_seed), color in zip(groups.items(), _group_colors(groups)):
        shown += _draw_sweep_group(ax, label, per_seed, color, numeric, position, summary)
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
    """A panel per measure: each run's measure (``panels[measure]["x"]``) against its gap (``"y"``),
    coloured by ``"group"``, ``notes[measure]`` in the title; a log x-axis over two decades."""
    names = list(panels)
    if not names:
        raise ValueError("plot_correlations: no measures to draw")
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(3.6 * cols, 3.0 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    groups = list(dict.fromkeys(g for p in panels.values() for g in p["group"]))
    colors = {g: color_of(str(g), i) for i, g in enumerate(groups)}
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
    return save_tight(fig, path, formats, title, fontsize=10)
