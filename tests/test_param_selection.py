"""Parameters chosen by name (issue 25.5): glob selections in every analysis, per-layer
curvature of a transformer grouped by block and by kind (GPT-2, BERT and nn.TransformerEncoder
names), LoRA models analysed over their trainable parameters. Curvature against explicit
Hessians of the selected block.

The explicit Hessians are built row by row with plain double-backward autograd in float64
(``exact_hessian``), not with ``torch.func.hessian``: in torch 2.13 ``torch.func.hessian``
(jacfwd over jacrev) and ``jacrev(jacrev)`` of the tiny GPT's loss over the flattened block
return an asymmetric matrix (rows of the LayerNorm weights off by 4.3e-3 of 5.5e-2), while
the row-by-row Hessian is symmetric to 3e-17 and matches central differences of the gradient
to 1e-12 (measured on ``TinyGPT(width=8)``, block ``transformer.h.1``).
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from _tiny_gpt import TinyGPT, token_batches, token_loss
from sharpscope import ConfigError
from sharpscope.hessian import eigenvalues, layer_summary, trace
from sharpscope.landscape import random_direction
from sharpscope.models.param_names import biasbn_names, block_of, kind_of
from sharpscope.objective import Objective, parameter_groups, select_parameters
from sharpscope.sharpness import m_sharpness, surrogate_gap


def exact_hessian(model: nn.Module, loss_fn, data, names: list[str]) -> torch.Tensor:
    """The Hessian of the example-weighted mean loss over the parameters ``names`` (flattened in
    that order), the others fixed: float64, row by row (module docstring), math SDPA kernel."""
    params = dict(model.named_parameters())
    shapes, sizes = [params[n].shape for n in names], [params[n].numel() for n in names]
    total = sum(int(y.shape[0]) for _, y in data)
    w = torch.cat([params[n].detach().reshape(-1) for n in names]).requires_grad_(True)

    def loss(flat: torch.Tensor) -> torch.Tensor:
        p = {**{n: t.detach() for n, t in params.items()},
             **{n: c.view(s) for n, c, s in zip(names, flat.split(sizes), shapes)}}
        return sum(loss_fn(functional_call(model, p, (x,)), y) * (y.shape[0] / total) for x, y in data)

    model.eval()
    with sdpa_kernel([SDPBackend.MATH]):
        g = torch.autograd.grad(loss(w), w, create_graph=True)[0]
        return torch.stack([torch.autograd.grad(g[i], w, retain_graph=True)[0] for i in range(w.numel())]).detach()


def _gpt() -> nn.Module:
    return TinyGPT(width=4).double()


GPT_BLOCKS = ["transformer.wte", "transformer.wpe", "transformer.h.0", "transformer.h.1", "transformer.ln_f",
              "lm_head"]


def test_groups_by_block_and_kind_on_gpt2_names():
    model = _gpt()
    blocks = parameter_groups(model, "block")
    assert list(blocks) == GPT_BLOCKS
    assert blocks["transformer.h.1"] == [n for n, _ in model.named_parameters() if n.startswith("transformer.h.1.")]
    kinds = parameter_groups(model, "kind")
    assert list(kinds) == ["embeddings", "norm", "attention", "mlp", "head"]
    assert kinds["embeddings"] == ["transformer.wte.weight", "transformer.wpe.weight"]
    assert kinds["head"] == ["lm_head.weight"]
    assert kinds["attention"] == [f"transformer.h.{i}.attn.{m}.{p}" for i in (0, 1) for m in ("c_attn", "c_proj")
                                  for p in ("weight", "bias")]
    assert all(".ln_" in n for n in kinds["norm"]) and len(kinds["norm"]) == 10
    with pytest.raises(ConfigError, match="group by"):
        parameter_groups(model, "row")


def test_groups_of_nn_transformer_encoder_and_the_convnet_fallback():
    enc = nn.Sequential(nn.Embedding(5, 8), nn.TransformerEncoder(
        nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2, enable_nested_tensor=False), nn.Linear(8, 3))
    blocks = parameter_groups(enc, "block")
    assert list(blocks) == ["0", "1.layers.0", "1.layers.1", "2"]
    kinds = {k: len(v) for k, v in parameter_groups(enc, "kind").items()}
    assert kinds == {"embeddings": 1, "attention": 8, "mlp": 8, "norm": 8, "linear": 2}
    # a model without numbered transformer blocks: the outermost non-container module, as before
    from sharpscope.models import build_model
    resnet = build_model({"name": "resnet", "kwargs": {"depth": 8}, "input_shape": [3, 8, 8], "num_classes": 10})
    assert list(parameter_groups(resnet, "block")) == ["stem.0", "stem.1", "stages.0.0", "stages.1.0", "stages.2.0",
                                                      "fc"]
    assert list(parameter_groups(resnet, "kind")) == ["conv", "norm", "head"]  # fc, outside any block: the head


def test_rmsnorm_is_a_normalization_layer_as_layernorm_is():
    """By module type, whatever its name: RMSNorm's weight is a norm parameter (kind, no-biasbn)."""
    model = nn.Sequential(nn.Linear(4, 4), nn.RMSNorm(4), nn.LayerNorm(4), nn.Linear(4, 2))
    assert [kind_of(model, n) for n, _ in model.named_parameters()] == ["linear", "linear", "norm", "norm", "norm",
                                                                       "linear", "linear"]
    assert biasbn_names(model) == {"0.bias", "1.weight", "2.weight", "2.bias", "3.bias"}
    assert select_parameters(model, "no-biasbn") == ["0.weight", "3.weight"]


