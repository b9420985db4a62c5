"""``--model vit`` (issue 25 item 2): a Hugging Face ``ViTForImageClassification`` built from a
config, nothing downloaded, on images (C, H, W) and 1-D signals (L,), through the API, training,
every analysis verb and ``compare``.

The explicit Hessians are ``torch.autograd.functional.hessian`` of the example-mean cross-entropy
written out with ``functional_call`` (reverse over reverse, one column per backward pass), as in
tests/test_transformers.py: independent of sharpscope's forward-over-reverse and reused-graph
products and of its Lanczos.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

import sharpscope as ss
from sharpscope.errors import ModelSpecError
from sharpscope.models import TransformersNotInstalled, build_model, count_parameters, make_model_spec
from sharpscope.models.attention import MATH_KERNEL_NOTE
from sharpscope.objective import Objective, parameter_groups

needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason='needs pip install "sharpscope[transformers]"')

WIDTH, CLASSES = 8, 10
TINY = {"n_layer": 1, "n_embd": WIDTH, "n_head": 2}


def _vit(shape=(1, 8, 8), seed: int = 0, **opts) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(make_model_spec("vit", shape, CLASSES, **{**TINY, **opts})).double()


def _data(shape=(1, 8, 8)) -> list[tuple[Tensor, Tensor]]:
    """Two batches of different sizes (6 and 3 examples): the mean over examples weighs them 2:1."""
    gen = torch.Generator().manual_seed(4)
    return [(torch.randn(n, *shape, generator=gen, dtype=torch.float64), torch.randint(0, CLASSES, (n,), generator=gen))
            for n in (6, 3)]


def _mean_loss(model: nn.Module, state: dict[str, Tensor], data: list[tuple[Tensor, Tensor]]) -> Tensor:
    """The example-mean cross-entropy written out: sum of every example's CE / their number."""
    total = sum(F.cross_entropy(functional_call(model, state, (x,)), y, reduction="sum") for x, y in data)
    return total / sum(len(y) for _, y in data)


def _explicit_hessian(model: nn.Module, obj: Objective, data) -> Tensor:
    """The Hessian of :func:`_mean_loss` over ``obj``'s parameters, the others fixed (SDPA on its math kernel)."""
    full = {n: p.detach() for n, p in model.named_parameters()}
    model.eval()
    with sdpa_kernel([SDPBackend.MATH]):
        return torch.autograd.functional.hessian(lambda w: _mean_loss(model, {**full, **obj.unflatten(w)}, data),
                                                 obj.parameters_vector())


def test_vit_refuses_patches_that_do_not_tile_and_names_the_extra(monkeypatch):
    with pytest.raises(ModelSpecError, match=r"vit: patch_size 3 must divide the image size 8x8"):
        make_model_spec("vit", [1, 8, 8], 10, patch_size=3)
    with pytest.raises(ModelSpecError, match=r"vit: patch_size 3 must divide the signal length 40"):
        make_model_spec("vit", [40], 10, patch_size=3)
    with pytest.raises(ModelSpecError, match="multiple of n_head"):
        make_model_spec("vit", [1, 8, 8], 10, n_embd=10, n_head=4)
    with pytest.raises(ModelSpecError, match="unknown option 'depth'"):
        make_model_spec("vit", [1, 8, 8], 10, depth=4)
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(TransformersNotInstalled, match=r'pip install "sharpscope\[transformers\]"'):
        make_model_spec("vit", [1, 8, 8], 10)


@needs_transformers
def test_vit_needs_neither_torchvision_nor_pil():
    """Built and run with PIL and torchvision unimportable. (Where PIL is installed, ``import
    transformers`` imports it by itself, to ask whether vision is available: nothing of ours.)"""
    code = ("import sys\nsys.modules['PIL'] = sys.modules['torchvision'] = None\nimport torch\n"
            "from sharpscope.models import build_model, make_model_spec\n"
            "m = build_model(make_model_spec('vit', [1, 8, 8], 10, attention='sdpa'))\n"
            "assert m(torch.randn(2, 1, 8, 8)).shape == (2, 10)\n"
            "assert sys.modules['PIL'] is None and sys.modules['torchvision'] is None")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@needs_transformers
