"""Token-level objectives over dict batches (issue 25 item 1): the mean over every counted token
of the data, not the mean of per-batch (or per-sequence) means, in the Objective, its
derivatives and the analyses built on it; checked against explicit float64 computations on
ragged, padded batches."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import sharpscope as ss
from sharpscope.batches import BatchLoss, OutputLoss
from sharpscope.errors import ConfigError
from sharpscope.objective import Objective
from sharpscope.tokens import TokenCrossEntropy, TokenLoss, pad_join, token_cross_entropy

V, D = 11, 4


class TinyLM(nn.Module):
    """A small causal LM: embeddings, a causal prefix mean (so padding at the end changes
    nothing before it), a tanh layer and an output layer; ``model(input_ids, attention_mask)``."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.mix = nn.Linear(D, D)
        self.out = nn.Linear(D, V)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        h = self.emb(input_ids)
        mask = torch.ones(input_ids.shape, dtype=h.dtype) if attention_mask is None else attention_mask.to(h.dtype)
        h = h * mask[..., None]
        prefix = h.cumsum(-2) / mask.cumsum(-1).clamp(min=1)[..., None]
        return self.out(torch.tanh(self.mix(prefix)))


def _batch(gen: torch.Generator, lengths: list[int], width: int, ignore_some: bool = False) -> dict[str, Tensor]:
    ids = torch.randint(0, V, (len(lengths), width), generator=gen)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    labels = ids.masked_fill(mask == 0, -100)
    if ignore_some:  # a prompt whose tokens are not scored
        labels[:, :2] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _data() -> list[dict[str, Tensor]]:
    """Ragged batches: 1 sequence of 9 tokens, then 3 short ones padded to 6 (the batches'
    mean-of-means, the per-sequence mean and the token mean all differ)."""
    gen = torch.Generator().manual_seed(3)
    return [_batch(gen, [9], 9), _batch(gen, [2, 6, 3], 6), _batch(gen, [5, 4], 7, ignore_some=True)]


def _model() -> TinyLM:
    torch.manual_seed(0)
    model = TinyLM().double()
    with torch.no_grad():
        model.out.weight.mul_(4.0)  # token losses that differ, so that how they are averaged matters
    return model


def _explicit(model: nn.Module, data: list[dict[str, Tensor]], shift: bool, params: dict[str, Tensor] | None = None
              ) -> tuple[Tensor, Tensor, Tensor]:
    """(token mean, mean of batch means, mean of sequence means), token by token in float64."""
    state = params if params is not None else dict(model.named_parameters())
    total, count, batch_means, seq_means = 0.0, 0, [], []
    for b in data:
        logits = torch.func.functional_call(model, state, (b["input_ids"], b["attention_mask"]))
        b_total, b_count = 0.0, 0
        for i in range(logits.shape[0]):
            s_total, s_count = 0.0, 0
            for t in range(logits.shape[1] - (1 if shift else 0)):
                y = int(b["labels"][i, t + 1 if shift else t])
                if y == -100:
                    continue
                s_total = s_total - torch.log_softmax(logits[i, t], -1)[y]
                s_count += 1
            if s_count:
                seq_means.append(s_total / s_count)
            b_total, b_count = b_total + s_total, b_count + s_count
        batch_means.append(b_total / b_count)
        total, count = total + b_total, count + b_count
    return total / count, sum(batch_means) / len(batch_means), sum(seq_means) / len(seq_means)


