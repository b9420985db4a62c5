"""Issue 26.3: token cross-entropy with the logits formed a chunk of tokens at a time equals the
unchunked loss, gradient and Hessian-vector products to float rounding (float64 here)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from sharpscope.errors import ConfigError  # noqa: E402
from sharpscope.models.registry import build_model, make_model_spec  # noqa: E402
from sharpscope.objective import Objective  # noqa: E402
from sharpscope.tokens import TokenLoss, token_cross_entropy  # noqa: E402
from sharpscope.vocab_chunks import ChunkedTokenLoss, chunked_token_cross_entropy  # noqa: E402

V, T = 97, 12


def _gpt():
    torch.manual_seed(0)
    return build_model(make_model_spec("gpt", input_shape=(T,), num_classes=V, n_layer=1, n_embd=16,
                                       n_head=2)).double()


def _data():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (5, T), generator=g)
    labels = ids.clone()
    labels[0, :4] = -100
    labels[3, 7:] = -100
    return [{"input_ids": ids[:3], "labels": labels[:3]}, {"input_ids": ids[3:], "labels": labels[3:]}]


@pytest.mark.parametrize("shift", [True, False])
def test_chunked_cross_entropy_equals_the_logits_at_once(shift):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 9, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(V, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(V, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, V, (2, 9), generator=g)
    y[1, :3] = -100
    full = token_cross_entropy(F.linear(h, w, b), y, shift)
    grads = torch.autograd.grad(full, (h, w, b))
    for chunk in (1, 4, 100):
        part = chunked_token_cross_entropy(h, w, y, shift, chunk, b)
        assert float(part.detach()) == pytest.approx(float(full.detach()), rel=1e-14)
        for a, c in zip(grads, torch.autograd.grad(part, (h, w, b))):
            assert torch.allclose(a, c, rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize("mode", ["forward-over-reverse", "reuse-graph", "finite-difference"])
def test_chunked_token_loss_gives_the_same_gradient_and_products(mode):
    a = Objective(_gpt(), TokenLoss("causal"), _data(), hvp_mode=mode)
    b = Objective(_gpt(), ChunkedTokenLoss("causal", chunk_tokens=5), _data(), hvp_mode=mode)
    assert a.total_weight == b.total_weight
    v = torch.randn(a.n, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (la, ga), (lb, gb) = a.value_and_grad(), b.value_and_grad()
    assert lb == pytest.approx(la, rel=1e-14) and torch.allclose(gb, ga, rtol=1e-12, atol=1e-16)
    assert b.loss() == pytest.approx(a.loss(), rel=1e-14)  # no graph: chunks without checkpointing
    ha, hb = a.hvp(v), b.hvp(v)
    # exact modes: float rounding; finite differences: their rounding noise, u_r ||g|| / t ~ 1e-11 here
    tol = 1e-12 if mode != "finite-difference" else 1e-9
    assert float((ha - hb).norm() / ha.norm()) < tol


def test_chunked_token_loss_refuses_what_it_cannot_chunk():
    with pytest.raises(ConfigError, match="chunk_tokens"):
        ChunkedTokenLoss("causal", chunk_tokens=0)
    with pytest.raises(ConfigError, match="chunk_tokens"):
        chunked_token_cross_entropy(torch.zeros(1, 2, 3), torch.zeros(4, 3), torch.zeros(1, 2, dtype=torch.long),
                                    True, chunk_tokens=True)

    class Bare(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(V, 4)

        def forward(self, input_ids, **_):
            return self.emb(input_ids)

    with pytest.raises(ConfigError, match="base_model"):
        Objective(Bare(), ChunkedTokenLoss("causal"), _data()).loss()


def _explicit_ggn_times(model, data, vecs):
    """(1 / W) sum_t J_t^T (diag(p_t) - p_t p_t^T) J_t vecs over the counted tokens, from the full
    Jacobian of the logits (torch.func.jacrev), independent of sharpscope.curvature."""
    from torch.func import functional_call, jacrev

    names = [n for n, _ in model.named_parameters()]
    theta = {n: p.detach() for n, p in model.named_parameters()}
    total, count = 0.0, 0
    for batch in data:
        def logits(th, batch=batch):
            return functional_call(model, th, (), {"input_ids": batch["input_ids"]}).logits[:, :-1]

        z = logits(theta).reshape(-1, V)
        jac = jacrev(logits)(theta)
        J = torch.cat([jac[n].reshape(z.shape[0], V, -1) for n in names], dim=2)  # (tokens, V, n)
        y = batch["labels"][:, 1:].reshape(-1)
        for t in (y != -100).nonzero().squeeze(1):
            p = torch.softmax(z[t], -1)
            total = total + J[t].T @ ((torch.diag(p) - torch.outer(p, p)) @ (J[t] @ vecs))
            count += 1
    return total / count


@pytest.mark.parametrize("loss", [TokenLoss("causal"), ChunkedTokenLoss("causal", chunk_tokens=4)])
def test_token_ggn_equals_the_explicit_ggn_over_counted_tokens(loss):
    """Ragged, padded batches (-100 labels): the GGN weighted by tokens, chunked or not, to float rounding."""
    from sharpscope import curvature

    model = _gpt()
    with torch.no_grad():
        model.transformer.wpe.weight.normal_()  # non-trivial J through the position embeddings too
    obj = Objective(model, loss, _data())
    op = curvature.operator(obj, "ggn")
    V2 = torch.randn(obj.n, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    want, got = _explicit_ggn_times(model, _data(), V2), op.matmat(V2)
    assert float((got - want).norm() / want.norm()) < 1e-12
    assert torch.allclose(op.matvec(V2[:, 0]), got[:, 0], rtol=1e-12, atol=1e-15)
