"""Hugging Face models built from a config, nothing downloaded (issue 25 item 2): ``gpt`` and
``bert`` in the model registry, the models' own ``.loss`` weighted by its counted tokens, and
curvature of a tiny GPT against explicit float64 Hessians.

The explicit Hessians are ``torch.autograd.functional.hessian`` (reverse over reverse, one
column per backward pass, no vmap: independent of sharpscope's forward-over-reverse and
reused-graph products). ``torch.func.hessian`` (jacfwd over jacrev, vmapped) is not used on
these models: on torch 2.13 with transformers 5.25 it disagrees with both reverse-over-reverse
and finite differences on the GPT's cross terms between ``attn.c_proj`` and ``ln_f`` (by
0.047 in entries up to 5.8), while each block alone agrees to 1e-15.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import sharpscope as ss
from sharpscope.errors import ConfigError, ModelSpecError
from sharpscope.models import TransformersNotInstalled, build_model, count_parameters, make_model_spec
from sharpscope.objective import Objective
from sharpscope.tokens import TokenLoss

T, VOCAB, WIDTH = 8, 64, 16


def test_the_core_package_never_imports_transformers():
    code = ("import sys, sharpscope, sharpscope.models, sharpscope.objective, sharpscope.tokens, sharpscope.hessian, "
            "sharpscope.landscape, sharpscope.sharpness, sharpscope.cli\n"
            "sharpscope.models.make_model_spec('mlp', [4], 3)\n"
            "assert 'transformers' not in sys.modules and 'peft' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(TransformersNotInstalled, match=r'pip install "sharpscope\[transformers\]"') as err:
        make_model_spec("gpt", [T], VOCAB)
    assert isinstance(err.value, ConfigError) and isinstance(err.value, ModelSpecError)


def test_token_models_refuse_image_shapes_and_bad_sizes():
    with pytest.raises(ModelSpecError, match=r"token sequences \(input shape \(T,\)"):
        make_model_spec("gpt", [1, 8, 8], 10)
    with pytest.raises(ModelSpecError, match="multiple of n_head"):
        make_model_spec("gpt", [T], VOCAB, n_embd=10, n_head=4)
    with pytest.raises(ModelSpecError, match="unknown option 'width'"):
        make_model_spec("bert", [T], 3, width=4)


needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason='needs pip install "sharpscope[transformers]"')


def _gpt(seed: int = 0, **opts) -> torch.nn.Module:
    spec = make_model_spec("gpt", [T], VOCAB, **{"n_layer": 1, "n_embd": WIDTH, **opts})
    torch.manual_seed(seed)
    return build_model(spec).double()


def _batch(gen: torch.Generator, lengths: list[int], width: int, classes: int | None = None) -> dict[str, Tensor]:
    ids = torch.randint(1, VOCAB, (len(lengths), width), generator=gen)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = ids.masked_fill(mask == 0, 0)
    labels = (torch.randint(0, classes, (len(lengths),), generator=gen) if classes is not None
              else ids.masked_fill(mask == 0, -100))
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _data(classes: int | None = None) -> list[dict[str, Tensor]]:
    gen = torch.Generator().manual_seed(5)
    return [_batch(gen, [8], 8, classes), _batch(gen, [2, 5, 3], 5, classes)]


def _token_mean(model: torch.nn.Module, state: dict[str, Tensor], data: list[dict[str, Tensor]]) -> Tensor:
    """The causal token mean written out: sum of every counted next-token CE / their number."""
    total, count = 0.0, 0
    for b in data:
        logits = torch.func.functional_call(model, state, (), {"input_ids": b["input_ids"],
                                                                "attention_mask": b["attention_mask"]}).logits
        y = b["labels"][:, 1:]
        total = total + F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), y.reshape(-1), ignore_index=-100,
                                        reduction="sum")
        count += int((y != -100).sum())
    return total / count


@needs_transformers
def test_gpt_is_built_from_its_config_seeded_and_counted_by_hand(tmp_path):
    a, b = _gpt(), _gpt()
    assert type(a).__name__ == "GPT2LMHeadModel" and a.config._attn_implementation == "eager"
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    block = 2 * 2 * WIDTH + (WIDTH * 3 * WIDTH + 3 * WIDTH) + (WIDTH * WIDTH + WIDTH) \
        + (WIDTH * 4 * WIDTH + 4 * WIDTH) + (4 * WIDTH * WIDTH + WIDTH)
    assert count_parameters(a) == VOCAB * WIDTH + T * WIDTH + block + 2 * WIDTH == 4464  # lm_head tied to wte
    spec = make_model_spec("gpt", [T], VOCAB, n_layer=1, n_embd=WIDTH)
    ss.save_checkpoint(tmp_path / "g.pt", a.float(), model_spec=spec)
    back = ss.load_checkpoint(tmp_path / "g.pt").model
    assert all(torch.equal(p, q) for p, q in zip(a.float().state_dict().values(), back.state_dict().values()))


@needs_transformers
def test_the_gpts_own_loss_is_its_token_mean_weighted_by_tokens():
    model, data = _gpt(), _data()
    theta = dict(model.named_parameters())
    expected = float(_token_mean(model, theta, data).detach())
    own = Objective(model, None, data)  # model(**batch).loss, weighted by counted tokens
    assert own.total_weight == 7 + (1 + 4 + 2)
    assert own.loss() == pytest.approx(expected, rel=1e-6)  # transformers scores the loss in float32
    assert Objective(model, TokenLoss("causal"), data).loss() == pytest.approx(expected, rel=1e-12)


SELECTED = ["transformer.h.0.attn.c_proj.*", "transformer.ln_f.*"]


@needs_transformers
def test_hvp_of_selected_gpt_parameters_matches_the_explicit_hessian():
    model, data = _gpt(), _data()
    obj = Objective(model, TokenLoss("causal"), data, params=SELECTED)
    assert obj.n == WIDTH * WIDTH + WIDTH + 2 * WIDTH
    full = {n: p.detach() for n, p in model.named_parameters()}

    def f(w: Tensor) -> Tensor:
        return _token_mean(model, {**full, **obj.unflatten(w)}, data)

    h = torch.autograd.functional.hessian(f, obj.parameters_vector())
    v = torch.randn(obj.n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for mode in ("forward-over-reverse", "reuse-graph"):
        o = Objective(model, TokenLoss("causal"), data, params=SELECTED, hvp_mode=mode)
        torch.testing.assert_close(o.hvp(v), h @ v, rtol=1e-9, atol=1e-11)
    own = Objective(model, None, data, params=SELECTED)  # the model's own loss: float32 inside transformers
    torch.testing.assert_close(own.hvp(v), h @ v, rtol=1e-4, atol=1e-6)


@needs_transformers
@pytest.mark.slow
def test_top_eigenvalue_of_a_tiny_gpt_matches_eigvalsh_of_its_explicit_hessian():
    model, data = _gpt(), _data()
    obj = Objective(model, TokenLoss("causal"), data)
    h = torch.autograd.functional.hessian(lambda w: _token_mean(model, obj.unflatten(w), data),
                                          obj.parameters_vector())
    exact = torch.linalg.eigvalsh((h + h.T) / 2)
    res = ss.hessian.eigenvalues(model, TokenLoss("causal"), data, k=1, tol=1e-8)
    assert res.eigenvalues[0] == pytest.approx(float(exact[-1]), rel=1e-6)


@needs_transformers
def test_top_eigenvalue_of_a_gpt_block_matches_eigvalsh():
    model, data = _gpt(), _data()
    obj = Objective(model, TokenLoss("causal"), data, params=SELECTED)
    full = {n: p.detach() for n, p in model.named_parameters()}
    h = torch.autograd.functional.hessian(lambda w: _token_mean(model, {**full, **obj.unflatten(w)}, data),
                                          obj.parameters_vector())
    exact = torch.linalg.eigvalsh((h + h.T) / 2)
    res = ss.hessian.eigenvalues(model, TokenLoss("causal"), data, k=2, params=SELECTED, tol=1e-8)
    torch.testing.assert_close(torch.tensor(res.eigenvalues, dtype=torch.float64), exact.flip(0)[:2], rtol=1e-6,
                               atol=1e-9)


@needs_transformers
def test_bert_classifier_own_loss_is_weighted_by_examples():
    spec = make_model_spec("bert", [T], 3, n_layer=1, n_embd=WIDTH, vocab_size=VOCAB)
    torch.manual_seed(0)
    model = build_model(spec).double()
    assert type(model).__name__ == "BertForSequenceClassification"
    data = _data(classes=3)
    obj = Objective(model, None, data)
    assert obj.total_weight == 4  # examples, not tokens
    with torch.no_grad():
        model.eval()
        logits = torch.cat([model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits for b in data])
    labels = torch.cat([b["labels"] for b in data])
    assert obj.loss() == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-6)


@needs_transformers
def test_a_lora_gpt_is_analysed_over_its_trainable_parameters_with_its_own_loss():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_gpt(), peft.LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    data = _data()
    obj = Objective(model, None, data)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert obj.n == trainable == 2 * (WIDTH + 3 * WIDTH)  # A (r x in) and B (out x r) of one layer
    assert obj.loss_fn.shift  # the peft wrapper's base model is a causal LM
    base = model.get_base_model()
    assert obj.loss() == pytest.approx(float(_token_mean(base, dict(base.named_parameters()), data).detach()),
                                       rel=1e-6)


@needs_transformers
def test_every_analysis_runs_on_a_gpt_with_its_own_loss():
    """loss_fn=None (the model's own .loss) through the API entry points, ragged batches joined by padding."""
    model, data = _gpt(), _data()
    ref = Objective(model, TokenLoss("causal"), data)
    top = ss.hessian.eigenvalues(model, None, data, k=1)
    assert top.eigenvalues[0] == pytest.approx(ss.hessian.eigenvalues(ref, k=1).eigenvalues[0], rel=1e-4)
    m = ss.sharpness.m_sharpness(model, None, data, m=4, rho=0.05, steps=2)
    m_ref = ss.sharpness.m_sharpness(model, TokenLoss("causal"), data, m=4, rho=0.05, steps=2)
    assert m.results[0].mean == pytest.approx(m_ref.results[0].mean, rel=1e-4)
    cos = ss.sharpness.sam_gradient_cosine(model, None, data, rho=0.05)
    assert cos.cosine == pytest.approx(ss.sharpness.sam_gradient_cosine(ref, rho=0.05).cosine, rel=1e-5)


@needs_transformers
def test_a_gpt_over_the_embedded_text_weighs_every_block_by_its_targets():
    from sharpscope.data import BYTE_VOCAB, text_tokens, token_batches

    torch.manual_seed(0)
    model = build_model(make_model_spec("gpt", [16], BYTE_VOCAB, n_layer=1, n_embd=WIDTH))
    batches = token_batches(text_tokens("val"), block_size=16, batch_size=4, n_blocks=6)
    own = Objective(model, None, batches)
    assert own.total_weight == 6 * 15  # a causal LM scores T - 1 next tokens per block
    assert own.loss() == pytest.approx(Objective(model, TokenLoss("causal"), batches).loss(), rel=1e-6)


@needs_transformers
def test_a_gpt_on_sdpa_attention_gets_the_eager_curvature():
    """attention="sdpa": the analyses run F.scaled_dot_product_attention on its math kernel, whose
    every derivative exists, so the products equal the eager implementation's to rounding."""
    eager, sdpa = _gpt(), _gpt(attention="sdpa")
    assert sdpa.config._attn_implementation == "sdpa"
    data = _data()
    v = torch.randn(4464, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for mode in ("forward-over-reverse", "reuse-graph"):
        a = Objective(eager, TokenLoss("causal"), data, hvp_mode=mode)
        b = Objective(sdpa, TokenLoss("causal"), data, hvp_mode=mode)
        assert b.loss() == pytest.approx(a.loss(), rel=1e-12)
        torch.testing.assert_close(b.hvp(v), a.hvp(v), rtol=1e-9, atol=1e-10)
