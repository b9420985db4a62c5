"""SAM / ASAM / m-SAM against hand computations (float64, tiny models)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharpscope import SAM, ConfigError, frozen_bn_stats, sam_step


class Quadratic(nn.Module):
    """L(w) = 0.5 w^T A w - b^T w with a fixed symmetric A: gradients are A w - b."""

    def __init__(self, w0: list[float]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
        self.A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        self.b = torch.tensor([1.0, -1.0], dtype=torch.float64)

    def loss(self) -> torch.Tensor:
        return 0.5 * self.w @ self.A @ self.w - self.b @ self.w


def _closure(model: Quadratic):
    def closure() -> torch.Tensor:
        loss = model.loss()
        loss.backward()
        return loss
    return closure


def test_sam_p2_step_equals_hand_computation():
    # w = (1, 2): g = A w - b = (3+2-1, 1+4+1) = (4, 6), ||g|| = sqrt(52)
    # e = rho g / ||g||; g2 = A (w + e) - b; w_new = w - lr g2   (numpy, independently)
    rho, lr = 0.1, 0.01
    A = np.array([[3.0, 1.0], [1.0, 2.0]]); b = np.array([1.0, -1.0]); w = np.array([1.0, 2.0])
    g = A @ w - b
    assert np.allclose(g, [4.0, 6.0])
    e = rho * g / np.sqrt(52.0)
    expected = w - lr * (A @ (w + e) - b)
    model = Quadratic([1.0, 2.0])
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=lr)
    opt.step(_closure(model))
    np.testing.assert_allclose(model.w.detach().numpy(), expected, rtol=0, atol=1e-15)


def test_sam_pinf_step_equals_hand_computation():
    # p = inf: e = rho sign(g) = rho (1, 1) for g = (4, 6)
    rho, lr = 0.1, 0.01
    A = np.array([[3.0, 1.0], [1.0, 2.0]]); b = np.array([1.0, -1.0]); w = np.array([1.0, 2.0])
    expected = w - lr * (A @ (w + rho * np.array([1.0, 1.0])) - b)
    model = Quadratic([1.0, 2.0])
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, p=math.inf, lr=lr)
    opt.step(_closure(model))
    np.testing.assert_allclose(model.w.detach().numpy(), expected, rtol=0, atol=1e-15)


def test_asam_step_equals_hand_computation():
    # ASAM: T = |w| + eta = (1.01, 2.01); e = rho T^2 g / ||T g||
    rho, lr, eta = 0.5, 0.01, 0.01
    A = np.array([[3.0, 1.0], [1.0, 2.0]]); b = np.array([1.0, -1.0]); w = np.array([1.0, -2.0])
    g = A @ w - b
    T = np.abs(w) + eta
    e = rho * T**2 * g / np.linalg.norm(T * g)
    expected = w - lr * (A @ (w + e) - b)
    model = Quadratic([1.0, -2.0])
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, adaptive=True, eta=eta, lr=lr)
    opt.step(_closure(model))
    np.testing.assert_allclose(model.w.detach().numpy(), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("p", [1.5, 2.0, 3.0, math.inf])
def test_perturbation_solves_the_dual_norm_problem(p):
    """e_hat maximizes <e, g> over ||e||_p <= rho: ||e||_p = rho and <e, g> = rho ||g||_q."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(7, dtype=torch.float64))
    w0 = w.detach().clone()
    w.grad = torch.randn(7, dtype=torch.float64)
    rho = 0.3
    opt = SAM([w], torch.optim.SGD, rho=rho, p=p, lr=0.1)
    opt.first_step()
    e = (w.detach() - w0).numpy()
    g = w.grad.numpy()
    q = 1.0 if p == math.inf else p / (p - 1)
    assert np.linalg.norm(e, ord=p) == pytest.approx(rho, rel=1e-12)
    assert e @ g == pytest.approx(rho * np.linalg.norm(g, ord=q), rel=1e-12)
    opt.unperturb()
    assert torch.equal(w.detach(), w0)


