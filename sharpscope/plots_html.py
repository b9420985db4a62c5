"""Deprecated spelling of :mod:`sharpscope.plots.html` (the HTML report's plotly figures), kept importable."""

from .plots.html import (curve, difference_bars, eigenvalue_lines, page, require_plotly, scatter, seed_lines,
                         surface_3d)

__all__ = ["require_plotly", "seed_lines", "eigenvalue_lines", "difference_bars", "surface_3d", "curve", "scatter",
           "page"]
