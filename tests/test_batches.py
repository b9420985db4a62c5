"""Batches of any structure and ModelLoss (issue 10.7), attention models (issue 10.8): every
analysis against the exact Hessian / a plain autograd computation on a tiny transformer-style
model that takes a dict and calls ``F.scaled_dot_product_attention`` (via
``nn.TransformerEncoderLayer``)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

import sharpscope as ss
from sharpscope import ConfigError
from sharpscope.batches import BatchLoss, ModelLoss
from sharpscope.hessian import eigenvalues, trace
from sharpscope.landscape import surface
from sharpscope.objective import Objective
from sharpscope.sharpness import m_sharpness, sam_gradient_cosine

VOCAB, WIDTH, LENGTH, CLASSES = 7, 4, 5, 3


class TinyTransformer(nn.Module):
    """Embedding + one encoder layer (SDPA inside) + mean pool + head; input: a dict with
    ``tokens`` (B, T) and ``pad`` (B, T) bool (True = padding)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.encoder = nn.TransformerEncoderLayer(WIDTH, 2, dim_feedforward=6, dropout=0.1, batch_first=True)
        self.head = nn.Linear(WIDTH, CLASSES)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.encoder(self.embed(inputs["tokens"]), src_key_padding_mask=inputs["pad"])
        keep = (~inputs["pad"]).unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1))


def _data(n: int = 14, batch: int = 5):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (n, LENGTH), generator=g)
    pad = torch.zeros(n, LENGTH, dtype=torch.bool)
    pad[::3, -2:] = True  # some sequences padded
    y = torch.randint(0, CLASSES, (n,), generator=g)
    pairs = [({"tokens": tokens[i:i + batch], "pad": pad[i:i + batch]}, y[i:i + batch]) for i in range(0, n, batch)]
    dicts = [{"tokens": t["tokens"], "pad": t["pad"], "labels": yy} for t, yy in pairs]
    return pairs, dicts


def _dict_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    return F.cross_entropy(model({"tokens": batch["tokens"], "pad": batch["pad"]}), batch["labels"])


def _model() -> nn.Module:
    return TinyTransformer().double()


def _exact(model: nn.Module, pairs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L, grad L, Hessian) of the size-weighted mean loss on a flat vector, the Hessian row by
    row with plain double-backward autograd (math attention kernel: the fused one has no
    second derivative). Not ``torch.func.hessian`` nor ``jacrev(jacrev)``: in torch 2.13 their
    vmapped second derivatives through Linear -> LayerNorm -> Linear are wrong (asymmetric,
    0.08 off here, 8.2 on a 3-layer toy), while plain autograd is symmetric to 1e-16 and
    agrees with central differences of the gradient to 1e-9."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    n = sum(int(y.shape[0]) for _, y in pairs)

    def loss(w):
        params = {nm: c.view(s) for nm, c, s in zip(names, w.split(sizes), shapes)}
        return sum(F.cross_entropy(functional_call(model, params, (x,)), y) * (y.shape[0] / n) for x, y in pairs)

    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).requires_grad_(True)
    model.eval()
    with sdpa_kernel([SDPBackend.MATH]):
        value = loss(w)
        g = torch.autograd.grad(value, w, create_graph=True)[0]
        hess = torch.stack([torch.autograd.grad(g[i], w, retain_graph=True)[0] for i in range(w.numel())])
    return value.detach(), g.detach(), hess


@pytest.fixture(scope="module")
def exact():
    pairs, _ = _data()
    return _exact(_model(), pairs)


@pytest.mark.parametrize("mode", ["forward-over-reverse", "reuse-graph"])
@pytest.mark.parametrize("convention", ["pairs", "model-loss"])
def test_objective_on_dict_inputs_matches_the_exact_hessian(exact, mode, convention):
    loss, g, hess = exact
    pairs, dicts = _data()
    model = _model().train()
    obj = (Objective(model, F.cross_entropy, pairs, hvp_mode=mode) if convention == "pairs"
           else Objective(model, ModelLoss(_dict_loss), dicts, hvp_mode=mode))
    assert obj.n_examples == 14 and obj.weights == pytest.approx([5 / 14, 5 / 14, 4 / 14])
    value, grad = obj.value_and_grad()
    assert value == pytest.approx(float(loss), rel=1e-12)
    torch.testing.assert_close(grad, g, rtol=1e-10, atol=1e-12)
    v = torch.randn(obj.n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(obj.hvp(v), hess @ v, rtol=1e-9, atol=1e-11)
    assert model.training  # the user's train flag is left as it was


def test_eigenvalues_and_trace_of_an_attention_model(exact):
    _, _, hess = exact
    pairs, _ = _data()
    spectrum = torch.linalg.eigvalsh(hess)
    res = eigenvalues(_model(), F.cross_entropy, pairs, k=3, which="LA", tol=1e-8)
    assert all(res.converged)
    torch.testing.assert_close(torch.tensor(res.eigenvalues, dtype=torch.float64), spectrum.flip(0)[:3],
                               rtol=1e-6, atol=0)
    n = hess.shape[0]
    est = trace(_model(), ModelLoss(_dict_loss), _data()[1], n_matvecs=n + 2, method="hutch++")
    # with more than n products Hutch++'s sketch spans the space: exact up to rounding
    assert est.trace == pytest.approx(float(spectrum.sum()), rel=1e-8)


def test_gradcos_and_second_order_sam_on_an_attention_model():
    pairs, dicts = _data()
    a = sam_gradient_cosine(_model(), F.cross_entropy, pairs, rho=0.05)
    b = sam_gradient_cosine(_model(), ModelLoss(_dict_loss), dicts, rho=0.05)
    assert a.cosine == pytest.approx(b.cosine, rel=1e-12) and -1 <= a.cosine <= 1
    # second-order SAM step on dict inputs = w - lr grad_w L(w + rho g/||g||) by autograd
    model, twin = _model().eval(), _model().eval()  # eval: dropout off, the step is deterministic
    rho, lr = 0.05, 0.1
    opt = ss.SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=lr)
    x, y = pairs[0]
    ss.sam_step(model, F.cross_entropy, x, y, opt, second_order=True)
    names = [n for n, _ in twin.named_parameters()]
    shapes = [p.shape for p in twin.parameters()]
    sizes = [p.numel() for p in twin.parameters()]

    def loss(w):
        return F.cross_entropy(functional_call(twin, {n: c.view(s) for n, c, s in zip(names, w.split(sizes), shapes)},
                                               (x,)), y)

    def sam_objective(w):
        g = torch.func.grad(loss)(w)
        return loss(w + rho * g / g.norm())

    w = torch.cat([p.detach().reshape(-1) for p in twin.parameters()])
    with sdpa_kernel([SDPBackend.MATH]):
        expected = w - lr * torch.func.grad(sam_objective)(w)
    got = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-13)


