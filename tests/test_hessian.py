"""Hessian analyses of a digits-trained MLP (2,410 parameters) against its exact Hessian.

The exact Hessian of the mean loss over all 1,438 training examples is formed once with
``torch.func.hessian`` in float64; the analyses see the same data as 6 uneven batches.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import sharpscope.hessian as sh
from sharpscope import load_checkpoint
from sharpscope.data import load_dataset
from sharpscope.objective import parameter_groups
from sharpscope.train import TrainConfig, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlp")
    train(TrainConfig(optimizer="sgd", model="mlp", model_kwargs={"hidden": [32]}, epochs=8,
                      keep_snapshots=False), out)
    model = load_checkpoint(out).model.double()
    data = load_dataset("digits")
    x, y = data.x_train.double(), data.y_train
    batches = [(x[i:i + 256], y[i:i + 256]) for i in range(0, len(x), 256)]
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat):
        params = {n: c.view(s) for n, c, s in zip(names, flat.split(sizes), shapes)}
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    H = torch.func.hessian(loss)(theta)
    return {"dir": out, "model": model, "batches": batches, "H": H, "eig": torch.linalg.eigvalsh(H),
            "names": names, "sizes": sizes}


def test_setting(trained):
    assert trained["H"].shape == (2410, 2410) and len(trained["batches"]) == 6
    assert trained["eig"][0] < 0  # a real trained net: a few small negative eigenvalues


def test_top5_eigenvalues_within_their_residual_bound(trained):
    """Issue 23.10: a Ritz pair (theta, x) with residual r = ||H x - theta x|| has an eigenvalue
    within r^2 / gap of theta, gap = the distance from theta to the rest of the spectrum
    (Parlett, The Symmetric Eigenvalue Problem, Thm 11.7.1): the bound each reported value
    must meet, plus the float64 rounding floor of a product H v (eps ||H|| sqrt(n) ~ 1e-14
    relative: 1e-12 allowed). Measured: 3.4e-10 relative at most (BENCHMARKS.md), so 1e-9
    holds too; tol = 1e-4 alone would only promise 1e-4."""
    res = sh.eigenvalues(trained["model"], F.cross_entropy, trained["batches"], k=5)
    exact = trained["eig"].flip(0)[:5]
    got = torch.tensor(res.eigenvalues, dtype=torch.float64)
    for j, (theta, r) in enumerate(zip(res.eigenvalues, res.residuals)):
        gap = torch.cat([exact[:j], exact[j + 1:], trained["eig"][:-5]]).sub(theta).abs().min().item()
        assert abs(theta - exact[j].item()) <= r ** 2 / gap + 1e-12 * exact[0].item(), (j, theta, r, gap)
    rel = ((got - exact).abs() / exact.abs()).max().item()
    assert rel <= 1e-9, rel  # measured 3.4e-10 (the 5th, r = 1.3e-5); what BENCHMARKS.md states
    assert all(res.converged) and res.n_hvp < 60 and res.n_params == 2410 and res.n_examples == 1438
    assert res.ratio == pytest.approx(float(exact[0] / exact[4]), rel=2e-9)


@pytest.mark.parametrize("k", [1, 5])
def test_smallest_eigenvalues_converge_at_the_default_budget(trained, k, recwarn):
    # Issue 10.9: at the edge of a dense bulk Lanczos converges slowly (51 / 97 products
    # here); the default cap must let it finish instead of returning unconverged values
    res = sh.eigenvalues(trained["model"], F.cross_entropy, trained["batches"], k=k, which="SA")
    exact = trained["eig"][:k]
    rel = ((torch.tensor(res.eigenvalues, dtype=torch.float64) - exact).abs() / exact.abs()).max().item()
    assert all(res.converged) and rel <= 1e-6, (res.n_hvp, rel)
    assert not [w for w in recwarn if w.category.__name__ == "UnconvergedWarning"]


def test_a_run_stopped_short_warns(trained):
    from sharpscope.errors import UnconvergedWarning
    with pytest.warns(UnconvergedWarning, match="max_iter"):
        res = sh.eigenvalues(trained["model"], F.cross_entropy, trained["batches"], k=5, which="SA", max_iter=50)
    assert not all(res.converged)


def test_top_eigenvectors_against_the_exact_hessian(trained):
    H, names, sizes = trained["H"], trained["names"], trained["sizes"]
    res = sh.eigenvalues(trained["model"], F.cross_entropy, trained["batches"], k=5, return_vectors=True)
    plain = sh.eigenvalues(trained["model"], F.cross_entropy, trained["batches"], k=5)
    assert res.n_hvp == plain.n_hvp and res.eigenvalues == plain.eigenvalues  # the vectors cost no product
    V = res.eigenvectors
    assert V.shape == (2410, 5) and V.dtype == torch.float64
    exact_values, exact_vectors = torch.linalg.eigh(H)
    for j, (theta, reported) in enumerate(zip(res.eigenvalues, res.residuals)):
        v = V[:, j]
        true_residual = (H @ v - theta * v).norm().item()
        # full reorthogonalization: the Lanczos estimate is the true residual up to rounding (measured
        # 2e-8 relative where the residual is above 1e-9; the best pair's 5e-14 is at the rounding
        # floor of H v, about eps ||H|| sqrt(n) = 2e-14, hence abs)
        assert true_residual == pytest.approx(reported, rel=1e-6, abs=1e-12)
        i = int(torch.argmin((exact_values - theta).abs()))
        u = exact_vectors[:, i]
        gap = torch.cat([exact_values[:i], exact_values[i + 1:]]).sub(theta).abs().min().item()
        sin = (v - (v @ u) * u).norm().item()
        # Davis-Kahan: sin(angle to the true eigenvector) <= residual / gap (+ float64 rounding)
        assert sin <= true_residual / gap + 1e-10, (j, sin, true_residual / gap)
        assert abs((v @ u).item()) >= 1 - 1e-6
    torch.testing.assert_close(V.T @ V, torch.eye(5, dtype=torch.float64), rtol=0, atol=1e-12)
    views = res.vector_views()
    assert len(views) == 5 and list(views[0]) == names
    for j, view in enumerate(views):
        for name, p in trained["model"].named_parameters():
            assert view[name].shape == p.shape
        assert torch.equal(torch.cat([view[n].reshape(-1) for n in names]), V[:, j])
        assert view[names[0]].data_ptr() == V[:, j].data_ptr()  # a view, not a copy
    assert sum(sizes) == V.shape[0]


def test_trace_within_2_percent_and_covered_by_its_stderr(trained):
    exact = trained["H"].trace().item()
    for seed in range(3):
        res = sh.trace(trained["model"], F.cross_entropy, trained["batches"], n_matvecs=99, seed=seed)
        assert abs(res.trace - exact) / exact <= 0.02
        assert abs(res.trace - exact) <= 3 * res.stderr  # 3 standard errors: 99.7% coverage
        assert res.n_hvp == 99


def test_density_integrates_to_one_and_matches_the_trace(trained):
    res = sh.density(trained["model"], F.cross_entropy, trained["batches"], n_runs=10, n_steps=80)
    grid, dens = torch.tensor(res.grid, dtype=torch.float64), torch.tensor(res.density, dtype=torch.float64)
    assert torch.trapezoid(dens, grid).item() == pytest.approx(1.0, abs=1e-9)
    assert (dens >= 0).all()
    exact = trained["H"].trace().item()
    assert abs(res.trace_estimate - exact) / exact <= 0.05
    assert res.n_hvp == 800
    assert grid[0] < trained["eig"][0] and grid[-1] > trained["eig"][-1]  # support covers the spectrum


def test_per_layer_blocks_match_the_exact_diagonal_blocks(trained):
    summary = sh.layer_summary(trained["model"], F.cross_entropy, trained["batches"], tol=1e-6,
                               trace_matvecs=99)
    H, sizes = trained["H"], trained["sizes"]
    groups = parameter_groups(trained["model"])
    offsets = {n: sum(sizes[:i]) for i, n in enumerate(trained["names"])}
    for row in summary.rows:
        idx = torch.cat([torch.arange(offsets[n], offsets[n] + sizes[trained["names"].index(n)])
                         for n in groups[row.name]])
        block = H[idx][:, idx]
        assert row.lambda_max == pytest.approx(torch.linalg.eigvalsh(block)[-1].item(), rel=1e-6)
        assert abs(row.trace - block.trace().item()) <= max(3 * row.trace_stderr, 1e-9)


def test_analyses_leave_the_model_unchanged(trained):
    model = trained["model"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    sh.eigenvalues(model, F.cross_entropy, trained["batches"], k=2)
    sh.trace(model, F.cross_entropy, trained["batches"], n_matvecs=6)
    assert model.training
    model.eval()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_results_serialize_to_json(trained):
    res = sh.eigenvalues(trained["model"], F.cross_entropy, trained["batches"], k=3, return_eigenvectors=True)
    assert res.eigenvectors.shape == (2410, 3)
    d = json.loads(json.dumps(res.to_dict()))
    assert d["n_hvp"] == res.n_hvp and "eigenvectors" not in d and math.isfinite(d["wall_time"])
    assert "names" not in d and "shapes" not in d


def test_cli_hessian_json_and_plots(trained, tmp_path, cli):
    code, out, err = cli(["hessian", str(trained["dir"]), "--top-k", "3", "--trace", "--trace-matvecs", "12",
                              "--density", "--runs", "2", "--steps", "20", "--per-layer", "--samples", "300",
                              "--plot", "--plot-dir", str(tmp_path), "--json", "-", "--no-progress"])
    assert code == 0, err
    report = json.loads(out[out.index("{"):])
    assert report["n_examples"] == 300 and report["n_params"] == 2410
    assert len(report["eigenvalues"]["eigenvalues"]) == 3 and report["trace"]["n_hvp"] == 12
    assert report["density"]["n_runs"] == 2 and len(report["per_layer"]["rows"]) == 2
    for name in ("hessian_density.png", "hessian_density_log.png", "hessian_eigenvalues.png"):
        assert (tmp_path / name).stat().st_size > 1000


@pytest.mark.parametrize("args,fragment", [
    (["--split", "validation"], "split"), (["--samples", "0"], "subset size"), (["--which", "XX"], "which"),
    (["--hvp-mode", "fast"], "hvp_mode"), (["--params", "nothing.*"], "matches no"),
    (["--device", "tpu"], "device must be"),
])
def test_cli_hessian_bad_input(trained, cli, args, fragment):
    code, _, err = cli(["hessian", str(trained["dir"]), "--no-progress", *args])
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err


def test_cli_warns_in_one_line_when_lanczos_stops_short(trained):
    # Issue 10.9: the CLI says so on stderr (one line, no source path) and shows --max-iter
    import os
    import subprocess
    import sys
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "sharpscope", "hessian", str(trained["dir"]), "--which", "SA",
                           "--top-k", "5", "--max-iter", "12", "--samples", "300", "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    warning_lines = [ln for ln in proc.stderr.splitlines() if "warning" in ln.lower()]
    assert len(warning_lines) == 1 and warning_lines[0].startswith("sharpscope: warning: Lanczos stopped")
    assert "--max-iter" in warning_lines[0] and ".py" not in warning_lines[0]


def test_slq_implied_trace_standard_error_against_hutchinsons_variance():
    """Each SLQ run's implied trace is n q^T H q for its Rademacher start q = z / sqrt(n):
    Hutchinson's z^T H z, of variance 2 (||H||_F^2 - sum_i H_ii^2). Over 200 runs the standard
    error must match sqrt(that / 200) (the sample s.d. of 200 such draws is within ~6 %; 15 %
    allowed), on the 15-parameter quadratic whose Hessian is exact."""
    from _quadratic import LinearRegression, regression_data

    model = LinearRegression()
    x, y, batches = regression_data()
    names, shapes = [n for n, _ in model.named_parameters()], [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat):
        params = {n: c.view(s) for n, c, s in zip(names, flat.split(sizes), shapes)}
        return F.mse_loss(torch.func.functional_call(model, params, (x,)), y)

    H = torch.func.hessian(loss)(theta)
    expected = math.sqrt(2 * (H.pow(2).sum() - H.diag().pow(2).sum()).item() / 200)
    for seed in range(2):
        res = sh.density(model, F.mse_loss, batches, n_runs=200, n_steps=80, seed=seed)
        assert res.trace_stderr == pytest.approx(expected, rel=0.15)
        assert abs(res.trace_estimate - H.trace().item()) <= 4 * res.trace_stderr
        assert res.to_dict()["trace_stderr"] == res.trace_stderr
    one = sh.density(model, F.mse_loss, batches, n_runs=1, n_steps=80)
    assert one.trace_stderr is None and one.to_dict()["trace_stderr"] is None


def test_cli_hessian_announces_its_products_and_says_which_trace_to_trust(trained, tmp_path, cli):
    code, out, err = cli(["hessian", str(trained["dir"]), "--top-k", "2", "--trace", "--trace-matvecs", "12",
                          "--density", "--runs", "2", "--slq-steps", "10", "--samples", "200",
                          "--json", str(tmp_path / "h.json")])
    assert code == 0, err
    said, shown = " ".join(err.split()), " ".join(out.split())
    assert said.startswith("32 HVPs planned, and at most 300 more (eigenvalues (LA): at most 300; "
                           "trace (Hutch++): 12; density (SLQ, 2 runs x 10 steps): 20;")
    report = json.loads((tmp_path / "h.json").read_text())
    d = report["density"]
    assert d["trace_stderr"] > 0 and f"implied trace {d['trace_estimate']:.6g} +/- {d['trace_stderr']:.2g} " \
                                      "(standard error over 2 runs)" in shown
    note = "the trace to trust is Hutch++'s above; SLQ's implied trace is a by-product of 2 probe vectors"
    assert note in shown and d["trace_note"] == note
    code, out, err = cli(["hessian", str(trained["dir"]), "--top-k", "0", "--density", "--runs", "1", "--slq-steps", "10",
                          "--samples", "200", "--json", "-", "--no-progress"])
    assert code == 0, err
    said, report = " ".join(err.split()), json.loads(out[out.index("{"):])
    assert report["density"]["trace_stderr"] is None and "(standard error n/a with 1 run)" in said
    assert "for the trace, trust --trace (Hutch++)" in said and said.startswith("10 HVPs planned (density")


def test_cli_hessian_memory_budget(trained, cli):
    """--memory GB: refused in one line (exit 2) with what it would need, before any product;
    within a budget that holds only a few float32 vectors, the top 3 of a thick-restarted
    Lanczos match the default run's (both converged to tol 1e-4: errors ~ residual^2 / gap)."""
    args = ["hessian", str(trained["dir"]), "--top-k", "3", "--samples", "300", "--json", "-", "--no-progress"]
    code, _, err = cli([*args, "--memory", "1e-6"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "needs at least" in err and "budget" in err
    code, _, err = cli([*args, "--memory", "-1"])
    assert code == 2
    code, out, err = cli(args)
    assert code == 0, err
    ref = json.loads(out[out.index("{"):])["eigenvalues"]
    code, out, err = cli([*args, "--memory", "0.0006"])
    assert code == 0, err
    got = json.loads(out[out.index("{"):])["eigenvalues"]
    assert all(got["converged"]) and got["n_hvp"] > 10
    assert max(abs(a - b) / abs(b) for a, b in zip(got["eigenvalues"], ref["eigenvalues"])) <= 1e-5
