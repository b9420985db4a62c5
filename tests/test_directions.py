"""Li et al.'s direction options against their code, Hessian eigen-directions, eigenspace overlap.

The reference is tomgoldstein/loss-landscape ``net_plotter.py`` (commit 64ef4d5):
``normalize_direction``, ``normalize_directions_for_weights`` / ``_for_states`` and
``create_random_direction``. ``_reference`` below re-states its per-tensor rules.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharpscope import ConfigError
from sharpscope.hessian import eigenspace_overlap, eigenvalues
from sharpscope.landscape import (NORMS, hessian_directions, load_directions, normalize_direction, random_direction,
                                  scale_to_norm, state_buffer_names, surface)
from sharpscope.landscape.directions import dot, norm
from sharpscope.linalg import subspace_overlap
from sharpscope.models import build_model, make_model_spec

F64 = torch.float64


# --------------------------------------------------------------------------------------
# The reference's rules, one tensor at a time
# --------------------------------------------------------------------------------------
def _reference(d: torch.Tensor, w: torch.Tensor, norm_: str, ignore: str) -> torch.Tensor:
    """What net_plotter.py does to the direction ``d`` of the model tensor ``w``.

    normalize_directions_for_weights / _for_states: a tensor of at most one dimension becomes
    zero under ignore 'biasbn' and a copy of w otherwise, whatever the norm; any other tensor
    goes through normalize_direction: filter d_i * ||w_i|| / (||d_i|| + 1e-10); layer
    d * ||w|| / ||d||; weight d * w; dfilter d_i / (||d_i|| + 1e-10); dlayer d / ||d||; any
    other name (its default '') leaves d as drawn."""
    if d.dim() <= 1:
        return torch.zeros_like(d) if ignore == "biasbn" else w.clone().to(d.dtype)
    if norm_ == "filter":
        return torch.stack([di * (wi.norm() / (di.norm() + 1e-10)) for di, wi in zip(d, w)])
    if norm_ == "layer":
        return d * (w.norm() / d.norm())
    if norm_ == "weight":
        return d * w
    if norm_ == "dfilter":
        return torch.stack([di / (di.norm() + 1e-10) for di in d])
    if norm_ == "dlayer":
        return d / d.norm()
    return d.clone()


def _bn_cnn(seed: int = 0, dtype=F64) -> nn.Module:
    """Conv filters (4-D), linear rows (2-D), biases and BN affine parameters (1-D), BN buffers."""
    torch.manual_seed(seed)
    model = build_model(make_model_spec("cnn", (1, 8, 8), 10, channels=[3, 4], hidden=6, bn=True)).to(dtype)
    model.train()
    model(torch.randn(16, 1, 8, 8, dtype=dtype))  # move the running statistics and the counters
    return model.eval()


def _data(n: int = 24, seed: int = 0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g, dtype=dtype)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y, [(x[i:i + 10], y[i:i + 10]) for i in range(0, n, 10)]


@pytest.mark.parametrize("dir_type", ["weights", "states"])
@pytest.mark.parametrize("ignore", ["biasbn", "none"])
@pytest.mark.parametrize("norm_", NORMS)
def test_every_option_matches_the_reference_tensor_by_tensor(norm_, ignore, dir_type):
    model = _bn_cnn()
    # the reference's tensors: net.parameters() or net.state_dict() (counters included)
    tensors = dict(model.named_parameters()) if dir_type == "weights" else model.state_dict()
    g = torch.Generator().manual_seed(7)
    raw = {n: torch.randn(t.shape, generator=g, dtype=F64) for n, t in tensors.items()}
    ours = normalize_direction({n: raw[n] for n in raw if n in dict(model.named_parameters())
                                or n in state_buffer_names(model)}, model, norm_, ignore)
    kinds = set()
    for name, w in tensors.items():
        expected = _reference(raw[name], w.detach(), norm_, ignore)
        if not w.is_floating_point():  # num_batches_tracked: sharpscope holds it fixed (docstring)
            assert name.endswith("num_batches_tracked") and name not in ours
            continue
        kinds.add(w.dim())
        # float64; the norms are sums in another order than the reference's per-slice norms: a few ulps
        torch.testing.assert_close(ours[name], expected, rtol=1e-13, atol=1e-300, msg=name)
    assert kinds == {1, 2, 4}  # biases, BN parameters and statistics; linear rows; conv filters
    if dir_type == "states":
        assert {"features.1.running_mean", "features.1.running_var"} <= set(ours)


def test_the_norms_on_hand_made_tensors():
    w = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=F64)  # filter norms 5 and 2, layer norm sqrt(29)
    d = torch.tensor([[1.0, 0.0], [0.0, -2.0]], dtype=F64)  # filter norms 1 and 2, layer norm sqrt(5)
    model = nn.Linear(2, 2, bias=True).double()
    with torch.no_grad():
        model.weight.copy_(w)
        model.bias.copy_(torch.tensor([0.5, -1.0]))
    expect = {"filter": [[5.0, 0.0], [0.0, -2.0]], "dfilter": [[1.0, 0.0], [0.0, -1.0]],
              "layer": (d * math.sqrt(29 / 5)).tolist(), "dlayer": (d / math.sqrt(5)).tolist(),
              "weight": [[3.0, 0.0], [0.0, -4.0]], "none": d.tolist()}
    for norm_, want in expect.items():
        for ignore in ("biasbn", "none"):
            out = normalize_direction({"weight": d, "bias": torch.ones(2, dtype=F64)}, model, norm_, ignore)
            # 1e-10 of the reference's filter guard over norms ~1: relative 1e-10
            torch.testing.assert_close(out["weight"], torch.tensor(want, dtype=F64), rtol=2e-10, atol=0)
            assert out["bias"].tolist() == ([0.0, 0.0] if ignore == "biasbn" else [0.5, -1.0])


def test_layer_normalization_of_a_float32_tensor_of_millions_of_entries():
    """A 2048 x 2048 float32 weight (4 M entries): under "layer" the direction's norm equals the
    weight's to 1e-6 (float64 block sums, sharpscope.reductions; torch's whole float32 norms err
    ~1e-4 at this size, which left the ratio off by as much)."""
    model = nn.Linear(2048, 2048, bias=False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.weight.copy_(torch.rand(2048, 2048, generator=g) + 0.5)
    d = {"weight": torch.rand(2048, 2048, generator=g) * 3}
    out = normalize_direction(d, model, "layer", "none")
    ratio = float(out["weight"].double().norm() / model.weight.detach().double().norm())
    assert abs(ratio - 1) < 1e-6, ratio


def test_one_dimensional_tensors_follow_the_weights_under_every_norm():
    # before: norm="weight" gave d * w and norm="none" the raw Gaussian on 1-D tensors; the
    # reference copies w under every norm when ignore is not "biasbn"
    model = _bn_cnn()
    for norm_ in NORMS:
        d = random_direction(model, norm=norm_, ignore="none", seed=1)
        for name, p in model.named_parameters():
            if p.dim() <= 1:
                assert torch.equal(d[name], p.detach()), (norm_, name)


def test_defaults_are_unchanged():
    # the former filter rule d_i ||w_i|| / ||d_i|| (zero where d_i = 0), biases and BN zeroed; in
    # float32 the reference's + 1e-10 is below half an ulp of ||d_i||, so bit for bit the same
    model = _bn_cnn(dtype=torch.float32)
    d = random_direction(model, seed=3)
    gen = torch.Generator().manual_seed(3)
    for name, p in model.named_parameters():
        raw = torch.randn(p.shape, generator=gen, dtype=F64).to(p.dtype)
        if p.dim() <= 1:
            assert torch.count_nonzero(d[name]) == 0
            continue
        dn = raw.reshape(raw.shape[0], -1).norm(dim=1)
        wn = p.detach().reshape(p.shape[0], -1).norm(dim=1)
        old = raw * torch.where(dn > 0, wn / dn, torch.zeros_like(dn)).view(-1, *([1] * (raw.dim() - 1)))
        assert torch.equal(d[name], old), name


def test_biasbn_also_zeroes_multi_dimensional_normalization_parameters():
    # the one documented difference under biasbn: the reference zeroes only tensors of at most
    # one dimension and would filter-normalize this (4, 3) LayerNorm weight
    model = nn.Sequential(nn.Linear(3, 12), nn.Unflatten(1, (4, 3)), nn.LayerNorm((4, 3))).double()
    d = random_direction(model, seed=0)
    assert torch.count_nonzero(d["2.weight"]) == 0 and torch.count_nonzero(d["0.weight"]) > 0
    kept = random_direction(model, ignore="none", seed=0)
    # filter-normalized: each row at the weights' row norm, up to the 1e-10 guard over ||d_i|| ~ 1.7
    torch.testing.assert_close(kept["2.weight"].norm(dim=1), model[2].weight.detach().norm(dim=1), rtol=1e-9, atol=0)


def test_states_directions_and_their_surface():
    model = _bn_cnn()
    x, y, batches = _data()
    assert state_buffer_names(model) == ["features.1.running_mean", "features.1.running_var",
                                         "features.4.running_mean", "features.4.running_var"]
    # parameters drawn first: a states direction agrees with the weights one on them; under
    # biasbn its (1-D) BN statistics are zero, as in the reference
    weights = random_direction(model, seed=2)
    states = random_direction(model, seed=2, dir_type="states")
    assert all(torch.equal(weights[n], states[n]) for n in weights)
    assert all(torch.count_nonzero(states[n]) == 0 for n in state_buffer_names(model))
    d = random_direction(model, seed=2, ignore="none", dir_type="states")
    assert torch.equal(d["features.1.running_var"], model.features[1].running_var)
    xs = [-1.5, -0.5, 0.0, 0.3]
    res = surface(model, F.cross_entropy, batches, [d], xs)
    for t, value in zip(xs, res.loss):
        # the reference's set_states: every float entry of the state moves by t d; eval mode
        moved = copy.deepcopy(model)
        moved.load_state_dict({n: (v + t * d[n] if n in d else v) for n, v in model.state_dict().items()})
        with torch.no_grad():
            expected = F.cross_entropy(moved.eval()(x), y).item()
        if t < -1:  # running variance (1 + t) var < 0: NaN in eval mode, here as in the reference
            assert math.isnan(value) and math.isnan(expected)
        else:
            assert value == pytest.approx(expected, rel=1e-12)  # float64, channels-last convolutions
    assert all(torch.equal(b, model.state_dict()[n]) for n, b in model.named_buffers())  # model untouched
    with pytest.raises(ConfigError, match="dir_type"):
        random_direction(model, dir_type="buffers")


# --------------------------------------------------------------------------------------
# Directions along the top Hessian eigenvectors
# --------------------------------------------------------------------------------------
class LinearRegression(nn.Module):
    """f(x) = W x + c; with MSE the loss is an exact quadratic in (W, c)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.W = nn.Parameter(torch.randn(3, 4, generator=g, dtype=F64))
        self.c = nn.Parameter(torch.randn(3, generator=g, dtype=F64))

    def forward(self, x):
        return x @ self.W.T + self.c


