"""Issue 26.1: Hessian-vector products by central differences of gradients.

References: the explicit float64 Hessian (``torch.func.hessian``) of the same loss, and the
exact products of a twin model without checkpointing / custom backward. Error bound under
test: (3/2) u_r (1 + ||w||) ||H||_2 ||v|| / t with t = (3 u_r (1 + ||w||) / 1000)^(1/3),
derived in :mod:`sharpscope.linalg.finite_difference` (the minimum over t of truncation
t^2 M / 6 plus rounding u_r ||H|| (1 + ||w||) / t, with M = 1000 ||H||).
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

import sharpscope.hessian as sh
from sharpscope.errors import ConfigError, FiniteDifferenceWarning
from sharpscope.linalg import finite_difference as fdm
from sharpscope.objective import Objective
from sharpscope.sharpness import sam_gradient_cosine


class _OldTanh(torch.autograd.Function):
    """tanh with a first-order-only backward, old style (no setup_context: no torch.func)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.tanh(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (1 - torch.tanh(x) ** 2)


class _NewTanh(torch.autograd.Function):
    """tanh with a first-order-only backward, new style (torch.func runs it, but it has no jvp)."""

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (1 - torch.tanh(x) ** 2)


class Net(nn.Module):
    """8 -> 12 -> 12 -> 4, tanh; the middle layer plain, checkpointed or through a custom backward."""

    def __init__(self, kind: str = "plain", norm: bool = False):
        super().__init__()
        self.kind = kind
        self.a, self.b, self.c = nn.Linear(8, 12), nn.Linear(12, 12), nn.Linear(12, 4)
        self.bn = nn.BatchNorm1d(12) if norm else nn.Identity()
        self.drop = nn.Dropout(0.5) if norm else nn.Identity()

    def middle(self, h):
        return torch.tanh(self.b(h))

    def forward(self, x):
        h = self.drop(self.bn(torch.tanh(self.a(x))))
        if self.kind == "plain":
            h = self.middle(h)
        elif self.kind == "reentrant":
            h = checkpoint(self.middle, h, use_reentrant=True)
        elif self.kind == "non-reentrant":
            h = checkpoint(self.middle, h, use_reentrant=False)
        else:
            h = (_OldTanh if self.kind == "old-function" else _NewTanh).apply(self.b(h))
        return self.c(h)


KINDS = ("reentrant", "non-reentrant", "old-function", "new-function")


def _data(dtype=torch.float64, n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randint(0, 4, (n,), generator=g)
    return [(x[:40], y[:40]), (x[40:], y[40:])]


def _net(kind="plain", dtype=torch.float64, norm=False):
    torch.manual_seed(0)
    net = Net(kind, norm).to(dtype)
    if norm:  # running statistics away from their initial values, so that eval mode matters
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net


def _explicit_hessian(dtype=torch.float64, norm=False):
    """H of the mean loss over _data(), in float64, by torch.func.hessian."""
    net = _net("plain", torch.float64, norm).eval()
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    sizes = [p.numel() for p in net.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    batches = _data(torch.float64)

    def loss(flat):
        params = {n: c.view(s) for n, c, s in zip(names, flat.split(sizes), shapes)}
        total = 0.0
        for x, y in batches:
            out = torch.func.functional_call(net, params, (x,))
            total = total + F.cross_entropy(out, y) * len(y) / 64
        return total

    return torch.func.hessian(loss)(theta)


def _fd(obj: Objective, v: torch.Tensor) -> torch.Tensor:
    return obj.hvp(v.to(obj.dtype)).double()


def test_central_difference_on_a_known_function():
    """f(w) = sum a_i w_i^4 / 12 + w^T A w / 2: g = a w^3 / 3 + A w, H = diag(a w^2) + A. The
    product's error is below the stated bound in both precisions; the map is odd and D(0) = 0."""
    g = torch.Generator().manual_seed(1)
    n = 50
    for dtype in (torch.float32, torch.float64):
        w = torch.randn(n, generator=g, dtype=torch.float64)
        a = torch.rand(n, generator=g, dtype=torch.float64)
        B = torch.randn(n, n, generator=g, dtype=torch.float64)
        A = (B + B.T) / 4
        H = torch.diag(a * w**2) + A
        v = torch.randn(n, generator=g, dtype=torch.float64)
        wd = w.to(dtype)

        def grad_at(d):
            x = wd + d
            return a.to(dtype) * x**3 / 3 + A.to(dtype) @ x

        def difference(alpha, scale, v=v.to(dtype)):
            return (grad_at(alpha * v) - grad_at(-alpha * v)) * scale

        t = fdm.central_difference_step(float(w.norm()), dtype)
        assert t == pytest.approx((3 * torch.finfo(dtype).eps / 2 * (1 + float(w.norm())) / 1000) ** (1 / 3))
        got = fdm.central_difference(difference, v.to(dtype), t).double()
        err = float((got - H @ v).norm() / (torch.linalg.matrix_norm(H, 2) * v.norm()))
        assert err < fdm.central_difference_error(float(w.norm()), dtype), (dtype, err)
        assert torch.equal(fdm.central_difference(lambda al, sc: difference(al, sc, -v.to(dtype)), -v.to(dtype), t),
                           -got.to(dtype))
        assert not fdm.central_difference(lambda al, sc: 1 / 0, torch.zeros(n, dtype=dtype), t).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_difference_hvp_is_within_its_bound_of_the_exact_hessian(dtype):
    H = _explicit_hessian()
    norm_h = float(torch.linalg.matrix_norm(H, 2))
    obj = Objective(_net("plain", dtype), F.cross_entropy, _data(dtype), hvp_mode="finite-difference")
    bound = obj.finite_difference_error()
    assert bound == fdm.central_difference_error(float(obj.parameters_vector().double().norm()), dtype)
    g = torch.Generator().manual_seed(2)
    evals, evecs = torch.linalg.eigh(H)
    for v in (torch.randn(obj.n, generator=g, dtype=torch.float64), evecs[:, -1], evecs[:, -1] * 1e3):
        err = float((_fd(obj, v) - H @ v).norm() / (norm_h * v.norm()))
        assert err < bound, (dtype, err, bound)
    block = torch.randn(obj.n, 3, generator=g, dtype=torch.float64)
    err = (obj.hvp(block.to(dtype)).double() - H @ block).norm(dim=0) / (norm_h * block.norm(dim=0))
    assert bool((err < bound).all()), err
    assert obj.n_hvp == 6 and obj.hvp_mode == "finite-difference" and obj.hvp_block_size() is None


@pytest.mark.parametrize("kind", KINDS)
def test_finite_differences_work_where_double_backward_does_not(kind):
    """Checkpointing (either setting) and first-order-only custom backwards: the explicit mode
    and the gradient agree with the plain twin; "auto" falls back (and says so) exactly when
    the exact products cannot run."""
    H = _explicit_hessian()
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    norm_h = float(torch.linalg.matrix_norm(H, 2))
    fd = Objective(_net(kind), F.cross_entropy, _data(), hvp_mode="finite-difference")
    assert float((fd.hvp(v) - H @ v).norm()) < fd.finite_difference_error() * norm_h * float(v.norm())
    plain = Objective(_net(), F.cross_entropy, _data())
    assert torch.allclose(fd.grad(), plain.grad(), rtol=1e-12, atol=1e-15)
    for threshold in (4096, 0):  # auto picks reuse-graph (small data) or forward-over-reverse
        obj = Objective(_net(kind), F.cross_entropy, _data(), reuse_graph_max_examples=threshold)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hv = obj.hvp(v)
            grad = obj.grad()
        fell_back = [w for w in caught if issubclass(w.category, FiniteDifferenceWarning)]
        exact_runs = kind == "non-reentrant" and threshold > 0  # a double backward through saved-tensor hooks
        assert obj.hvp_mode == ("reuse-graph" if exact_runs else "finite-difference")
        assert (obj.hvp_fallback is None) == exact_runs and len(fell_back) == (0 if exact_runs else 1)
        assert float((hv - H @ v).norm()) < (1e-12 if exact_runs else fd.finite_difference_error()) * norm_h * float(v.norm())
        assert torch.allclose(grad, plain.grad(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", ["old-function", "new-function"])
def test_reuse_graph_refuses_a_once_differentiable_backward(kind):
    """torch.autograd.grad prunes the error node of a @once_differentiable backward: the product
    silently lacked terms (64 % off on this net) before; now it is refused."""
    obj = Objective(_net(kind), F.cross_entropy, _data(), hvp_mode="reuse-graph")
    with pytest.raises(ConfigError, match="once_differentiable"):
        obj.hvp(torch.ones(obj.n, dtype=torch.float64))


def test_batchnorm_and_dropout_as_the_exact_product_handles_them():
    """Eval mode in both: running statistics used and left untouched, dropout off; the model's
    train flag restored."""
    H = _explicit_hessian(norm=True)
    net = _net("reentrant", norm=True).train()
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    obj = Objective(net, F.cross_entropy, _data(), hvp_mode="finite-difference")
    v = torch.randn(obj.n, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    err = float((obj.hvp(v) - H @ v).norm() / (torch.linalg.matrix_norm(H, 2) * v.norm()))
    assert err < obj.finite_difference_error()
    exact = Objective(_net("plain", norm=True).train(), F.cross_entropy, _data(), hvp_mode="reuse-graph")
    assert torch.allclose(obj.hvp(v), exact.hvp(v), rtol=0, atol=obj.finite_difference_error() * float(v.norm()) * 10)
    assert net.training and net.bn.training and net.drop.training
    assert all(torch.equal(b, buffers[n]) for n, b in net.named_buffers())


def test_weights_and_grads_restored_exactly_after_100_products():
    net = _net("reentrant", torch.float32)
    for p in net.parameters():
        p.grad = torch.full_like(p, 7.0)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    storage = {n: p.data_ptr() for n, p in net.named_parameters()}
    grads = {n: p.grad for n, p in net.named_parameters()}
    obj = Objective(net, F.cross_entropy, _data(torch.float32), params="b.*", hvp_mode="finite-difference")
    g = torch.Generator().manual_seed(5)
    for _ in range(50):
        obj.hvp(torch.randn(obj.n, generator=g))
        obj.hvp(torch.randn(obj.n, 2, generator=g)[:, 0])
    obj.value_and_grad(obj.parameters_vector() + 0.1)
    assert obj.n_hvp == 100
    for n, p in net.named_parameters():
        assert torch.equal(p.detach(), before[n]) and p.data_ptr() == storage[n], n  # its own storage back
        assert p.grad is grads[n] and bool((p.grad == 7.0).all()) and p.requires_grad


def test_every_curvature_algorithm_accepts_it():
    """Lanczos, Hutch++, SLQ, per-layer and the SAM-gradient cosine on a finite-difference
    objective agree with the exact ones to the bound (same seeds, same start vectors)."""
    kw = {"k": 2, "tol": 1e-6, "seed": 0}
    ex = Objective(_net(), F.cross_entropy, _data(), hvp_mode="forward-over-reverse")
    fd = Objective(_net("reentrant"), F.cross_entropy, _data(), hvp_mode="finite-difference")
    tol = 20 * fd.finite_difference_error()
    a, b = sh.eigenvalues(ex, **kw), sh.eigenvalues(fd, **kw)
    assert b.eigenvalues == pytest.approx(a.eigenvalues, rel=tol) and all(b.converged)
    assert b.hvp_mode == "finite-difference" and b.to_dict()["hvp_mode"] == "finite-difference"
    ta, tb = sh.trace(ex, n_matvecs=9, seed=0), sh.trace(fd, n_matvecs=9, seed=0)
    assert tb.trace == pytest.approx(ta.trace, rel=tol) and tb.hvp_mode == "finite-difference"
    da, db = sh.density(ex, n_runs=2, n_steps=8, seed=0), sh.density(fd, n_runs=2, n_steps=8, seed=0)
    assert db.trace_estimate == pytest.approx(da.trace_estimate, rel=tol) and db.hvp_mode == "finite-difference"
    la = sh.layer_summary(_net(), F.cross_entropy, _data(), trace_matvecs=6, hvp_mode="forward-over-reverse")
    lb = sh.layer_summary(_net("reentrant"), F.cross_entropy, _data(), trace_matvecs=6, hvp_mode="finite-difference")
    assert [r.lambda_max for r in lb.rows] == pytest.approx([r.lambda_max for r in la.rows], rel=tol)
    assert lb.hvp_mode == "finite-difference"
    ca, cb = sam_gradient_cosine(ex, rho=0.05), sam_gradient_cosine(fd, rho=0.05)
    assert cb.cosine == pytest.approx(ca.cosine, rel=tol) and cb.n_hvp == ca.n_hvp == 1


def test_cli_hessian_hvp_mode_finite_difference(tmp_path, cli):
    from sharpscope.train import TrainConfig, train

    train(TrainConfig(optimizer="sgd", model="mlp", model_kwargs={"hidden": [16], "activation": "tanh"}, epochs=2,
                      keep_snapshots=False), tmp_path / "run")
    reports = {}
    for mode in ("forward-over-reverse", "finite-difference"):
        code, out, err = cli(["hessian", str(tmp_path / "run"), "--top-k", "2", "--samples", "256", "--hvp-mode",
                              mode, "--json", "-", "--no-progress"])
        assert code == 0, err
        reports[mode] = json.loads(out[out.index("{"):])
    fd = reports["finite-difference"]
    assert fd["hvp_mode"] == "finite-difference" and fd["hvp_fallback"] is None
    assert fd["eigenvalues"]["hvp_mode"] == "finite-difference"
    assert fd["eigenvalues"]["eigenvalues"] == pytest.approx(reports["forward-over-reverse"]["eigenvalues"]["eigenvalues"],
                                                             rel=1e-3)


def test_cli_hessian_fd_step(tmp_path, cli):
    """The report gives the step the products took; --fd-step with that step gives the same
    eigenvalue bit for bit and with 10x that step another one (so it reaches the products); it is
    refused with an exact mode and with --nproc/--shard."""
    from sharpscope.train import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(optimizer="sgd", model="mlp", model_kwargs={"hidden": [16], "activation": "tanh"}, epochs=2,
                      keep_snapshots=False), run)

    def top(*step: str) -> dict:
        code, out, err = cli(["hessian", str(run), "--top-k", "1", "--samples", "256", "--hvp-mode",
                              "finite-difference", *step, "--json", "-", "--no-progress"])
        assert code == 0, err
        return json.loads(out[out.index("{"):])

    default = top()
    t0 = default["fd_step"]
    same, larger = top("--fd-step", repr(t0)), top("--fd-step", repr(10 * t0))
    assert same["fd_step"] == t0 and same["eigenvalues"]["eigenvalues"] == default["eigenvalues"]["eigenvalues"]
    assert larger["fd_step"] == 10 * t0
    assert larger["eigenvalues"]["eigenvalues"] != default["eigenvalues"]["eigenvalues"]
    assert larger["eigenvalues"]["eigenvalues"] == pytest.approx(default["eigenvalues"]["eigenvalues"], rel=1e-2)
    for extra in (["--hvp-mode", "reuse-graph"], ["--shard"]):
        code, _, err = cli(["hessian", str(run), "--fd-step", "0.01", *extra, "--no-progress"])
        assert code == 2 and "--fd-step" in err and len(err.strip().splitlines()) == 1, err


def test_the_copying_path_agrees_with_the_data_pointing_one():
    """A vector of another dtype than the parameters takes the path that sets the parameters in
    place from a copy (PerturbedGradient._difference); both are the same central difference."""
    from sharpscope.fd_hvp import PerturbedGradient

    obj = Objective(_net("plain", torch.float32), F.cross_entropy, _data(torch.float32), hvp_mode="finite-difference")
    pg = PerturbedGradient(obj.model, obj.names, obj._batch_loss, obj.own, obj.fixed)
    v = torch.randn(obj.n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    step = obj.finite_difference_step()
    in_place, gathered = pg.hvp(v.float(), step).double(), pg.hvp(v, step).double()
    H = _explicit_hessian()
    scale = float(torch.linalg.matrix_norm(H, 2)) * float(v.norm())
    for product in (in_place, gathered):
        assert float((product - H @ v).norm()) < obj.finite_difference_error() * scale
    # the same gradients and step: they differ only by rounding (float32 gradients, / 2t)
    assert float((in_place - gathered).norm()) < obj.finite_difference_error() * scale



def test_a_chosen_step_is_used_and_its_bound_follows_it():
    """``fd_step``: the products are those of that step (the default step given explicitly gives
    the default products bit for bit), each within eq. (1)'s bound at that step, kappa t^2 / 6 +
    u_r (1 + ||w||) / t, which the objective reports; a larger step in float32 cuts the rounding
    a random direction sees. Bad steps are refused."""
    H = _explicit_hessian()
    norm_h = float(torch.linalg.matrix_norm(H, 2))
    default = Objective(_net("plain", torch.float32), F.cross_entropy, _data(torch.float32), hvp_mode="finite-difference")
    t0 = default.finite_difference_step()
    v = torch.randn(default.n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    errors = {}
    for scale in (1.0, 4.0, 0.25):
        obj = Objective(_net("plain", torch.float32), F.cross_entropy, _data(torch.float32),
                        hvp_mode="finite-difference", fd_step=scale * t0)
        assert obj.finite_difference_step() == scale * t0
        w_norm = float(obj.parameters_vector().double().norm())
        bound = fdm.central_difference_error(w_norm, torch.float32, step=scale * t0)
        assert obj.finite_difference_error() == pytest.approx(bound, rel=1e-12)
        if scale == 1.0:
            assert bound == pytest.approx(default.finite_difference_error(), rel=1e-12)
            assert torch.equal(obj.hvp(v.float()), default.hvp(v.float()))
        errors[scale] = float((_fd(obj, v) - H @ v).norm() / (norm_h * v.norm()))
        assert errors[scale] < bound, (scale, errors[scale], bound)
    assert errors[4.0] < errors[1.0] < errors[0.25]  # this random direction: rounding-dominated
    for bad in (0.0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="fd_step"):
            Objective(_net("plain", torch.float32), F.cross_entropy, _data(torch.float32), fd_step=bad)
    for exact in ("reuse-graph", "forward-over-reverse"):  # a step that would be ignored is refused
        with pytest.raises(ConfigError, match="fd_step"):
            Objective(_net("plain", torch.float32), F.cross_entropy, _data(torch.float32), hvp_mode=exact, fd_step=t0)


def _flat_net(dtype=torch.float64) -> nn.Module:
    """_net() with its parameters as views into one flat buffer and a forward pre-hook that points
    each parameter at its view before every forward, as FSDP1's unsharding does."""
    net = _net("plain", dtype)
    owners = [(m, n) for m in net.modules() for n, _ in m.named_parameters(recurse=False)]
    flat = torch.cat([getattr(m, n).detach().reshape(-1) for m, n in owners])
    views, offset = [], 0
    for m, n in owners:
        p = getattr(m, n)
        views.append(flat[offset:offset + p.numel()].view_as(p))
        setattr(m, n, nn.Parameter(views[-1]))
        offset += p.numel()

    def unshard(*_):
        for (m, n), view in zip(owners, views):
            getattr(m, n).data = view

    net.register_forward_pre_hook(unshard)
    return net


def test_parameters_that_are_views_into_a_flat_buffer_are_moved_in_place():
    """A product on parameters that are views into one flat buffer (re-pointed at their views
    before every forward, as FSDP1 does) is the plain model's: they are shifted in place through
    the buffer, not re-pointed (the hook would undo that and leave g+ = g-, a zero product)."""
    H = _explicit_hessian()
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    plain = Objective(_net(), F.cross_entropy, _data(), hvp_mode="finite-difference")
    flat = Objective(_flat_net(), F.cross_entropy, _data(), hvp_mode="finite-difference")
    got, want = _fd(flat, v), _fd(plain, v)
    assert float((got - H @ v).norm() / (H @ v).norm()) < 1e-6
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)
