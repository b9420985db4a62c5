"""Issue 24's figure fixes (sharpscope.plots): a log axis only over a decade or more, legend
entries of lines off the axes say so, the 3-D z-label clear of its tick labels and the
colorbar, a path off its grid warns; and the plots package keeps every old name."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from sharpscope import plots


def _draw(fig):
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _visible_tick_labels(ax):
    low, high = ax.get_ylim()
    return [t for t in ax.yaxis.get_majorticklabels() if t.get_text() and low <= t.get_position()[1] <= high]


def _eigenvalue_figure(tmp_path, values):
    files = plots.plot_eigenvalues({"SGD": {"eigenvalues": values}}, tmp_path / "eig")
    assert files[0].is_file()
    # the figure itself: draw it again through the same function with a hook on Figure.savefig
    captured = {}
    original = plots.spectra.save_figure

    def keep(fig, path, formats=("png",)):
        captured["fig"] = fig
        return original(fig, path, formats)

    plots.spectra.save_figure = keep
    try:
        plots.plot_eigenvalues({"SGD": {"eigenvalues": values}}, tmp_path / "eig2")
    finally:
        plots.spectra.save_figure = original
    return captured["fig"]


def test_eigenvalues_within_a_decade_get_a_linear_axis_with_several_labels(tmp_path):
    fig = _eigenvalue_figure(tmp_path, [14.2, 12.9, 11.8, 10.7, 9.9])  # span 1.43x: a log axis had one label
    ax = fig.axes[0]
    _draw(fig)
    assert ax.get_yscale() == "linear"
    assert len(_visible_tick_labels(ax)) >= 3


def test_eigenvalues_over_decades_keep_the_log_axis(tmp_path):
    fig = _eigenvalue_figure(tmp_path, [150.0, 30.0, 4.0, 1.2])
    _draw(fig)
    assert fig.axes[0].get_yscale() == "log"
    assert len(_visible_tick_labels(fig.axes[0])) >= 2


def test_eigenvalues_with_a_negative_one_stay_linear(tmp_path):
    fig = _eigenvalue_figure(tmp_path, [150.0, 3.0, -0.5])
    assert fig.axes[0].get_yscale() == "linear"


def _records(edge: float, epochs: int = 4, sam: float | None = None):
    out = []
    for e in range(1, epochs + 1):
        rec = {"epoch": e, "lambda_max": 1.0 + 0.1 * e, "edge_of_stability": edge}
        if sam is not None:
            rec["sam_edge_of_stability"] = sam
        out.append(rec)
    return out


def test_edge_lines_off_the_axes_say_so_in_the_legend(tmp_path, monkeypatch):
    captured = {}
    original = plots.training.save_figure
    monkeypatch.setattr(plots.training, "save_figure",
                        lambda fig, path, formats=("png",): captured.setdefault("fig", fig) and original(fig, path,
                                                                                                        formats))
    # lambda_max ~1.3: the axis stops at 3x that, so SGD's edge at 4000 is off it; SAM's at 2 is on it
    plots.plot_tracking({"SGD": _records(4000.0), "SAM": _records(3000.0, sam=2.0)}, ["lambda_max"], tmp_path / "eos")
    ax = captured["fig"].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    off = [lb for lb in labels if "above the axes" in lb]
    assert sorted(off) == ["SAM: (2 + 2 beta) / lr (above the axes, from 3e+03)",
                           "SGD: (2 + 2 beta) / lr (above the axes, from 4e+03)"]
    assert "SAM: SAM's edge" in labels  # on the axes: its entry is unchanged
    assert ax.get_ylim()[1] < 3000.0


def _surface(scale=1.0, nx=7, ny=5, path=None, kind="random"):
    xs, ys = np.linspace(-1, 1, nx), np.linspace(-0.5, 0.5, ny)
    loss = scale * (xs[None, :] ** 2 + 3 * ys[:, None] ** 2) + 0.1
    return SimpleNamespace(xs=xs, ys=ys, loss=loss, accuracy=1 - loss / (2 * loss.max()), kind=kind, path=path,
                           explained_variance=None)


@pytest.mark.parametrize("results", [{"SGD": 1.0}, {"SGD": 1.0, "SAM": 2.0}, {"A": 1.0, "B": 3.0, "C": 1e-3}])
@pytest.mark.parametrize("shared", [True, False])
def test_surface3d_z_label_is_clear_of_ticks_and_colorbar_and_inside_the_figure(tmp_path, results, shared):
    _, fig = plots.plot_surface3d({k: _surface(v) for k, v in results.items()}, tmp_path / "s3d",
                                  shared_scale=shared, return_figure=True)
    renderer = _draw(fig)
    others = [a.get_window_extent(renderer) for a in fig.axes if not hasattr(a, "zaxis")]  # the colorbars
    panels = [a for a in fig.axes if hasattr(a, "zaxis")]
    assert len(panels) == len(results)
    for ax in panels:
        label = ax.zaxis.label.get_window_extent(renderer)
        assert ax.zaxis.label.get_text() == "loss"
        assert fig.bbox.x0 <= label.x0 and label.x1 <= fig.bbox.x1 and fig.bbox.y0 <= label.y0 <= label.y1 <= fig.bbox.y1
        ticks = [t.get_window_extent(renderer) for t in ax.zaxis.get_ticklabels() if t.get_text()]
        assert ticks and not any(label.overlaps(t) for t in ticks)
        assert not any(label.overlaps(c) for c in others)


def test_a_path_off_its_grid_warns_and_one_on_it_does_not(tmp_path):
    inside = np.array([[-0.8, -0.4], [-0.3, 0.1], [0.0, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.plot_trajectory(_surface(path=inside, kind="trajectory"), tmp_path / "in")
    outside = np.array([[-2.5, 0.9], [-1.2, 0.3], [0.0, 0.0]])  # a --grid narrower than the run's path
    with pytest.warns(UserWarning, match="2 of the path's 3 points lie off the grid"):
        plots.plot_trajectory(_surface(path=outside, kind="trajectory"), tmp_path / "out")
    with pytest.warns(UserWarning, match="off the grid"):
        plots.plot_contour({"SGD": _surface(path=outside)}, tmp_path / "contour")


OLD_PUBLIC = ["COLORS", "save_figure", "plot_density", "plot_eigenvalues", "plot_curve", "plot_eigen_curve",
              "plot_contour", "plot_surface3d", "plot_slices", "plot_trajectory", "plot_m_sharpness", "plot_tracking",
              "plot_training_curves", "plot_m_sharpness_seeds", "plot_paired_differences", "plot_sweep",
              "plot_correlations"]


def test_every_public_name_of_the_old_module_is_still_there():
    import sharpscope.plots_html as old_html
    from sharpscope.plots import html

    assert [n for n in OLD_PUBLIC if not callable(getattr(plots, n, None)) and n != "COLORS"] == []
    assert set(plots.__all__) >= set(OLD_PUBLIC)
    assert all(getattr(old_html, n) is getattr(html, n) for n in html.__all__)


def _result(dim: int, kind: str = "random", metric: bool = True):
    from sharpscope.landscape import SurfaceResult

    xs = np.linspace(-1, 1, 5)
    ys = None if dim == 1 else np.linspace(-1, 1, 4)
    zs = np.linspace(-1, 1, 3) if dim == 3 else None
    shape = (5,) if dim == 1 else (4, 5) if dim == 2 else (3, 4, 5)
    grid = np.meshgrid(*[a for a in (zs, ys, xs) if a is not None], indexing="ij")
    loss = sum(g ** 2 for g in grid) + 0.5
    path = np.array([[-0.5, 0.2], [0.0, 0.0]]) if kind == "trajectory" else None
    return SurfaceResult(xs=xs, ys=ys, loss=loss.reshape(shape), accuracy=np.full(shape, 0.5), kind=kind,
                         options={}, n_examples=8, wall_time=0.0, zs=zs, path=path,
                         explained_variance=[0.7, 0.2] if path is not None else None,
                         metrics={"m": loss.reshape(shape) - 1.0} if metric else {})


@pytest.mark.parametrize("dim,kind", [(1, "random"), (2, "random"), (3, "random"), (2, "trajectory"),
                                      (1, "interpolation")])
def test_plot_result_writes_exactly_the_figures_a_command_claims(tmp_path, dim, kind):
    written = plots.plot_result({"SAM": _result(dim, kind)}, tmp_path, "s", metrics=["m"])
    assert sorted(p.name for p in written) == sorted(
        f"{n}.png" for n in plots.figure_names("s", dim, kind == "trajectory", ["m"]))
    assert all(p.is_file() for p in written)


def test_plot_result_draws_the_eigenvector_beside_the_random_direction(tmp_path):
    written = plots.plot_result({"SAM": _result(1, "hessian")}, tmp_path, "h", metrics=["m"],
                                eigen=(_result(1), 2.0, 0.1, 0.5))
    assert [p.name for p in written] == ["h.png", "h_m.png"] == [f"{n}.png" for n in plots.figure_names("h", 1,
                                                                                                          metrics=["m"])]