def _regression():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 4, generator=g, dtype=F64)
    y = torch.randn(30, 3, generator=g, dtype=F64)
    return [(x[i:i + 8], y[i:i + 8]) for i in range(0, 30, 8)]


def test_eigen_directions_on_an_exact_quadratic():
    model, batches = LinearRegression(), _regression()
    hd = hessian_directions(model, F.mse_loss, batches, k=2)
    d1, d2 = hd.directions
    assert dot(d1, d1) == pytest.approx(1.0, abs=1e-12) and dot(d2, d2) == pytest.approx(1.0, abs=1e-12)
    assert abs(dot(d1, d2)) <= 1e-12  # Lanczos Ritz vectors: orthonormal to rounding
    assert hd.eigenvalues[0] >= hd.eigenvalues[1] > 0
    ts = np.linspace(-2.0, 2.0, 9)
    res = surface(model, F.mse_loss, batches, [d1], ts)
    # L(theta + t v) = L0 + (g.v) t + (v^T H v / 2) t^2 exactly, and v^T H v is the Ritz value
    np.testing.assert_allclose(res.loss, hd.quadratic(0, ts), rtol=1e-10)


def test_eigen_directions_match_the_second_order_model_of_a_nonlinear_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 4)).double()
    x, y = torch.randn(40, 5, dtype=F64), torch.randint(0, 4, (40,))
    batches = [(x[:25], y[:25]), (x[25:], y[25:])]
    hd = hessian_directions(model, F.cross_entropy, batches, k=2)
    assert abs(dot(*hd.directions)) <= 1e-12
    for i in range(2):
        hs = np.array([0.04, 0.02, 0.01])
        both = np.concatenate([-hs, hs])
        res = surface(model, F.cross_entropy, batches, [hd.directions[i]], both)
        err = np.abs(res.loss - hd.quadratic(i, both))
        # third order: halving t divides the error by ~8 (6 to 10 leaves room for the t^4 term)
        ratios = err[[0, 1, 3, 4]] / err[[1, 2, 4, 5]]
        assert ((ratios > 6) & (ratios < 10)).all(), ratios
        assert err.max() < 1e-4 * hd.eigenvalues[i]


