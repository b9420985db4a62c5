"""Attention kernels (issue 25.6): a model on ``F.scaled_dot_product_attention`` gets exact
curvature. On CPU in torch 2.13 SDPA has two kernels: the math kernel (every derivative) and a
fused flash kernel with a first derivative only (no double backward, no forward-mode AD), so
every derivative sharpscope takes runs on the math kernel whatever kernel the caller picked,
and the analyses say so (``Objective.attention_kernel()``, ``attention_kernel`` in the JSON
of ``hessian`` and ``gradcos``, one line in their output)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

import sharpscope as ss
from _tiny_gpt import AttentionClassifier, TinyGPT, token_batches
from sharpscope.hessian import eigenvalues
from sharpscope.models.attention import MATH_KERNEL_NOTE, attention_calls
from sharpscope.objective import Objective
from sharpscope.sharpness import sam_gradient_cosine


def _data(n: int = 10, batch: int = 4):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (n,), generator=g)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def _func_hessian(model, data):
    """(L, grad, Hessian) of the example-weighted mean loss by torch.func over the flat
    parameters, on the math kernel (the only one with second derivatives)."""
    names = [n for n, _ in model.named_parameters()]
    shapes, sizes = [p.shape for p in model.parameters()], [p.numel() for p in model.parameters()]
    total = sum(int(y.shape[0]) for _, y in data)

    def loss(w):
        p = {n: c.view(s) for n, c, s in zip(names, w.split(sizes), shapes)}
        return sum(F.cross_entropy(functional_call(model, p, (x,)), y) * (y.shape[0] / total) for x, y in data)

    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    with sdpa_kernel([SDPBackend.MATH]):
        return loss(w), torch.func.grad(loss)(w), torch.func.hessian(loss)(w)


def test_the_fused_cpu_kernel_has_no_second_derivative():
    """Why the math kernel: the flash kernel computes the same attention with a first
    derivative, but its double backward and its forward-mode derivative are missing."""
    q = torch.randn(2, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    k, v = torch.randn(2, 2, 5, 4, dtype=torch.float64), torch.randn(2, 2, 5, 4, dtype=torch.float64)
    outs = {}
    for backend in (SDPBackend.MATH, SDPBackend.FLASH_ATTENTION):
        with sdpa_kernel([backend]):
            outs[backend] = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            g = torch.autograd.grad((outs[backend] ** 2).sum(), q, create_graph=True)[0]
            if backend == SDPBackend.MATH:
                torch.autograd.grad(g.sum(), q)
            else:
                with pytest.raises(RuntimeError, match="not implemented"):
                    torch.autograd.grad(g.sum(), q)
    torch.testing.assert_close(outs[SDPBackend.MATH], outs[SDPBackend.FLASH_ATTENTION], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["forward-over-reverse", "reuse-graph"])
def test_curvature_of_an_sdpa_model_is_exact_under_the_callers_fused_kernel(mode):
    """With the caller's SDPA restricted to the fused kernel, the objective's gradient, HVPs
    and top eigenvalues still equal torch.func's on the math kernel (float64 rounding)."""
    model, data = AttentionClassifier().double(), _data()
    loss, g, hess = _func_hessian(model, data)
    torch.testing.assert_close(hess, hess.T, rtol=0, atol=1e-13)  # torch.func is right on this model
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        obj = Objective(model, F.cross_entropy, data, hvp_mode=mode)
        value, grad = obj.value_and_grad()
        v = torch.randn(obj.n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        hv, hv1 = obj.hvp(v), obj.hvp(v[:, 0])
        top = eigenvalues(obj, k=2, tol=1e-10)
        cos = sam_gradient_cosine(obj, rho=0.05)
        assert obj.attention_kernel() == "math"
    assert value == pytest.approx(float(loss), rel=1e-13)
    torch.testing.assert_close(grad, g, rtol=1e-11, atol=1e-14)
    torch.testing.assert_close(hv, hess @ v, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(hv1, hess @ v[:, 0], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(torch.tensor(top.eigenvalues, dtype=torch.float64),
                               torch.linalg.eigvalsh(hess).flip(0)[:2], rtol=1e-8, atol=0)
    assert -1 <= cos.cosine <= 1 and cos.n_hvp == 1


def test_attention_kernel_says_whether_a_model_calls_sdpa():
    from sharpscope.models import build_model

    mlp = build_model({"name": "mlp", "input_shape": [6], "num_classes": 4, "kwargs": {"hidden": [5]}}).double()
    assert Objective(mlp, F.cross_entropy, _data()).attention_kernel() is None
    assert Objective(AttentionClassifier().double(), F.cross_entropy, _data()).attention_kernel() == "math"
    gpt = TinyGPT(width=4)
    assert Objective(gpt, lambda out, y: F.cross_entropy(out.flatten(0, 1), y.flatten()),
                     token_batches()).attention_kernel() == "math"
    # nn.MultiheadAttention reaches SDPA inside F.multi_head_attention_forward
    enc = torch.nn.TransformerEncoderLayer(4, 2, 8, batch_first=True, dropout=0.0)
    params = {n: p.detach().clone().requires_grad_(True) for n, p in enc.named_parameters()}
    assert attention_calls(lambda: functional_call(enc, params, (torch.randn(2, 3, 4),))) == {
        "multi_head_attention_forward": 1}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("attn")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 6)).astype(np.float32)
    y = ((x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0))
    np.savez(root / "d.npz", X=x, y=y)
    data = {"name": "npz", "root": str(root / "d.npz")}
    ss.save_checkpoint(root / "attn.pt", AttentionClassifier(),
                       model_spec={"factory": "_tiny_gpt:attention_classifier", "kwargs": {}}, data_spec=data)
    from sharpscope.models import build_model, make_model_spec
    spec = make_model_spec("mlp", (6,), 4, hidden=[8])
    ss.save_checkpoint(root / "mlp.pt", build_model(spec), model_spec=spec, data_spec=data)
    return root


@pytest.mark.parametrize("verb", ["hessian", "gradcos"])
def test_the_cli_states_the_math_kernel(checkpoints, cli, verb):
    extra = ["--top-k", "1", "--no-progress"] if verb == "hessian" else []
    code, out, err = cli([verb, str(checkpoints / "attn.pt"), "--trust-factory", *extra, "--json", "-"])
    assert code == 0, err
    assert json.loads(out)["attention_kernel"] == "math"
    assert MATH_KERNEL_NOTE in " ".join(err.split())
    code, out, err = cli([verb, str(checkpoints / "mlp.pt"), *extra, "--json", "-"])
    assert code == 0, err
    assert "attention_kernel" not in json.loads(out) and "math kernel" not in err
