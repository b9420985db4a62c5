"""Spectra: Hessian eigenvalue densities and top eigenvalues per optimizer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ._style import band_opacity, color_of, save_figure, seed_lines, seed_runs, value_of


def plot_density(densities: Mapping[str, Any], path: str | Path, log: bool = False,
                 formats: Sequence[str] = ("png",), title: str | None = None) -> list[Path]:
    """Hessian eigenvalue densities (SLQ), overlaid; ``log``: a log density axis."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for i, (label, res) in enumerate(densities.items()):
        grid = np.asarray(value_of(res, "grid"))
        dens = np.asarray(value_of(res, "density"))
        if log:
            floor = max(dens.max() * 1e-7, 1e-300)  # seven decades below the peak: the outliers stay visible
            ax.semilogy(grid, np.maximum(dens, floor), color=color_of(label, i), label=label, lw=1.2)
        else:
            ax.plot(grid, dens, color=color_of(label, i), label=label, lw=1.2)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)" if log else "density")
    ax.set_title(title or "Hessian spectral density (SLQ)")
    ax.grid(alpha=0.3)
    if len(densities) > 1 or next(iter(densities), ""):
        ax.legend()
    return save_figure(fig, path, formats)


def plot_eigenvalues(results: Mapping[str, Any], path: str | Path, formats: Sequence[str] = ("png",),
                     title: str | None = None) -> list[Path]:
    """Top Hessian eigenvalues per label against their index (log y-axis when all are positive
    over a decade or more); a label may hold a result per seed (each thin, the mean with its band)."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    every: list[np.ndarray] = []
    for i, (label, res) in enumerate(results.items()):
        series = []
        for one in seed_runs(res):
            values = np.asarray(value_of(one, "eigenvalues"), dtype=float)
            every.append(values)
            series.append((np.arange(1, len(values) + 1).tolist(), values.tolist()))
        seed_lines(ax, series, color_of(label, i), label, marker="o", band_alpha=band_opacity(len(results)))
    values = np.concatenate(every) if every else np.array([])
    values = values[np.isfinite(values)]
    if values.size and (values > 0).all() and values.max() >= 10.0 * values.min():
        ax.set_yscale("log")  # a decade or more; within one, a log axis would show one tick label
    ax.set_xlabel("eigenvalue index (1 = largest)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("Hessian eigenvalue")
    ax.set_title(title or "Top Hessian eigenvalues")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    return save_figure(fig, path, formats)

