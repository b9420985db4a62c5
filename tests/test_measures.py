"""Worst-case and average-case sharpness (sharpscope.measures) against closed forms on
quadratics, exact projections, and a re-implementation of the reference's loop
(tml-epfl/sharpness-vs-generalization ``sharpness.py``) written from its source."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharpscope.errors import ConfigError
from sharpscope.measures import apgd_checkpoints, average_case_sharpness, sharpness, worst_case_sharpness
from sharpscope.sharpness import m_sharpness



@pytest.fixture(autouse=True)
def _float64():
    """The quadratics and the reference loop run in float64 (restored after every test, so no
    other test module sees it)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


# -- a quadratic: linear regression with the squared error --------------------------------------
def _regression(n: int = 64, d: int = 6, seed: int = 0, spectrum=(8.0, 3.0, 1.0, 0.5, 0.3, 0.1), at_min=True,
                diagonal=False):
    """L(w) = mean (x.w - y)^2: gradient g = 2 X^T r / N, Hessian H = 2 X^T X / N (exact
    quadratic, so L(w + e) - L(w) = g.e + e^T H e / 2). X is built so that H has ``spectrum``
    (diagonal H when ``diagonal``)."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=gen))
    basis = torch.eye(d) if diagonal else torch.linalg.qr(torch.randn(d, d, generator=gen))[0]
    x = q * torch.tensor(spectrum).sqrt() * math.sqrt(n / 2) @ basis.T  # X^T X / N = basis diag(s/2) basis^T
    w_true = torch.randn(d, generator=gen)
    y = x @ w_true + 0.3 * torch.randn(n, generator=gen)
    model = nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        w_min = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]
        model.weight.copy_((w_min if at_min else w_min + 0.5 * torch.randn(d, generator=gen))[None])
    w = model.weight.detach()[0]
    r = x @ w - y
    g, h = 2 * x.T @ r / n, 2 * x.T @ x / n
    return model, [(x, y[:, None])], g, h


def _mse(out, y):
    return F.mse_loss(out, y)


def _ball_max(g: torch.Tensor, h: torch.Tensor, rho: float) -> float:
    """max_{||e|| <= rho} g.e + e^T H e / 2 for H PSD (the trust-region subproblem of the
    maximization): e = (mu I - H)^{-1} g with mu > lambda_max and ||e|| = rho, mu by bisection."""
    lam, v = torch.linalg.eigh(h)
    gv = v.T @ g

    def norm(mu: float) -> float:
        return float((gv / (mu - lam)).norm())

    lo, hi = float(lam[-1]) + 1e-15, float(lam[-1]) + float(g.norm()) / rho + 1.0
    for _ in range(300):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if norm(mid) > rho else (lo, mid)
    e = v @ (gv / (hi - lam))
    return float(g @ e + 0.5 * e @ h @ e)


def test_worst_case_l2_off_the_minimum_reaches_the_trust_region_maximum():
    """From e = 0 (the default), 20 APGD steps reach the exact maximum of the quadratic over the
    ball to 1e-3 relative, and never exceed it (beyond float64 rounding)."""
    model, data, g, h = _regression(at_min=False)
    for rho in (0.05, 0.5):
        exact = _ball_max(g, h, rho)
        res = worst_case_sharpness(model, _mse, data, m=64, rho=rho, steps=20)
        got = res.results[0].loss_increase
        assert exact * (1 - 1e-3) <= got <= exact * (1 + 1e-12), (rho, got, exact)


def test_worst_case_at_a_minimum_is_half_rho_squared_lambda_max():
    """At the minimum (g = 0 to rounding) a random point of the sphere starts the ascent, which
    finds the top eigenvector: rho^2 lambda_max / 2 (lambda_max / lambda_2 = 8 / 3)."""
    model, data, g, h = _regression(at_min=True)
    assert g.norm() < 1e-12
    rho = 0.1
    exact = 0.5 * rho**2 * float(torch.linalg.eigvalsh(h)[-1])
    res = worst_case_sharpness(model, _mse, data, m=64, rho=rho, steps=40, random_start=True, seed=3)
    assert exact * (1 - 1e-3) <= res.results[0].loss_increase <= exact * (1 + 1e-12)


def test_worst_case_linf_with_diagonal_curvature_is_separable():
    """Diagonal H, box ||e||_inf <= rho: each coordinate at rho sign(g_i), so the maximum is
    sum_i rho |g_i| + H_ii rho^2 / 2; adaptive: the same with rho T_i, T = |w| + eta. The
    momentum average 0.75 z + 0.25 u_{k-1} approaches the vertex as 1 - 0.25^ceil(k/2) (restarts
    from the best point keep that rate), so after 20 steps the value is within 1e-6 relative."""
    model, data, g, h = _regression(at_min=False, diagonal=True)
    rho = 0.02
    exact = float((rho * g.abs() + 0.5 * h.diagonal() * rho**2).sum())
    got = worst_case_sharpness(model, _mse, data, m=64, rho=rho, p=math.inf, steps=20).results[0].loss_increase
    assert exact * (1 - 1e-6) <= got <= exact * (1 + 1e-12)
    t = model.weight.detach()[0].abs() + 0.01
    exact_adaptive = float((rho * t * g.abs() + 0.5 * h.diagonal() * (rho * t) ** 2).sum())
    got = worst_case_sharpness(model, _mse, data, m=64, rho=rho, p=math.inf, adaptive=True, eta=0.01,
                               steps=20).results[0].loss_increase
    assert exact_adaptive * (1 - 1e-6) <= got <= exact_adaptive * (1 + 1e-12)


def _ellipsoid_projection(d: torch.Tensor, rho: float, t: torch.Tensor) -> torch.Tensor:
    """The Euclidean projection onto {||x / T|| <= rho} (the reference's ``weighted_norm``
    bisection, here to float64 rounding): x = d T^2 / (T^2 + lambda), lambda >= 0."""
    if (d / t).norm() <= rho:
        return d
    lo, hi = 0.0, 1.0
    while (d * t**2 / (t**2 + hi) / t).norm() > rho:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (d * t**2 / (t**2 + mid) / t).norm() > rho else (lo, mid)
    return d * t**2 / (t**2 + hi)


def _reference_adaptive_l2(g_fn, t: torch.Tensor, rho: float, start: torch.Tensor, steps: int) -> torch.Tensor:
    """The reference's adaptive p = 2 step without step-size control: e <- Proj_ell(e + 2 rho
    T g / ||g||), momentum 0.75 as in its loop. Returns the final perturbation."""
    e, prev = start.clone(), start.clone()
    step = 2 * rho
    for k in range(steps):
        g = g_fn(e)
        z = _ellipsoid_projection(e + step * t * g / g.norm(), rho, t)
        e, prev = 0.75 * z + 0.25 * prev, e
        if k % 50 == 49:
            step /= 2
    return e


def test_adaptive_l2_reaches_the_maximum_where_the_reference_rule_stalls():
    """max over the ellipsoid ||e / T|| <= rho of e^T H e / 2 is rho^2 lambda_max(T H T) / 2
    (lambda_1 / lambda_2 = 9 here). sharpscope's ascent (in u = e / T) reaches it to 1e-3 in 60
    steps; the reference's rule (T g / ||g|| with the Euclidean ellipsoid projection) settles
    2.89 % below it however long it runs (the same after 400 and 800 steps, and from three
    starts), at a point that is not stationary: there g is not normal to the ellipsoid."""
    model, data, g, h = _regression(at_min=True)
    t = model.weight.detach()[0].abs() + 0.05
    rho = 0.2
    exact = 0.5 * rho**2 * float(torch.linalg.eigvalsh(t[:, None] * h * t[None, :])[-1])
    res = worst_case_sharpness(model, _mse, data, m=64, rho=rho, adaptive=True, eta=0.05, steps=60,
                               random_start=True, seed=1)
    assert exact * (1 - 1e-3) <= res.results[0].loss_increase <= exact * (1 + 1e-9)
    start = t * torch.randn(6, generator=torch.Generator().manual_seed(1))
    start = start * rho / (start / t).norm()
    e = _reference_adaptive_l2(lambda e: h @ e, t, rho, start, 400)
    reference = float(0.5 * e @ h @ e)
    assert 1 - reference / exact == pytest.approx(0.0289, abs=5e-5)
    import re
    from pathlib import Path

    stated = re.findall(r"settles ([0-9.]+) % below", (Path(__file__).parents[1] / "docs" / "measures.md").read_text())
    assert stated and all(float(v) / 100 == pytest.approx(1 - reference / exact, abs=5e-5) for v in stated)
    e_long = _reference_adaptive_l2(lambda e: h @ e, t, rho, start, 800)
    assert float(0.5 * e_long @ h @ e_long) == pytest.approx(reference, rel=1e-9)  # settled, not slow
    normal = e / t**2
    cos = float((h @ e) @ normal / ((h @ e).norm() * normal.norm()))
    assert cos < 0.999  # the gradient is not normal to the ellipsoid at the reference's fixed point


# -- the schedule ---------------------------------------------------------------------------------
def test_apgd_checkpoints_follow_the_reference_schedule():
    """p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06): for 100 steps
    0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99, 1.05 -> 22, 41, 58 (0.57 * 100 rounds up
    from 57.000000000000007), 70, 80, 87, 93, 99, 105."""
    assert apgd_checkpoints(100) == [22, 41, 58, 70, 80, 87, 93, 99, 105]
    assert apgd_checkpoints(20)[:3] == [5, 9, 12]


# -- a re-implementation of the reference's loop --------------------------------------------------
def _reference_apgd(model: nn.Module, x, y, rho: float, n_iters: int, norm: str, adaptive: bool):
    """tml-epfl/sharpness-vs-generalization ``eval_APGD_sharpness`` for one batch with
    rand_init=False (its evaluations' setting) and eta = 0, re-written per parameter from its
    source. Returns (worst loss - init loss, worst err - init err, whether the step was ever
    reduced; the reference's handling of a reduction differs from sharpscope's, module docstring
    of sharpscope.measures)."""
    params = list(model.parameters())
    orig = [p.detach().clone() for p in params]

    def loss_err():
        with torch.no_grad():
            out = model(x)
            return float(F.cross_entropy(out, y)), float((out.argmax(1) != y).double().mean())

    init_loss, init_err = loss_err()
    worst_loss, worst_err = init_loss, init_err
    delta = [torch.zeros_like(p) for p in params]
    prev = [d.clone() for d in delta]
    step = prev_step = 2 * rho
    prev_worst, prev_cp, updates, reduced = init_loss, 0, 0, False
    w = apgd_checkpoints(n_iters)
    for i in range(n_iters):
        backup = [d.clone() for d in delta]
        for p in params:
            p.grad = None
        F.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            if norm == "l2":
                gn = sum(p.grad.norm() ** 2 for p in params) ** 0.5
                for d, p, o in zip(delta, params, orig):
                    d += step / gn * p.grad * (o.abs() if adaptive else 1)
                assert not adaptive  # the ellipsoid case differs on purpose (see the test above)
                dn = sum((d**2).sum() for d in delta) ** 0.5
                if dn > rho:
                    delta = [d * rho / dn for d in delta]
            else:
                for d, p, o in zip(delta, params, orig):
                    d += step * p.grad.sign() * (o.abs() if adaptive else 1)
                delta = [torch.max(torch.min(d, (o.abs() if adaptive else 1) * rho * torch.ones_like(d)),
                                   -(o.abs() if adaptive else 1) * rho * torch.ones_like(d))
                         for d, o in zip(delta, orig)]
            delta = [0.75 * d + 0.25 * q for d, q in zip(delta, prev)]
            for p, o, d in zip(params, orig, delta):
                p.copy_(o + d)
            prev = backup
        cur_loss, cur_err = loss_err()
        if cur_loss > worst_loss:
            worst_loss, worst_err, updates = cur_loss, cur_err, updates + 1
        if i in w:
            cond1 = updates < 0.75 * (i - prev_cp)
            cond2 = prev_step == step and prev_worst == worst_loss
            prev_step, prev_worst, prev_cp, updates = step, worst_loss, i, 0
            if cond1 or cond2:
                step *= 0.5
                reduced = True
    with torch.no_grad():
        for p, o in zip(params, orig):
            p.copy_(o)
    return worst_loss - init_loss, worst_err - init_err, reduced


def _classifier(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 4))
    x = torch.randn(40, 5)
    y = torch.randint(0, 4, (40,))
    return model, x, y


@pytest.mark.parametrize("norm,adaptive,rho", [("l2", False, 0.05), ("linf", False, 0.002), ("linf", True, 0.02)])
def test_worst_case_matches_the_reference_loop_while_it_keeps_improving(norm, adaptive, rho):
    """While every step raises the loss (no step reduction), the ascent is the reference's
    step for step: same loss and error increases to 1e-12 (float64, 8 steps)."""
    model, x, y = _classifier()
    ref_loss, ref_err, reduced = _reference_apgd(model, x, y, rho, 8, norm, adaptive)
    assert not reduced
    p = 2.0 if norm == "l2" else math.inf
    res = worst_case_sharpness(model, F.cross_entropy, [(x, y)], m=40, rho=rho, p=p, adaptive=adaptive, steps=8,
                               restarts=1)  # the single ascent from e = 0 is the reference's
    assert res.results[0].loss_increase == pytest.approx(ref_loss, rel=1e-10, abs=1e-14)
    assert res.results[0].error_increase == pytest.approx(ref_err, abs=1e-12)
    assert ref_loss > 0


def test_worst_case_counts_its_gradients():
    """Each subset spends one gradient at w (L_b(w) and the first step from e = 0), then steps
    per restart, plus one for each random start (every restart after the first, and the first
    with ``random_start``): 4 subsets of 10."""
    model, x, y = _classifier(1)
    data = [(x, y)]
    count = lambda **kw: worst_case_sharpness(model, F.cross_entropy, data, m=10, rho=0.5, steps=20,  # noqa: E731
                                              **kw).n_gradients
    assert count(restarts=1) == 4 * 21
    assert count(restarts=1, random_start=True) == 4 * 22
    assert count() == count(restarts=4) == 4 * (1 + 20 + 3 * 21)
    assert count(restarts=3, random_start=True) == 4 * (1 + 3 * 21)


def test_values_are_never_negative_and_the_model_is_untouched():
    """A radius so large that every ascent step overshoots: the start e = 0 still counts, so no
    subset reads below 0 (m-sharpness too); the model's weights and mode are unchanged."""
    model, x, y = _classifier(2)
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    res = worst_case_sharpness(model, F.cross_entropy, [(x, y)], m=4, rho=50.0, steps=3)
    assert min(res.results[0].values) >= 0
    ms = m_sharpness(model, F.cross_entropy, [(x, y)], m=4, rho=50.0, steps=3)
    assert min(ms.results[0].values) >= 0
    assert model.training and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# -- average case ----------------------------------------------------------------------------------
@pytest.mark.parametrize("adaptive", [False, True])
def test_average_case_gaussian_matches_the_quadratic_expectation(adaptive):
    """e = rho T z, z ~ N(0, I): E[g.e + e^T H e / 2] = rho^2 sum_i H_ii T_i^2 / 2, with variance
    rho^2 g^T T^2 g + rho^4 tr((T H T)^2) / 2. Per subset (8 subsets of 8 examples, each its own
    quadratic), the estimate is within 5 standard errors of the exact mean (a false alarm has
    probability < 1e-5 per subset)."""
    model, data, _, _ = _regression(at_min=False)
    x, y = data[0]
    rho, draws = 0.05, 400
    w = model.weight.detach()[0]
    t = (w.abs() + 0.01) if adaptive else torch.ones_like(w)
    res = average_case_sharpness(model, _mse, data, m=8, rho=rho, adaptive=adaptive, eta=0.01, samples=draws,
                                 seed=7)
    gen = torch.Generator().manual_seed(7)
    order = torch.randperm(64, generator=gen).view(-1, 8)
    for idx, value in zip(order, res.results[0].values):
        xb, yb = x[idx], y[idx, 0]
        g = 2 * xb.T @ (xb @ w - yb) / 8
        h = 2 * xb.T @ xb / 8
        tht = t[:, None] * h * t[None, :]
        mean = 0.5 * rho**2 * float(tht.diagonal().sum())
        var = rho**2 * float((t * g) @ (t * g)) + 0.5 * rho**4 * float((tht @ tht).diagonal().sum())
        assert abs(value - mean) < 5 * math.sqrt(var / draws), (value, mean)


def test_average_case_uniform_and_reproducibility():
    """p = inf draws U[-rho, rho]: E[e^T H e / 2] = rho^2 tr(H) / 6 (E u^2 = rho^2 / 3); the same
    seed gives the same values, another seed other values."""
    model, data, g, h = _regression(at_min=True)
    rho, draws = 0.05, 2000
    res = average_case_sharpness(model, _mse, data, m=64, rho=rho, p=math.inf, samples=draws, seed=1)
    exact = rho**2 * float(h.diagonal().sum()) / 6
    assert res.results[0].loss_increase == pytest.approx(exact, rel=0.05)  # sd of the mean ~1 % here
    again = average_case_sharpness(model, _mse, data, m=64, rho=rho, p=math.inf, samples=draws, seed=1)
    other = average_case_sharpness(model, _mse, data, m=64, rho=rho, p=math.inf, samples=draws, seed=2)
    assert again.results[0].values == res.results[0].values != other.results[0].values
    assert res.n_forwards == draws + 1 and res.n_gradients == 0


def test_error_increase_is_nan_without_class_scores():
    model, data, _, _ = _regression()
    res = worst_case_sharpness(model, _mse, data, m=64, rho=0.1, steps=2)
    assert math.isnan(res.results[0].error_increase)


@pytest.mark.parametrize("kwargs,match", [
    (dict(m=0), "m must"), (dict(m=1000), "larger than"), (dict(rho=-1.0), "rho"), (dict(rho=float("nan")), "rho"),
    (dict(p=3.0), "p = 2 and p = inf"), (dict(eta=-0.1), "eta"), (dict(steps=0), "steps"),
    (dict(max_subsets=0), "max_subsets"),
])
def test_bad_options_are_refused(kwargs, match):
    model, x, y = _classifier()
    with pytest.raises(ConfigError, match=match):
        worst_case_sharpness(model, F.cross_entropy, [(x, y)], **{"m": 8, **kwargs})


def test_measures_by_name():
    model, x, y = _classifier()
    res = sharpness(model, F.cross_entropy, [(x, y)], measure="average", m=20, rho=0.01, samples=3)
    assert res.measure == "average" and len(res.results[0].values) == 2
    with pytest.raises(ConfigError, match="unknown sharpness measure"):
        sharpness(model, F.cross_entropy, [(x, y)], measure="best")


def test_cli_reports_a_measure(cli, tmp_path):
    """``sharpscope sharpness --measure worst --adaptive --norm inf`` and ``--measure average``:
    the JSON carries the measure, its options, both increases and the cost."""
    import json

    from sharpscope.train import TrainConfig, train

    torch.set_default_dtype(torch.float32)  # the trainer's checkpoints in the usual dtype (the fixture restores)
    train(TrainConfig(model="mlp", model_kwargs={"hidden": [16]}, n_train=128, epochs=1, optimizer="sgd"),
          tmp_path / "run")
    code, out, err = cli(["sharpness", str(tmp_path / "run"), "--measure", "worst", "--adaptive", "--norm", "inf",
                          "--m", "32", "--rho", "0.002", "--steps", "5", "--no-progress", "--json", "-"])
    assert code in (0, None), err
    report = json.loads(out)
    assert report["measure"] == "worst" and report["adaptive"] and report["p"] == "inf"
    assert report["n_gradients"] == 4 * (1 + 5 + 3 * 6) and report["results"][0]["loss_increase"] >= 0
    assert report["restarts"] == 4 and report["results"][0]["restart_spread"] >= 0
    code, out, err = cli(["sharpness", str(tmp_path / "run"), "--measure", "worst", "--restarts", "1", "--m", "32",
                          "--rho", "0.002", "--steps", "5", "--no-progress", "--json", "-"])
    assert code in (0, None), err
    assert json.loads(out)["n_gradients"] == 4 * 6
    code, out, err = cli(["sharpness", str(tmp_path / "run"), "--measure", "average", "--m", "64", "--rho",
                          "0.01", "--draws", "3", "--no-progress", "--json", "-"])
    assert code in (0, None), err
    report = json.loads(out)
    assert report["measure"] == "average" and report["n_forwards"] == 2 * 4
