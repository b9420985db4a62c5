"""GGN, true Fisher and empirical Fisher operators against explicit float64 matrices.

Three small models (a tanh MLP, a tiny CNN, an MLP with BatchNorm in eval mode with
non-trivial running statistics), 13 examples in batches of 6, 4 and 3 (so the weights
n_b / N are exercised). The explicit matrices are built on all 13 examples at once from
``torch.func`` Jacobians of the flat parameter vector, independently of the operators'
output-space products:

- GGN: J^T H J with J = jacrev(outputs)(theta) (N*C x P) and H = torch.func.hessian of the
  mean loss in the outputs (N*C x N*C, block diagonal, the 1/N inside);
- empirical Fisher: (1/N) sum_n g_n g_n^T, g_n = vmap(grad(per-example loss));
- true Fisher: (1/N) sum_n sum_c p_nc g_nc g_nc^T with g_nc = grad_theta log p(c | x_n)
  (jacrev of log_softmax), or the same with the drawn labels for the Monte-Carlo version.

Tolerance of the product tests, 1e-12 * max|A|: entries are sums of a few hundred float64
terms of magnitude <= max|A| computed in a different order, so the rounding differences are
O(sqrt(terms) * eps * max|A|) ~ 1e-14 max|A| (measured <= 6e-16 max|A|).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, hessian, jacrev, vmap

import sharpscope.hessian as sh
from sharpscope import curvature
from sharpscope.batches import ModelLoss
from sharpscope.errors import ConfigError, NonFiniteLossError
from sharpscope.objective import Objective, parameter_groups

from _runs import tiny_run

N, C = 13, 4
SIZES = (6, 4, 3)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, C))


class _CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 3 * 3, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def _bn() -> nn.Module:
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, C))
    bn = model[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.3, 0.3)
    return model


MODELS = {"mlp": (_mlp, (5,)), "cnn": (_CNN, (1, 5, 5)), "bn": (_bn, (5,))}


class Setting:
    """A model, its data as uneven batches, and the explicit curvature matrices."""

    def __init__(self, name: str) -> None:
        make, shape = MODELS[name]
        torch.manual_seed(0)
        self.model = make().double().eval()
        self.x = torch.randn(N, *shape, dtype=torch.float64)
        self.y = torch.randint(0, C, (N,))
        bounds = [0, SIZES[0], SIZES[0] + SIZES[1], N]
        self.batches = [(self.x[a:b], self.y[a:b]) for a, b in zip(bounds, bounds[1:])]
        params = dict(self.model.named_parameters())
        self.names = list(params)
        self.shapes = [p.shape for p in params.values()]
        self.sizes = [p.numel() for p in params.values()]
        self.buffers = dict(self.model.named_buffers())
        self.theta = torch.cat([p.detach().reshape(-1) for p in params.values()])
        self.P = self.theta.numel()

    def outputs(self, flat: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        params = {n: c.view(s) for n, c, s in zip(self.names, flat.split(self.sizes), self.shapes)}
        return functional_call(self.model, {**self.buffers, **params}, (self.x if x is None else x,))

    def ggn(self) -> torch.Tensor:
        J = jacrev(self.outputs)(self.theta).reshape(N * C, self.P)
        f = self.outputs(self.theta).detach()
        H = hessian(lambda out: F.cross_entropy(out, self.y))(f).reshape(N * C, N * C)
        return J.T @ H @ J

    def per_example_grads(self) -> torch.Tensor:
        def loss(flat, x, y):
            return F.cross_entropy(self.outputs(flat, x[None]), y[None])
        return vmap(grad(loss), in_dims=(None, 0, 0))(self.theta, self.x, self.y)  # (N, P)

    def empirical_fisher(self) -> torch.Tensor:
        g = self.per_example_grads()
        return g.T @ g / N

    def class_grads(self) -> tuple[torch.Tensor, torch.Tensor]:
        """g_nc = grad log p(c | x_n) (N, C, P) and p (N, C)."""
        logp = lambda flat: torch.log_softmax(self.outputs(flat), -1)  # noqa: E731
        return jacrev(logp)(self.theta), logp(self.theta).exp().detach()

    def fisher(self) -> torch.Tensor:
        g, p = self.class_grads()
        return torch.einsum("nc,ncp,ncq->pq", p, g, g) / N

    def mc_fisher(self, samples: int, seed: int) -> torch.Tensor:
        """The Monte-Carlo Fisher with the labels the operator draws (seed, batch index)."""
        g, p = self.class_grads()
        bounds = [0, SIZES[0], SIZES[0] + SIZES[1], N]
        labels = torch.cat([curvature.sample_labels(p[a:b], samples, seed, i)
                            for i, (a, b) in enumerate(zip(bounds, bounds[1:]))])  # (N, S)
        rows = g[torch.arange(N)[:, None], labels]  # (N, S, P)
        return torch.einsum("nsp,nsq->pq", rows, rows) / (N * samples)

    def objective(self, **kw) -> Objective:
        return Objective(self.model, F.cross_entropy, self.batches, **kw)


@pytest.fixture(scope="module", params=list(MODELS))
def setting(request) -> Setting:
    return Setting(request.param)


@pytest.fixture(scope="module")
def mlp() -> Setting:
    return Setting("mlp")


def _explicit(setting: Setting, kind: str, mc_samples, seed: int = 0) -> torch.Tensor:
    if kind == "ggn":
        return setting.ggn()
    if kind == "empirical-fisher":
        return setting.empirical_fisher()
    return setting.fisher() if mc_samples == "exact" else setting.mc_fisher(mc_samples, seed)


def _close(A: torch.Tensor, B: torch.Tensor, rel: float = 1e-12) -> float:
    err = float((A - B).abs().max() / B.abs().max())
    assert err <= rel, err
    return err


CASES = [("ggn", 1), ("empirical-fisher", 1), ("fisher", "exact"), ("fisher", 3)]


@pytest.mark.parametrize("kind,mc", CASES, ids=[f"{k}-{m}" for k, m in CASES])
def test_products_match_the_explicit_matrix(setting, kind, mc):
    op = curvature.operator(setting.objective(), kind, mc_samples=mc, seed=5)
    A = _explicit(setting, kind, mc, seed=5)
    _close(op.matmat(torch.eye(setting.P, dtype=torch.float64)), A)  # the batched (vmap) path
    V = torch.randn(setting.P, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _close(torch.stack([op.matvec(v) for v in V.T], 1), A @ V)  # one vector at a time
    assert op.n_matvecs == setting.P + 3


def test_exact_fisher_equals_the_ggn_for_softmax_cross_entropy(setting):
    obj = setting.objective()
    eye = torch.eye(setting.P, dtype=torch.float64)
    G = curvature.operator(obj, "ggn").matmat(eye)
    Fx = curvature.operator(obj, "fisher", mc_samples="exact").matmat(eye)
    _close(Fx, G)
    _close(setting.fisher(), setting.ggn())  # the identity itself, on the explicit matrices


def test_empirical_fisher_differs_from_the_fisher(mlp):
    # Kunstner et al. 2019: the two coincide only at a perfect fit; here they must not
    assert (mlp.empirical_fisher() - mlp.fisher()).abs().max() > 1e-2 * mlp.fisher().abs().max()


def test_mc_fisher_is_seeded_fixed_and_psd(mlp):
    obj = mlp.objective()
    v = torch.randn(mlp.P, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    a = curvature.operator(obj, "fisher", mc_samples=2, seed=7)
    b = curvature.operator(obj, "fisher", mc_samples=2, seed=7)
    c = curvature.operator(obj, "fisher", mc_samples=2, seed=8)
    first = a.matvec(v)
    assert torch.equal(first, a.matvec(v)) and torch.equal(first, b.matvec(v))  # fixed draw, reproducible
    assert (first - c.matvec(v)).abs().max() > 1e-3 * first.abs().max()  # another seed, other labels
    A = a.matmat(torch.eye(mlp.P, dtype=torch.float64))
    _close(A @ v, first)  # the batched path draws the same labels
    lam = torch.linalg.eigvalsh((A + A.T) / 2)
    assert (A - A.T).abs().max() <= 1e-14 * A.abs().max() and lam[0] >= -1e-12 * lam[-1]


def test_mc_fisher_is_unbiased(mlp):
    """The mean over K seeds of F_s v approaches F v: each coordinate of the mean is within 5
    standard errors (its sample std / sqrt(K)); for a Gaussian that bound fails with probability
    6e-7 per coordinate, 4e-5 over the 64 coordinates (the test is seeded, so it is fixed)."""
    obj = mlp.objective()
    v = torch.randn(mlp.P, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    K = 400
    draws = torch.stack([curvature.operator(obj, "fisher", mc_samples=1, seed=s).matvec(v) for s in range(K)])
    exact = mlp.fisher() @ v
    se = draws.std(0) / K ** 0.5
    z = (draws.mean(0) - exact) / se.clamp_min(1e-300)
    assert z.abs().max() <= 5, z.abs().max()
    assert 0.3 <= float(z.square().mean()) <= 3  # the z-scores have about unit variance: se is the right scale
    single = (draws[0] - exact).norm() / exact.norm()
    assert (draws.mean(0) - exact).norm() / exact.norm() < single / 5  # ~ single / sqrt(K) = single / 20


@pytest.mark.parametrize("kind,mc", CASES, ids=[f"{k}-{m}" for k, m in CASES])
def test_top_and_bottom_eigenvalues_through_hessian_analyses(setting, kind, mc):
    lam = torch.linalg.eigvalsh(_explicit(setting, kind, mc, seed=0))
    top = sh.eigenvalues(setting.model, F.cross_entropy, setting.batches, k=3, tol=1e-10, operator=kind,
                         mc_samples=mc)
    rel = (torch.tensor(top.eigenvalues, dtype=torch.float64) - lam.flip(0)[:3]).abs().max() / lam[-1]
    assert rel <= 1e-10 and all(top.converged), rel
    assert top.operator == kind and top.to_dict()["operator"] == kind
    assert top.mc_samples == (mc if kind == "fisher" else None)
    # PSD: the smallest are >= 0 up to the tolerance (these matrices are rank deficient: zeros)
    low = sh.eigenvalues(setting.model, F.cross_entropy, setting.batches, k=2, which="SA", tol=1e-8,
                        operator=kind, mc_samples=mc)
    assert min(low.eigenvalues) >= -1e-8 * float(lam[-1]), low.eigenvalues


@pytest.mark.parametrize("kind,mc", CASES, ids=[f"{k}-{m}" for k, m in CASES])
def test_trace_and_density_through_hessian_analyses(mlp, kind, mc):
    A = _explicit(mlp, kind, mc, seed=0)
    exact = float(A.trace())
    full = sh.trace(mlp.model, F.cross_entropy, mlp.batches, n_matvecs=mlp.P, operator=kind, mc_samples=mc)
    assert full.method == "exact" and abs(full.trace - exact) <= 1e-12 * exact and full.n_hvp == mlp.P
    est = sh.trace(mlp.model, F.cross_entropy, mlp.batches, n_matvecs=30, operator=kind, mc_samples=mc)
    assert est.method == "hutch++" and est.n_hvp == 30 and est.operator == kind
    assert abs(est.trace - exact) <= 4 * est.stderr + 1e-12 * exact, (est.trace, exact, est.stderr)
    dens = sh.density(mlp.model, F.cross_entropy, mlp.batches, n_runs=3, n_steps=mlp.P, operator=kind,
                      mc_samples=mc)
    grid, d = torch.tensor(dens.grid, dtype=torch.float64), torch.tensor(dens.density, dtype=torch.float64)
    assert torch.trapezoid(d, grid).item() == pytest.approx(1.0, abs=1e-9)  # unit mass
    lam = torch.linalg.eigvalsh(A)
    for nodes, weights in zip(dens.nodes, dens.weights):
        assert sum(weights) == pytest.approx(1.0, abs=1e-12)
        for t, w in zip(nodes, weights):  # a full Krylov space: every weighted node is an eigenvalue
            assert w < 1e-10 or (lam - t).abs().min() <= 1e-8 * float(lam[-1]), (t, w)
    assert dens.n_hvp <= 3 * mlp.P and dens.operator == kind  # fewer: Lanczos stops at an invariant subspace


def test_per_layer_blocks_are_diagonal_blocks_of_one_matrix(mlp):
    summary = sh.layer_summary(mlp.model, F.cross_entropy, mlp.batches, tol=1e-10, trace_matvecs=99,
                               operator="fisher", mc_samples=2, seed=4)
    A = mlp.mc_fisher(2, seed=4)
    offsets = {n: sum(mlp.sizes[:i]) for i, n in enumerate(mlp.names)}
    groups = parameter_groups(mlp.model)
    for row in summary.rows:
        idx = torch.cat([torch.arange(offsets[n], offsets[n] + mlp.sizes[mlp.names.index(n)])
                         for n in groups[row.name]])
        block = A[idx][:, idx]
        assert row.lambda_max == pytest.approx(torch.linalg.eigvalsh(block)[-1].item(), rel=1e-10)
        assert row.trace == pytest.approx(block.trace().item(), rel=1e-12)  # exact: 99 >= block size
    assert summary.operator == "fisher" and summary.to_dict()["mc_samples"] == 2


def test_reported_products_are_the_products_done(mlp, monkeypatch):
    done = []
    real = curvature._product

    def counting(obj, middle, v, what):
        done.append(1 if v.dim() == 1 else v.shape[1])
        return real(obj, middle, v, what)

    monkeypatch.setattr(curvature, "_product", counting)
    obj = mlp.objective()
    total = 0
    for run in (lambda: sh.eigenvalues(obj, k=2, operator="ggn"),
                lambda: sh.trace(obj, n_matvecs=12, operator="empirical-fisher"),
                lambda: sh.density(obj, n_runs=2, n_steps=7, operator="fisher")):
        done.clear()
        res = run()
        assert res.n_hvp == sum(done) > 0
        total += res.n_hvp
    assert obj.n_hvp == total  # the objective's counter (the CLI's progress bar) sees them too


def test_selected_parameters_give_the_diagonal_block(mlp):
    obj = mlp.objective(params="2.*")  # the last layer only
    op = curvature.operator(obj, "ggn")
    idx = torch.arange(mlp.P - obj.n, mlp.P)
    _close(op.matmat(torch.eye(obj.n, dtype=torch.float64)), mlp.ggn()[idx][:, idx])


def test_streamed_data_gives_the_same_products(mlp):
    v = torch.randn(mlp.P, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    for kind, mc in CASES:
        cached = curvature.operator(mlp.objective(), kind, mc_samples=mc, seed=1).matvec(v)
        streamed = curvature.operator(mlp.objective(cache=False), kind, mc_samples=mc, seed=1).matvec(v)
        assert torch.allclose(cached, streamed, rtol=0, atol=1e-14 * cached.abs().max()), kind


def test_the_model_is_left_as_it_was(mlp):
    model = _bn().double()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    op = curvature.operator(Objective(model, F.cross_entropy, mlp.batches), "fisher", mc_samples=2)
    op.matvec(torch.ones(op.n, dtype=torch.float64))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("make,fragment", [
    (lambda s: curvature.operator(s.objective(), "laplacian"), "operator must be one of"),
    (lambda s: curvature.operator(s.objective(), "fisher", mc_samples=0), "mc_samples"),
    (lambda s: curvature.operator(s.objective(), "fisher", mc_samples="approx"), "mc_samples"),
    (lambda s: curvature.operator(s.objective(), "fisher", seed=-1), "seed"),
    (lambda s: curvature.operator(Objective(s.model, nn.CrossEntropyLoss(label_smoothing=0.1), s.batches), "fisher"),
     "cross-entropy"),
    (lambda s: curvature.operator(Objective(s.model, lambda o, y: F.mse_loss(o, F.one_hot(y, C).double()),
                                            s.batches), "fisher"), "differs"),
    (lambda s: curvature.operator(Objective(s.model, ModelLoss(lambda m, b: F.cross_entropy(m(b[0]), b[1])),
                                            s.batches), "ggn"), "ModelLoss"),
    (lambda s: sh.trace(s.model, F.cross_entropy, s.batches, operator="fisher", mc_samples=10**15), "memory"),
    (lambda s: sh.eigenvalues(s.model, F.cross_entropy, s.batches, operator="GGN"), "operator must be one of"),
])
def test_refusals(mlp, make, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make(mlp)


def test_fisher_refuses_outputs_that_are_not_class_logits(mlp):
    model = nn.Sequential(nn.Linear(5, C), nn.Unflatten(1, (2, 2))).double()
    loss = lambda out, y: F.cross_entropy(out.flatten(1), y)  # noqa: E731
    with pytest.raises(ConfigError, match="class logits"):
        curvature.operator(Objective(model, loss, mlp.batches), "fisher")
    curvature.operator(Objective(model, loss, mlp.batches), "ggn")  # the GGN is defined for any loss of the outputs


def test_empirical_fisher_refuses_outputs_without_examples_along_dim_0(mlp):
    model = nn.Sequential(nn.Linear(5, C), nn.Flatten(0)).double()  # one (n_b * C,) vector per batch
    loss = lambda out, y: F.cross_entropy(out.view(-1, C), y)  # noqa: E731
    op = curvature.operator(Objective(model, loss, mlp.batches), "empirical-fisher")
    with pytest.raises(ConfigError, match="per-example outputs"):
        op.matvec(torch.ones(op.n, dtype=torch.float64))


def test_a_non_finite_product_raises(mlp):
    x = mlp.x.clone()
    x[0, 0] = float("inf")
    op = curvature.operator(Objective(mlp.model, F.cross_entropy, [(x, mlp.y)]), "ggn")
    with pytest.raises(NonFiniteLossError, match="product of the GGN"):
        op.matvec(torch.ones(op.n, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["ggn", "empirical-fisher"])
def test_agrees_with_curvlinops(setting, kind):
    curvlinops = pytest.importorskip("curvlinops")
    cls = {"ggn": curvlinops.GGNLinearOperator, "empirical-fisher": curvlinops.EFLinearOperator}[kind]
    params = [p for p in setting.model.parameters()]
    # reduction="mean": curvlinops normalizes by the data set size N, as sharpscope does
    theirs = cls(setting.model, nn.CrossEntropyLoss(reduction="mean"), params, setting.batches,
                 check_deterministic=False)
    V = torch.randn(setting.P, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    ours = curvature.operator(setting.objective(), kind).matmat(V)
    # two float64 summation orders of the same sums: measured 1.0e-16 to 3.7e-16 over the six
    # cases; 1e-14 is ~50 roundings (.ci/run installs curvlinops so that these run in CI)
    _close(ours, theirs @ V, rel=1e-14)


def test_cli_operator_in_report_and_summary(tmp_path, cli):
    tiny_run(tmp_path / "run", keep_snapshots=False)
    reports = {}
    for op, extra in (("ggn", []), ("fisher", ["--fisher-samples", "exact"]), ("empirical-fisher", [])):
        code, out, err = cli(["hessian", str(tmp_path / "run"), "--operator", op, *extra, "--top-k", "2", "--trace",
                              "--trace-matvecs", "6", "--samples", "48", "--no-progress", "--json", "-"])
        assert code == 0, err
        reports[op] = json.loads(out[out.index("{"):])
        assert reports[op]["operator"] == op and reports[op]["eigenvalues"]["operator"] == op
        assert f"{curvature.title(op)} eigenvalues" in err  # the summary goes to stderr with --json -
    assert reports["fisher"]["fisher_samples"] == "exact" and reports["ggn"]["fisher_samples"] is None
    ggn, fisher = reports["ggn"]["eigenvalues"]["eigenvalues"], reports["fisher"]["eigenvalues"]["eigenvalues"]
    assert ggn == pytest.approx(fisher, rel=1e-4)  # float32 model: the identity up to float32 rounding
