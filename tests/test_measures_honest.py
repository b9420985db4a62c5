"""Measures that must not read wrong without a word (issue 23, item 9), against float64
references on tiny models: restarts of the worst case against a dense search of a 2-D ball,
the zero-gradient rule against rho^2 lambda_max / 2, the non-finite rule, and when a standard
error is reported."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharpscope.errors import NonFiniteLossError, RestartsDisagreeWarning, ZeroGradientWarning
from sharpscope.measures import RESTART_TOLERANCE, average_case_sharpness, worst_case_sharpness
from sharpscope.sharpness import m_sharpness, sam_gradient_cosine, surrogate_gap


@pytest.fixture(autouse=True)
def _float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


# -- a loss that is a known function of two parameters ---------------------------------------------
class _Point(nn.Module):
    """Outputs its two parameters w for every example, so a loss of the outputs is a function of w."""

    def __init__(self, w=(0.0, 0.0)) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w.expand(x.shape[0], 2) + 0 * x


CENTRES = torch.tensor([[0.3, 0.0], [-0.3, -0.7]])
HEIGHTS, WIDTHS = torch.tensor([1.0, 1.5]), torch.tensor([0.3, 0.35])


def _bumps(w: torch.Tensor) -> torch.Tensor:
    """Two Gaussian bumps inside the unit ball around 0: height 1 at (0.3, 0) (the gradient at 0
    points to it) and height 1.5 at (-0.3, -0.7): from e = 0 the ascent climbs the lower one."""
    d2 = ((w[..., None, :] - CENTRES) ** 2).sum(-1)
    return (HEIGHTS * torch.exp(-d2 / (2 * WIDTHS**2))).sum(-1)


def _local_max(start: torch.Tensor, steps: int = 3000, lr: float = 2e-2) -> torch.Tensor:
    """The independent reference for a local maximum over the unit disk: small projected gradient
    steps with the closed-form gradient, grad = sum_i -h_i (w - c_i) / s_i^2 exp(-|w - c_i|^2 / 2 s_i^2)."""
    w = start.clone()
    for _ in range(steps):
        d = w - CENTRES
        g = (-(HEIGHTS * torch.exp(-(d**2).sum(-1) / (2 * WIDTHS**2)) / WIDTHS**2)[:, None] * d).sum(0)
        w = w + lr * g
        w = w / max(1.0, float(w.norm()))
    return w


def _bump_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _bumps(out.mean(0))


def _data(n: int = 8):
    return [(torch.zeros(n, 2), torch.zeros(n, 1))]  # float targets: the error rate reads NaN


def test_restarts_find_the_higher_maximum_that_the_start_at_zero_misses():
    """References: the two local maxima over the unit disk by small projected gradient steps from
    each centre, and a 1201 x 1201 grid of the disk confirming the higher one is the global
    maximum (to the grid's resolution). One ascent from e = 0 stops at the lower maximum; eight
    restarts (seeded random points of the boundary) reach the higher one to 1e-4, keep every
    restart's value, and warn that they disagree by more than RESTART_TOLERANCE (1 %). Half of
    the random starts reach it (10 of 20 seeds measured)."""
    base = float(_bumps(torch.zeros(2)))
    low, high = (float(_bumps(_local_max(c))) - base for c in CENTRES)
    t = torch.linspace(-1, 1, 1201)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    grid_max = float(_bumps(grid[grid.norm(dim=1) <= 1]).max()) - base
    assert high - 1e-4 <= grid_max <= high + 1e-12 and low < 0.5 * high  # two maxima, the second the global one

    one = worst_case_sharpness(_Point(), _bump_loss, _data(), m=8, rho=1.0, steps=40, restarts=1).results[0]
    assert one.loss_increase == pytest.approx(low, rel=1e-4)  # the lower maximum, and no spread to see
    assert one.restart_spread == 0.0

    with pytest.warns(RestartsDisagreeWarning, match="lower bound"):
        many = worst_case_sharpness(_Point(), _bump_loss, _data(), m=8, rho=1.0, steps=40, restarts=8, seed=0)
    r = many.results[0]
    assert r.loss_increase == pytest.approx(high, rel=1e-4)  # 40 APGD steps: 5e-5 measured
    values = r.restart_values[0]
    assert len(values) == 8 and values[0] == pytest.approx(low, rel=1e-4) and max(values) == r.loss_increase
    assert r.restart_spread == pytest.approx((max(values) - min(values)) / max(values))
    assert r.restart_spread > RESTART_TOLERANCE


def test_restarts_that_agree_do_not_warn():
    """A quadratic bowl turned upside down has one maximum on the sphere pair +-v; off the
    minimum the gradient breaks the tie and every restart reaches the same value."""
    model = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.3, -0.2, 0.1]]))
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = worst_case_sharpness(model, lambda o, y: F.mse_loss(o, y), [(x, torch.zeros(32, 1))], m=32, rho=0.05,
                                   steps=40).results[0]
    assert res.restart_spread < 1e-6


# -- the zero-gradient rule ------------------------------------------------------------------------
def _quadratic_at_its_minimum(n: int = 64, spectrum=(8.0, 3.0, 1.0, 0.5)):
    """L(w) = mean (x.w)^2 at w = 0 exactly (targets 0): the gradient is exactly 0 and
    H = 2 X^T X / N has ``spectrum``; L(e) = e^T H e / 2."""
    gen = torch.Generator().manual_seed(0)
    d = len(spectrum)
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=gen))
    basis = torch.linalg.qr(torch.randn(d, d, generator=gen))[0]
    x = q * torch.tensor(spectrum).sqrt() * math.sqrt(n / 2) @ basis.T
    model = nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    h = 2 * x.T @ x / n
    return model, [(x, torch.zeros(n, 1))], float(torch.linalg.eigvalsh(h)[-1])


def _mse(out, y):
    return F.mse_loss(out, y)


def test_zero_gradient_worst_case_and_m_sharpness_read_half_rho_squared_lambda_max_and_warn():
    """Exactly at a minimum e = 0 has no ascent direction (on main both read 0 silently): the
    worst case (restart 0 from e = 0, the only restart) and m-sharpness start from a seeded random
    direction, warn ZeroGradientWarning, and reach rho^2 lambda_max / 2 (lambda_1 / lambda_2 = 8/3:
    40 steps of the projected ascent converge to 1e-4 relative)."""
    model, data, lam = _quadratic_at_its_minimum()
    rho = 0.1
    exact = 0.5 * rho**2 * lam
    with pytest.warns(ZeroGradientWarning, match="exactly zero"):
        worst = worst_case_sharpness(model, _mse, data, m=64, rho=rho, steps=40, restarts=1).results[0]
    assert exact * (1 - 1e-4) <= worst.loss_increase <= exact * (1 + 1e-12)
    with pytest.warns(ZeroGradientWarning, match="exactly zero"):
        ms = m_sharpness(model, _mse, data, m=64, rho=rho, steps=40).results[0]
    assert exact * (1 - 1e-4) <= ms.mean <= exact * (1 + 1e-12)


def test_zero_gradient_surrogate_gap_and_cosine_read_nan_and_warn():
    """SAM's e_hat = rho g / ||g|| is undefined where g = 0: the surrogate gap (0 on main) and the
    gradient cosine (a ConfigError on main) both read NaN, with the same warning."""
    model, data, _ = _quadratic_at_its_minimum()
    with pytest.warns(ZeroGradientWarning, match="undefined"):
        assert math.isnan(surrogate_gap(model, _mse, data, rho=0.1))
    with pytest.warns(ZeroGradientWarning, match="undefined"):
        res = sam_gradient_cosine(model, _mse, data, rho=0.1)
    assert math.isnan(res.cosine) and math.isnan(res.surrogate_gap) and res.gradient_norm == 0.0


# -- the non-finite rule ---------------------------------------------------------------------------
def _classifier():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(24, 5), torch.randint(0, 3, (24,))
    return model, x, y


MEASURE_CALLS = {
    "worst": lambda model, data: worst_case_sharpness(model, F.cross_entropy, data, m=8, rho=0.05, steps=3),
    "average": lambda model, data: average_case_sharpness(model, F.cross_entropy, data, m=8, rho=0.05, samples=3),
    "m-sharpness": lambda model, data: m_sharpness(model, F.cross_entropy, data, m=8, rho=0.05, steps=3),
    "surrogate gap": lambda model, data: surrogate_gap(model, F.cross_entropy, data, rho=0.05),
    "gradcos": lambda model, data: sam_gradient_cosine(model, F.cross_entropy, data, rho=0.05),
}


@pytest.mark.parametrize("name", list(MEASURE_CALLS))
def test_a_nan_in_the_data_raises_everywhere(name):
    """One NaN input (main: worst, average and m-sharpness read nan) raises NonFiniteLossError,
    as ``hessian`` does."""
    model, x, y = _classifier()
    x[3, 2] = math.nan
    with pytest.raises(NonFiniteLossError, match="NaN or infinite"):
        MEASURE_CALLS[name](model, [(x, y)])


@pytest.mark.parametrize("name", list(MEASURE_CALLS))
def test_infinite_weights_raise_everywhere(name):
    model, x, y = _classifier()
    with torch.no_grad():
        model[0].weight[0, 0] = math.inf
    with pytest.raises(NonFiniteLossError, match="NaN or infinite"):
        MEASURE_CALLS[name](model, [(x, y)])


def _log_barrier(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-log(0.5 - w_0): finite at 0, a pole at w_0 = 0.5 inside the unit ball, NaN beyond."""
    return -torch.log(0.5 - out.mean(0)[0])


@pytest.mark.parametrize("measure", ["worst", "average", "m-sharpness"])
def test_a_pole_inside_the_ball_raises(measure):
    """The loss is unbounded in the ball (main: the NaN steps were skipped and a finite value
    reported): the first non-finite evaluation raises."""
    with pytest.raises(NonFiniteLossError, match="within rho|noise draw"):
        if measure == "worst":
            worst_case_sharpness(_Point(), _log_barrier, _data(), m=8, rho=1.0, steps=10, restarts=1)
        elif measure == "average":
            average_case_sharpness(_Point(), _log_barrier, _data(), m=8, rho=1.0, samples=50)
        else:
            m_sharpness(_Point(), _log_barrier, _data(), m=8, rho=1.0, steps=10)


# -- standard errors -------------------------------------------------------------------------------
def test_standard_error_needs_five_subsets_and_the_monte_carlo_error_is_independent_of_them():
    """Fewer than 5 subsets: no standard error over subsets (None, with the reason; main: NaN with
    one subset, and a 1-degree-of-freedom value with two). The Monte Carlo standard error of the
    mean is reported for any number of subsets and matches its closed form: at a minimum of a
    quadratic, L(w + e) - L(w) = e^T H e / 2 with e = rho z, z ~ N(0, I), has variance
    rho^4 tr(H^2) / 2, so with S draws on one subset the error is rho^2 sqrt(tr(H^2) / (2 S))
    (to 10 %: the sample variance of 2,000 draws)."""
    model, data, _ = _quadratic_at_its_minimum()
    x = data[0][0]
    h = 2 * x.T @ x / x.shape[0]
    rho, draws = 0.1, 2000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ZeroGradientWarning)
        one = average_case_sharpness(model, _mse, data, m=64, rho=rho, samples=draws).results[0]
    assert one.n_subsets == 1 and one.loss_stderr is None and one.error_stderr is None
    assert "at least 5" in one.stderr_note
    exact = rho**2 * math.sqrt(float((h @ h).trace()) / (2 * draws))
    assert one.loss_mc_stderr == pytest.approx(exact, rel=0.1)
    two = average_case_sharpness(model, _mse, data, m=32, rho=rho, samples=50).results[0]
    assert two.n_subsets == 2 and two.loss_stderr is None and two.loss_mc_stderr > 0
    eight = average_case_sharpness(model, _mse, data, m=8, rho=rho, samples=50).results[0]
    assert eight.n_subsets == 8 and eight.stderr_note is None
    assert eight.loss_stderr == pytest.approx(torch.tensor(eight.values).std().item() / math.sqrt(8), rel=1e-12)