def test_eigen_directions_are_zero_outside_the_selection_and_sign_fixed():
    model, batches = LinearRegression(), _regression()
    hd = hessian_directions(model, F.mse_loss, batches, k=1, params="W")
    (d,) = hd.directions
    assert torch.count_nonzero(d["c"]) == 0 and dot(d, d) == pytest.approx(1.0, abs=1e-12)
    assert d["W"].flatten()[d["W"].abs().argmax()] > 0


def test_scale_to_norm():
    model = _bn_cnn()
    d = scale_to_norm(random_direction(model, seed=0), 2.5)
    assert norm(d) == pytest.approx(2.5, rel=1e-12)
    with pytest.raises(ConfigError, match="zero"):
        scale_to_norm({n: torch.zeros_like(t) for n, t in d.items()})


# --------------------------------------------------------------------------------------
# Overlap of eigenspaces
# --------------------------------------------------------------------------------------
def _orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, k, generator=g, dtype=F64))[0]


def test_subspace_overlap_exact_cases():
    e = torch.eye(6, dtype=F64)
    V = _orthonormal(6, 3, 0)
    assert subspace_overlap(V, V) == pytest.approx(1.0, abs=1e-14)
    assert subspace_overlap(e[:, :2], e[:, 2:5]) == 0.0
    for a in (0.0, 0.3, 1.0, math.pi / 2):
        r = math.cos(a) * e[:, 0] + math.sin(a) * e[:, 2]
        assert subspace_overlap(e[:, :1], r[:, None]) == pytest.approx(math.cos(a) ** 2, abs=1e-15)
        # two dimensions, one of them shared: (cos^2 a + 1) / 2
        assert subspace_overlap(e[:, :2], torch.stack([r, e[:, 1]], 1)) == pytest.approx(
            (math.cos(a) ** 2 + 1) / 2, abs=1e-15)