@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_token_loss_is_the_token_mean_not_a_mean_of_means(kind):
    model, data = _model(), _data()
    token_mean, batch_means, seq_means = (float(v.detach()) for v in _explicit(model, data, kind == "causal"))
    assert abs(token_mean - batch_means) > 0.01 and abs(token_mean - seq_means) > 0.01  # the case matters
    obj = Objective(model, TokenLoss(kind), data)
    # counted tokens: lengths 9 | 2, 6, 3 | 5, 4 with the first two labels of the last batch -100;
    # the causal shift drops each sequence's first label
    assert obj.total_weight == (8 + (1 + 5 + 2) + (3 + 2) if kind == "causal" else 9 + (2 + 6 + 3) + (3 + 2))
    assert obj.loss() == pytest.approx(token_mean, rel=1e-12)
    # one batch or many: the same number
    assert Objective(model, TokenLoss(kind), [pad_join(data)]).loss() == pytest.approx(token_mean, rel=1e-12)


def test_gradient_and_hvp_match_torch_func_on_ragged_dict_batches():
    model, data = _model(), _data()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(w: Tensor) -> Tensor:
        parts = dict(zip(names, (c.view(s) for c, s in zip(w.split([s.numel() for s in shapes]), shapes))))
        return _explicit(model, data, True, parts)[0]

    g_ref = torch.func.grad(f)(w0)
    h_ref = torch.func.hessian(f)(w0)
    v = torch.randn(w0.numel(), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for mode in ("forward-over-reverse", "reuse-graph"):
        obj = Objective(model, TokenLoss("causal"), data, hvp_mode=mode)
        torch.testing.assert_close(obj.grad(), g_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(obj.hvp(v), h_ref @ v, rtol=1e-9, atol=1e-11)
        block = torch.stack([v, -2 * v], 1)
        torch.testing.assert_close(obj.hvp(block), h_ref @ block, rtol=1e-9, atol=1e-11)
    top = ss.hessian.eigenvalues(model, TokenLoss("causal"), data, k=1, tol=1e-8)
    assert top.eigenvalues[0] == pytest.approx(float(torch.linalg.eigvalsh(h_ref)[-1]), rel=1e-6)


@dataclass
class _Out:
    loss: Tensor
    logits: Tensor


class TinyForCausalLM(nn.Module):
    """Hugging Face's calling convention: ``model(**batch)`` -> ``.loss`` (token mean of the
    batch, labels shifted) and ``.logits``; the class name says it is a causal LM."""

    def __init__(self) -> None:
        super().__init__()
        self.lm = _model()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None) -> _Out:
        logits = self.lm(input_ids, attention_mask)
        loss = token_cross_entropy(logits, labels, shift=True) if labels is not None else None
        return _Out(loss, logits)


def test_the_models_own_loss_is_weighted_by_its_counted_tokens():
    model, data = TinyForCausalLM(), _data()
    token_mean = float(_explicit(model.lm, data, True)[0].detach())
    obj = Objective(model, None, data)  # loss_fn=None: model(**batch).loss
    assert isinstance(obj.loss_fn, OutputLoss) and obj.loss_fn.shift
    assert obj.loss() == pytest.approx(token_mean, rel=1e-12)
    ref = Objective(model, TokenLoss("causal"), data)
    torch.testing.assert_close(obj.grad(), ref.grad(), rtol=1e-10, atol=1e-12)
    # "examples" weighs each batch by its sequences: the mean of per-sequence-weighted batch means, not L
    assert Objective(model, OutputLoss(model, per="examples"), data).loss() != pytest.approx(token_mean, rel=1e-6)


def test_pair_batches_with_a_token_cross_entropy_weigh_by_tokens():
    """nanoGPT's (x, y) batches, y already the next tokens: TokenCrossEntropy(shift=False)."""
    model, data = _model(), _data()
    pairs = [((b["input_ids"], b["attention_mask"]), b["labels"]) for b in data]

    class Pairs(nn.Module):
        def __init__(self, lm: nn.Module) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, inputs: tuple[Tensor, Tensor]) -> Tensor:
            return self.lm(*inputs)

    obj = Objective(Pairs(model), TokenCrossEntropy(shift=True), pairs)
    assert obj.loss() == pytest.approx(float(_explicit(model, data, True)[0].detach()), rel=1e-12)
    with pytest.raises(ConfigError, match="weighted by tokens"):  # the Fisher's per-example algebra does not hold
        ss.hessian.eigenvalues(obj, k=1, operator="fisher")
    # the GGN's batch weights hold for any weighting: the same GGN as the dict batches' (vocab_chunks.TokenGGN)
    v = torch.randn(obj.n, dtype=obj.dtype, generator=torch.Generator().manual_seed(0))
    dicts = Objective(model, TokenLoss("causal"), data)
    torch.testing.assert_close(ss.curvature.operator(obj, "ggn").matvec(v),
                               ss.curvature.operator(dicts, "ggn").matvec(v), rtol=1e-10, atol=1e-12)


