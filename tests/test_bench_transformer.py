"""The helpers of ``benchmarks/bench_transformer.py`` (issue 25's goals) against independent answers:
its float64 reference Hessian (products and top eigenpair) against the explicit Hessian of a
tiny GPT (``torch.autograd.functional.hessian``, one reverse-over-reverse column per pass), its
written-out token mean against sharpscope's TokenLoss, the SGD step it times against a step by
hand, the interleaved timer's call counts and the product counter of the peer."""

from __future__ import annotations


import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("scipy")

from sharpscope.models import build_model, make_model_spec  # noqa: E402
from sharpscope.objective import Objective  # noqa: E402
from sharpscope.tokens import TokenLoss  # noqa: E402

from _benchmarks import load_benchmark  # noqa: E402

VOCAB = 8


bt = load_benchmark("bench_transformer")


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(make_model_spec("gpt", [8], VOCAB, n_layer=1, n_embd=4, n_head=2)).eval()


def _data() -> list[dict[str, torch.Tensor]]:
    return [bt.random_tokens(VOCAB, 3, 8, seed=1), bt.random_tokens(VOCAB, 1, 8, seed=2)]  # unequal token counts


def _explicit_hessian(model: torch.nn.Module, data) -> torch.Tensor:
    model = model.double()
    named = dict(model.named_parameters())
    names, sizes = list(named), [p.numel() for p in named.values()]

    def f(w: torch.Tensor) -> torch.Tensor:
        params = {n: c.view_as(named[n]) for n, c in zip(names, w.split(sizes))}
        total, count = 0.0, 0
        for b in data:
            logits = torch.func.functional_call(model, params, (), {"input_ids": b["input_ids"]}).logits
            y = b["labels"][:, 1:]
            total = total + torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), y.reshape(-1),
                                                              reduction="sum")
            count += y.numel()
        return total / count

    w = torch.cat([p.detach().reshape(-1) for p in named.values()])
    return torch.autograd.functional.hessian(f, w)


def test_reference_hessian_products_and_top_eigenpair_match_the_explicit_hessian():
    model, data = _tiny(), _data()
    ref = bt.ReferenceHessian(model, data)
    h = _explicit_hessian(bt.copy.deepcopy(model), data)
    assert ref.n == h.shape[0] == 316
    v = torch.randn(ref.n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(ref.hvp(v), h @ v, rtol=1e-10, atol=1e-12)
    # central differences: O(eps^2) truncation (rounding ~1e-16 / eps is far below), so halving eps quarters it
    coarse, fine = ref.finite_difference_error(v, eps=1e-4), ref.finite_difference_error(v, eps=5e-5)
    assert coarse < 1e-5 and 3.5 < coarse / fine < 4.5
    exact = torch.linalg.eigvalsh((h + h.T) / 2)
    lam, vec, res = ref.top("LA")
    assert lam == pytest.approx(float(exact[-1]), rel=1e-10) and res < 1e-10
    lam_lm, _, _ = ref.top("LM")
    assert abs(lam_lm) == pytest.approx(float(exact.abs().max()), rel=1e-10)
    assert bt.relative_residual(lambda x: h @ x, lam, vec) < 1e-10


def test_the_written_out_token_mean_is_sharpscopes_token_loss():
    model, data = _tiny().double(), _data()
    expected = Objective(model, TokenLoss("causal"), data).loss()
    with torch.no_grad():
        assert float(bt.token_mean_loss(model, data)) == pytest.approx(expected, rel=1e-12)


def test_the_timed_sgd_step_is_a_step_on_the_models_own_loss():
    model, batch = _tiny(), bt.random_tokens(VOCAB, 2, 8, seed=3)
    by_hand = bt.copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bt.ss.sam_step(bt.OwnLoss(model), bt.own_loss_of_output, batch, batch["labels"], opt)
    by_hand(**batch).loss.backward()
    with torch.no_grad():
        for p in by_hand.parameters():
            p -= 0.1 * p.grad
    for p, q in zip(model.parameters(), by_hand.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)


def test_interleaved_medians_warms_up_once_and_times_every_round():
    calls = {"a": 0, "b": 0}

    def bump(k: str) -> None:
        calls[k] += 1

    out = bt.interleaved_medians({"a": lambda: bump("a"), "b": lambda: bump("b")}, rounds=3)
    assert calls == {"a": 4, "b": 4} and set(out) == {"a", "b"}
    assert all(wall >= 0 and cpu >= 0 for wall, cpu in out.values())


def test_the_peers_products_are_counted():
    he = pytest.importorskip("hessian_eigenthings")
    model, data = _tiny(), _data()
    op = bt.CountingOperator(he.HessianOperator(model, data, he.hf_lm_loss()))
    he.lanczos(op, k=1, max_iter=5, seed=0)
    assert op.counter["n"] == 5


def test_the_autograd_floor_of_the_product_is_the_hessian_times_v():
    model, batch = _tiny().double(), bt.random_tokens(VOCAB, 3, 8, seed=1)
    h = _explicit_hessian(bt.copy.deepcopy(model), [batch])
    v = torch.randn(h.shape[0], generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    floor = torch.cat([p.reshape(-1) for p in bt.autograd_product(model, batch, v)()])
    # the model's own loss casts the logits to float32 (transformers' ForCausalLMLoss), so against the
    # float64 Hessian it agrees to float32 rounding only (measured 1.4e-5 relative at worst) ...
    torch.testing.assert_close(floor, h @ v, rtol=1e-4, atol=1e-6)
    # ... and to float64 rounding with sharpscope's product of the same loss (a graph built separately)
    torch.testing.assert_close(floor, Objective(model, None, [batch], hvp_mode="reuse-graph").hvp(v),
                               rtol=1e-10, atol=1e-12)