def test_subspace_overlap_depends_on_the_spaces_only():
    V, W = _orthonormal(20, 4, 1), _orthonormal(20, 4, 2)
    base = subspace_overlap(V, W)
    assert 0 < base < 1
    assert subspace_overlap(W, V) == pytest.approx(base, abs=1e-14)  # symmetric
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=F64)
    assert subspace_overlap(V * signs, W) == pytest.approx(base, abs=1e-14)
    R = _orthonormal(4, 4, 3)  # a rotation within the space
    assert subspace_overlap(V @ R, W @ R.T) == pytest.approx(base, abs=1e-14)
    M = torch.tensor([[2.0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 3, 1], [0, 0, 0, 1]], dtype=F64)
    assert subspace_overlap(V @ M, W) == pytest.approx(base, abs=1e-13)  # any basis of the space
    # expected value for random spaces: k / n = 4 / 20 (a sanity check of scale, loose)
    assert base < 0.6


def test_subspace_overlap_refuses_mismatched_or_degenerate_bases():
    with pytest.raises(ConfigError, match="different dimension"):
        subspace_overlap(_orthonormal(6, 2, 0), _orthonormal(7, 2, 0))
    V = _orthonormal(6, 2, 0)
    with pytest.raises(ConfigError, match="linearly dependent"):
        subspace_overlap(torch.stack([V[:, 0], 2 * V[:, 0]], 1), V)


def test_eigenspace_overlap_of_results():
    model, batches = _bn_cnn(0), _data()[2]
    a = eigenvalues(model, F.cross_entropy, batches, k=3, return_vectors=True)
    a_again = eigenvalues(model, F.cross_entropy, batches, k=3, return_vectors=True, seed=5)
    o = eigenspace_overlap(a, a_again)
    assert o.k == 3 and o.overlap == pytest.approx(1.0, abs=1e-6)  # another start: same space to ~residual/gap
    assert json.loads(json.dumps(o.to_dict()))["overlap"] == o.overlap
    torch.manual_seed(1)
    other = build_model(make_model_spec("cnn", (1, 8, 8), 10, channels=[3, 5], hidden=6, bn=True)).double()
    b = eigenvalues(other, F.cross_entropy, batches, k=3, return_vectors=True)
    with pytest.raises(ConfigError, match="different parameters"):
        eigenspace_overlap(a, b)
    with pytest.raises(ConfigError, match="return_vectors"):
        eigenspace_overlap(a, eigenvalues(model, F.cross_entropy, batches, k=3))


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlp_runs(tmp_path_factory):
    from sharpscope.train import TrainConfig, train
    root = tmp_path_factory.mktemp("mlp_runs")
    for name, hidden in (("wide", [16]), ("narrow", [8])):
        train(TrainConfig(optimizer="sgd", model="mlp", model_kwargs={"hidden": hidden}, n_train=200, epochs=3,
                          batch_size=50), root / name)
    return root


