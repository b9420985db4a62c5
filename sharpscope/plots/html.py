"""Interactive figures for the offline HTML report (plotly; the ``html`` extra): each function
returns a ``plotly.graph_objects.Figure`` (a trace per optimizer and seed, grouped by optimizer
in the legend, values on hover); :func:`page` assembles them into one self-contained page with
plotly.js embedded, so the file opens with no network.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError

__all__ = ["require_plotly", "seed_lines", "eigenvalue_lines", "difference_bars", "surface_3d", "curve", "scatter",
           "page"]

_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]


def require_plotly() -> Any:
    """The plotly package, or a ConfigError saying how to install it."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise ConfigError("the HTML report needs plotly: pip install 'sharpscope[html]'") from None
    return go


def _color(label: str, i: int) -> str:
    from ._style import COLORS  # the PNG figures' colour per optimizer
    return COLORS.get(label.upper(), _PALETTE[i % len(_PALETTE)])


def _layout(fig: Any, title: str, xlabel: str, ylabel: str, log_y: bool = False) -> Any:
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title=ylabel, template="plotly_white",
                      legend={"groupclick": "toggleitem"}, hovermode="closest", height=420)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def seed_lines(series: Mapping[str, Mapping[int, tuple[Sequence[float], Sequence[float]]]], title: str,
               xlabel: str, ylabel: str, log_y: bool = False, dash: Mapping[str, str] | None = None) -> Any:
    """``{label: {seed: (x, y)}}``: one line per label and seed, legend-grouped by label."""
    go = require_plotly()
    fig = go.Figure()
    for i, (label, seeds) in enumerate(series.items()):
        for seed, (x, y) in seeds.items():
            fig.add_trace(go.Scatter(x=list(x), y=list(y), mode="lines+markers", name=f"{label} seed {seed}",
                                     legendgroup=label, legendgrouptitle_text=label, marker={"size": 4},
                                     line={"color": _color(label.split(":")[0], i),
                                           "dash": (dash or {}).get(label, "solid")}))
    return _layout(fig, title, xlabel, ylabel, log_y)


def eigenvalue_lines(eigs: Mapping[str, Mapping[int, Sequence[float]]]) -> Any:
    """``{label: {seed: top eigenvalues}}`` against their index."""
    series = {label: {s: (list(range(1, len(v) + 1)), v) for s, v in seeds.items()} for label, seeds in eigs.items()}
    positive = all(x > 0 for seeds in eigs.values() for v in seeds.values() for x in v)
    fig = seed_lines(series, "Top Hessian eigenvalues", "index (1 = largest)", "eigenvalue", log_y=positive)
    return fig.update_xaxes(dtick=1)


def difference_bars(diffs: Mapping[str, Mapping[str, Mapping[str, float]]], metrics: Sequence[str],
                    names: Mapping[str, str], baseline: str) -> Any:
    """Paired differences to the baseline, a subplot per metric: each label's mean with its
    interval (p-value and verdict on hover)."""
    go = require_plotly()
    from plotly.subplots import make_subplots

    metrics = [m for m in metrics if any(m in d for d in diffs.values())]
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[names.get(m, m) for m in metrics])
    for col, m in enumerate(metrics, start=1):
        for i, (label, d) in enumerate(diffs.items()):
            if m not in d:
                continue
            e = d[m]
            fig.add_trace(go.Scatter(
                x=[label], y=[e["mean"]], mode="markers", marker={"size": 9, "color": _color(label, i + 1)},
                error_y={"type": "data", "symmetric": False, "array": [e["ci_high"] - e["mean"]],
                         "arrayminus": [e["mean"] - e["ci_low"]]},
                name=label, legendgroup=label, showlegend=col == 1,
                hovertemplate=(f"{label}: %{{y:.4g}} [{e['ci_low']:.4g}, {e['ci_high']:.4g}], "
                               f"p = {e.get('p_value', float('nan')):.3g}, {e['verdict']}<extra></extra>")),
                row=1, col=col)
        fig.add_hline(y=0.0, line_dash="dash", line_color="grey", row=1, col=col)
    fig.update_layout(title=f"Difference to {baseline} over paired seeds (mean, 95 % CI)", template="plotly_white",
                      height=380)
    return fig


def surface_3d(label: str, xs: Sequence[float], ys: Sequence[float], loss: Any) -> Any:
    """A rotatable 3-D loss surface (log10 of the loss as height, the loss on hover)."""
    go = require_plotly()
    import numpy as np

    z = np.asarray(loss, dtype=float)
    fig = go.Figure(go.Surface(x=list(xs), y=list(ys), z=np.log10(np.maximum(z, 1e-12)).tolist(),
                               customdata=z.tolist(), colorscale="Viridis",
                               hovertemplate="x %{x:.3g}, y %{y:.3g}: loss %{customdata:.4g}<extra></extra>"))
    fig.update_layout(title=f"{label}: loss surface (log10 loss; drag to rotate)", height=480,
                      scene={"xaxis_title": "direction 1", "yaxis_title": "direction 2", "zaxis_title": "log10 loss"})
    return fig


def curve(xs: Sequence[float], ys: Sequence[float], title: str, xlabel: str, ylabel: str) -> Any:
    go = require_plotly()
    fig = go.Figure(go.Scatter(x=list(xs), y=list(ys), mode="lines+markers", name=ylabel))
    return _layout(fig, title, xlabel, ylabel, log_y=all(y > 0 for y in ys))


def scatter(points: Mapping[str, Sequence[tuple[float, float, str]]], title: str, xlabel: str, ylabel: str) -> Any:
    """``{group: [(x, y, hover text), ...]}``: a marker trace per group."""
    go = require_plotly()
    fig = go.Figure()
    for i, (group, pts) in enumerate(points.items()):
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], text=[p[2] for p in pts],
                                 mode="markers", name=str(group), marker={"size": 8, "color": _color(str(group), i)},
                                 hovertemplate="%{text}<br>x %{x:.4g}, y %{y:.4g}<extra></extra>"))
    return _layout(fig, title, xlabel, ylabel)


def page(title: str, blocks: Sequence[Any]) -> str:
    """One self-contained HTML page of ``blocks``: figures or HTML strings, in order."""
    require_plotly()
    import plotly.offline

    parts = []
    for i, block in enumerate(blocks):
        if isinstance(block, str):
            parts.append(block)
        else:  # numbered ids, not plotly's random ones: the same results give the same file
            parts.append('<div class="figure">' + block.to_html(full_html=False, include_plotlyjs=False,
                                                                div_id=f"figure-{i}",
                                                                config={"displaylogo": False}) + "</div>")
    script = plotly.offline.get_plotlyjs()
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><script type=\"text/javascript\">{script}</script>"
            "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
            "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;"
            "padding:3px 6px}pre{background:#f5f5f5;padding:8px;overflow-x:auto}.figure{margin:1.5em 0}</style>"
            "</head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
