"""Landscape figures (sharpscope.plots): files written, orientation of (ny, nx) grids, shared
colour scales, geometric levels, NaN tolerance, curves and trajectories.

The fake results use a NON-SQUARE grid (nx=7 over [-1, 1], ny=5 over [-0.5, 0.5]) so that a
transposition or an axis swap cannot go unnoticed.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.contour import ContourSet
from mpl_toolkits.mplot3d.art3d import Poly3DCollection

from sharpscope import plots

NX, NY = 7, 5
OFFSET = 0.1


def surface(scale=1.0, xr=(-1.0, 1.0), yr=(-0.5, 0.5), kind="random", as_dict=False, **extra):
    xs = np.linspace(*xr, NX)
    ys = np.linspace(*yr, NY)
    loss = scale * (xs[None, :] ** 2 + 3.0 * ys[:, None] ** 2) + OFFSET  # loss[i, j] at (xs[j], ys[i])
    acc = 1.0 - loss / (2.0 * loss.max())
    fields = dict(xs=xs, ys=ys, loss=loss, accuracy=acc, kind=kind, **extra)
    return fields if as_dict else SimpleNamespace(**fields)


def line(scale=1.0, kind="random", **extra):
    xs = np.linspace(-0.5, 1.5, 21)
    loss = scale * (xs - 0.5) ** 2 + OFFSET
    return SimpleNamespace(xs=xs, ys=None, loss=loss, accuracy=1.0 - loss / 4.0, kind=kind, **extra)


def contour_sets(ax):
    return [c for c in ax.collections if isinstance(c, ContourSet)]


def check_png(path):
    assert path.suffix == ".png" and path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_contour_writes_png_and_pdf(tmp_path):
    files = plots.plot_contour({"SGD": surface()}, tmp_path / "sub" / "contour", formats=("png", "pdf"))
    assert [f.suffix for f in files] == [".png", ".pdf"]
    check_png(files[0])
    assert files[1].read_bytes()[:5] == b"%PDF-"


def test_contour_orientation_follows_meshgrid_convention(tmp_path):
    r = surface()
    _, fig = plots.plot_contour({"SGD": r}, tmp_path / "c", levels=8, log_levels=False, return_figure=True)
    ax = fig.axes[0]
    (cs,) = contour_sets(ax)
    # Axis extents are the grid's: x over xs (width 2), y over ys (width 1) -- not swapped.
    np.testing.assert_allclose(ax.get_xlim(), (-1.0, 1.0))
    np.testing.assert_allclose(ax.get_ylim(), (-0.5, 0.5))
    assert (cs.zmin, cs.zmax) == pytest.approx((r.loss.min(), r.loss.max()))
    # Every contour vertex lies on its level of z = x^2 + 3 y^2 + offset, up to the linear
    # interpolation error on grid edges (h^2 f''/8 <= 0.047 here). A swap of x and y breaks it.
    n_checked = 0
    for level, p in zip(cs.levels, cs.get_paths()):
        v = p.vertices
        if len(v):
            np.testing.assert_allclose(v[:, 0] ** 2 + 3 * v[:, 1] ** 2 + OFFSET, level, atol=0.05)
            n_checked += len(v)
    assert n_checked > 20
    assert ax.get_xlabel() == "direction 1" and ax.get_ylabel() == "direction 2"
    assert fig._suptitle is not None and fig._suptitle.get_text()
    assert ax.get_aspect() != 1.0  # ranges differ: automatic aspect


def test_contour_lines_of_a_function_of_x_alone_are_vertical(tmp_path):
    r = surface()
    r.loss = np.broadcast_to(2.0 + r.xs[None, :], (NY, NX)).copy()
    _, fig = plots.plot_contour({"SAM": r}, tmp_path / "c", levels=5, log_levels=False, return_figure=True)
    (cs,) = contour_sets(fig.axes[0])
    for level, p in zip(cs.levels, cs.get_paths()):
        if len(p.vertices):
            np.testing.assert_allclose(p.vertices[:, 0], level - 2.0, atol=1e-9)
            assert p.vertices[:, 1].min() == pytest.approx(-0.5) and p.vertices[:, 1].max() == pytest.approx(0.5)


def test_wrong_shape_is_rejected_not_transposed(tmp_path):
    r = surface()
    r.loss = r.loss.T.copy()  # (nx, ny)
    with pytest.raises(ValueError, match=r"\(5, 7\)"):
        plots.plot_contour({"SGD": r}, tmp_path / "c")
    with pytest.raises(ValueError):
        plots.plot_surface3d({"SGD": r}, tmp_path / "s")


@pytest.mark.parametrize("filled", [False, True])
def test_shared_scale_gives_identical_levels_and_norm(tmp_path, filled):
    small, big = surface(), surface(scale=10.0, xr=(-2.0, 2.0), yr=(-1.0, 1.0))
    _, fig = plots.plot_contour({"SGD": small, "SAM": big}, tmp_path / "c", filled=filled, return_figure=True)
    assert len(fig.axes) == 3  # two panels and a single shared colorbar
    (a,), (b,) = contour_sets(fig.axes[0]), contour_sets(fig.axes[1])
    np.testing.assert_array_equal(a.levels, b.levels)
    assert (a.norm.vmin, a.norm.vmax) == (b.norm.vmin, b.norm.vmax)
    # The scale spans the union of the values.
    assert a.norm.vmin == pytest.approx(min(small.loss.min(), big.loss.min()))
    assert a.norm.vmax == pytest.approx(max(small.loss.max(), big.loss.max()))
    assert a.levels[-1] == pytest.approx(big.loss.max())
    assert [ax.get_title() for ax in fig.axes[:2]] == ["SGD", "SAM"]

    _, fig = plots.plot_contour({"SGD": small, "SAM": big}, tmp_path / "c2", filled=filled,
                                shared_scale=False, return_figure=True)
    assert len(fig.axes) == 4  # one colorbar per panel
    (a,), (b,) = contour_sets(fig.axes[0]), contour_sets(fig.axes[1])
    assert a.norm.vmax < b.norm.vmax


def test_log_levels_are_geometric_with_a_positive_floor(tmp_path):
    r = surface()
    r.loss = r.loss - OFFSET  # exact zero at the centre
    r.loss[0, 0] = -1.0       # and a negative value
    _, fig = plots.plot_contour({"SGD": r}, tmp_path / "c", levels=12, filled=True, return_figure=True)
    (cs,) = contour_sets(fig.axes[0])
    lv = np.asarray(cs.levels)
    assert len(lv) == 12 and lv[0] > 0
    ratios = lv[1:] / lv[:-1]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)
    assert ratios[0] > 1.0
    assert lv[-1] == pytest.approx(r.loss.max())
    assert lv[0] == pytest.approx(np.min(r.loss[r.loss > 0]))  # smallest positive value

    _, fig = plots.plot_contour({"SGD": surface()}, tmp_path / "lin", levels=12, log_levels=False,
                                return_figure=True)
    (cs,) = contour_sets(fig.axes[0])
    np.testing.assert_allclose(np.diff(cs.levels), np.diff(cs.levels)[0])


def test_log_floor_limits_the_number_of_decades(tmp_path):
    r = surface()
    r.loss[2, 3] = 1e-30
    _, fig = plots.plot_contour({"SGD": r}, tmp_path / "c", return_figure=True)
    (cs,) = contour_sets(fig.axes[0])
    assert cs.levels[0] == pytest.approx(r.loss.max() * 10.0 ** -plots._grids.LOG_DECADES)


def test_nan_values_are_masked_everywhere(tmp_path):
    r = surface()
    r.loss[1, 2] = np.nan
    r.loss[3, :] = np.nan
    r.accuracy = np.full_like(r.loss, np.nan)
    other = surface(scale=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for filled in (False, True):
            files, fig = plots.plot_contour({"SGD": r, "SAM": other}, tmp_path / f"c{filled}", filled=filled,
                                            return_figure=True)
            check_png(files[0])
            (cs,) = contour_sets(fig.axes[0])
            assert np.isfinite(cs.norm.vmin) and np.isfinite(cs.norm.vmax)
        check_png(plots.plot_surface3d({"SGD": r, "SAM": other}, tmp_path / "s")[0])
        # An all-NaN metric still gives a (labelled, empty) figure rather than an error.
        check_png(plots.plot_contour({"SGD": r}, tmp_path / "acc", metric="accuracy")[0])
        check_png(plots.plot_surface3d({"SGD": r}, tmp_path / "acc3d", metric="accuracy")[0])
        r1 = line()
        r1.loss[3] = np.nan
        r1.accuracy[:] = np.nan
        files, fig = plots.plot_curve({"SGD": r1}, tmp_path / "curve", log=True, return_figure=True)
        check_png(files[0])
        assert len(fig.axes) == 1  # no finite accuracy: no accuracy panel


def test_plain_dict_results_are_accepted(tmp_path):
    d = surface(as_dict=True, kind="trajectory", explained_variance=[0.625, 0.25])
    _, fig = plots.plot_contour({"SAM": d}, tmp_path / "c", return_figure=True)
    assert fig.axes[0].get_xlabel() == "PC 1 (62.5%)"
    assert fig.axes[0].get_ylabel() == "PC 2 (25.0%)"
    check_png(plots.plot_surface3d({"SAM": d}, tmp_path / "s")[0])
    d1 = {"xs": np.linspace(0, 1, 5), "ys": None, "loss": np.arange(5.0), "kind": "random"}
    _, fig = plots.plot_curve({"SGD": d1}, tmp_path / "curve", return_figure=True)
    assert len(fig.axes) == 1  # a dict without accuracy: loss panel only


def test_curve_one_line_per_label_with_accuracy_panel(tmp_path):
    files, fig = plots.plot_curve({"SGD": line(), "SAM": line(scale=3.0)}, tmp_path / "curve",
                                  formats=("png", "pdf"), return_figure=True)
    assert [f.suffix for f in files] == [".png", ".pdf"]
    ax, ax_acc = fig.axes
    lines = [ln for ln in ax.get_lines() if ln.get_label() in ("SGD", "SAM")]
    assert [ln.get_label() for ln in lines] == ["SGD", "SAM"]
    assert [ln.get_color() for ln in lines] == [plots.COLORS["SGD"], plots.COLORS["SAM"]]
    assert len(ax_acc.get_lines()) == 2
    assert ax.get_ylabel() == "loss" and ax_acc.get_ylabel() == "accuracy"
    assert ax_acc.get_xlabel() == "direction 1"
    assert ax.get_legend() is not None

    _, fig = plots.plot_curve({"SGD": line()}, tmp_path / "log", log=True, return_figure=True)
    assert fig.axes[0].get_yscale() == "log"

    _, fig = plots.plot_curve({"SGD": line()}, tmp_path / "acc", metric="accuracy", return_figure=True)
    assert len(fig.axes) == 1 and fig.axes[0].get_ylabel() == "accuracy"


def test_interpolation_curve_marks_the_endpoints(tmp_path):
    r = line(kind="interpolation", name_a="SGD", name_b="SAM")
    _, fig = plots.plot_curve({"loss": r}, tmp_path / "interp", return_figure=True)
    ax = fig.axes[0]
    dotted = [ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]
    assert sorted(ln.get_xdata()[0] for ln in dotted) == [0.0, 1.0]
    assert fig.axes[1].get_xlabel() == "alpha (0 = SGD, 1 = SAM)"
    top = ax.child_axes[0]
    assert [t.get_text() for t in top.get_xticklabels()] == ["SGD", "SAM"]


def test_curve_rejects_2d_results(tmp_path):
    with pytest.raises(ValueError, match="plot_contour"):
        plots.plot_curve({"SGD": surface()}, tmp_path / "c")


def test_trajectory_path_drawn_over_contours(tmp_path):
    E = 6
    path = np.column_stack([np.linspace(-0.8, 0.0, E), np.linspace(0.4, 0.0, E)])
    r = surface(kind="trajectory", explained_variance=[0.8, 0.15], path=path)
    files, fig = plots.plot_trajectory(r, tmp_path / "traj", formats=("png", "pdf"), return_figure=True)
    check_png(files[0])
    ax = fig.axes[0]
    traj = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == E]
    assert len(traj) == 1
    np.testing.assert_allclose(traj[0].get_xydata(), path)
    assert traj[0].get_marker() == "o"
    final = [ln for ln in ax.get_lines() if ln.get_label() == "final model"]
    assert len(final) == 1 and tuple(final[0].get_xydata()[0]) == tuple(path[-1])
    assert ax.get_xlabel() == "PC 1 (80.0%)" and ax.get_ylabel() == "PC 2 (15.0%)"
    assert ax.get_legend() is not None
    assert len(fig.axes) == 2  # the panel and its colorbar
    with pytest.raises(ValueError):
        plots.plot_trajectory(surface(), tmp_path / "nopath")


def test_centre_marked_and_equal_aspect_for_equal_ranges(tmp_path):
    r = surface(yr=(-1.0, 1.0))
    _, fig = plots.plot_contour({"SGD": r}, tmp_path / "c", return_figure=True)
    ax = fig.axes[0]
    centre = [ln for ln in ax.get_lines() if ln.get_label() == "centre"]
    assert len(centre) == 1 and tuple(centre[0].get_xydata()[0]) == (0.0, 0.0)
    assert ax.get_aspect() == 1.0


def test_surface3d_shares_z_range_and_normalisation(tmp_path):
    small, big = surface(), surface(scale=10.0, xr=(-2.0, 2.0), yr=(-1.0, 1.0))
    files, fig = plots.plot_surface3d({"SGD": small, "SAM": big}, tmp_path / "s3d", formats=("png", "pdf"),
                                      return_figure=True)
    check_png(files[0])
    assert files[1].stat().st_size > 0
    ax1, ax2 = fig.axes[:2]
    assert len(fig.axes) == 3  # one shared colorbar
    s1 = next(c for c in ax1.collections if isinstance(c, Poly3DCollection))
    s2 = next(c for c in ax2.collections if isinstance(c, Poly3DCollection))
    assert (s1.norm.vmin, s1.norm.vmax) == (s2.norm.vmin, s2.norm.vmax)
    assert s1.norm.vmax == pytest.approx(big.loss.max())
    assert ax1.get_zlim() == ax2.get_zlim()
    # x runs over xs (width 2), y over ys (width 1), both with the same 3-D margins: not swapped.
    xw, yw = np.ptp(ax1.get_xlim3d()), np.ptp(ax1.get_ylim3d())
    assert xw / yw == pytest.approx(2.0, rel=1e-6)
    assert ax1.get_xlabel() == "direction 1" and ax1.get_zlabel() == "loss"

    _, fig = plots.plot_surface3d({"SGD": small}, tmp_path / "log3d", log=True, return_figure=True)
    assert fig.axes[0].get_zlabel() == "log10 loss"