def test_a_batch_with_no_counted_token_adds_nothing_and_all_empty_is_refused():
    model, data = _model(), _data()
    empty = {k: v.clone() for k, v in data[1].items()}
    empty["labels"][:] = -100
    base = Objective(model, TokenLoss("causal"), data)
    with_empty = Objective(model, TokenLoss("causal"), [empty, *data])
    assert with_empty.loss() == pytest.approx(base.loss(), rel=1e-14)
    torch.testing.assert_close(with_empty.grad(), base.grad())
    with pytest.raises(ConfigError, match="weight 0"):
        Objective(model, TokenLoss("causal"), [empty])
    with pytest.raises(ConfigError, match="dict batches"):
        Objective(model, TokenLoss("causal"), [(torch.zeros(2, 3), torch.zeros(2))])


def test_causal_batches_without_labels_score_the_unpadded_input_ids():
    model, data = _model(), _data()
    no_labels = [{k: v for k, v in b.items() if k != "labels"} for b in data[:2]]
    assert Objective(model, TokenLoss("causal"), no_labels).loss() == pytest.approx(
        Objective(model, TokenLoss("causal"), data[:2]).loss(), rel=1e-14)


def test_surface_and_interpolation_points_are_token_means():
    model, data = _model(), _data()
    d = ss.landscape.random_direction(model, norm="layer", ignore="none", seed=0)
    res = ss.landscape.surface(model, TokenLoss("causal"), data, [d], [0.0, 0.5])
    moved = {n: p.detach() + 0.5 * d[n] for n, p in model.named_parameters()}
    assert res.loss[0] == pytest.approx(float(_explicit(model, data, True)[0].detach()), rel=1e-12)
    assert res.loss[1] == pytest.approx(float(_explicit(model, data, True, moved)[0].detach()), rel=1e-12)


def test_m_sharpness_and_gradcos_on_ragged_token_batches():
    model, data = _model(), _data()
    obj = Objective(model, TokenLoss("causal"), data)
    rho = 0.05
    # m = every sequence: one subset, the whole data set (ragged batches padded to one length)
    res = ss.sharpness.m_sharpness(model, TokenLoss("causal"), data, m=6, rho=rho, steps=1)
    g = obj.grad()
    w0 = obj.parameters_vector()
    expected = max(0.0, obj.loss(w0 + rho * g / g.norm()) - obj.loss())
    assert res.results[0].mean == pytest.approx(expected, rel=1e-6, abs=1e-12)
    # the first- vs second-order SAM gradient against explicit grads and an explicit Hessian
    cos = ss.sharpness.sam_gradient_cosine(model, TokenLoss("causal"), data, rho=rho)
    h = torch.stack([obj.hvp(e) for e in torch.eye(obj.n, dtype=torch.float64)], 1)
    gh = g / g.norm()
    sam = obj.grad(w0 + rho * gh)
    full = sam + h @ ((rho / g.norm()) * (sam - gh * (gh @ sam)))
    assert cos.cosine == pytest.approx(float(F.cosine_similarity(sam, full, dim=0)), rel=1e-9)


