"""RSAM, SAM's random-perturbation control: the draw, the step by hand, resume, training, CLI."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from test_train import SMALL, StopAt, _same_weights, _strip_times, _weights  # the trainer's resume helpers
from torch import nn

import sharpscope as ss
from sharpscope import RSAM, SAM, ConfigError, sam_step
from sharpscope.checkpoint import read_checkpoint
from sharpscope.train import TrainConfig, train


def _mlp(bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(6, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.ReLU(), nn.Linear(8, 3)]
    return nn.Sequential(*layers).double()


def _batch(n: int = 24, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _perturbed_weights(model: nn.Module, opt: RSAM) -> list[torch.Tensor]:
    opt.first_step(zero_grad=True)
    out = [w.detach().clone() for w in model.parameters()]
    opt.unperturb()
    return out


def _perturbation(model: nn.Module, opt: RSAM) -> list[torch.Tensor]:
    before = [w.detach().clone() for w in model.parameters()]
    return [a - b for a, b in zip(_perturbed_weights(model, opt), before)]


def test_rsam_is_exported():
    assert ss.RSAM is RSAM and "RSAM" in ss.__all__ and issubclass(RSAM, SAM)
    assert ss.optim.RSAM is RSAM


@pytest.mark.parametrize("p", [2.0, 3.0, 1.5])
def test_perturbation_has_norm_rho(p):
    model = _mlp()
    opt = RSAM(model.parameters(), torch.optim.SGD, rho=0.07, p=p, lr=0.1, seed=5)
    norm, pairs = opt._perturbation()
    e = torch.cat([t.flatten() for _, es in pairs for t in es])
    assert e.numel() == sum(w.numel() for w in model.parameters())  # every parameter, no gradient needed
    assert abs(torch.linalg.vector_norm(e, p).item() - 0.07) < 1e-14
    # through the weights: w + e - w (float64 rounding only)
    d = torch.cat([t.flatten() for t in _perturbation(model, opt)])
    assert abs(torch.linalg.vector_norm(d, p).item() - 0.07) < 1e-12


def test_p_inf_is_a_random_corner_of_the_box():
    model = _mlp()
    opt = RSAM(model.parameters(), torch.optim.SGD, rho=0.01, p=math.inf, lr=0.1, seed=2)
    _, pairs = opt._perturbation()
    e = torch.cat([t.flatten() for _, es in pairs for t in es])
    assert set(e.abs().tolist()) == {0.01}
    assert 0.35 < (e > 0).double().mean().item() < 0.65  # signs are random (83 coordinates)


def test_perturbation_is_the_same_whatever_the_gradient():
    x, y = _batch()
    draws = []
    for loss_of in (lambda out: F.cross_entropy(out, y), lambda out: (out ** 3).sum() * 1e3, None):
        model = _mlp()
        opt = RSAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, seed=11)
        if loss_of is not None:
            loss_of(model(x)).backward()
        draws.append(_perturbed_weights(model, opt))
    for other in draws[1:]:
        assert all(torch.equal(a, b) for a, b in zip(draws[0], other))
    model = _mlp()  # another seed, another direction
    other_seed = _perturbed_weights(model, RSAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, seed=12))
    assert not torch.equal(draws[0][0], other_seed[0])


def test_step_equals_hand_computation():
    # w <- w - lr * grad L(w + e), e = rho z / ||z|| with z from torch.Generator().manual_seed(seed),
    # one randn per parameter in order; the gradient by torch.func on a separate copy
    rho, lr, seed = 0.2, 0.05, 7
    x, y = _batch()
    model = _mlp()
    ref = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    names = [n for n, _ in ref.named_parameters()]
    w = [t.detach().clone() for t in ref.parameters()]
    z = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in w]
    znorm = torch.sqrt(sum((t ** 2).sum() for t in z))
    shifted = {n: a + rho * b / znorm for n, a, b in zip(names, w, z)}
    grads = torch.func.grad(lambda p: F.cross_entropy(torch.func.functional_call(ref, p, (x,)), y))(shifted)
    expected = [a - lr * grads[n] for n, a in zip(names, w)]

    opt = RSAM(model.parameters(), torch.optim.SGD, rho=rho, lr=lr, seed=seed)
    result = sam_step(model, F.cross_entropy, x, y, opt)
    for got, want in zip(model.parameters(), expected):
        torch.testing.assert_close(got.detach(), want, rtol=0, atol=1e-15)
    assert torch.equal(result.loss, F.cross_entropy(ref(x), y).detach())  # reported at w


def test_closure_step_equals_sam_step():
    x, y = _batch()
    a, b = _mlp(), _mlp()
    opt_a = RSAM(a.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9, seed=3)
    opt_b = RSAM(b.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9, seed=3)
    for _ in range(3):
        sam_step(a, F.cross_entropy, x, y, opt_a)

        def closure():
            loss = F.cross_entropy(b(x), y)
            loss.backward()
            return loss
        opt_b.step(closure)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_only_one_backward_pass_per_step():
    x, y = _batch()
    calls = []

    def loss_fn(out, target):
        calls.append(torch.is_grad_enabled())
        return F.cross_entropy(out, target)
    model = _mlp()
    sam_step(model, loss_fn, x, y, RSAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1))
    assert calls == [False, True]  # the clean pass at w builds no graph
    calls.clear()
    sam_step(model, loss_fn, x, y, SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1))
    assert calls == [True, True]


@pytest.mark.parametrize("bn", [False, True])
def test_rho_zero_is_sgd_bit_for_bit(bn):
    x, y = _batch()
    a, b = _mlp(bn), _mlp(bn)
    kw = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    opt_a = RSAM(a.parameters(), torch.optim.SGD, rho=0.0, seed=1, **kw)
    opt_b = torch.optim.SGD(b.parameters(), **kw)
    for _ in range(4):
        sam_step(a, F.cross_entropy, x, y, opt_a)
        sam_step(b, F.cross_entropy, x, y, opt_b)
    assert _same_weights(a.state_dict(), b.state_dict())  # BN running statistics included


def test_bn_running_stats_come_from_the_clean_pass_at_w():
    x, y = _batch()
    model = _mlp(bn=True)
    clean = copy.deepcopy(model)
    with torch.no_grad():
        clean(x)
    sam_step(model, F.cross_entropy, x, y, RSAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1))
    bn, ref = model[1], clean[1]
    assert torch.equal(bn.running_mean, ref.running_mean) and torch.equal(bn.running_var, ref.running_var)
    assert int(bn.num_batches_tracked) == 1


def test_msam_draws_one_e_per_chunk():
    # m = 8 on 24 examples: three draws in order, the chunk gradients at w + e_k averaged
    rho, lr, seed, m = 0.3, 0.1, 4, 8
    x, y = _batch()
    model = _mlp()
    ref = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    names = [n for n, _ in ref.named_parameters()]
    w = {n: t.detach().clone() for n, t in ref.named_parameters()}
    total = {n: torch.zeros_like(t) for n, t in w.items()}
    for lo in range(0, 24, m):
        z = {n: torch.randn(t.shape, generator=gen, dtype=torch.float64) for n, t in w.items()}
        znorm = torch.sqrt(sum((t ** 2).sum() for t in z.values()))
        shifted = {n: w[n] + rho * z[n] / znorm for n in names}
        g = torch.func.grad(lambda p: F.cross_entropy(
            torch.func.functional_call(ref, p, (x[lo:lo + m],)), y[lo:lo + m]))(shifted)
        for n in names:
            total[n] += g[n] / 3
    opt = RSAM(model.parameters(), torch.optim.SGD, rho=rho, lr=lr, seed=seed)
    sam_step(model, F.cross_entropy, x, y, opt, m=m)
    for n, t in model.named_parameters():
        torch.testing.assert_close(t.detach(), w[n] - lr * total[n], rtol=0, atol=1e-15)


def test_state_dict_round_trip_continues_bit_for_bit():
    x, y = _batch()
    model = _mlp(bn=True)
    kw = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt = RSAM(model.parameters(), torch.optim.SGD, rho=0.1, seed=9, **kw)
    for _ in range(3):
        sam_step(model, F.cross_entropy, x, y, opt)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    for _ in range(3):
        sam_step(model, F.cross_entropy, x, y, opt)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # what checkpoints allow
    resumed = _mlp(bn=True)
    resumed.load_state_dict(saved["model"])
    opt2 = RSAM(resumed.parameters(), torch.optim.SGD, rho=0.1, seed=123, **kw)  # the seed is overwritten
    opt2.load_state_dict(saved["opt"])
    for _ in range(3):
        sam_step(resumed, F.cross_entropy, x, y, opt2)
    assert _same_weights(model.state_dict(), resumed.state_dict())
    assert torch.equal(opt.generator.get_state(), opt2.generator.get_state())
    with pytest.raises(ConfigError, match="no RSAM generator state"):
        opt2.load_state_dict(SAM(resumed.parameters(), torch.optim.SGD, lr=0.1).state_dict())


def test_bad_use_is_refused():
    model = _mlp()
    with pytest.raises(ConfigError, match="adaptive"):
        RSAM(model.parameters(), torch.optim.SGD, lr=0.1, adaptive=True)
    with pytest.raises(ConfigError, match="seed"):
        RSAM(model.parameters(), torch.optim.SGD, lr=0.1, seed=-1)
    opt = RSAM(model.parameters(), torch.optim.SGD, lr=0.1)
    x, y = _batch()
    with pytest.raises(ConfigError, match="second-order SAM needs the SAM optimizer"):
        sam_step(model, F.cross_entropy, x, y, opt, second_order=True)
    with pytest.raises(ConfigError, match="second-order"):
        TrainConfig(optimizer="rsam", second_order=True)


@pytest.mark.parametrize("extra", [{}, {"m": 16}, {"p": math.inf, "rho": 0.001}])
def test_rsam_trains(tmp_path, extra):
    result = train(TrainConfig(**dict(SMALL, optimizer="rsam", epochs=2, **extra)), tmp_path / "run")
    first, last = result.metrics[0], result.metrics[-1]
    assert last["train_loss"] < first["train_loss"] and last["test_acc"] > 0.2
    assert "perturbed_loss" in last
    assert read_checkpoint(tmp_path / "run" / "checkpoint.pt")["optimizer_state"]["rsam_generator"].dtype == torch.uint8


@pytest.mark.parametrize("stop_step", [7])  # mid-epoch 2
def test_rsam_resume_after_interrupt_is_bit_for_bit(tmp_path, stop_step):
    cfg = dict(SMALL, optimizer="rsam")  # BatchNorm + dropout + momentum, as for SAM
    full = train(TrainConfig(**cfg), tmp_path / "full")
    part = train(TrainConfig(**cfg), tmp_path / "part", callbacks=[StopAt(stop_step)])
    assert part.interrupted
    resumed = train(None, tmp_path / "part", resume=True)
    assert resumed.resumed_from["step"] == stop_step
    assert _same_weights(_weights(tmp_path / "full" / "checkpoint.pt"), _weights(tmp_path / "part" / "checkpoint.pt"))
    assert _strip_times(resumed.metrics) == _strip_times(full.metrics)


def test_rsam_generator_does_not_replay_the_initialisation(tmp_path):
    # the trainer seeds RSAM with its own stream: its first draw is not the init's first draw
    from sharpscope.train.config import make_optimizer
    cfg = TrainConfig(**dict(SMALL, optimizer="rsam"))
    torch.manual_seed(cfg.seed)
    first_init = torch.randn(5)
    model = nn.Linear(5, 1, bias=False)
    opt = make_optimizer(cfg, model)
    assert isinstance(opt, RSAM) and opt.param_groups[0]["rho"] == 0.05
    z = torch.randn(5, generator=torch.Generator().manual_seed(cfg.seed))
    assert torch.equal(z, first_init)  # what seeding with cfg.seed would have drawn
    e = _perturbation(model, opt)[0].flatten()
    assert not torch.allclose(e / e.norm(), z / z.norm())


def test_cli_trains_with_rsam(tmp_path, cli):
    code, stdout, _ = cli(["train", "--help"])
    assert code == 0 and "rsam" in stdout
    out = tmp_path / "run"
    code, stdout, err = cli(["train", "--optimizer", "rsam", "--model", "mlp", "--model-opt", "hidden=[16]",
                             "--n-train", "200", "--epochs", "2", "--batch-size", "50", "--no-progress",
                             "--out", str(out)])
    assert code == 0, err
    assert "done: test acc" in stdout
    assert read_checkpoint(out / "checkpoint.pt")["config"]["optimizer"] == "rsam"