def test_groups_of_hugging_face_gpt2_bert_and_a_lora_model():
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    transformers.logging.set_verbosity_error()
    gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=8, n_head=2, vocab_size=11,
                                                               n_positions=8))
    assert list(parameter_groups(gpt, "block")) == ["transformer.wte", "transformer.wpe", "transformer.h.0",
                                                   "transformer.h.1", "transformer.ln_f"]  # lm_head is tied to wte
    assert {k: len(v) for k, v in parameter_groups(gpt, "kind").items()} == {"embeddings": 2, "norm": 10,
                                                                            "attention": 8, "mlp": 8}
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(
        num_hidden_layers=2, hidden_size=8, num_attention_heads=2, intermediate_size=16, vocab_size=11,
        max_position_embeddings=8))
    assert "bert.encoder.layer.1" in parameter_groups(bert, "block")
    kinds = parameter_groups(bert, "kind")
    assert kind_of(bert, "bert.encoder.layer.0.output.dense.weight") == "mlp"
    assert kind_of(bert, "bert.encoder.layer.0.attention.output.dense.weight") == "attention"
    assert kind_of(bert, "bert.encoder.layer.0.attention.output.LayerNorm.weight") == "norm"
    assert kinds["head"] == ["bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight",
                             "classifier.bias"]
    lora = peft.get_peft_model(gpt, peft.LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    assert list(parameter_groups(lora, "block")) == ["base_model.model.transformer.h.0",
                                                    "base_model.model.transformer.h.1"]
    assert list(parameter_groups(lora, "kind")) == ["attention"]
    assert block_of("base_model.model.transformer.h.1.attn.c_attn.lora_A.default.weight") == \
        "base_model.model.transformer.h.1"


def test_a_selected_block_against_its_explicit_hessian():
    """HVPs, top eigenvalue and trace over 'transformer.h.1.*' (the block's 172 parameters):
    the block's diagonal Hessian block, exactly (rounding)."""
    model, data = _gpt(), token_batches()
    names = select_parameters(model, "transformer.h.1.*")
    hess = exact_hessian(model, token_loss, data, names)
    spectrum = torch.linalg.eigvalsh(hess)
    for mode in ("forward-over-reverse", "reuse-graph"):
        obj = Objective(model, token_loss, data, params="transformer.h.1.*", hvp_mode=mode)
        assert obj.names == names and obj.n == hess.shape[0] == 172
        v = torch.randn(obj.n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(obj.hvp(v), hess @ v, rtol=1e-10, atol=1e-13)
    top = eigenvalues(model, token_loss, data, k=2, tol=1e-10, params="transformer.h.1.*")
    assert all(top.converged)
    torch.testing.assert_close(torch.tensor(top.eigenvalues, dtype=torch.float64), spectrum.flip(0)[:2],
                               rtol=1e-8, atol=0)
    # more products than parameters: Hutch++'s sketch spans the space, the trace is exact
    est = trace(model, token_loss, data, n_matvecs=hess.shape[0] + 3, params=["transformer.h.1.*"])
    assert est.trace == pytest.approx(float(hess.trace()), rel=1e-8)


def test_layer_summary_by_block_and_by_kind_against_explicit_hessians():
    model, data = _gpt(), token_batches()
    summary = layer_summary(model, token_loss, data, by="block", tol=1e-9, trace_matvecs=400)
    assert [r.name for r in summary.rows] == GPT_BLOCKS
    groups = parameter_groups(model, "block")
    for row in summary.rows:
        hess = exact_hessian(model, token_loss, data, groups[row.name])
        assert row.n_params == hess.shape[0]
        assert row.converged and row.lambda_max == pytest.approx(float(torch.linalg.eigvalsh(hess)[-1]), rel=1e-7)
        assert row.trace == pytest.approx(float(hess.trace()), rel=1e-8, abs=1e-12)  # 400 products > n: exact
    kinds = layer_summary(model, token_loss, data, by="kind", tol=1e-9, trace_matvecs=400,
                          params="transformer.h.*")  # the blocks' own kinds only
    assert [r.name for r in kinds.rows] == ["norm", "attention", "mlp"]
    attention = parameter_groups(model, "kind")["attention"]
    hess = exact_hessian(model, token_loss, data, attention)
    row = kinds.rows[1]
    assert row.n_params == hess.shape[0] == 160
    assert row.lambda_max == pytest.approx(float(torch.linalg.eigvalsh(hess)[-1]), rel=1e-7)
    assert row.trace == pytest.approx(float(hess.trace()), rel=1e-8)


def _lora_gpt():
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=8, n_head=2, vocab_size=11, n_positions=8, attn_pdrop=0.0, resid_pdrop=0.0,
        embd_pdrop=0.0)).double()
    lora = peft.get_peft_model(gpt, peft.LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True,
                                                    lora_dropout=0.0))
    for n, p in lora.named_parameters():  # LoRA's B starts at zero: move it off, for a generic point
        if "lora_B" in n:
            p.data.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    return lora