def test_rho_zero_reproduces_base_optimizer_exactly():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    twin = copy.deepcopy(net)
    kw = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sam = SAM(net.parameters(), torch.optim.SGD, rho=0.0, **kw)
    sgd = torch.optim.SGD(twin.parameters(), **kw)
    for step in range(6):
        x = torch.randn(16, 5); y = torch.randint(0, 3, (16,))
        sam_step(net, F.cross_entropy, x, y, sam)
        sgd.zero_grad(); F.cross_entropy(twin(x), y).backward(); sgd.step()
    for a, b in zip(net.parameters(), twin.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("p,adaptive", [(2.0, False), (math.inf, False), (3.0, False), (2.0, True)])
def test_zero_gradient_gives_no_nan(p, adaptive):
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    w.grad = torch.zeros(2)
    opt = SAM([w], torch.optim.SGD, rho=0.05, p=p, adaptive=adaptive, lr=0.1)
    opt.first_step()
    assert torch.equal(w.detach(), torch.tensor([1.0, -2.0]))
    opt.second_step()
    assert torch.isfinite(w).all()


def test_step_with_closure_equals_two_manual_steps():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    twin = copy.deepcopy(net)
    x = torch.randn(10, 4, dtype=torch.float64); y = torch.randint(0, 2, (10,))
    a = SAM(net.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    b = SAM(twin.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    for _ in range(3):
        def closure():
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            return loss
        a.step(closure)
        F.cross_entropy(twin(x), y).backward(); b.first_step(zero_grad=True)
        F.cross_entropy(twin(x), y).backward(); b.second_step(zero_grad=True)
    for u, v in zip(net.parameters(), twin.parameters()):
        assert torch.equal(u, v)


def test_bad_hyperparameters_are_refused():
    w = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ConfigError, match="rho"):
        SAM(w, torch.optim.SGD, rho=-0.1, lr=0.1)
    with pytest.raises(ConfigError, match="p must"):
        SAM(w, torch.optim.SGD, p=1.0, lr=0.1)
    with pytest.raises(ConfigError, match="rho"):
        SAM(w, torch.optim.SGD, rho=float("nan"), lr=0.1)
    with pytest.raises(ConfigError, match="base_optimizer"):
        SAM(w, "sgd", lr=0.1)  # type: ignore[arg-type]


def _mlp(bn: bool = False) -> nn.Module:
    torch.manual_seed(3)
    layers = [nn.Linear(6, 12)] + ([nn.BatchNorm1d(12)] if bn else []) + [nn.ReLU(), nn.Linear(12, 3)]
    return nn.Sequential(*layers).double()


def test_msam_with_m_equal_batch_is_sam():
    net, twin = _mlp(bn=True), _mlp(bn=True)
    x = torch.randn(16, 6, dtype=torch.float64); y = torch.randint(0, 3, (16,))
    a = SAM(net.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    b = SAM(twin.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    for _ in range(3):
        sam_step(net, F.cross_entropy, x, y, a, m=16)
        sam_step(twin, F.cross_entropy, x, y, b, m=None)
    for u, v in zip(net.state_dict().values(), twin.state_dict().values()):
        assert torch.equal(u, v)


def test_msam_equals_average_of_per_chunk_sam_gradients():
    """m-SAM by hand: for each chunk k, e_k from the chunk's own gradient, g_k = grad L_k(w + e_k)."""
    net = _mlp()
    ref = copy.deepcopy(net)
    x = torch.randn(12, 6, dtype=torch.float64); y = torch.randint(0, 3, (12,))
    rho, lr, m = 0.1, 0.2, 4
    opt = SAM(net.parameters(), torch.optim.SGD, rho=rho, lr=lr)
    sam_step(net, F.cross_entropy, x, y, opt, m=m)

    params = list(ref.parameters())
    total = [torch.zeros_like(w) for w in params]
    for lo in range(0, 12, m):
        xb, yb = x[lo:lo + m], y[lo:lo + m]
        g = torch.autograd.grad(F.cross_entropy(ref(xb), yb), params)
        norm = torch.sqrt(sum((t ** 2).sum() for t in g))
        shifted = copy.deepcopy(ref)
        with torch.no_grad():
            for w, t in zip(shifted.parameters(), g):
                w.add_(rho * t / norm)
        g2 = torch.autograd.grad(F.cross_entropy(shifted(xb), yb), list(shifted.parameters()))
        total = [s + t * (xb.shape[0] / 12) for s, t in zip(total, g2)]
    for w, w_ref, g in zip(net.parameters(), params, total):
        torch.testing.assert_close(w, w_ref - lr * g, rtol=0, atol=1e-14)


def test_msam_with_uneven_last_chunk_weights_by_size():
    net = _mlp()
    x = torch.randn(10, 6, dtype=torch.float64); y = torch.randint(0, 3, (10,))
    opt = SAM(net.parameters(), torch.optim.SGD, rho=0.0, lr=0.3)
    twin = copy.deepcopy(net)
    sam_step(net, F.cross_entropy, x, y, opt, m=4)  # chunks 4, 4, 2; rho = 0: plain gradient of the mean
    sgd = torch.optim.SGD(twin.parameters(), lr=0.3)
    F.cross_entropy(twin(x), y).backward(); sgd.step()
    for u, v in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-14)


def test_bn_running_stats_come_from_the_clean_pass_only():
    net = _mlp(bn=True)
    clean = copy.deepcopy(net)
    x = torch.randn(16, 6, dtype=torch.float64); y = torch.randint(0, 3, (16,))
    opt = SAM(net.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    sam_step(net, F.cross_entropy, x, y, opt)
    clean.train()
    clean(x)  # one clean forward pass at the same (pre-update) weights
    bn, bn_clean = net[1], clean[1]
    assert torch.equal(bn.running_mean, bn_clean.running_mean)
    assert torch.equal(bn.running_var, bn_clean.running_var)
    assert int(bn.num_batches_tracked) == 1


def test_msam_bn_running_stats_are_the_mean_of_per_chunk_updates():
    net = _mlp(bn=True)
    x = torch.randn(16, 6, dtype=torch.float64); y = torch.randint(0, 3, (16,))
    means, variances = [], []
    for lo in range(0, 16, 8):
        probe = copy.deepcopy(net).train()
        probe(x[lo:lo + 8])
        means.append(probe[1].running_mean); variances.append(probe[1].running_var)
    opt = SAM(net.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    sam_step(net, F.cross_entropy, x, y, opt, m=8)
    torch.testing.assert_close(net[1].running_mean, (means[0] + means[1]) / 2, rtol=0, atol=1e-15)
    torch.testing.assert_close(net[1].running_var, (variances[0] + variances[1]) / 2, rtol=0, atol=1e-15)
    assert int(net[1].num_batches_tracked) == 1


def test_frozen_bn_stats_restores_buffers():
    net = _mlp(bn=True).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with frozen_bn_stats(net):
        net(torch.randn(8, 6, dtype=torch.float64))
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("backward_inside", [True, False])
def test_frozen_bn_stats_allows_backward_after_the_block(backward_inside):
    # Issue 10.3: `with frozen_bn_stats(m): loss2 = ...` then `loss2.backward()` (the AMP
    # layout) must work and give the same step as backward inside the block, bit for bit.
    net, twin = _mlp(bn=True), _mlp(bn=True)
    x = torch.randn(16, 6, dtype=torch.float64); y = torch.randint(0, 3, (16,))
    a = SAM(net.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
    b = SAM(twin.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
    held = dict(net[1].named_buffers())  # a user's references to the buffers stay valid
    for _ in range(2):
        sam_step(twin, F.cross_entropy, x, y, b)
        F.cross_entropy(net(x), y).backward()
        a.first_step(zero_grad=True)
        with frozen_bn_stats(net):
            perturbed = F.cross_entropy(net(x), y)
            if backward_inside:
                perturbed.backward()
        if not backward_inside:
            perturbed.backward()
        a.second_step(zero_grad=True)
    for u, v in zip(net.state_dict().values(), twin.state_dict().values()):
        assert torch.equal(u, v)
    assert all(t is net[1]._buffers[k] for k, t in held.items())
    assert int(net[1].num_batches_tracked) == 2


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(5)
    data = [(torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))) for _ in range(6)]
    net = _mlp()
    opt = SAM(net.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9, weight_decay=1e-3)
    for x, y in data[:3]:
        sam_step(net, F.cross_entropy, x, y, opt)
    saved_model = copy.deepcopy(net.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    assert saved_opt["state"], "momentum buffers must be in SAM's state_dict"
    assert saved_opt["param_groups"][0]["rho"] == 0.05
    for x, y in data[3:]:
        sam_step(net, F.cross_entropy, x, y, opt)

    fresh = _mlp()
    fresh.load_state_dict(saved_model)
    opt2 = SAM(fresh.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9, weight_decay=1e-3)
    opt2.load_state_dict(saved_opt)
    assert opt2.param_groups is opt2.base_optimizer.param_groups
    for x, y in data[3:]:
        sam_step(fresh, F.cross_entropy, x, y, opt2)
    for u, v in zip(net.parameters(), fresh.parameters()):
        assert torch.equal(u, v)


def test_lr_scheduler_drives_the_shared_param_groups():
    w = nn.Parameter(torch.ones(2))
    opt = SAM([w], torch.optim.SGD, lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    w.grad = torch.ones(2); opt.first_step(); w.grad = torch.ones(2); opt.second_step()
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == 0.5


class _Bag(nn.Module):
    """Embedding bag + linear head: with ``sparse=True`` the embedding's gradient is sparse."""

    def __init__(self, sparse: bool) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.emb = nn.Embedding(20, 4, sparse=sparse).double()
        self.head = nn.Linear(4, 3).double()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(idx).mean(dim=1))


@pytest.mark.parametrize("options", [{}, {"p": math.inf}, {"p": 3.0}, {"adaptive": True, "rho": 0.5}])
def test_sparse_gradients_step_like_the_same_gradients_stored_densely(options):
    # Issue 10.4: rows 12-19 of the embedding are never looked up, so the sparse gradient has
    # entries for rows 0-11 only; e_hat and the update must equal the dense computation.
    idx = torch.randint(0, 12, (16, 5), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(1))
    sparse, dense = _Bag(sparse=True), _Bag(sparse=False)
    opts = dict(dict(rho=0.1), **options)
    a = SAM(sparse.parameters(), torch.optim.SGD, lr=0.1, **opts)
    b = SAM(dense.parameters(), torch.optim.SGD, lr=0.1, **opts)
    for _ in range(3):
        sam_step(sparse, F.cross_entropy, idx, y, a)
        sam_step(dense, F.cross_entropy, idx, y, b)
    for (name, u), v in zip(sparse.named_parameters(), dense.parameters()):
        torch.testing.assert_close(u, v, rtol=1e-14, atol=1e-15, msg=name)
    assert torch.equal(sparse.emb.weight[12:], _Bag(sparse=True).emb.weight[12:])  # untouched rows stay put


def test_a_group_holding_only_a_sparse_gradient_steps_like_dense():
    # The embedding in a group of its own: every e of that group is on sparse entries.
    idx = torch.randint(0, 12, (16, 5), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(1))
    models = _Bag(sparse=True), _Bag(sparse=False)
    opts = [SAM([{"params": [m.emb.weight]}, {"params": list(m.head.parameters())}], torch.optim.SGD, rho=0.1,
                lr=0.1) for m in models]
    for _ in range(2):
        for model, opt in zip(models, opts):
            sam_step(model, F.cross_entropy, idx, y, opt)
    for u, v in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(u, v, rtol=1e-14, atol=1e-15)


def test_groups_added_later_are_validated_and_get_sams_defaults():
    # Issue 10.5
    w, v, u = (nn.Parameter(torch.ones(2)) for _ in range(3))
    opt = SAM([w], torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    with pytest.raises(ConfigError, match="rho"):
        opt.add_param_group({"params": [v], "rho": -1})
    with pytest.raises(ConfigError, match="same p"):
        opt.add_param_group({"params": [v], "p": math.inf})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [u], "rho": 0.2})
    added = opt.param_groups[-1]
    assert opt.param_groups is opt.base_optimizer.param_groups
    assert (added["rho"], added["p"], added["adaptive"], added["momentum"], added["lr"]) == (0.2, 2.0, False, 0.9, 0.1)
    with pytest.raises(ConfigError, match="rho"):
        SAM([{"params": [v], "rho": float("nan")}], torch.optim.SGD, lr=0.1)


def test_sync_first_pass_without_ddp_is_a_config_error():
    # Issue 10.6
    net = _mlp()
    opt = SAM(net.parameters(), torch.optim.SGD, lr=0.1)
    x = torch.randn(4, 6, dtype=torch.float64); y = torch.randint(0, 3, (4,))
    with pytest.raises(ConfigError, match="DistributedDataParallel"):
        sam_step(net, F.cross_entropy, x, y, opt, sync_first_pass=False)


def test_official_asam_scales_only_parameters_named_weight():
    """SamsungLabs/ASAM's ascent step: T = |w| + eta for parameters whose name contains
    'weight' (linear and batch-norm scales), T = 1 for biases; e = rho T^2 g / ||T g||_2 with
    the norm over every parameter (its 1e-16 added to the norm changes e by < 1e-15 here)."""
    from sharpscope.optim import asam_groups

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    rho, eta = 0.5, 0.01
    opt = SAM(asam_groups(model, eta=eta), torch.optim.SGD, rho=rho, lr=0.1)
    F.cross_entropy(model(x), y).backward()
    named = list(model.named_parameters())
    w0 = {n: w.detach().clone() for n, w in named}
    scale = {n: (w.detach().abs() + eta if "weight" in n else torch.ones_like(w)) for n, w in named}
    tg = {n: scale[n] * w.grad for n, w in named}
    norm = torch.sqrt(sum((t ** 2).sum() for t in tg.values()))
    opt.first_step()
    for n, w in named:
        torch.testing.assert_close(w.detach() - w0[n], rho * scale[n] * tg[n] / norm, rtol=1e-12, atol=1e-15)
    assert {n for n, _ in named if "weight" in n} == {"0.weight", "1.weight", "3.weight"}
    everything = asam_groups(model, eta=eta, rule="all")
    assert len(everything) == 1 and everything[0]["adaptive"] and len(everything[0]["params"]) == len(named)
    with pytest.raises(ConfigError, match="ASAM rule"):
        asam_groups(model, rule="weights")


def test_asam_runs_saved_before_the_official_rule_keep_their_rule():
    from sharpscope.train import TrainConfig

    old = TrainConfig(optimizer="asam").to_dict()
    old.pop("asam_rule")
    assert TrainConfig.from_dict(old).asam_rule == "all"
    assert TrainConfig(optimizer="asam").asam_rule == "official"
    with pytest.raises(ConfigError, match="asam-rule"):
        TrainConfig(optimizer="asam", asam_rule="bias")


def _two_sam_steps(zero_grad_first: bool, adaptive: bool = False) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, adaptive=adaptive, lr=0.1, momentum=0.9)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    for _ in range(2):
        torch.nn.functional.cross_entropy(model(x), y).backward()
        if zero_grad_first:
            opt.first_step(zero_grad=True)
        else:
            opt.first_step()
            opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.second_step(zero_grad=True)
    return [w.detach().clone() for w in model.parameters()]


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_forming_e_in_the_gradient_buffers_gives_the_same_steps(adaptive):
    """first_step(zero_grad=True) scales the discarded gradients in place into e, and reuses the
    previous step's copy of w: bit for bit the steps of first_step() + zero_grad()."""
    for a, b in zip(_two_sam_steps(True, adaptive), _two_sam_steps(False, adaptive)):
        assert torch.equal(a, b)


def test_sam_keeps_the_gradient_when_first_step_does_not_zero_it():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    model(torch.randn(8, 4)).pow(2).mean().backward()
    before = [w.grad.clone() for w in model.parameters()]
    opt.first_step()
    assert all(torch.equal(w.grad, g) for w, g in zip(model.parameters(), before))
    opt.unperturb()


def test_sam_reuses_its_buffer_of_w_plus_e_and_not_one_of_another_dtype():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    own = model.weight.data_ptr()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    x = torch.randn(8, 4, dtype=torch.float64)

    def step() -> int:
        model(x.to(model.weight.dtype)).pow(2).mean().backward()
        opt.first_step(zero_grad=True)
        at_w_plus_e = model.weight.data_ptr()
        model(x.to(model.weight.dtype)).pow(2).mean().backward()
        opt.second_step(zero_grad=True)
        assert model.weight.data_ptr() == own  # back at its own storage
        return at_w_plus_e

    first = step()
    assert first != own and step() == first  # the same buffer, written into
    model.double()  # the parameters change dtype in place: a float32 buffer must not hold float64 w + e
    own = model.weight.data_ptr()
    w = model.weight.detach().clone()
    model(x).pow(2).mean().backward()
    opt.first_step(zero_grad=True)
    assert model.weight.dtype == torch.float64 and model.weight.data_ptr() not in (own, first)
    opt.unperturb()
    assert torch.equal(model.weight.detach(), w) and model.weight.data_ptr() == own


def test_sam_never_writes_a_plain_parameter_s_own_storage():
    """w + e lives in SAM's buffer; w's storage holds w, bit for bit, all through the step."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    storage = [w.data for w in model.parameters()]
    before = [w.detach().clone() for w in model.parameters()]
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    model(torch.randn(8, 4)).pow(2).mean().backward()
    grads = [w.grad.clone() for w in model.parameters()]
    opt.first_step()
    norm = torch.sqrt(sum((g * g).sum() for g in grads))
    for w, s, b, g in zip(model.parameters(), storage, before, grads):
        assert torch.equal(s, b)  # untouched
        assert torch.equal(w.detach(), b + g * (0.5 / norm))
    opt.unperturb()
    assert all(w.data_ptr() == s.data_ptr() and torch.equal(w.detach(), b)
               for w, s, b in zip(model.parameters(), storage, before))


def _sam_steps_on(flat: bool) -> list[torch.Tensor]:
    """Three SAM steps on a small MLP; ``flat``: its parameters are views into one buffer, and a
    hook points them at those views before every forward, as FSDP1 does."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    owners = [(m, n, w) for m in model for n, w in list(m.named_parameters(recurse=False))]
    buffer = torch.cat([w.detach().reshape(-1) for _, _, w in owners])
    if flat:
        views, offset = [], 0
        for module, name, w in owners:
            views.append(buffer[offset:offset + w.numel()].view_as(w))
            setattr(module, name, torch.nn.Parameter(views[-1]))
            offset += w.numel()

        def unshard(*_: object) -> None:  # FSDP1 points each parameter at its view before forward
            for (module, name, _w), view in zip(owners, views):
                getattr(module, name).data = view

        model.register_forward_pre_hook(unshard)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.3, lr=0.1, momentum=0.9)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    for _ in range(3):
        sam_step(model, F.mse_loss, x, y, opt)
    shared = {w.untyped_storage().data_ptr() for w in model.parameters()}
    assert (shared == {buffer.untyped_storage().data_ptr()}) == flat  # still views into the buffer
    return [w.detach().clone() for w in model.parameters()]


def test_sam_on_views_into_one_flat_buffer_moves_them_in_place_with_the_same_numbers():
    """Parameters that are views into a flat buffer (FSDP1's layout) are perturbed in place from a
    copy, not re-pointed (the buffer would not see w + e); the steps are bit for bit the same."""
    assert all(torch.equal(a, b) for a, b in zip(_sam_steps_on(False), _sam_steps_on(True)))


def test_sam_repointing_and_copying_give_the_same_steps_bit_for_bit():
    def run(repoint: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.3, lr=0.1, momentum=0.9)
        opt.repoint_parameters = repoint
        x, y = torch.randn(16, 4), torch.randn(16, 2)
        for _ in range(4):
            sam_step(model, F.mse_loss, x, y, opt)
        return [w.detach().clone() for w in model.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(run(True), run(False)))


def test_sam_moves_parameters_that_share_one_storage_together_in_place():
    """Manual weight tying (two Parameters over one storage): both are moved in place, so the model
    at w + e is still tied (w + e_1 + e_2 in the shared storage), as before re-pointing existed."""
    torch.manual_seed(0)
    first = torch.nn.Linear(3, 3, bias=False)
    second = torch.nn.Linear(3, 3, bias=False)
    second.weight = torch.nn.Parameter(first.weight.data)  # one storage, two Parameters
    opt = SAM([first.weight, second.weight], torch.optim.SGD, rho=0.5, lr=0.1)
    w = first.weight.detach().clone()
    second(torch.tanh(first(torch.randn(5, 3)))).pow(2).sum().backward()
    g1, g2 = first.weight.grad.clone(), second.weight.grad.clone()
    opt.first_step()
    scale = 0.5 / torch.sqrt((g1 * g1).sum() + (g2 * g2).sum())
    assert first.weight.data_ptr() == second.weight.data_ptr()
    assert torch.allclose(first.weight.detach(), w + scale * g1 + scale * g2, atol=1e-7)
    opt.unperturb()
    assert torch.equal(first.weight.detach(), w) and torch.equal(second.weight.detach(), w)


def test_sam_on_a_compiled_model_sees_w_plus_e():
    """torch.compile takes the parameters as graph inputs: re-pointed ``.data`` reaches the graph
    (aot_eager: the same arithmetic as eager, so the steps are bit for bit eager's)."""
    def run(compiled: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.3, lr=0.1, momentum=0.9)
        x, y = torch.randn(16, 4), torch.randn(16, 2)
        for _ in range(3):
            sam_step(torch.compile(model, backend="aot_eager") if compiled else model, F.mse_loss, x, y, opt)
        return [w.detach().clone() for w in model.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(run(False), run(True)))


def test_sam_refuses_a_second_first_step_at_w_plus_e_and_keeps_w():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    w = model.weight.detach().clone()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    model(torch.randn(8, 4)).pow(2).mean().backward()
    opt.first_step()
    with pytest.raises(ConfigError, match="second_step"):
        opt.first_step()
    opt.unperturb()
    assert torch.equal(model.weight.detach(), w)
