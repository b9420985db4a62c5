"""--base-optimizer adamw (SAM over AdamW) and --optimizer adamw: the update against a hand
computation in float64, the default (SGD) unchanged, and the refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharpscope.errors import ConfigError
from sharpscope.optim import SAM, AdamW, registry, sam_step
from sharpscope.train import TrainConfig
from sharpscope.train.config import make_optimizer

LR, WD, RHO, B1, B2, EPS = 0.01, 0.1, 0.05, 0.9, 0.95, 1e-6


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, generator=gen, dtype=torch.float64), torch.randint(0, 2, (8,), generator=gen)


def _loss_at(model: nn.Module, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    parts = dict(zip(names, (t.reshape(s) for t, s in zip(flat.split([math.prod(s) for s in shapes]), shapes))))
    return F.cross_entropy(torch.func.functional_call(model, parts, (x,)), y)


def _grad(model: nn.Module, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.func.grad(lambda w: _loss_at(model, w, x, y))(flat)


def _config(**extra) -> TrainConfig:
    return TrainConfig(lr=LR, weight_decay=WD, rho=RHO, momentum=B1, beta2=B2, adam_eps=EPS, **extra)


def test_sam_over_adamw_steps_equal_the_hand_computed_ones():
    """SAM's e = rho g / ||g|| from the gradient at w, then AdamW's update at w with the gradient
    at w + e (Loshchilov & Hutter: m, v, bias corrections, decoupled weight decay); two steps, so
    the moments carry over."""
    model = _model()
    opt = make_optimizer(_config(optimizer="sam", base_optimizer="adamw"), model)
    assert isinstance(opt, SAM) and type(opt.base_optimizer) is torch.optim.AdamW
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    for t in (1, 2):
        x, y = _data(t)
        g = _grad(model, w, x, y)
        e = RHO * g / g.norm()
        gp = _grad(model, w + e, x, y)
        m = B1 * m + (1 - B1) * gp
        v = B2 * v + (1 - B2) * gp * gp
        w = w * (1 - LR * WD) - LR * (m / (1 - B1 ** t)) / ((v / (1 - B2 ** t)).sqrt() + EPS)
        sam_step(model, F.cross_entropy, x, y, opt)
        got = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        assert (got - w).abs().max() < 1e-13
    assert (w - torch.cat([p.detach().reshape(-1) for p in _model().parameters()])).abs().max() > 1e-3


def test_adamw_alone_is_torch_adamw_with_the_configured_betas():
    model, twin = _model(), _model()
    opt = make_optimizer(_config(optimizer="adamw"), model)
    assert isinstance(opt, AdamW) and isinstance(opt, torch.optim.AdamW)
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (LR, (B1, B2), EPS, WD)
    reference = torch.optim.AdamW(twin.parameters(), lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD)
    for t in (1, 2):
        x, y = _data(t)
        sam_step(model, F.cross_entropy, x, y, opt)
        reference.zero_grad()
        F.cross_entropy(twin(x), y).backward()
        reference.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p.detach(), q.detach())


def test_the_default_base_is_sgd_as_before():
    """Every SAM-family optimizer still wraps torch.optim.SGD with the same options by default."""
    config = TrainConfig()
    assert config.base_optimizer == "sgd"
    base, options = registry.base_optimizer(config)
    assert base is torch.optim.SGD and options == registry.base_options(config)
    for spec in registry.specs():
        opt = make_optimizer(TrainConfig(optimizer=spec.name), nn.Linear(2, 2))
        inner = getattr(opt, "base_optimizer", opt)
        assert isinstance(inner, torch.optim.SGD) == (spec.name != "adamw")


@pytest.mark.parametrize("options, fragment", [
    (dict(optimizer="sgd", base_optimizer="adamw"), "--optimizer sgd wraps none"),
    (dict(optimizer="sam", base_optimizer="adam"), "--base-optimizer must be one of sgd, adamw"),
    (dict(optimizer="sam", base_optimizer="adamw", nesterov=True), "AdamW has no Nesterov"),
    (dict(optimizer="adamw", nesterov=True), "AdamW has no Nesterov"),
    (dict(optimizer="adamw", beta2=1.0), "--beta2 must be in [0, 1)"),
    (dict(optimizer="adamw", adam_eps=0.0), "--adam-eps must be > 0"),
])
def test_bad_base_optimizer_options_are_refused(options, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace(")", r"\)")):
        TrainConfig(**options)


def test_wsam_over_adamw_builds_and_steps():
    """A variant over AdamW: WSAM's decoupled sharpness step after AdamW's update (finite, moves)."""
    model = _model()
    opt = make_optimizer(_config(optimizer="wsam", base_optimizer="adamw"), model)
    assert type(opt.base_optimizer) is torch.optim.AdamW
    before = [p.detach().clone() for p in model.parameters()]
    x, y = _data(0)
    sam_step(model, F.cross_entropy, x, y, opt)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_a_resumed_sam_over_adamw_run_equals_the_run_that_never_stopped(tmp_path):
    """AdamW's moments (the base optimizer's state) travel in the checkpoint."""
    from sharpscope.train import train
    options = dict(optimizer="sam", base_optimizer="adamw", lr=1e-3, model="mlp", model_kwargs={"hidden": [8]},
                   data="synthetic", n_train=64, batch_size=16, schedule="constant", keep_snapshots=False)
    straight = train(TrainConfig(epochs=2, **options), tmp_path / "straight")
    train(TrainConfig(epochs=1, **options), tmp_path / "resumed")
    resumed = train(TrainConfig(epochs=2, **options), tmp_path / "resumed", resume=True)
    a, b = (torch.load(r.checkpoint, weights_only=True) for r in (straight, resumed))
    assert all(torch.equal(a["model_state"][k], b["model_state"][k]) for k in a["model_state"])
    assert set(a["optimizer_state"]["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    with pytest.raises(ConfigError):
        train(TrainConfig(epochs=3, **{**options, "base_optimizer": "sgd"}), tmp_path / "resumed", resume=True)