def test_vit_is_hugging_faces_classifier_counted_by_hand():
    """Same names, initialization and class scores as ``ViTForImageClassification`` (its ``.logits``),
    on images and on 1-D signals (an image of height 1); seeded; default sizes counted by hand."""
    import transformers

    for shape, x_shape in (((1, 8, 8), (3, 1, 8, 8)), ((3, 32, 32), (2, 3, 32, 32)), ((40,), (3, 1, 1, 40))):
        a, b = _vit(shape), _vit(shape)
        assert type(a).__name__ == "ViTClassifier" and a.config._attn_implementation == "eager"
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
        hf = transformers.ViTForImageClassification(a.config).double()
        hf.load_state_dict(a.state_dict(), strict=True)
        x = torch.randn(*x_shape, dtype=torch.float64)
        hf.eval(), a.eval()
        out = a(x.reshape(x.shape[0], *shape))
        assert out.shape == (x.shape[0], CLASSES)
        torch.testing.assert_close(out, hf(pixel_values=x).logits, rtol=0, atol=0)
    torch.manual_seed(7)
    ours = build_model(make_model_spec("vit", [1, 8, 8], 10))
    torch.manual_seed(7)
    theirs = transformers.ViTForImageClassification(ours.config)  # the same draws from the same seed
    assert all(torch.equal(p, theirs.state_dict()[n]) for n, p in ours.state_dict().items())
    d = 64  # the defaults: patch 4, 2 layers of width 64, MLP 256; digits: 4 patches + [CLS]
    layer = 2 * 2 * d + 4 * (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    embeddings = d + 5 * d + (16 * d + d)  # [CLS], positions, the patch projection (a 4x4 conv)
    assert count_parameters(build_model(make_model_spec("vit", [1, 8, 8], 10))) == \
        embeddings + 2 * layer + 2 * d + (d * 10 + 10) == 102_218


@needs_transformers
def test_vit_groups_by_kind_and_by_block():
    model = _vit(n_layer=2)
    kinds = parameter_groups(model, "kind")
    assert list(kinds) == ["embeddings", "attention", "norm", "mlp", "head"]
    assert kinds["embeddings"] == ["vit.embeddings.cls_token", "vit.embeddings.position_embeddings",
                                   "vit.embeddings.patch_embeddings.projection.weight",
                                   "vit.embeddings.patch_embeddings.projection.bias"]
    assert kinds["head"] == ["classifier.weight", "classifier.bias"]
    assert len(kinds["attention"]) == 2 * 8 and len(kinds["mlp"]) == 2 * 4
    assert kinds["norm"] == [f"vit.layers.{i}.layernorm_{w}.{p}" for i in (0, 1) for w in ("before", "after")
                             for p in ("weight", "bias")] + ["vit.layernorm.weight", "vit.layernorm.bias"]
    blocks = parameter_groups(model, "block")
    assert list(blocks) == ["vit.embeddings", "vit.embeddings.patch_embeddings.projection", "vit.layers.0",
                            "vit.layers.1", "vit.layernorm", "classifier"]
    assert len(blocks["vit.layers.0"]) == 16  # 4 attention projections, 2 norms, 2 MLP layers: weight and bias


BLOCK = "vit.layers.0.*"


@needs_transformers
@pytest.mark.parametrize(("attention", "atol"), [("sdpa", 1e-11), ("eager", 1e-9)])
def test_hvp_and_top_eigenvalues_of_a_vit_block_match_the_explicit_hessian(attention, atol):
    """float64 throughout on SDPA's math kernel: the products agree to rounding. transformers'
    eager ViT attention forms its softmax in float32 even in a float64 model, so there the
    reference is itself asymmetric by 1e-10 (entries up to 2.4) and the products agree to 1e-9."""
    model, data = _vit(attention=attention), _data()
    obj = Objective(model, F.cross_entropy, data, params=BLOCK)
    assert obj.n == 2 * 2 * WIDTH + 4 * (WIDTH * WIDTH + WIDTH) + 2 * (4 * WIDTH * WIDTH) + 4 * WIDTH + WIDTH
    h = _explicit_hessian(model, obj, data)
    assert float((h - h.T).abs().max()) <= atol / 5
    v = torch.randn(obj.n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for mode in ("forward-over-reverse", "reuse-graph"):
        o = Objective(model, F.cross_entropy, data, params=BLOCK, hvp_mode=mode)
        torch.testing.assert_close(o.hvp(v), h @ v, rtol=1e-9, atol=atol)
    exact = torch.linalg.eigvalsh((h + h.T) / 2).flip(0)
    res = ss.hessian.eigenvalues(model, F.cross_entropy, data, k=2, params=BLOCK, tol=1e-8)
    assert all(res.converged)
    torch.testing.assert_close(torch.tensor(res.eigenvalues, dtype=torch.float64), exact[:2], rtol=1e-6, atol=1e-9)


@needs_transformers
@pytest.mark.slow
def test_top_eigenvalue_of_a_whole_tiny_vit_matches_eigvalsh():
    model, data = _vit(attention="sdpa"), _data()
    obj = Objective(model, F.cross_entropy, data)
    exact = torch.linalg.eigvalsh(_explicit_hessian(model, obj, data))
    res = ss.hessian.eigenvalues(model, F.cross_entropy, data, k=1, tol=1e-8)
    assert res.eigenvalues[0] == pytest.approx(float(exact[-1]), rel=1e-6)


@needs_transformers
def test_a_vit_on_sdpa_attention_gets_the_eager_curvature_and_says_so():
    """attention="sdpa" on a 1-D signal: the derivatives run F.scaled_dot_product_attention on its
    math kernel. transformers' eager ViT attention takes its softmax, and so its derivatives, in
    float32 even in a float64 model, so the two agree to float32 rounding only (the float64 products
    on the math kernel are exact: the explicit Hessians above)."""
    shape = (40,)
    eager, sdpa, data = _vit(shape), _vit(shape, attention="sdpa"), _data(shape)
    assert sdpa.config._attn_implementation == "sdpa"
    v = torch.randn(count_parameters(eager), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for mode in ("forward-over-reverse", "reuse-graph"):
        a = Objective(eager, F.cross_entropy, data, hvp_mode=mode)
        b = Objective(sdpa, F.cross_entropy, data, hvp_mode=mode)
        assert b.loss() == pytest.approx(a.loss(), rel=1e-10)
        ha, hb = a.hvp(v), b.hvp(v)
        assert float((hb - ha).norm() / ha.norm()) < 1e-6
    assert b.attention_kernel() == "math" and a.attention_kernel() is None


@needs_transformers
def test_training_a_vit_on_digits_lowers_its_loss(tmp_path):
    from sharpscope.train import TrainConfig, train

    config = TrainConfig(data="digits", model="vit", model_kwargs=dict(TINY, n_embd=32), optimizer="sam",
                         base_optimizer="adamw", lr=3e-3, schedule="constant", epochs=4, n_train=256, batch_size=32,
                         seed=0, augment=False)
    losses = [m["train_loss"] for m in train(config, tmp_path / "run").metrics]
    assert len(losses) == 4 and losses[-1] < 0.9 * losses[0] < 0.9 * math.log(CLASSES), losses
    back = ss.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert type(back.model).__name__ == "ViTClassifier"


def _train(cli, out, data: str, *opts: str, optimizer: str = "adamw") -> None:
    model = [x for k, v in {**TINY, "n_embd": 16}.items() for x in ("--model-opt", f"{k}={v}")]
    code, _, err = cli(["train", "--data", data, "--model", "vit", *model, *opts, "--epochs", "1", "--n-train", "64",
                        "--batch-size", "32", "--optimizer", optimizer, "--lr", "1e-3",
                        "--out", str(out), "--no-progress"])
    assert code in (0, None), err


@needs_transformers
@pytest.mark.slow
def test_every_analysis_verb_runs_on_a_vit_from_the_command_line(cli, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _train(cli, a, "digits")
    _train(cli, b, "digits", "--base-optimizer", "adamw", optimizer="sam")
    code, out, err = cli(["hessian", str(a), "--samples", "32", "--top-k", "1", "--per-layer", "--by", "kind"])
    assert code in (0, None), err
    assert all(kind in out for kind in ("embeddings", "attention", "norm", "mlp", "head"))
    code, out, err = cli(["hessian", str(a), "--samples", "32", "--top-k", "1", "--per-layer", "--by", "block",
                          "--json", str(tmp_path / "blocks.json")])
    assert code in (0, None) and "vit.layers.0" in out, err
    for verb in (["sharpness", str(a)], ["gradcos", str(a)], ["surface", str(a), "--grid", "-1:1:3"],
                 ["interpolate", str(a), str(b), "--grid", "0:1:3"], ["weights", str(a)]):
        code, _, err = cli([*verb, *(["--samples", "64"] if verb[0] != "weights" else [])])
        assert code in (0, None), (verb, err)


@needs_transformers
@pytest.mark.slow
def test_a_vit_on_mnist1d_with_sdpa_states_the_math_kernel(cli, tmp_path):
    _train(cli, tmp_path / "m", "mnist1d", "--model-opt", "attention=sdpa")
    code, out, err = cli(["hessian", str(tmp_path / "m"), "--samples", "32", "--top-k", "1"])
    assert code in (0, None), err
    assert " ".join(MATH_KERNEL_NOTE.split()) in " ".join(out.split())


@needs_transformers
def test_a_vit_on_token_data_is_refused_in_one_line(cli, tmp_path):
    code, _, err = cli(["train", "--data", "text", "--model", "vit", "--epochs", "1", "--block-size", "16",
                        "--n-train", "8", "--out", str(tmp_path / "t"), "--no-progress"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--model gpt" in err, err


@needs_transformers
@pytest.mark.slow
def test_compare_runs_a_vit(cli, tmp_path):
    opts = [x for k, v in TINY.items() for x in ("--model-opt", f"{k}={v}")]
    code, _, err = cli(["compare", "--data", "digits", "--model", "vit", *opts, "--profile", "quick", "--seeds", "2",
                        "--epochs", "1", "--n-train", "64", "--out", str(tmp_path / "c"), "--no-progress"])
    assert code in (0, None), err
    results = json.loads((tmp_path / "c" / "results.json").read_text())
    assert {"sgd", "sam"} <= set(results["optimizers"])
    assert all(0 <= s["final"]["test_acc"] <= 1 for o in results["optimizers"].values() for s in o["seeds"].values())
