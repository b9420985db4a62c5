"""The house style of every figure: colours per optimizer, seed lines with their confidence
band, and writing a figure as PNG (plus PDF)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

# one colour per optimizer (tab10), the same in every figure
COLORS = {"SGD": "#d62728", "SAM": "#1f77b4", "ASAM": "#2ca02c", "RSAM": "#7f7f7f", "GSAM": "#9467bd",
          "WSAM": "#ff7f0e", "LOOKSAM": "#8c564b", "FSAM": "#17becf"}
CYCLE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def color_of(label: str, i: int) -> str:
    return COLORS.get(label.upper(), CYCLE[i % len(CYCLE)])


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


def save_tight(fig: Figure, path: str | Path, formats: Sequence[str], title: str | None, **title_style: Any
               ) -> list[Path]:
    """:func:`save_figure` after the suptitle ``title`` (if any) and a tight layout."""
    if title:
        fig.suptitle(title, **title_style)
    fig.tight_layout()
    return save_figure(fig, path, formats)


def value_of(result: Any, key: str) -> Any:
    return result[key] if isinstance(result, Mapping) else getattr(result, key)


def result_rows(result: Any) -> list[Mapping[str, Any]]:
    """The ``results`` of an m-sharpness result as dicts (m, rho, mean, stderr)."""
    return [r if isinstance(r, Mapping) else r.__dict__ for r in value_of(result, "results")]


def m_axis(ax: Any, ms: Any) -> None:
    """A log2 x-axis ticked at the m values ``ms``."""
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(ms)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("m (examples per perturbation)")


def seed_runs(value: Any) -> list[Any]:
    """One run (a list of records, or a result) or several runs (a list of them, one per seed)."""
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)):
        return list(value)
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], Mapping) and "eigenvalues" in value[0]:
        return list(value)  # eigenvalue results, one per seed
    return [value]


# the values a tracked quantity can take (its confidence band is drawn clipped to them)
TRACK_BOUNDS = {"gradcos": (-1.0, 1.0), "lambda_max": (-np.inf, np.inf), "trace": (-np.inf, np.inf),
                 "m_sharpness": (-np.inf, np.inf)}


def band_opacity(n_labels: int) -> float:
    """Opacity of each label's confidence band: fainter when many overlap."""
    return 0.18 if n_labels <= 3 else 0.5 / n_labels


def seed_lines(ax, series: Sequence[tuple[Sequence[float], Sequence[float]]], color: str, label: str,
                semilogy: bool = False, band_alpha: float = 0.18, bounds: tuple[float, float] | None = None,
                **style: Any) -> None:
    """Each seed's (x, y) as a thin line; with several seeds also their mean (bold) and its 95 %
    Student-t band at the x every seed has, clipped to ``bounds`` (the values the metric can take)."""
    from .. import stats

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


def finish(fig: Figure, path: str | Path, formats: Sequence[str], return_figure: bool):
    written = save_figure(fig, path, formats)
    return (written, fig) if return_figure else written


LINESTYLES = ["-", "--", ":", "-."]
