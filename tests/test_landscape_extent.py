"""--range auto (auto_range) on a model with a known answer; snapshots projected onto a plane."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sharpscope import ConfigError
from sharpscope.landscape import auto_range, project_snapshots, random_direction

from _quadratic import LinearRegression


class Bowl(nn.Module):
    """L(w) = 1 + w0 + w0^2 + 4 w1^2 (the output is the loss; w = 0 is the centre, L = 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2, dtype=torch.float64))

    def forward(self, x):
        w = self.w
        return (1 + w[0] + w[0] ** 2 + 4 * w[1] ** 2) * torch.ones(x.shape[0], dtype=torch.float64)


def _mean(out, y):
    return out.mean()


BATCHES = [(torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))]
E1 = {"w": torch.tensor([1.0, 0.0], dtype=torch.float64)}
E2 = {"w": torch.tensor([0.0, 1.0], dtype=torch.float64)}
GOLD = (math.sqrt(5) - 1) / 2  # t^2 + t = 1 on the + side; t^2 - t = 1 gives 1 + GOLD on the - side


def test_auto_range_finds_where_the_loss_doubles():
    r = auto_range(Bowl(), _mean, BATCHES, [E1, E2], factor=2.0, start=0.05, max_extent=10.0, bisect=20)
    assert r.centre_loss == pytest.approx(1.0, abs=1e-15)
    plus, minus = r.sides[0]
    assert plus == pytest.approx(GOLD, abs=1e-6) and minus == pytest.approx(1 + GOLD, abs=1e-6)
    assert r.extents[0] == minus and r.extents[1] == pytest.approx(0.5, abs=1e-6)
    assert plus >= GOLD and minus >= 1 + GOLD  # bisection keeps the upper end: the loss has reached the factor
    assert r.reached == [(True, True), (True, True)] and not r.warnings


def test_auto_range_without_bisection_is_the_doubling_value():
    r = auto_range(Bowl(), _mean, BATCHES, [E1, E2], factor=2.0, start=0.05, bisect=0)
    # doubling from 0.05: 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2 (on the - side 1.6^2 - 1.6 = 0.96 < 1)
    assert r.sides[0] == (pytest.approx(0.8), pytest.approx(3.2)) and r.sides[1] == (pytest.approx(0.8),) * 2
    assert r.extents == [pytest.approx(3.2), pytest.approx(0.8)]


def test_auto_range_cap_warns():
    with pytest.warns(UserWarning, match="capped"):
        r = auto_range(Bowl(), _mean, BATCHES, [E1, E2], factor=2.0, start=0.05, max_extent=0.55)
    assert r.reached[0] == (False, False) and r.extents[0] == 0.55
    assert r.reached[1] == (True, True) and r.extents[1] == pytest.approx(0.5, abs=0.4 / 64 + 1e-12)
    assert len(r.warnings) == 2
    with pytest.raises(ConfigError):
        auto_range(Bowl(), _mean, BATCHES, [E1], factor=1.0)


def test_projection_recovers_coordinates_and_the_orthogonal_residual():
    model = LinearRegression()
    centre = {n: p.detach() for n, p in model.named_parameters()}
    d1 = random_direction(model, norm="none", ignore="none", seed=1)
    d2 = random_direction(model, norm="none", ignore="none", seed=2)  # not orthogonal to d1
    on_plane = {n: centre[n] + 0.3 * d1[n] - 1.7 * d2[n] for n in centre}
    # a vector orthogonal to both: remove its least-squares projection, then scale to norm 0.7
    v = random_direction(model, norm="none", ignore="none", seed=3)
    flat = lambda t: torch.cat([t[n].reshape(-1) for n in sorted(t)])  # noqa: E731
    D = torch.stack([flat(d1), flat(d2)], 1)
    fv = flat(v)
    fv = fv - D @ torch.linalg.lstsq(D, fv).solution
    fv = fv * (0.7 / fv.norm())
    parts = dict(zip(sorted(v), fv.split([v[n].numel() for n in sorted(v)])))
    off = {n: on_plane[n] + parts[n].view(centre[n].shape) for n in centre}
    p = project_snapshots(centre, [d1, d2], [on_plane, off, centre])
    assert p.coords.shape == (3, 2)
    np.testing.assert_allclose(p.coords[0], [0.3, -1.7], rtol=0, atol=1e-12)
    np.testing.assert_allclose(p.coords[1], [0.3, -1.7], rtol=0, atol=1e-12)
    assert p.residual[0] == pytest.approx(0.0, abs=1e-12)
    assert p.residual[1] == pytest.approx(0.7, abs=1e-12)
    assert p.residual[2] == 0.0 and (p.coords[2] == 0).all()
    with pytest.raises(ConfigError, match="dependent"):
        project_snapshots(centre, [d1, d1], [on_plane])


# ---------------------------------------------------------------- CLI: --range auto, --path, trajectory residual
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from sharpscope.train import TrainConfig, train
    root = tmp_path_factory.mktemp("run")
    train(TrainConfig(optimizer="sgd", model="mlp", model_kwargs={"hidden": [8]}, n_train=100, epochs=3,
                      batch_size=50), root / "sgd")
    return root / "sgd"


