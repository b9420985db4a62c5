"""Every figure sharpscope draws, on ``matplotlib.figure.Figure`` (no pyplot state, no display),
written as PNG (plus PDF when asked); results keyed by a label (``{"SGD": ..., "SAM": ...}``)
share one axis. :mod:`.html` holds the interactive (plotly) figures of the HTML report.
"""

from __future__ import annotations

from ._style import COLORS, save_figure
from .experiments import plot_correlations, plot_m_sharpness_seeds, plot_paired_differences, plot_sweep
from .landscape import (figure_names, plot_contour, plot_curve, plot_eigen_curve, plot_result, plot_slices, plot_surface3d,
                        plot_trajectory)
from .spectra import plot_density, plot_eigenvalues
from .training import plot_m_sharpness, plot_tracking, plot_training_curves

__all__ = ["save_figure", "plot_density", "plot_eigenvalues", "plot_m_sharpness", "plot_tracking", "plot_training_curves",
           "plot_correlations", "COLORS", "plot_curve", "plot_contour", "plot_surface3d", "plot_trajectory",
           "plot_eigen_curve", "plot_slices", "plot_result", "plot_m_sharpness_seeds", "plot_paired_differences",
           "plot_sweep", "figure_names"]
