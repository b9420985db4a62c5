"""The GPU path (marked ``cuda``: skipped without a GPU; ``benchmarks/gpu_suite.sh`` runs them).

Each test computes the same thing on the CPU and on the GPU in float64 (or float32 where
training) and compares: the GPU kernels sum in other orders, so float64 results agree to
~1e-10 relative and float32 training steps to ~1e-5."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharpscope import SAM, hessian, sam_step
from sharpscope.landscape import random_direction, surface
from sharpscope.objective import Objective
from sharpscope.train import TrainConfig, train

pytestmark = pytest.mark.cuda


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                         nn.Flatten(), nn.Linear(128, 10))


def _data(n: int = 96) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
    return [(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)]


def test_objective_and_lanczos_on_the_gpu_equal_the_cpu():
    cpu_model = _net().double().eval()
    gpu_model = copy.deepcopy(cpu_model).cuda()
    data = [(x.double(), y) for x, y in _data()]
    a = Objective(cpu_model, F.cross_entropy, data)
    b = Objective(gpu_model, F.cross_entropy, data)
    v = torch.randn(a.n, dtype=torch.float64)
    torch.testing.assert_close(b.grad().cpu(), a.grad(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b.hvp(v.cuda()).cpu(), a.hvp(v), rtol=1e-9, atol=1e-11)
    ea = hessian.eigenvalues(a, k=3, tol=1e-8, seed=0).eigenvalues
    eb = hessian.eigenvalues(b, k=3, tol=1e-8, seed=0).eigenvalues
    assert eb == pytest.approx(ea, rel=1e-6)
    streamed = Objective(gpu_model, F.cross_entropy, data, cache=False)
    torch.testing.assert_close(streamed.hvp(v.cuda()).cpu(), a.hvp(v), rtol=1e-9, atol=1e-11)


def test_sam_steps_on_the_gpu_follow_the_cpu():
    cpu_model, gpu_model = _net(), _net().cuda()
    opt_c = SAM(cpu_model.parameters(), torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9)
    opt_g = SAM(gpu_model.parameters(), torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9)
    for x, y in _data():
        sam_step(cpu_model, F.cross_entropy, x, y, opt_c, m=8)
        sam_step(gpu_model, F.cross_entropy, x.cuda(), y.cuda(), opt_g, m=8)
    for a, b in zip(cpu_model.state_dict().values(), gpu_model.state_dict().values()):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mixed_precision_sam_on_the_gpu(dtype):
    """Autocast on CUDA with a GradScaler: for bfloat16 (float32's exponent range, so no
    underflow at either scale) two loss scales give the same weights; for float16 the steps
    stay finite and move the weights; an inf skips the update with the weights at w."""
    a, b = _net().cuda(), _net().cuda()
    opt_a = SAM(a.parameters(), torch.optim.SGD, rho=0.05, lr=0.05)
    opt_b = SAM(b.parameters(), torch.optim.SGD, rho=0.05, lr=0.05)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 10)
    for x, y in _data():
        x, y = x.cuda(), y.cuda()
        sam_step(a, F.cross_entropy, x, y, opt_a, autocast=dtype, scaler=torch.amp.GradScaler("cuda", init_scale=1.0,
                                                                                              growth_interval=10**6))
        sam_step(b, F.cross_entropy, x, y, opt_b, autocast=dtype, scaler=scaler)
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values()):
        if dtype == torch.bfloat16:
            torch.testing.assert_close(wb, wa, rtol=1e-5, atol=1e-6)
        else:
            assert bool(torch.isfinite(wb.double()).all()), name
    start = _net().cuda().state_dict()
    assert any(not torch.equal(start[k], w) for k, w in b.state_dict().items() if w.is_floating_point())
    before = {k: t.clone() for k, t in b.named_parameters()}
    x, y = _data()[0]
    res = sam_step(b, lambda out, t: F.cross_entropy(out.float(), t) * float("inf"), x.cuda(), y.cuda(), opt_b,
                   autocast=dtype, scaler=scaler)
    assert res.skipped
    for k, w in b.named_parameters():
        assert torch.equal(before[k], w), k


def test_surface_on_the_gpu_equals_the_cpu():
    cpu_model = _net().double().eval()
    gpu_model = copy.deepcopy(cpu_model).cuda()
    data = [(x.double(), y) for x, y in _data()]
    grid = [-0.5, 0.0, 0.5]
    a = surface(cpu_model, F.cross_entropy, data, [random_direction(cpu_model, seed=0)], grid)
    b = surface(gpu_model, F.cross_entropy, data, [random_direction(gpu_model, seed=0)], grid)
    assert b.loss.tolist() == pytest.approx(a.loss.tolist(), rel=1e-9)


@pytest.mark.parametrize("amp", [None, "fp16", "bf16"])
def test_train_on_the_gpu(tmp_path, amp):
    cfg = TrainConfig(optimizer="sam", model="cnn", model_kwargs={"channels": [8, 8], "hidden": 16, "bn": True},
                      n_train=300, epochs=2, batch_size=64, device="cuda", amp=amp, keep_snapshots=False)
    result = train(cfg, tmp_path / "run")
    assert result.metrics[-1]["test_acc"] > 0.15 and result.metrics[-1]["train_loss"] < 2.3