def _report(out):
    import json
    return json.loads(out[out.index("{"):])


def test_cli_range_auto_and_path(run, tmp_path, cli):
    from sharpscope.landscape import SurfaceResult
    code, out, err = cli(["surface", str(run), "--grid", "-1:1:5,-1:1:3", "--range", "auto", "--range-factor", "1.5",
                          "--path", str(run), "--samples", "60", "--out", str(tmp_path), "--plot", "--json", "-",
                          "--no-progress"])
    assert code == 0, err
    rep = _report(out)
    ra = rep["options"]["range_auto"]
    ex, ey = ra["extents"]
    assert rep["xs"][0] == pytest.approx(-ex) and rep["xs"][-1] == pytest.approx(ex) and len(rep["xs"]) == 5
    assert rep["ys"][-1] == pytest.approx(ey) and len(rep["ys"]) == 3
    res = SurfaceResult.load(tmp_path / "surface_2d.npz")
    assert res.path.shape == (4, 2) and res.path_residual.shape == (4,)  # epochs 0..3
    assert len(rep["path_residual"]) == 4 and "distance to the plane" in err
    for name in ("surface_2d_contour.png", "surface_2d_3d.png"):
        assert (tmp_path / name).stat().st_size > 0
    code, _, err = cli(["surface", "--trajectory", str(run), "--path", str(run), "--no-progress"])
    assert code != 0


def test_cli_trajectory_reports_the_residual(run, tmp_path, cli):
    from sharpscope.landscape import SurfaceResult
    code, out, err = cli(["surface", "--trajectory", str(run), "--grid", "-2:2:4,-1:1:3", "--samples", "60",
                          "--out", str(tmp_path), "--plot", "--json", "-", "--no-progress"])
    assert code == 0, err
    res = SurfaceResult.load(tmp_path / "trajectory.npz")
    assert res.path_residual.shape == (4,) and res.path_residual[-1] == 0.0  # the centre snapshot
    assert (tmp_path / "trajectory_3d.png").is_file()


# ---------------------------------------------------------------- 3-D grids
def test_3d_grid_shapes_slice_equals_2d_and_topology(tmp_path):
    from sharpscope.landscape import SurfaceResult, surface, surface_topology
    import torch.nn.functional as F
    model = LinearRegression()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(20, 4, generator=g, dtype=torch.float64)
    y = torch.randn(20, 3, generator=g, dtype=torch.float64)
    batches = [(x[:10], y[:10]), (x[10:], y[10:])]
    ds = [random_direction(model, norm="none", ignore="none", seed=s) for s in (1, 2, 3)]
    xs, ys, zs = np.linspace(-1, 1, 5), np.linspace(-0.5, 0.5, 3), np.linspace(-0.4, 0.4, 4)
    res = surface(model, F.mse_loss, batches, ds, xs, ys, zs=zs)
    assert res.dim == 3 and res.loss.shape == (4, 3, 5) and res.n_points == 60
    for k, z in enumerate(zs):  # each slice = the 2-D surface centred at z d3
        centre = {n: p.detach() + z * ds[2][n] for n, p in model.named_parameters()}
        flat = surface(model, F.mse_loss, batches, ds[:2], xs, ys, center=centre)
        np.testing.assert_allclose(res.slice(k).loss, flat.loss, rtol=1e-12, atol=0)
    topo = res.topology()
    assert topo.n_minima >= 1 and topo.to_dict()
    assert surface_topology(res.loss, axes=(zs, ys, xs)).n_minima == topo.n_minima
    assert res.summary()["dim"] == 3 and res.to_dict()["zs"] == list(zs)
    back = SurfaceResult.load(res.save(tmp_path / "s3.npz", ds))
    np.testing.assert_array_equal(back.loss, res.loss)
    np.testing.assert_array_equal(back.zs, zs)
    with pytest.raises(ConfigError, match="3-D surface needs 3"):
        surface(model, F.mse_loss, batches, ds[:2], xs, ys, zs=zs)


def test_cli_dim3(run, tmp_path, cli):
    from sharpscope.landscape import SurfaceResult
    code, out, err = cli(["surface", str(run), "--dim", "3", "--grid", "-1:1:3,-1:1:4,-0.5:0.5:3", "--samples", "40",
                          "--out", str(tmp_path), "--plot", "--json", "-", "--no-progress"])
    assert code == 0, err
    rep = _report(out)
    assert len(rep["zs"]) == 3 and rep["summary"]["dim"] == 3 and "topology" in rep
    res = SurfaceResult.load(tmp_path / "surface_3d.npz")
    assert res.loss.shape == (3, 4, 3) and np.isfinite(res.loss).all()
    assert (tmp_path / "surface_3d_slices.png").stat().st_size > 0
    code, _, err = cli(["surface", str(run), "--dim", "3", "--grid", "-1:1:3,-1:1:3", "--no-progress"])
    assert code != 0 and "--dim 3" in err
