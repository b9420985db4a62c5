"""m-sharpness, surrogate gap and the first- vs second-order SAM gradient against exact answers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharpscope import ConfigError
from sharpscope.sharpness import (dual_direction, m_sharpness, project, sam_gradient_cosine, surrogate_gap,
                                  surrogate_gaps)


class LinearRegression(nn.Module):
    """f(x) = W x + c; with MSE every subset loss L_b is an exact quadratic in (W, c)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.W = nn.Parameter(torch.randn(2, 3, generator=g, dtype=torch.float64))
        self.c = nn.Parameter(torch.randn(2, generator=g, dtype=torch.float64))

    def forward(self, x):
        return x @ self.W.T + self.c


def _regression(n: int = 24):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x, y, [(x[i:i + 10], y[i:i + 10]) for i in range(0, n, 10)]


def _subsets(n: int, m: int, seed: int = 0) -> torch.Tensor:
    """The documented subset rule: consecutive slices of a seeded permutation."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[: (n // m) * m].view(-1, m)


def _flat_loss(model, x, y, loss_fn=F.mse_loss):
    """The loss on (x, y) as a function of the flat parameter vector, and that vector now."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def loss(w):
        params = {n: c.view(s) for n, c, s in zip(names, w.split(sizes), shapes)}
        return loss_fn(torch.func.functional_call(model, params, (x,)), y)
    return loss


def _theta(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_one_step_m_sharpness_of_a_quadratic_has_its_closed_form():
    # L_b(w + e) - L_b(w) = g.e + 0.5 e^T A_b e exactly, with e = rho g / ||g||
    model = LinearRegression()
    x, y, batches = _regression()
    w = _theta(model)
    rho = 0.3
    res = m_sharpness(model, F.mse_loss, batches, m=4, rho=rho, steps=1, seed=7)
    expected = []
    for idx in _subsets(24, 4, seed=7):
        loss = _flat_loss(model, x[idx], y[idx])
        g = torch.func.grad(loss)(w)
        A = torch.func.hessian(loss)(w)
        e = rho * g / g.norm()
        expected.append((g @ e + 0.5 * e @ A @ e).item())
    assert res.results[0].n_subsets == 6
    for got, want in zip(res.results[0].values, expected):
        assert got == pytest.approx(want, rel=1e-10)
    assert res.results[0].mean == pytest.approx(sum(expected) / 6, rel=1e-10)


def test_p_inf_first_step_is_rho_sign_g():
    model = LinearRegression()
    x, y, batches = _regression()
    w = _theta(model)
    res = m_sharpness(model, F.mse_loss, batches, m=24, rho=0.01, steps=1, p=math.inf, seed=0)
    loss = _flat_loss(model, x, y)
    g = torch.func.grad(loss)(w)
    assert res.results[0].values[0] == pytest.approx((loss(w + 0.01 * torch.sign(g)) - loss(w)).item(), rel=1e-10)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def _classification(n: int = 48):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y, [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)]


def test_more_steps_never_give_a_smaller_maximum():
    model = _mlp()
    _, _, batches = _classification()
    one = m_sharpness(model, F.cross_entropy, batches, m=[1, 4, 16], rho=0.5, steps=1)
    five = m_sharpness(model, F.cross_entropy, batches, m=[1, 4, 16], rho=0.5, steps=5)
    for a, b in zip(one.results, five.results):
        assert a.m == b.m and all(v5 >= v1 for v1, v5 in zip(a.values, b.values))
        assert b.mean > a.mean  # a curved loss: ascent beyond the first-order step finds more
    assert five.n_gradients == sum(r.n_subsets for r in five.results) * 6


def test_vectorized_subsets_equal_a_plain_loop():
    model = _mlp()
    x, y, batches = _classification()
    rho = 0.2
    res = m_sharpness(model, F.cross_entropy, batches, m=3, rho=rho, steps=2, seed=3, group_examples=7)
    w = _theta(model)
    for got, idx in zip(res.results[0].values, _subsets(48, 3, seed=3)):
        loss = _flat_loss(model, x[idx], y[idx], F.cross_entropy)
        e, best = torch.zeros_like(w), -math.inf
        for _ in range(2):
            g = torch.func.grad(loss)(w + e)
            e = e + rho * g / g.norm()
            e = e * min(1.0, rho / e.norm().item())
            best = max(best, (loss(w + e) - loss(w)).item())
        assert got == pytest.approx(best, rel=1e-9, abs=1e-14)