def test_cli_hessian_overlap_with(mlp_runs, tmp_path, cli):
    a, b = mlp_runs / "wide", mlp_runs / "wide" / "checkpoints" / "epoch_0002.pt"
    code, out, err = cli(["hessian", str(a), "--overlap-with", str(b), "--top-k", "3", "--samples", "150",
                          "--plot", "--plot-dir", str(tmp_path), "--json", "-", "--no-progress"])
    assert code == 0, err
    report = json.loads(out[out.index("{"):])
    o = report["overlap"]
    assert 0 <= o["overlap"] <= 1 and o["k"] == 3 and len(o["cos2"]) == 3 and o["with"] == str(b)
    assert len(o["eigenvalues_b"]["eigenvalues"]) == 3 and len(report["eigenvalues"]["eigenvalues"]) == 3
    assert (tmp_path / "hessian_eigenvalues.png").stat().st_size > 1000
    code, out, err = cli(["hessian", str(a), "--overlap-with", str(a), "--top-k", "2", "--samples", "150",
                          "--json", "-", "--no-progress"])
    assert code == 0, err
    # the same checkpoint, the same seed: the same Ritz vectors (float32 products)
    assert json.loads(out[out.index("{"):])["overlap"]["overlap"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("args,fragment", [
    (["--overlap-with", "NARROW"], "different parameters"), (["--overlap-with", "WIDE", "--top-k", "0"], "--top-k"),
])
def test_cli_hessian_overlap_refused(mlp_runs, cli, args, fragment):
    args = [str(mlp_runs / "narrow") if a == "NARROW" else str(mlp_runs / "wide") if a == "WIDE" else a for a in args]
    code, _, err = cli(["hessian", str(mlp_runs / "wide"), "--no-progress", *args])
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err


def test_cli_surface_along_eigenvectors(mlp_runs, tmp_path, cli):
    code, out, err = cli(["surface", str(mlp_runs / "wide"), "--directions", "hessian", "--dim", "1",
                          "--grid", "-1:1:5", "--samples", "100", "--out", str(tmp_path), "--plot", "--json", "-",
                          "--no-progress"])
    assert code == 0, err
    report = json.loads(out[out.index("{"):])
    assert report["options"]["directions"] == "hessian" and len(report["options"]["eigenvalues"]) == 1
    assert report["random"]["options"]["scaled_to_norm"] == 1.0
    (d_eig,) = load_directions(tmp_path / "hessian_1d.npz")
    (d_rand,) = load_directions(tmp_path / "hessian_1d_random.npz")
    assert norm(d_eig) == pytest.approx(1.0, rel=1e-5) and norm(d_rand) == pytest.approx(1.0, rel=1e-5)  # float32
    assert (tmp_path / "hessian_1d.png").stat().st_size > 1000
    code, out, err = cli(["surface", str(mlp_runs / "wide"), "--directions", "hessian", "--grid", "-1:1:3",
                          "--samples", "100", "--out", str(tmp_path), "--json", "-", "--no-progress"])
    assert code == 0, err
    d1, d2 = load_directions(tmp_path / "hessian_2d.npz")
    assert abs(dot(d1, d2)) < 1e-5  # float32 eigenvectors


@pytest.mark.parametrize("args,fragment", [
    (["--directions", "pca"], "--directions"), (["--directions", "hessian", "--dir-type", "states"], "states"),
    (["--dir-type", "buffers"], "dir_type"), (["--norm", "spectral"], "dfilter"),
])
def test_cli_surface_direction_options_refused(mlp_runs, cli, args, fragment):
    code, _, err = cli(["surface", str(mlp_runs / "wide"), "--no-progress", *args])
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err