def test_m_sharpness_of_an_attention_model_equals_a_plain_loop():
    from sharpscope.sharpness import dual_direction, project
    pairs, _ = _data()
    model, rho, steps, m = _model(), 0.05, 2, 7
    res = m_sharpness(model, F.cross_entropy, pairs, m=m, rho=rho, steps=steps, seed=3)
    x = {k: torch.cat([b[0][k] for b in pairs]) for k in ("tokens", "pad")}
    y = torch.cat([b[1] for b in pairs])
    order = torch.randperm(14, generator=torch.Generator().manual_seed(3))  # the documented subset rule
    names = [n for n, _ in model.named_parameters()]
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    model.eval()
    expected = []
    for subset in order.view(-1, m):
        xs, ys = {k: v[subset] for k, v in x.items()}, y[subset]

        def loss(w):
            params = {n: c.view(p.shape) for n, c, p in zip(names, w.split([p.numel() for p in model.parameters()]),
                                                          model.parameters())}
            return F.cross_entropy(functional_call(model, params, (xs,)), ys)

        base, e, best = loss(w0), torch.zeros_like(w0), -math.inf
        with sdpa_kernel([SDPBackend.MATH]):
            g = torch.func.grad(loss)(w0)
            for _ in range(steps):
                e = project(e + rho * dual_direction(g, 2.0), rho, 2.0)
                g = torch.func.grad(loss)(w0 + e)
                best = max(best, float(loss(w0 + e) - base))
        expected.append(best)
    assert res.results[0].values == pytest.approx(expected, rel=1e-9, abs=1e-14)


def test_surfaces_and_m_sharpness_agree_across_conventions():
    pairs, dicts = _data()
    d = ss.landscape.random_direction(_model(), seed=0)
    xs = [-0.5, 0.0, 0.5]
    s_pairs = surface(_model(), F.cross_entropy, pairs, [d], xs)
    s_dicts = surface(_model(), ModelLoss(_dict_loss), dicts, [d], xs)
    assert s_pairs.n_examples == s_dicts.n_examples == 14
    torch.testing.assert_close(torch.tensor(s_pairs.loss), torch.tensor(s_dicts.loss), rtol=1e-12, atol=0)
    assert s_pairs.loss[1] == pytest.approx(_exact(_model(), pairs)[0].item(), rel=1e-12)
    assert not math.isnan(s_pairs.accuracy[1]) and math.isnan(s_dicts.accuracy[1])  # no outputs under ModelLoss
    a = m_sharpness(_model(), F.cross_entropy, pairs, m=[2, 7], rho=0.05, steps=2)
    b = m_sharpness(_model(), ModelLoss(_dict_loss), dicts, m=[2, 7], rho=0.05, steps=2)
    for ra, rb in zip(a.results, b.results):
        assert ra.values == pytest.approx(rb.values, rel=1e-10, abs=1e-15)


def test_model_loss_count_sets_the_batch_weights():
    _, dicts = _data()
    tokens = ModelLoss(_dict_loss, count=lambda b: int((~b["pad"]).sum()))
    obj = Objective(_model(), tokens, dicts)
    counts = [int((~b["pad"]).sum()) for b in dicts]
    assert obj.n_examples == sum(counts)
    assert obj.weights == pytest.approx([c / sum(counts) for c in counts])


def test_structure_errors_are_config_errors():
    pairs, dicts = _data()
    with pytest.raises(ConfigError, match="ModelLoss"):
        Objective(_model(), F.cross_entropy, dicts)  # dict batches need ModelLoss
    with pytest.raises(ConfigError, match="no batches"):
        Objective(_model(), F.cross_entropy, [])
    scalar = [{"tokens": b["tokens"], "pad": b["pad"], "labels": b["labels"], "step": torch.tensor(3.0)}
              for b in dicts]
    with pytest.raises(ConfigError, match="leading size"):
        m_sharpness(_model(), ModelLoss(_dict_loss), scalar, m=2)
    with pytest.raises(ConfigError, match="count"):
        BatchLoss(_model(), ModelLoss(_dict_loss)).count({"step": torch.tensor(3.0)})