def test_several_rho_and_sharpness_grows_with_rho():
    model = _mlp()
    _, _, batches = _classification()
    res = m_sharpness(model, F.cross_entropy, batches, m=8, rho=[0.01, 0.1, 0.5], steps=2)
    means = [r.mean for r in res.results]
    assert [r.rho for r in res.results] == [0.01, 0.1, 0.5] and means == sorted(means)
    assert all(r.stderr > 0 for r in res.results)


def test_surrogate_gap_by_hand():
    model = _mlp()
    x, y, batches = _classification()
    w = _theta(model)
    loss = _flat_loss(model, x, y, F.cross_entropy)
    g = torch.func.grad(loss)(w)
    assert surrogate_gap(model, F.cross_entropy, batches, rho=0.1) == pytest.approx(
        (loss(w + 0.1 * g / g.norm()) - loss(w)).item(), rel=1e-10)
    gaps = surrogate_gaps(model, F.cross_entropy, batches, rhos=[0.05, 0.1])
    assert gaps[0.1] == pytest.approx((loss(w + 0.1 * g / g.norm()) - loss(w)).item(), rel=1e-10)
    assert gaps[0.05] == pytest.approx((loss(w + 0.05 * g / g.norm()) - loss(w)).item(), rel=1e-10)


def test_gradient_cosine_equals_autograd_through_e_hat():
    model = _mlp()
    x, y, batches = _classification()
    rho = 0.3
    res = sam_gradient_cosine(model, F.cross_entropy, batches, rho=rho)
    w = _theta(model)
    loss = _flat_loss(model, x, y, F.cross_entropy)

    def sam_objective(v):  # L(w + e_hat(w)), differentiated through e_hat
        g = torch.func.grad(loss)(v)
        return loss(v + rho * g / g.norm())

    full = torch.func.grad(sam_objective)(w)
    g_hat = torch.func.grad(loss)(w)
    g_sam = torch.func.grad(loss)(w + rho * g_hat / g_hat.norm())
    cos = (g_sam @ full / (g_sam.norm() * full.norm())).item()
    assert res.cosine == pytest.approx(cos, rel=1e-10)
    assert res.full_gradient_norm == pytest.approx(full.norm().item(), rel=1e-10)
    assert res.sam_gradient_norm == pytest.approx(g_sam.norm().item(), rel=1e-10)
    assert res.second_order_norm == pytest.approx((full - g_sam).norm().item(), rel=1e-9)
    assert res.n_hvp == 1 and res.cosine < 1.0
    assert res.surrogate_gap == pytest.approx((loss(w + rho * g_hat / g_hat.norm()) - loss(w)).item(), rel=1e-10)


def test_analyses_leave_the_model_unchanged():
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, _, batches = _classification()
    model.train()
    m_sharpness(model, F.cross_entropy, batches, m=4, steps=2)
    sam_gradient_cosine(model, F.cross_entropy, batches)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_dual_direction_and_projection():
    g = torch.tensor([[3.0, -4.0], [0.0, 0.0]])
    torch.testing.assert_close(dual_direction(g, 2), torch.tensor([[0.6, -0.8], [0.0, 0.0]]))
    torch.testing.assert_close(dual_direction(g, math.inf), torch.tensor([[1.0, -1.0], [0.0, 0.0]]))
    torch.testing.assert_close(project(torch.tensor([[3.0, 4.0]]), 1.0, 2), torch.tensor([[0.6, 0.8]]))
    torch.testing.assert_close(project(torch.tensor([[3.0, -0.5]]), 1.0, math.inf), torch.tensor([[1.0, -0.5]]))


@pytest.mark.parametrize("kwargs,match", [({"m": 0}, "m must"), ({"rho": -1.0}, "rho"), ({"steps": 0}, "steps"),
                                          ({"p": 3.0}, "p = 2"), ({"m": 1000}, "larger than")])
def test_bad_arguments(kwargs, match):
    model = _mlp()
    _, _, batches = _classification()
    with pytest.raises(ConfigError, match=match):
        m_sharpness(model, F.cross_entropy, batches, **kwargs)


def test_second_order_step_equals_autograd_through_e_hat():
    import copy

    from sharpscope import SAM, sam_step
    model = _mlp()
    twin = copy.deepcopy(model)
    x, y, _ = _classification(16)
    rho, lr = 0.2, 0.1
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=lr)
    result = sam_step(model, F.cross_entropy, x, y, opt, second_order=True)
    w = _theta(twin)
    loss = _flat_loss(twin, x, y, F.cross_entropy)

    def sam_objective(v):
        g = torch.func.grad(loss)(v)
        return loss(v + rho * g / g.norm())

    expected = w - lr * torch.func.grad(sam_objective)(w)
    got = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-13)
    assert result.loss.item() == pytest.approx(loss(w).item(), rel=1e-12)


