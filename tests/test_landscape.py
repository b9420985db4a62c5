"""Loss landscapes: directions, exact surfaces on a quadratic model, orientation, resume, PCA."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharpscope import ConfigError
from sharpscope.landscape import (SurfaceResult, interpolate, load_directions, normalize_direction, orthogonalize, parse_grid,
                                  plane_directions, random_direction, surface, trajectory_directions)
from sharpscope.landscape.directions import dot, ignored_names
from sharpscope.models import build_model, make_model_spec

from _quadratic import LinearRegression, regression_data


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(make_model_spec("cnn", (1, 8, 8), 10, channels=[4, 6], hidden=12, bn=True))
    model.train()
    model(torch.randn(16, 1, 8, 8))  # move BN running statistics
    return model


def _digits_like(n: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y, [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)]


def test_filter_normalized_direction_has_the_weights_filter_norms():
    model = _cnn()
    d = random_direction(model, norm="filter", ignore="biasbn", seed=3)
    skip = ignored_names(model, "biasbn")
    assert skip >= {"features.1.weight", "features.1.bias", "classifier.1.bias"}
    for name, w in model.named_parameters():
        if name in skip:
            assert torch.count_nonzero(d[name]) == 0, name
        else:
            dn = d[name].reshape(d[name].shape[0], -1).norm(dim=1)
            wn = w.detach().reshape(w.shape[0], -1).norm(dim=1)
            torch.testing.assert_close(dn, wn, rtol=1e-6, atol=0)  # float32 rounding of a rescale


def test_other_normalizations():
    model = _cnn()
    layer = random_direction(model, norm="layer", seed=1)
    weight = random_direction(model, norm="weight", seed=1)
    raw = random_direction(model, norm="none", ignore="none", seed=1)
    w = model.features[0].weight.detach()
    assert layer["features.0.weight"].norm().item() == pytest.approx(w.norm().item(), rel=1e-6)
    torch.testing.assert_close(weight["features.0.weight"], raw["features.0.weight"] * w)
    keep = random_direction(model, norm="filter", ignore="none", seed=1)
    assert torch.equal(keep["features.1.weight"], model.features[1].weight.detach())  # Li et al.: 1-D follows w


def test_directions_are_seeded():
    model = _cnn()
    a, b, c = (random_direction(model, seed=s) for s in (5, 5, 6))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(a["classifier.1.weight"], c["classifier.1.weight"])


def test_orthogonalize():
    model = _cnn()
    d1, d2 = random_direction(model, seed=0), random_direction(model, seed=1)
    d2o = orthogonalize(d2, d1)
    assert abs(dot(d2o, d1)) <= 1e-6 * dot(d1, d1)
    with pytest.raises(ConfigError):
        normalize_direction(d1, model, norm="spectral")


def _quadratic_loss(model, d1, d2, x, y, a, b):
    W = model.W.detach() + a * d1["W"] + b * d2["W"]
    c = model.c.detach() + a * d1["c"] + b * d2["c"]
    return ((x @ W.T + c - y) ** 2).mean().item()


def test_surface_matches_the_exact_quadratic_on_a_non_square_grid():
    model = LinearRegression()
    x, y, batches = regression_data()
    d1 = random_direction(model, norm="none", ignore="none", seed=1)
    d2 = random_direction(model, norm="none", ignore="none", seed=2)
    xs, ys = np.linspace(-1.0, 2.0, 7), np.linspace(-0.5, 0.25, 4)  # non-square, different ranges
    res = surface(model, F.mse_loss, batches, [d1, d2], xs, ys)
    assert res.loss.shape == (4, 7)
    for i, yv in enumerate(ys):
        for j, xv in enumerate(xs):
            assert res.loss[i, j] == pytest.approx(_quadratic_loss(model, d1, d2, x, y, xv, yv), rel=1e-12)
    assert np.isnan(res.accuracy).all()  # regression targets: accuracy is not defined


def test_surface_at_the_origin_is_the_models_loss_and_leaves_it_unchanged():
    model = _cnn()
    x, y, batches = _digits_like()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    d1, d2 = random_direction(model, seed=0), random_direction(model, seed=1)
    res = surface(model, F.cross_entropy, batches, [d1, d2], [-0.5, 0.0, 0.5], [0.0, 0.3])
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert res.loss[0, 1] == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-6)
    assert res.accuracy[0, 1] == pytest.approx((out.argmax(1) == y).float().mean().item())
    model.train()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(m.training for m in model.modules())


def test_channels_last_gives_the_same_values():
    from sharpscope.landscape.surface import evaluate_points
    model = _cnn()
    _, _, batches = _digits_like()
    params = {n: p.detach() for n, p in model.named_parameters()}
    a = evaluate_points(model, F.cross_entropy, batches, lambda k: (params, None), 1, channels_last=True)
    b = evaluate_points(model, F.cross_entropy, batches, lambda k: (params, None), 1, channels_last=False)
    assert a[0][0] == pytest.approx(b[0][0], rel=1e-5) and a[1][0] == b[1][0]


def test_one_dimensional_summary_of_a_known_parabola():
    # L(x) = c + a x^2 along the direction: increase a r^2, basin width 2 sqrt(delta / a)
    model = LinearRegression()
    x, y, batches = regression_data()
    d1 = random_direction(model, norm="none", ignore="none", seed=1)
    res = surface(model, F.mse_loss, batches, [d1], np.linspace(-2, 2, 401))
    zero = {n: torch.zeros_like(t) for n, t in d1.items()}
    L = lambda t: _quadratic_loss(model, d1, zero, x, y, t, 0.0)  # noqa: E731
    a = (L(1.0) + L(-1.0) - 2 * L(0.0)) / 2
    s = res.summary(radii=(0.5, 1.0), delta=0.1)
    assert s["centre_loss"] == pytest.approx(L(0.0), rel=1e-12)
    assert s["loss_increase_at_radius"]["1.0"] == pytest.approx(a, rel=1e-12)
    b = (L(1.0) - L(-1.0)) / 2  # L(t) = L(0) + b t + a t^2: the basin is where a t^2 + b t <= delta
    lo, hi = sorted(np.roots([a, b, -0.1]).real)
    assert s["basin_width"] == pytest.approx(hi - lo, rel=1e-3)  # ray sampling: 400 steps per side
    assert not s["basin_reaches_grid_edge"]


def test_interpolation_endpoints_and_buffers():
    a, b = _cnn(0), _cnn(1)
    x, y, batches = _digits_like()
    res = interpolate(a, b, F.cross_entropy, batches, np.linspace(-0.5, 1.5, 9))
    for model, alpha_index in ((a, 2), (b, 6)):  # alpha = 0 and alpha = 1
        model.eval()
        with torch.no_grad():
            assert res.loss[alpha_index] == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-5)
    kept = interpolate(a, b, F.cross_entropy, batches, [1.0], buffers="keep")
    assert kept.loss[0] != pytest.approx(res.loss[6], rel=1e-6)  # A's BN statistics with B's weights
    s = res.summary()
    assert s["loss_at_b"] == pytest.approx(res.loss[6]) and "barrier" in s


def test_plane_through_three_models():
    a, b, c = _cnn(0), _cnn(1), _cnn(2)
    x, y, batches = _digits_like()
    dirs = plane_directions(a, b, c)
    res = surface(a, F.cross_entropy, batches, dirs, [0.0, 1.0], [0.0, 1.0], kind="plane")
    c.eval()
    # (0, 1) is C's weights with A's buffers
    params = {n: p.detach() for n, p in c.named_parameters()}
    out = torch.func.functional_call(a.eval(), {**dict(a.named_buffers()), **params}, (x,))
    assert res.loss[1, 0] == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-5)


def test_resume_continues_an_interrupted_grid(tmp_path):
    model = LinearRegression()
    _, _, batches = regression_data()
    d1, d2 = (random_direction(model, norm="none", ignore="none", seed=s) for s in (1, 2))
    xs, ys = np.linspace(-1, 1, 6), np.linspace(-1, 1, 5)
    full = surface(model, F.mse_loss, batches, [d1, d2], xs, ys)

    class Stop(Exception):
        pass

    def stop_after_12(k, lv, av):
        if k == 11:
            raise Stop

    with pytest.raises(Stop):
        surface(model, F.mse_loss, batches, [d1, d2], xs, ys, resume_path=tmp_path / "p.npz", save_every=4,
                on_point=stop_after_12)
    seen = []
    resumed = surface(model, F.mse_loss, batches, [d1, d2], xs, ys, resume_path=tmp_path / "p.npz",
                      on_point=lambda k, lv, av: seen.append(k))
    assert min(seen) == 12 and len(seen) == 30 - 12  # 12 saved when the stop came: only the rest recomputed
    np.testing.assert_array_equal(resumed.loss, full.loss)
    # another grid does not reuse the partial file
    other = surface(model, F.mse_loss, batches, [d1, d2], xs, ys + 0.1, resume_path=tmp_path / "p.npz")
    assert not np.allclose(other.loss, full.loss)


def test_trajectory_pca_recovers_a_planar_path():
    model = LinearRegression()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    u = random_direction(model, norm="none", ignore="none", seed=3)
    v = orthogonalize(random_direction(model, norm="none", ignore="none", seed=4), u)
    coords = [(3.0, 1.0), (2.0, 1.5), (1.2, 0.4), (0.5, 0.2), (0.0, 0.0)]
    snaps = [{n: base[n] + a * u[n] + b * v[n] for n in base} for a, b in coords]
    traj = trajectory_directions(model, snaps, ignore="none")
    assert sum(traj.explained_variance) == pytest.approx(1.0, abs=1e-9)
    assert traj.explained_variance[0] >= traj.explained_variance[1]
    assert np.allclose(traj.path[-1], 0.0)
    for (a, b), p in zip(coords, traj.path):
        dist = math.sqrt(sum(((a * u[n] + b * v[n]) ** 2).sum().item() for n in base))
        assert np.linalg.norm(p) == pytest.approx(dist, rel=1e-9)
    assert dot(traj.directions[0], traj.directions[1]) == pytest.approx(0.0, abs=1e-9)


def test_save_and_load_round_trip(tmp_path):
    model = LinearRegression()
    _, _, batches = regression_data()
    d1 = random_direction(model, norm="none", ignore="none", seed=1)
    res = surface(model, F.mse_loss, batches, [d1], [-1.0, 0.0, 1.0], options={"seed": 1})
    res.save(tmp_path / "s.npz", [d1])
    back = SurfaceResult.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.loss, res.loss)
    assert back.options == {"seed": 1} and back.ys is None
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["d0/W"], d1["W"].numpy())
    (back_d1,) = load_directions(tmp_path / "s.npz")
    assert back_d1.keys() == d1.keys() and all(torch.equal(back_d1[n], d1[n]) for n in d1)


@pytest.mark.parametrize("text", ["-1:1", "1:-1:5", "a:b:c", "-1:1:0", "0:inf:3"])
def test_parse_grid_rejects(text):
    with pytest.raises(ConfigError, match="MIN:MAX:POINTS"):
        parse_grid(text)


def test_parse_grid():
    np.testing.assert_array_equal(parse_grid("-1:1:5"), [-1.0, -0.5, 0.0, 0.5, 1.0])


def test_wrong_number_of_directions():
    model = LinearRegression()
    _, _, batches = regression_data()
    d1 = random_direction(model, seed=1)
    with pytest.raises(ConfigError, match="2 direction"):
        surface(model, F.mse_loss, batches, [d1], [0.0], [0.0])


def _curve(xs: np.ndarray, loss: np.ndarray) -> SurfaceResult:
    return SurfaceResult(xs=xs, ys=None, loss=loss, accuracy=np.zeros_like(loss), kind="interpolation", options={},
                         n_examples=1, wall_time=0.0)


def test_interpolation_barrier_is_never_negative_off_grid_endpoints():
    """compare --quick interpolates on linspace(-0.5, 1.5, 11), where neither 0 nor 1 is a grid
    point. For L(a) = a^2 the loss at B is interpolated between a = 0.9 (0.81) and 1.1 (1.21):
    1.01, above every grid point inside [0, 1] (at most 0.81), so max inside - max(L(0), L(1))
    read 0.81 - 1.01 = -0.2 (issue 23: -0.029). The curve itself never rises above its higher
    endpoint: the barrier is exactly 0."""
    xs = np.linspace(-0.5, 1.5, 11)
    s = _curve(xs, xs ** 2).summary()
    assert s["loss_at_b"] == pytest.approx(1.01, abs=1e-12)
    assert s["barrier"] == 0.0
    assert s["barrier_endpoints_on_grid"] is False
    # a bump on a grid holding 0 and 1: L = sin(pi a) peaks at 1 (a = 0.5), endpoints 0 -> barrier 1
    xs = np.linspace(-0.5, 1.5, 9)
    s = _curve(xs, np.sin(np.pi * xs) + 2.0).summary()
    assert s["barrier"] == pytest.approx(1.0, abs=1e-12) and s["barrier_endpoints_on_grid"] is True


def test_compare_interpolates_on_a_grid_holding_both_minima():
    from sharpscope.experiments.compare import interpolation_alphas

    quick = interpolation_alphas(11)
    assert 0.0 in quick and 1.0 in quick and len(quick) == 13 and np.all(np.diff(quick) > 0)
    assert len(interpolation_alphas(41)) == 41  # the default grid already holds both
