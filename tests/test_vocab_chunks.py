"""Issue 26.3: token cross-entropy with the logits formed a chunk of tokens at a time equals the
unchunked loss, gradient and Hessian-vector products to float rounding (float64 here)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

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


def _vocab_rows(tensors, width):
    """The rows (numel / V) of vocabulary-wide tensors (last dim V) among ``tensors``, other
    than (d, V) transposes of the output layer (d = ``width``)."""
    return [x.numel() // V for x in tensors if isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[-1] == V
            and not (x.dim() >= 2 and x.shape[-2] == width)]


class _Widest(TorchDispatchMode):
    """The most rows of a vocabulary-wide tensor any operation returns inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.rows = max([self.rows, *_vocab_rows(tree_leaves(out), 16)])
        return out


@pytest.mark.parametrize("what", ["forward-over-reverse", "reuse-graph", "ggn"])
def test_no_product_forms_the_logits_of_every_token(what):
    """Every tensor of the vocabulary's width a product creates holds at most chunk_tokens rows
    per column (2 columns here, vmapped); unchunked, the logits hold the batch's 3 x 12 tokens."""
    from sharpscope import curvature

    widest = {}
    for chunk in (None, 3):
        loss = TokenLoss("causal") if chunk is None else ChunkedTokenLoss("causal", chunk_tokens=chunk)
        obj = Objective(_gpt(), loss, _data(), hvp_mode="reuse-graph" if what == "ggn" else what)
        v = torch.randn(obj.n, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        product = curvature.operator(obj, "ggn").matmat if what == "ggn" else obj.hvp
        with _Widest() as mode:
            product(v)
        widest[chunk] = mode.rows
    assert widest[None] >= 36 and widest[3] <= 3 * 2


def _saved_vocab_rows(grads) -> int:
    """The rows of the vocabulary-wide tensors saved in the autograd graph of ``grads``."""
    stack, seen, kept = [g.grad_fn for g in grads], set(), {}
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        saved = [getattr(node, a) for a in dir(node) if a.startswith("_saved_")]
        try:
            saved += list(node.saved_tensors)  # a custom autograd.Function's
        except (AttributeError, RuntimeError):
            pass
        kept.update({x.data_ptr(): sum(_vocab_rows([x], 16)) for x in saved if isinstance(x, torch.Tensor)})
        stack.extend(n for n, _ in node.next_functions)
    return sum(kept.values())


def test_the_kept_double_backward_graph_holds_no_logits():
    """Reuse-graph keeps the gradient's graph for every product: chunked, it holds the output
    layer's inputs (and its bias, 1 row), not the logits or probabilities of the tokens."""
    rows = {}
    for loss in (TokenLoss("causal"), ChunkedTokenLoss("causal", chunk_tokens=3)):
        obj = Objective(_gpt(), loss, _data(), hvp_mode="reuse-graph")
        obj.hvp(torch.ones(obj.n, dtype=torch.float64))
        rows[type(loss).__name__] = sum(_saved_vocab_rows(g) for g in obj._graph)
    assert rows["TokenLoss"] >= 2 * 3 * 11 and rows["ChunkedTokenLoss"] <= 2


def test_the_chunked_head_is_twice_differentiable_in_every_input():
    """Hessian-vector products of the head alone (h, W and b) by double backward and by
    jvp(grad) (vmapped over two directions), chunked or not, to float rounding; a third
    derivative (through _HeadGrad's backward, itself made of differentiable operations) too."""
    from torch.func import grad, jvp, vmap

    g = torch.Generator().manual_seed(5)
    h, w, b = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((2, 9, 6), (V, 6), (V,)))
    y = torch.randint(0, V, (2, 9), generator=g)
    y[0, 2:5] = -100
    dirs = tuple(torch.randn(2, *x.shape, generator=g, dtype=torch.float64) for x in (h, w, b))

    def full(*xs):
        return token_cross_entropy(F.linear(xs[0], xs[1], xs[2]), y, True)

    def chunked(*xs):
        return chunked_token_cross_entropy(xs[0], xs[1], y, True, 4, xs[2])

    def hvps(fn):
        fr = vmap(lambda *t: jvp(grad(fn, argnums=(0, 1, 2)), (h, w, b), t)[1])(*dirs)
        xs = [x.clone().requires_grad_(True) for x in (h, w, b)]
        gr = torch.autograd.grad(fn(*xs), xs, create_graph=True)
        rr = torch.autograd.grad(gr, xs, [d[0] for d in dirs], create_graph=True)
        third = torch.autograd.grad(sum((r * r).sum() for r in rr), xs)
        return [f[0] for f in fr], rr, third

    for a, c in zip(hvps(full), hvps(chunked)):
        for x, z in zip(a, c):
            assert torch.allclose(x, z, rtol=1e-12, atol=1e-14)


class _BiasedLM(torch.nn.Module):
    """A Hugging Face-shaped LM (base_model, get_output_embeddings) whose output layer has a bias."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.base_model = _Body()
        self.lm_head = torch.nn.Linear(8, V)

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, **_):
        return self.lm_head(self.base_model(input_ids)[0])


class _Body(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.mix = torch.nn.Embedding(V, 8), torch.nn.Linear(8, 8)

    def forward(self, input_ids, **_):
        return (torch.tanh(self.mix(self.emb(input_ids))),)


@pytest.mark.parametrize("what", ["forward-over-reverse", "reuse-graph", "ggn"])
def test_an_output_layer_with_a_bias_is_chunked_exactly(what):
    from sharpscope import curvature

    out = []
    for loss in (TokenLoss("masked"), ChunkedTokenLoss("masked", chunk_tokens=4)):
        obj = Objective(_BiasedLM().double(), loss, _data(), hvp_mode="reuse-graph" if what == "ggn" else what)
        v = torch.randn(obj.n, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
        out.append(curvature.operator(obj, "ggn").matmat(v) if what == "ggn" else obj.hvp(v))
    assert float((out[0] - out[1]).norm() / out[0].norm()) < 1e-12