def test_second_order_refuses_unsupported_settings():
    from sharpscope import SAM, sam_step
    model = _mlp()
    x, y, _ = _classification(8)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, adaptive=True, lr=0.1)
    with pytest.raises(ConfigError, match="second-order"):
        sam_step(model, F.cross_entropy, x, y, opt, second_order=True)


def test_tracking_adds_metrics_and_leaves_training_unchanged(tmp_path):
    from sharpscope import load_checkpoint
    from sharpscope.train import TrainConfig, train
    base = dict(optimizer="sam", model="mlp", model_kwargs={"hidden": [16]}, n_train=200, epochs=2, batch_size=50,
                keep_snapshots=False)
    plain = train(TrainConfig(**base), tmp_path / "plain")
    tracked = train(TrainConfig(**base, track=["gradcos", "lambda_max", "trace", "m_sharpness"],
                                track_samples=64), tmp_path / "tracked")
    for rec in tracked.metrics:
        assert -1.0 <= rec["gradcos"] <= 1.0 and rec["lambda_max"] > 0 and rec["m_sharpness"] > 0
        assert "trace" in rec
    a = load_checkpoint(tmp_path / "plain").model.state_dict()
    b = load_checkpoint(tmp_path / "tracked").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # tracking does not perturb training
    assert plain.metrics[-1]["test_acc"] == tracked.metrics[-1]["test_acc"]


def test_tracked_values_equal_an_independent_computation_at_each_snapshot(tmp_path):
    """Issue 23.10: what --track records is the value at the epoch's weights, not just a number
    in range. The reference (tests/_exact.py) is float64 on the snapshot of that epoch: the
    explicit Hessian by torch.func.hessian, the SAM cosine by differentiating through e_hat(w).
    A 25-parameter model (16 -> 1 -> 4, tanh) on all 100 training examples (track_samples =
    n_train, so the subset's order is all that differs): Hutch++ with 30 products returns the
    exact trace when n <= 30, so all three differ from the reference only by float32 rounding
    (measured: cosine 9e-8, lambda_max 6e-7 and trace 1e-7 relative) and by Lanczos' stopping
    rule (Ritz residual r <= 1e-3 theta, so |theta - lambda| <= r^2 / gap)."""
    from _exact import flat_loss, hessian, load, sam_cosine, training_data
    from sharpscope.train import TrainConfig, train
    rho = 0.5  # the run's rho, which tracking uses (the cosine at 0.05 is 0.99999, at 0.5 0.968)
    result = train(TrainConfig(optimizer="sam", rho=rho, model="mlp", model_kwargs={"hidden": [1], "activation": "tanh"},
                               data="synthetic", n_train=100, epochs=2, batch_size=50,
                               track=["gradcos", "lambda_max", "trace"], track_samples=100), tmp_path / "run")
    for rec in result.metrics:
        ckpt = load(tmp_path / "run" / "checkpoints" / f"epoch_{rec['epoch']:04d}.pt")
        x, y = training_data(ckpt)
        f, w = flat_loss(ckpt.model, x, y)
        assert len(x) == 100 and w.numel() == 25
        H = hessian(f, w)
        eig = torch.linalg.eigvalsh(H)
        cos = sam_cosine(f, w, rho)
        assert 1 - cos > 0.01 and abs(sam_cosine(f, w, 0.05) - cos) > 0.01  # a wrong rho or a constant fails
        assert rec["gradcos"] == pytest.approx(cos, abs=1e-6)
        lam, gap = eig[-1].item(), (eig[-1] - eig[-2]).item()
        assert abs(rec["lambda_max"] - lam) <= (1e-3 * lam) ** 2 / gap + 1e-5 * lam, (rec["lambda_max"], lam)
        assert rec["trace"] == pytest.approx(H.trace().item(), rel=1e-5)


def test_second_order_training_runs_and_is_refused_with_m(tmp_path):
    from sharpscope.train import TrainConfig, train
    result = train(TrainConfig(optimizer="sam", second_order=True, model="mlp", model_kwargs={"hidden": [16]},
                               n_train=200, epochs=2, batch_size=50, keep_snapshots=False), tmp_path / "run")
    assert result.metrics[-1]["train_loss"] < result.metrics[0]["train_loss"]
    with pytest.raises(ConfigError, match="second-order"):
        TrainConfig(optimizer="sam", second_order=True, m=8)
    with pytest.raises(ConfigError, match="cannot track"):
        TrainConfig(track=["sharpness"])


