"""Mixed precision with SAM: autocast steps against float32, GradScaler steps against
unscaled ones, inf/NaN steps skipped with the weights back at w, and scaler.step(sam)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharpscope import SAM, ConfigError, sam_step
from sharpscope.optim import RSAM


def _net(bn: bool = False, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(10, 32)] + ([nn.BatchNorm1d(32)] if bn else []) + [nn.ReLU(), nn.Linear(32, 4)]
    return nn.Sequential(*layers)


def _batch(n: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 10, generator=g), torch.randint(0, 4, (n,), generator=g)


def _opt(model: nn.Module, kind: str = "sam", rho: float = 0.1, **kw) -> torch.optim.Optimizer:
    if kind == "rsam":
        return RSAM(model.parameters(), torch.optim.SGD, rho=rho, lr=0.1, momentum=0.9, seed=0)
    return SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=0.1, momentum=0.9, **kw)


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


def _step(model, opt, steps: int = 3, **kw) -> list:
    x, y = _batch()
    results = [sam_step(model, F.cross_entropy, x, y, opt, **kw) for _ in range(steps)]
    return results


def _scaler(init: float = 2.0 ** 12) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", init_scale=init)


@pytest.mark.parametrize("options", [dict(), dict(adaptive=True), dict(p=float("inf")), dict(m=8)],
                         ids=["sam", "asam", "sam-pinf", "m-sam"])
def test_a_scaled_step_equals_the_unscaled_one(options):
    """Scaling the loss by a power of two scales every gradient exactly (barring overflow),
    e = rho * dual(g) / ||g|| does not depend on that scale, and the scaler divides the update's
    gradient by the same power of two: the weights agree to float32 rounding of the norm."""
    m = options.pop("m", None)
    a, b = _net(bn=True), _net(bn=True)
    opt_a, opt_b = _opt(a, **options), _opt(b, **options)
    _step(a, opt_a, m=m, autocast=torch.bfloat16)
    results = _step(b, opt_b, m=m, autocast=torch.bfloat16, scaler=_scaler())
    assert not any(r.skipped for r in results)
    for wa, wb in zip(_weights(a), _weights(b)):
        torch.testing.assert_close(wb, wa, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind,m", [("sam", None), ("sam", 8), ("rsam", None)])
def test_a_bfloat16_step_is_the_float32_step_within_bfloat16_rounding(kind, m):
    """bfloat16 keeps 8 significant bits (relative rounding 2^-9 ~ 0.002 per operation); through
    two layers, the loss and the two backward passes the gradient picks up a few such errors.
    Three updates at rho = 0.5 (weights and BN statistics together), seeds 0-3: measured
    0.001-0.005 relative to the update for SAM and RSAM, up to 0.014 for m-SAM; 0.02 is
    allowed. That must sit below what another optimizer would give (issue 23.10: at rho = 0.1
    plain SGD was 0.014 from RSAM, inside the old 0.05): the float32 SGD steps are 0.05
    (RSAM), 0.18 (SAM), 0.25 (m-SAM) away, and the test asserts that gap is over twice the
    tolerance, so SGD in place of the variant, an error of 1 or a skipped step fails."""
    a, b, c = _net(bn=True), _net(bn=True), _net(bn=True)
    start = _weights(a)
    opt_a, opt_b = _opt(a, kind, rho=0.5), _opt(b, kind, rho=0.5)
    _step(a, opt_a, m=m)
    _step(b, opt_b, m=m, autocast=torch.bfloat16)
    sgd, (x, y) = torch.optim.SGD(c.parameters(), lr=0.1, momentum=0.9), _batch()
    for _ in range(3):  # the same steps without a perturbation: plain SGD
        sgd.zero_grad()
        F.cross_entropy(c(x), y).backward()
        sgd.step()
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    floats = [i for i, w0 in enumerate(start) if w0.is_floating_point()]
    for i in set(range(len(start))) - set(floats):
        assert torch.equal(wa[i], wb[i])  # num_batches_tracked
    delta = torch.cat([(wa[i] - start[i]).reshape(-1) for i in floats])
    error = torch.cat([(wb[i] - wa[i]).reshape(-1) for i in floats]).norm() / delta.norm()
    gap = torch.cat([(wc[i] - wa[i]).reshape(-1) for i in floats]).norm() / delta.norm()
    assert delta.norm() > 0.1 and error < 0.02 < gap / 2, (error, gap)
    for p in b.parameters():
        assert p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32)


class _Blowup(nn.Module):
    """Cross-entropy that returns inf on chosen calls (1-based)."""

    def __init__(self, bad_calls: set[int]) -> None:
        super().__init__()
        self.calls, self.bad = 0, bad_calls

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = F.cross_entropy(out.float(), y)
        return loss * float("inf") if self.calls in self.bad else loss


@pytest.mark.parametrize("bad,m", [({1}, None), ({2}, None), ({1}, 8), ({4}, 8)],
                         ids=["inf-at-w", "inf-at-w+e", "m-sam-inf-at-w", "m-sam-inf-at-w+e"])
def test_an_inf_skips_the_step_and_leaves_the_weights_at_w(bad, m):
    model = _net()
    opt = _opt(model)
    scaler = _scaler()
    x, y = _batch()
    before = _weights(model)
    result = sam_step(model, _Blowup(bad), x, y, opt, m=m, autocast=torch.bfloat16, scaler=scaler)
    assert result.skipped and scaler.get_scale() == 2.0 ** 11  # backed off once
    for w0, w in zip(before, _weights(model)):
        assert torch.equal(w0, w)
    assert not any("old_p" in opt.state[w] for w in model.parameters())
    assert all(opt.base_optimizer.state[w].get("momentum_buffer") is None for w in model.parameters())  # no update
    nxt = sam_step(model, F.cross_entropy, x, y, opt, m=m, autocast=torch.bfloat16, scaler=scaler)
    assert not nxt.skipped and any(not torch.equal(w0, w) for w0, w in zip(before, _weights(model)))


def test_scaler_step_on_sam_is_the_second_step():
    """The hand-written loop a PyTorch user would write: scale, backward, first_step, scale,
    backward, scaler.step(sam), scaler.update() gives sam_step's weights."""
    a, b = _net(), _net()
    opt_a, opt_b = _opt(a), _opt(b)
    scaler_a, scaler_b = _scaler(), _scaler()
    x, y = _batch()
    sam_step(a, F.cross_entropy, x, y, opt_a, autocast=torch.bfloat16, scaler=scaler_a)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(b(x), y)
    scaler_b.scale(loss).backward()
    opt_b.first_step(zero_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        perturbed = F.cross_entropy(b(x), y)
    scaler_b.scale(perturbed).backward()
    scaler_b.step(opt_b)
    scaler_b.update()
    for wa, wb in zip(_weights(a), _weights(b)):
        assert torch.equal(wa, wb)


def test_misuse_never_leaves_the_weights_perturbed():
    model = _net()
    opt = _opt(model)
    x, y = _batch()
    before = _weights(model)
    scaler = _scaler()
    scaler.scale(F.cross_entropy(model(x), y)).backward()
    with pytest.raises(ConfigError, match="call sam.first_step"):
        scaler.step(opt)  # no first step yet: refused, weights at w
    for w0, w in zip(before, _weights(model)):
        assert torch.equal(w0, w)
    opt.first_step(zero_grad=True)
    assert any(not torch.equal(w0, w) for w0, w in zip(before, _weights(model)))  # at w + e now
    with pytest.raises(ConfigError, match="closure"):
        opt.step()  # plain step() without a closure: refused, and back to w
    for w0, w in zip(before, _weights(model)):
        assert torch.equal(w0, w)
    with pytest.raises(ConfigError, match="mixed precision"):
        sam_step(model, F.cross_entropy, x, y, opt, second_order=True, autocast=torch.bfloat16)
    with pytest.raises(ConfigError, match="bfloat16 or float16"):
        sam_step(model, F.cross_entropy, x, y, opt, autocast=torch.float64)


def test_float16_with_a_scaler_trains_on_this_device():
    """float16 autocast (on the CPU here, on CUDA where a GPU is lent): a few scaled SAM steps
    lower the loss and keep float32 weights."""
    model = _net(bn=True)
    opt = _opt(model)
    scaler = _scaler(2.0 ** 16)
    x, y = _batch()
    with torch.no_grad():
        first = float(F.cross_entropy(model(x), y))
    for _ in range(10):
        sam_step(model, F.cross_entropy, x, y, opt, autocast=torch.float16, scaler=scaler)
    model.eval()
    with torch.no_grad():
        assert float(F.cross_entropy(model(x), y)) < first
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_plain_optimizer_with_a_scaler():
    a, b = _net(), _net()
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    _step(a, opt_a, autocast=torch.bfloat16)
    _step(b, opt_b, autocast=torch.bfloat16, scaler=_scaler())
    for wa, wb in zip(_weights(a), _weights(b)):
        torch.testing.assert_close(wb, wa, rtol=1e-6, atol=1e-7)
