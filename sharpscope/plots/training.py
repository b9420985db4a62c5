"""Training figures: m-sharpness, tracked quantities, training curves with the edge of stability."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ._style import (LINESTYLES, TRACK_BOUNDS, band_opacity, color_of, m_axis, result_rows, save_figure, seed_lines,
                     seed_runs)


def plot_m_sharpness(results: Mapping[str, Any], path: str | Path, against: str = "m",
                     formats: Sequence[str] = ("png",), title: str | None = None) -> list[Path]:
    """m-sharpness (``SharpnessResult``s) with standard-error bars against m (log axis; a line
    per label and rho) or against rho (a line per label and m)."""
    if against not in ("m", "rho"):
        raise ValueError("against must be 'm' or 'rho'")
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for i, (label, res) in enumerate(results.items()):
        rows = result_rows(res)
        groups = sorted({r["rho" if against == "m" else "m"] for r in rows})
        for j, key in enumerate(groups):
            sel = sorted((r for r in rows if r["rho" if against == "m" else "m"] == key), key=lambda r: r[against])
            xs = [r[against] for r in sel]
            ys = [r["mean"] for r in sel]
            err = [r["stderr"] if np.isfinite(r["stderr"]) else 0.0 for r in sel]
            name = label if len(groups) == 1 else f"{label}, {'rho' if against == 'm' else 'm'} = {key:g}"
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color=color_of(label, i),
                        linestyle=LINESTYLES[j % len(LINESTYLES)], label=name)
    if against == "m":
        m_axis(ax, {r["m"] for res in results.values() for r in result_rows(res)})
    else:
        ax.set_xlabel("rho")
    ax.set_ylabel("m-sharpness  max L_b(w+e) - L_b(w)")
    ax.set_title(title or f"m-sharpness against {against}")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path, formats)


def plot_tracking(runs: Mapping[str, Sequence[Mapping[str, Any]]], keys: Sequence[str], path: str | Path,
                  formats: Sequence[str] = ("png",), title: str | None = None) -> list[Path]:
    """Quantities tracked during training (records with ``epoch`` and ``keys``), a panel per key,
    a line per run; a label may hold a run per seed (each thin, the mean with its 95 % band)."""
    keys = [k for k in keys if any(k in rec for value in runs.values() for recs in seed_runs(value) for rec in recs)]
    if not keys:
        raise ValueError("none of the keys appear in the metrics")
    fig = Figure(figsize=(max(4.2 * len(keys), 6.4), 3.8))
    axes = np.atleast_1d(fig.subplots(1, len(keys)))
    for ax, key in zip(axes, keys):
        edges = []
        for i, (label, value) in enumerate(runs.items()):
            series = []
            for records in seed_runs(value):
                pts = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
                if pts:
                    series.append(tuple(map(list, zip(*pts))))
            if series:
                seed_lines(ax, series, color_of(label, i), label, marker="o", ms=3, band_alpha=band_opacity(len(runs)),
                            bounds=TRACK_BOUNDS.get(key))
                if key == "lambda_max":
                    edges += _edge_lines(ax, seed_runs(value), color_of(label, i), label)
        ax.set_xlabel("epoch")
        ax.set_title(key.replace("_", " "))
        ax.grid(alpha=0.3)
        if key == "lambda_max":
            _note_lines_off_the_axes(ax, edges)
            ax.legend(fontsize=7)
    axes[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, formats)


_EDGES = (("edge_of_stability", "--", "(2 + 2 beta) / lr"), ("sam_edge_of_stability", ":", "SAM's edge"))


def _edge_lines(ax, seeds: Sequence[Sequence[Mapping[str, Any]]], color: str, label: str) -> list[Any]:
    """The edges of stability recorded beside lambda_max (the first seed's), on a log axis whose
    top stops at 3x the largest lambda_max (the edge's climb as lr -> 0 would flatten the curves)."""
    records = seeds[0]
    top = max((r["lambda_max"] for recs in seeds for r in recs if r.get("lambda_max") is not None), default=None)
    lines = []
    for key, style, name in _EDGES:
        pts = [(r["epoch"], r[key]) for r in records if r.get(key) is not None and np.isfinite(r[key])]
        if pts:
            lines += ax.plot(*zip(*pts), ls=style, color=color, lw=1.2, label=f"{label}: {name}")
    if lines and top is not None and top > 0:
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        ax.set_ylim(low, max(min(high, 3.0 * top), top * 1.5))
    return lines


def _note_lines_off_the_axes(ax, lines: Sequence[Any]) -> None:
    """Label a line that lies wholly above (below) the y-limits as such, with its first value."""
    low, high = ax.get_ylim()
    for line in lines:
        y = np.asarray(line.get_ydata(), dtype=float)
        y = y[np.isfinite(y)]
        if y.size and ((y > high).all() or (y < low).all()):
            where = "above" if (y > high).all() else "below"
            line.set_label(f"{line.get_label()} ({where} the axes, from {y[0]:.3g})")


def plot_training_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path,
                         formats: Sequence[str] = ("png",), title: str | None = None) -> list[Path]:
    """Train loss (log), test loss and test accuracy per epoch, a line per run (with label noise
    the clean-label train accuracy dashed); a label may hold a run per seed, as :func:`plot_tracking`."""
    fig = Figure(figsize=(13.0, 3.8))
    axes = fig.subplots(1, 3)
    band = band_opacity(len(runs))
    for i, (label, value) in enumerate(runs.items()):
        seeds = seed_runs(value)
        color = color_of(label, i)

        def series(key: str) -> list[tuple[list, list]]:
            return [([r["epoch"] for r in recs], [r.get(key) for r in recs]) for recs in seeds]

        seed_lines(axes[0], series("train_loss"), color, label, semilogy=True, band_alpha=band,
                    bounds=(1e-12, np.inf))
        seed_lines(axes[1], series("test_loss"), color, label, band_alpha=band, bounds=(0.0, np.inf))
        seed_lines(axes[2], series("test_acc"), color, f"{label} test", band_alpha=band, bounds=(0.0, 1.0))
        if any(r.get("train_acc_clean") != r.get("train_acc") for recs in seeds for r in recs):
            seed_lines(axes[2], series("train_acc_clean"), color, f"{label} train (clean labels)", ls="--",
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

