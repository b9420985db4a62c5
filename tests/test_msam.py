"""m-SAM vectorized over chunks (torch.func.vmap) against the chunk-by-chunk loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharpscope import SAM, ConfigError, sam_step
from sharpscope.optim import RSAM
from sharpscope.optim import msam


def _cnn(bn: bool) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 6, 3, padding=1)] + ([nn.BatchNorm2d(6)] if bn else []) + [
        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 4 * 4, 10)]
    return nn.Sequential(*layers)


def _batch(n: int = 64):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _pair(bn: bool, groups: bool = False, **hyper):
    a, b = _cnn(bn), _cnn(bn)
    def opt(model):
        params = model.parameters()
        if groups:  # the conv layer with its own rho (and, for ASAM, its own eta)
            params = [{"params": list(model[0].parameters()), "rho": 0.02, "eta": 0.1},
                      {"params": list(model[-1].parameters())}]
        return SAM(params, torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4, **hyper)
    return a, b, opt(a), opt(b)


CASES = [dict(rho=0.05), dict(rho=0.05, p=math.inf), dict(rho=0.05, p=3.0), dict(rho=0.5, adaptive=True),
         dict(rho=0.0)]


@pytest.mark.parametrize("bn", [False, True], ids=["plain", "bn"])
@pytest.mark.parametrize("hyper", CASES, ids=["p2", "pinf", "p3", "asam", "rho0"])
def test_vmapped_m_sam_equals_the_loop(bn, hyper):
    """Four steps of m = 8 on batches of 64 (8 chunks): weights, BN statistics and the reported
    losses agree to float32 rounding accumulated over the steps (1e-5 relative; measured
    differences 1e-8 to 2e-7)."""
    a, b, opt_a, opt_b = _pair(bn, **hyper)
    x, y = _batch()
    for _ in range(4):
        ra = sam_step(a, F.cross_entropy, x, y, opt_a, m=8, vectorize=False)
        rb = sam_step(b, F.cross_entropy, x, y, opt_b, m=8, vectorize=True)
    torch.testing.assert_close(rb.loss, ra.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rb.perturbed_loss, ra.perturbed_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rb.outputs, ra.outputs, rtol=1e-5, atol=1e-5)
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(wb, wa, rtol=1e-5, atol=1e-6, msg=name)
    for wa, wb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(opt_b.base_optimizer.state[wb]["momentum_buffer"],
                                   opt_a.base_optimizer.state[wa]["momentum_buffer"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("adaptive", [False, True])
def test_groups_with_their_own_rho_and_eta(adaptive):
    a, b, opt_a, opt_b = _pair(False, groups=True, rho=0.1, adaptive=adaptive)
    x, y = _batch()
    for _ in range(3):
        sam_step(a, F.cross_entropy, x, y, opt_a, m=16, vectorize=False)
        sam_step(b, F.cross_entropy, x, y, opt_b, m=16, vectorize=True)
    for wa, wb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(wb, wa, rtol=1e-5, atol=1e-6)


def test_chunk_perturbations_are_sam_first_steps():
    """e_k from the batched rule equals SAM.first_step on chunk k's gradient alone."""
    model = _cnn(False)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, p=3.0)
    x, y = _batch(32)
    named = list(model.named_parameters())
    grads = {n: [] for n, _ in named}
    wanted = {n: [] for n, _ in named}
    for k in range(4):
        model.zero_grad()
        F.cross_entropy(model(x[8 * k:8 * k + 8]), y[8 * k:8 * k + 8]).backward()
        before = {n: w.detach().clone() for n, w in named}
        for n, w in named:
            grads[n].append(w.grad.clone())
        opt.first_step()
        for n, w in named:
            wanted[n].append(w.detach() - before[n])
        opt.unperturb()
    e = msam.chunk_perturbations(opt, named, {n: torch.stack(v) for n, v in grads.items()})
    for n, _ in named:
        torch.testing.assert_close(e[n], torch.stack(wanted[n]), rtol=1e-5, atol=1e-7)


def test_auto_vectorizes_only_what_it_can():
    model = _cnn(False)
    x, y = _batch(60)
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    assert msam.vmappable(model, x[:64], y[:64], sam, 8, 60, None, None) is False  # 8 does not divide 60
    assert msam.vmappable(model, x, y, sam, 6, 60, None, None) is True
    assert msam.vmappable(model, x, y, sam, 6, 60, torch.bfloat16, None) is False
    rsam = RSAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, seed=0)
    assert msam.vmappable(model, x, y, rsam, 6, 60, None, None) is False  # a variant's own rule: the loop
    with pytest.raises(ConfigError, match="cannot be vectorized"):
        sam_step(model, F.cross_entropy, x, y, sam, m=8, vectorize=True)
    sam_step(model, F.cross_entropy, x, y, sam, m=8)  # auto: the loop takes the uneven chunks


class _Counter(nn.Module):
    """A module with buffers that are not BatchNorm's: m-SAM must leave them alone."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("offset", torch.full((1,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.offset


def test_buffers_other_than_batch_norm_are_untouched():
    torch.manual_seed(0)
    a = nn.Sequential(_Counter(), nn.Flatten(), nn.Linear(64, 10), nn.BatchNorm1d(10))
    b = nn.Sequential(_Counter(), nn.Flatten(), nn.Linear(64, 10), nn.BatchNorm1d(10))
    b.load_state_dict(a.state_dict())
    opt_a = SAM(a.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    opt_b = SAM(b.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    x, y = _batch()
    sam_step(a, F.cross_entropy, x, y, opt_a, m=8, vectorize=False)
    sam_step(b, F.cross_entropy, x, y, opt_b, m=8, vectorize=True)
    assert int(b[0].steps) == 0 and float(b[0].offset) == 0.5 and int(b[3].num_batches_tracked) == 1
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(wb, wa, rtol=1e-5, atol=1e-6, msg=name)