@pytest.mark.slow
def test_sam_minimum_is_flatter_than_sgd_on_digits(tmp_path):
    """The paper's claim measured end to end with the default runs (SAM was ~3x flatter here)."""
    from sharpscope import load_checkpoint
    from sharpscope.data import load_dataset
    from sharpscope.train import TrainConfig, train
    values = {}
    batches = load_dataset("digits").batches("train", 512, 512, seed=0)
    for opt in ("sgd", "sam"):
        train(TrainConfig(optimizer=opt, keep_snapshots=False), tmp_path / opt)
        model = load_checkpoint(tmp_path / opt).model
        res = m_sharpness(model, F.cross_entropy, batches, m=[1, 4, 16, 64], rho=0.05, steps=3)
        values[opt] = [r.mean for r in res.results]
    assert all(sam < sgd for sam, sgd in zip(values["sam"], values["sgd"])), values


def test_second_order_step_with_batchnorm_equals_autograd_through_e_hat():
    # Issue 10.2: the double-backward graph of the clean pass saves the BN buffers; the
    # perturbed pass must not write to them in place. Reference: the same network with a BN
    # layer that keeps no running statistics (identical train-mode forward), through autograd.
    from sharpscope import SAM, sam_step
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double().train()
    reference = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6, track_running_stats=False), nn.Tanh(),
                              nn.Linear(6, 3)).double().train()
    reference.load_state_dict({k: v for k, v in model.state_dict().items()
                               if not k.startswith("1.running") and k != "1.num_batches_tracked"})
    x, y, _ = _classification(16)
    rho, lr = 0.2, 0.1
    probe = copy.deepcopy(model)
    with torch.no_grad():  # the running statistics one clean forward pass leaves
        probe(x)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=lr)
    sam_step(model, F.cross_entropy, x, y, opt, second_order=True)

    loss = _flat_loss(reference, x, y, F.cross_entropy)

    def sam_objective(v):
        g = torch.func.grad(loss)(v)
        return loss(v + rho * g / g.norm())

    w = _theta(reference)
    expected = w - lr * torch.func.grad(sam_objective)(w)
    torch.testing.assert_close(_theta(model), expected, rtol=0, atol=1e-13)
    torch.testing.assert_close(model[1].running_mean, probe[1].running_mean, rtol=0, atol=0)
    torch.testing.assert_close(model[1].running_var, probe[1].running_var, rtol=0, atol=0)
    assert int(model[1].num_batches_tracked) == 1


def test_a_float32_cosine_of_nearly_parallel_vectors_is_clipped_to_one():
    """Two nearly parallel float32 vectors of 2 x 10^5 entries: the raw quotient reads
    1 + 5.6e-6 (the dot product and the norms round apart), which a cosine never is and which
    compare's bounded summary refused (a SAM-over-AdamW run's tracked gradcos on a GPT). Inside
    [-1, 1] the value is the quotient itself, to float32 rounding of the float64 cosine."""
    from sharpscope.sharpness import cosine

    g = torch.Generator().manual_seed(0)
    a = torch.randn(200_000, generator=g) * torch.rand(200_000, generator=g)
    b = a + 1e-4 * torch.randn(200_000, generator=g)
    assert float((a @ b) / (a.norm() * b.norm())) > 1 + 1e-6  # the rounding the clip is for
    assert cosine(a, b) == 1.0 and cosine(a, -b) == -1.0
    c = a + 0.5 * b.flip(0)
    exact = float((a.double() @ c.double()) / (a.double().norm() * c.double().norm()))
    assert cosine(a, c) == pytest.approx(exact, abs=1e-5) and -1 < exact < 1


def test_a_cosine_of_long_float32_vectors_sums_in_float64():
    """Above 2^20 entries the dot product and the norms are float64 sums of float32 blocks
    (sharpscope.reductions.large_inner / large_norm): two nearly parallel vectors of 1.5 M entries get
    the float64 cosine to 1e-7 (torch's whole float32 dot product and norms err ~1e-5 here)."""
    from sharpscope.sharpness import cosine

    g = torch.Generator().manual_seed(0)
    a = torch.randn(1_500_000, generator=g) * torch.rand(1_500_000, generator=g)
    for b in (a + 1e-4 * torch.randn(1_500_000, generator=g), a + 0.5 * a.flip(0)):
        exact = float((a.double() @ b.double()) / (a.double().norm() * b.double().norm()))
        assert cosine(a, b) == pytest.approx(exact, abs=1e-7) and -1.0 <= cosine(a, b) <= 1.0