# -- the sampled Fisher ----------------------------------------------------------------------------
def _fisher_setting():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 4))
    x, y = torch.randn(48, 4), torch.randint(0, 4, (48,))
    return model, [(x, y)]


def test_fisher_defaults_to_exact_and_a_sampled_fisher_warns():
    """The default Fisher is the exact one (no bias, the same cost per product); eigenvalues and
    densities from sampled labels warn that they are biased upward."""
    from sharpscope import curvature, hessian
    from sharpscope.errors import SampledFisherWarning
    from sharpscope.objective import Objective

    model, data = _fisher_setting()
    obj = Objective(model, F.cross_entropy, data)
    dense = curvature.operator(obj, "fisher").matmat(torch.eye(obj.n))
    exact = float(torch.linalg.eigvalsh((dense + dense.T) / 2)[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", SampledFisherWarning)
        top = hessian.eigenvalues(model, F.cross_entropy, data, k=1, operator="fisher")
    assert top.mc_samples == "exact" and top.eigenvalues[0] == pytest.approx(exact, rel=1e-8)
    with pytest.warns(SampledFisherWarning, match="biased upward"):
        hessian.eigenvalues(model, F.cross_entropy, data, k=1, operator="fisher", mc_samples=1)
    with pytest.warns(SampledFisherWarning, match="biased upward"):
        hessian.density(model, F.cross_entropy, data, n_runs=1, n_steps=5, operator="fisher", mc_samples=2)


def test_one_sampled_label_biases_lambda_max_up_but_not_the_trace():
    """What the warning states, measured on dense matrices over 60 seeds: lambda_max of the
    one-label Fisher is above the exact one on average by more than 5 standard errors of the
    mean, while its trace agrees with the exact trace within 4 standard errors (unbiased)."""
    from sharpscope import curvature
    from sharpscope.objective import Objective

    model, data = _fisher_setting()
    obj = Objective(model, F.cross_entropy, data)
    eye = torch.eye(obj.n)
    exact = curvature.operator(obj, "fisher").matmat(eye)
    lam, tr = float(torch.linalg.eigvalsh((exact + exact.T) / 2)[-1]), float(exact.trace())
    lams, trs = [], []
    for seed in range(60):
        m = curvature.operator(obj, "fisher", mc_samples=1, seed=seed).matmat(eye)
        lams.append(float(torch.linalg.eigvalsh((m + m.T) / 2)[-1]))
        trs.append(float(m.trace()))
    lams_t, trs_t = torch.tensor(lams), torch.tensor(trs)
    se_l, se_t = float(lams_t.std() / math.sqrt(60)), float(trs_t.std() / math.sqrt(60))
    assert float(lams_t.mean()) - lam > 5 * se_l
    assert abs(float(trs_t.mean()) - tr) < 4 * se_t


# -- under torch.distributed -----------------------------------------------------------------------
def _both_measures():
    torch.set_default_dtype(torch.float64)
    model, x, y = _classifier()
    data = [(x, y)]
    worst = worst_case_sharpness(model, F.cross_entropy, data, m=4, rho=0.5, steps=4, restarts=3, group_examples=8)
    average = average_case_sharpness(model, F.cross_entropy, data, m=4, rho=0.05, samples=4, group_examples=8)
    return worst, average


@pytest.mark.slow  # spawns two gloo processes (about 10 s)
def test_restart_values_and_monte_carlo_error_cover_every_subset_on_two_ranks(tmp_path):
    """Six subsets in three groups dealt over two gloo ranks: the restarts' values, their spread
    and the Monte Carlo error equal one process's (every subset, not rank 0's own)."""
    from _ranks import run_on_ranks

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RestartsDisagreeWarning)
        worst1, average1 = _both_measures()
    worst2, average2 = run_on_ranks(tmp_path, _both_measures)
    a, b = worst1.results[0], worst2.results[0]
    assert len(b.restart_values) == 6
    assert torch.allclose(torch.tensor(b.restart_values), torch.tensor(a.restart_values), rtol=1e-12, atol=0)
    assert b.restart_spread == pytest.approx(a.restart_spread, rel=1e-12)
    assert b.loss_increase == pytest.approx(a.loss_increase, rel=1e-12)
    assert average2.results[0].loss_mc_stderr == pytest.approx(average1.results[0].loss_mc_stderr, rel=1e-12)