def test_worst_and_average_sharpness_run_on_token_batches():
    model, data = _model(), _data()
    for kind in ("worst", "average"):
        r = ss.measures.sharpness(model, TokenLoss("causal"), data, measure=kind, m=3, rho=0.05, max_subsets=2)
        assert r.results and all(math.isfinite(v.loss_increase) for v in r.results)
        if kind == "worst":
            assert all(v.loss_increase >= 0 for v in r.results)


def test_per_example_refuses_ragged_joins_but_the_token_loss_pads():
    model, data = _model(), _data()
    prepared = BatchLoss(model, TokenLoss("causal")).read(data, torch.device("cpu"), torch.float64)
    assert not prepared.per_example() and prepared.total_weight == 21 and prepared.n_examples == 6
    joined = prepared.joined()
    assert joined["input_ids"].shape == (6, 9) and int((joined["labels"] != -100).sum()) == 9 + 11 + 5
    plain = ss.ModelLoss(lambda m, b: TokenLoss("causal").batch_loss(m, b))
    with pytest.raises(ConfigError, match="pad them"):
        BatchLoss(model, plain).read(data, torch.device("cpu"), torch.float64).joined()


def test_interpolation_trace_and_density_use_the_token_mean():
    model, data = _model(), _data()
    torch.manual_seed(1)
    other = TinyLM().double()
    res = ss.landscape.interpolate(model, other, TokenLoss("causal"), data, [0.0, 0.25, 1.0])
    a, b = dict(model.named_parameters()), dict(other.named_parameters())
    mid = {n: 0.75 * a[n].detach() + 0.25 * b[n].detach() for n in a}
    assert res.loss[1] == pytest.approx(float(_explicit(model, data, True, mid)[0].detach()), rel=1e-12)
    assert res.loss[2] == pytest.approx(float(_explicit(other, data, True)[0].detach()), rel=1e-12)
    obj = Objective(model, TokenLoss("causal"), data)
    h = torch.stack([obj.hvp(e) for e in torch.eye(obj.n, dtype=torch.float64)], 1)
    tr = ss.hessian.trace(model, TokenLoss("causal"), data, n_matvecs=obj.n * 3, method="hutch++", seed=0)
    assert tr.trace == pytest.approx(float(torch.trace(h)), rel=0.05)
    dens = ss.hessian.density(model, TokenLoss("causal"), data, n_runs=2, n_steps=20, seed=0)
    assert dens.n_hvp > 0


def test_the_embedded_text_and_nanogpt_bins_become_token_batches(tmp_path):
    from pydoc_data.topics import topics

    from sharpscope.data import read_token_bin, text_tokens, token_batches

    train, val = text_tokens("train"), text_tokens("val")
    raw = "\n\n".join(topics[k] for k in sorted(topics)).encode("utf-8")
    assert len(train) + len(val) == len(raw) and bytes(train[:50].tolist()) == raw[:50]
    assert int(train.max()) < 256 and len(train) == int(0.9 * len(raw))
    batches = token_batches(train, block_size=16, batch_size=3, n_blocks=7, seed=1)
    assert [b["input_ids"].shape for b in batches] == [(3, 16), (3, 16), (1, 16)]
    assert all(torch.equal(b["labels"], b["input_ids"]) for b in batches)
    again = token_batches(train, block_size=16, batch_size=3, n_blocks=7, seed=1)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again))
    np = pytest.importorskip("numpy")
    ids = np.arange(100, dtype=np.uint16) * 600  # ids above 2**15: read unsigned
    ids.tofile(tmp_path / "val.bin")
    mapped = read_token_bin(tmp_path, "val")
    blocks = token_batches(mapped, block_size=10, batch_size=4)
    assert len(blocks) == 3 and int(blocks[-1]["input_ids"][-1, -1]) == 99 * 600
    with pytest.raises(ss.DataError, match="train.bin not found"):
        read_token_bin(tmp_path, "train")
    with pytest.raises(ConfigError, match="block_size"):
        token_batches(train, block_size=1)