class _Logits(nn.Module):
    """The LoRA model as tokens -> logits, for the (inputs, targets) convention."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=idx).logits


def test_a_lora_model_is_analysed_over_its_trainable_parameters():
    model = _Logits(_lora_gpt())
    data = token_batches()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    obj = Objective(model, token_loss, data)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert obj.names == trainable and obj.frozen == frozen
    assert obj.n == 128 and obj.n_frozen == sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert obj.attention_kernel() == "math"  # GPT-2 attends through SDPA
    hess = exact_hessian(model, token_loss, data, trainable)
    v = torch.randn(obj.n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(obj.hvp(v), hess @ v, rtol=1e-10, atol=1e-13)
    top = eigenvalues(obj, k=1, tol=1e-10)
    assert top.eigenvalues[0] == pytest.approx(float(torch.linalg.eigvalsh(hess)[-1]), rel=1e-8)
    # the other analyses leave the frozen weights alone too
    d = random_direction(model, seed=0)
    assert all(bool((d[n] == 0).all()) for n in frozen) and any(bool((d[n] != 0).any()) for n in trainable)
    with pytest.raises(ConfigError, match="frozen"):
        Objective(model, token_loss, data, params="*.c_proj.*")
    both = Objective(model, token_loss, data, params="*.h.0.attn.c_attn.*", include_frozen=True)
    assert any("base_layer" in n for n in both.names) and any("lora_A" in n for n in both.names)


def test_sharpness_and_directions_move_only_the_selected_parameters():
    """m-sharpness, the surrogate gap and random directions over 'transformer.h.0.*' equal the
    same computations on a model whose other parameters are frozen (an independent route:
    requires_grad=False takes them out)."""
    data = token_batches(n=8, batch=4)
    model = _gpt()
    frozen = _gpt()
    for n, p in frozen.named_parameters():
        p.requires_grad_(n.startswith("transformer.h.0."))
    a = m_sharpness(model, token_loss, data, m=4, rho=0.05, steps=2, params="transformer.h.0.*")
    b = m_sharpness(frozen, token_loss, data, m=4, rho=0.05, steps=2)
    full = m_sharpness(model, token_loss, data, m=4, rho=0.05, steps=2)
    assert a.results[0].values == pytest.approx(b.results[0].values, rel=1e-12)
    assert a.results[0].mean != pytest.approx(full.results[0].mean, rel=1e-3)
    assert surrogate_gap(model, token_loss, data, params="transformer.h.0.*") == pytest.approx(
        surrogate_gap(frozen, token_loss, data), rel=1e-12)
    d, d_full = random_direction(model, seed=3, params="transformer.h.0.*"), random_direction(model, seed=3)
    for n, t in d.items():
        torch.testing.assert_close(t, d_full[n] if n.startswith("transformer.h.0.") else torch.zeros_like(t),
                                   rtol=0, atol=0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from sharpscope.train import TrainConfig, train

    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(optimizer="sgd", model="mlp", model_kwargs={"hidden": [16]}, n_train=120, epochs=1,
                      batch_size=60, keep_snapshots=False), out)
    return out


HEAD = ["head.weight", "head.bias"]


@pytest.mark.parametrize("verb,extra", [
    ("hessian", ["--top-k", "1"]), ("gradcos", []), ("sharpness", ["--m", "8", "--steps", "1", "--no-gap"]),
    ("sharpness", ["--measure", "average", "--m", "8", "--draws", "2"]),
    ("surface", ["--dim", "1", "--grid", "-1:1:3", "--no-progress"]), ("weights", [])])
def test_every_analysis_verb_takes_params(run, tmp_path, cli, verb, extra):
    """--params 'head.*' (the MLP's last layer: 16 x 10 + 10 = 170 parameters) on each verb:
    recorded in its JSON with the number of parameters analysed; a pattern that matches
    nothing is one line and exit 2."""
    common = ["--samples", "40"] if verb != "weights" else []
    where = ["--out", str(tmp_path)] if verb == "surface" else []
    code, out, err = cli([verb, str(run), *common, *extra, *where, "--params", "head.*", "--json", "-"])
    assert code == 0, err
    report = json.loads(out[out.index("{"):])
    record = report.get("options", report)  # surface records its options
    assert record["params"] == "head.*" and record["n_params"] == 170 and record["n_frozen_params"] == 0
    assert "parameters: 170 (head.*)" in err + out
    where = ["--out", str(tmp_path / "second")] if verb == "surface" else []
    code, out, err = cli([verb, str(run), *common, *extra, *where, "--params", "nothing.*", "--json", "-"])
    assert code == 2 and "matches no trainable parameter" in err and "Traceback" not in err


def test_interpolate_moves_only_the_selected_parameters(run, tmp_path, cli):
    """interpolate from a run to itself perturbed: with --params 'head.*' only the head moves,
    so the loss at alpha = 1 is that of A with B's head (computed by hand)."""
    from sharpscope.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(run)
    raw = torch.load(run / "checkpoint.pt", weights_only=True)
    gen = torch.Generator().manual_seed(0)
    state = {k: v + 0.3 * torch.randn(v.shape, generator=gen) if torch.is_floating_point(v) else v
             for k, v in raw["model_state"].items()}
    b_path = tmp_path / "b.pt"
    model_b = load_checkpoint(run).model
    model_b.load_state_dict(state)
    save_checkpoint(b_path, model_b, model_spec=ckpt.model_spec, data_spec=ckpt.data_spec,
                    config=ckpt.config, environment=ckpt.metadata.get("environment"))
    code, out, err = cli(["interpolate", str(run), str(b_path), "--grid", "0:1:2", "--samples", "40",
                          "--params", "head.*", "--out", str(tmp_path / "i"), "--no-progress", "--json", "-"])
    assert code == 0, err
    report = json.loads(out[out.index("{"):])
    assert report["options"]["params"] == "head.*" and report["options"]["n_params"] == 170
    mixed = load_checkpoint(run).model
    mixed.load_state_dict({**ckpt.model.state_dict(), **{k: state[k] for k in HEAD}})
    from sharpscope.cli._common import load_for_analysis

    _, batches, _ = load_for_analysis(run, "train", 40, 4096, 0, False)
    obj = Objective(mixed, torch.nn.functional.cross_entropy, batches)
    from sharpscope.landscape import SurfaceResult

    loss = SurfaceResult.load(tmp_path / "i" / "interpolation.npz").loss
    assert float(loss[-1]) == pytest.approx(obj.loss(), rel=1e-6) and float(loss[-1]) != pytest.approx(float(loss[0]))


@pytest.mark.parametrize("verb", ["hessian", "gradcos", "weights", "surface"])
def test_frozen_parameters_are_left_out_and_said_so(tmp_path, cli, verb):
    """A checkpoint whose model freezes some parameters (its factory sets requires_grad=False
    on the 8 + 6 x 8 = 56 embedding entries): every verb leaves them out and says so."""
    import numpy as np

    import sharpscope as ss
    from _tiny_gpt import frozen_attention_classifier

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", X=rng.normal(size=(24, 6)).astype(np.float32), y=rng.integers(0, 4, 24))
    ckpt = ss.save_checkpoint(tmp_path / "m.pt", frozen_attention_classifier(width=8),
                              model_spec={"factory": "_tiny_gpt:frozen_attention_classifier", "kwargs": {"width": 8}},
                              data_spec={"name": "npz", "root": str(tmp_path / "d.npz")})
    extra = {"hessian": ["--top-k", "1", "--no-progress"], "gradcos": [], "weights": [],
             "surface": ["--dim", "1", "--grid", "-1:1:3", "--no-progress", "--out", str(tmp_path / "s")]}[verb]
    code, out, err = cli([verb, str(ckpt), "--trust-factory", *extra, "--json", "-"])
    assert code == 0, err
    report = json.loads(out[out.index("{"):])
    record = report.get("options", report)
    n_all = sum(p.numel() for p in frozen_attention_classifier(width=8).parameters())
    assert record["n_frozen_params"] == 56 and record["n_params"] == n_all - 56
    assert "56 frozen (requires_grad=False) left out" in " ".join((err + out).split())


def test_hessian_per_layer_by_kind_on_the_command_line(tmp_path, cli):
    """``hessian --per-layer --by kind`` groups an attention model's parameters by kind, and
    --params keeps the groups to the selection."""
    import numpy as np

    import sharpscope as ss
    from _tiny_gpt import attention_classifier

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", X=rng.normal(size=(24, 6)).astype(np.float32), y=rng.integers(0, 4, 24))
    ckpt = ss.save_checkpoint(tmp_path / "m.pt", attention_classifier(),
                              model_spec={"factory": "_tiny_gpt:attention_classifier", "kwargs": {}},
                              data_spec={"name": "npz", "root": str(tmp_path / "d.npz")})
    base = ["hessian", str(ckpt), "--trust-factory", "--top-k", "0", "--per-layer", "--by", "kind", "--no-progress",
            "--json", "-"]
    code, out, err = cli(base)
    assert code == 0, err
    rows = json.loads(out)["per_layer"]["rows"]
    assert [r["name"] for r in rows] == ["other", "attention", "head"]  # value/pos belong to the root module
    assert [r["n_params"] for r in rows] == [4 + 24, 4 * 12 + 12 + 4 * 4 + 4, 4 * 4 + 4]
    code, out, err = cli([*base, "--params", "attn.*"])
    assert code == 0, err
    assert [r["name"] for r in json.loads(out)["per_layer"]["rows"]] == ["attention"]
