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

__all__ = ["save_figure", "plot_density", "plot_eigenvalues", "COLORS"]

COLORS = {"SGD": "#d62728", "SAM": "#1f77b4", "ASAM": "#2ca02c"}
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
            floor = max(dens.max() * 1e-12, 1e-300)
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
    (log y-axis when every value is positive; bars would mislead on a log axis)."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    all_positive = True
    for i, (label, res) in enumerate(results.items()):
        values = np.asarray(_get(res, "eigenvalues"), dtype=float)
        all_positive &= bool((values > 0).all())
        ax.plot(np.arange(1, len(values) + 1), values, "o-", color=_color(label, i), label=label)
    if all_positive:
        ax.set_yscale("log")
    ax.set_xlabel("eigenvalue index (1 = largest)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("Hessian eigenvalue")
    ax.set_title(title or "Top Hessian eigenvalues")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    return save_figure(fig, path, formats)
