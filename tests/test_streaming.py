"""Data that does not fit: Objective, surfaces and interpolation stream a loader instead of
keeping its batches, give the cached numbers, and refuse loaders that change between passes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sharpscope import hessian
from sharpscope.batches import BatchLoss, batch_bytes, fingerprint
from sharpscope.errors import ConfigError
from sharpscope.landscape import interpolate, random_direction, surface
from sharpscope.objective import Objective


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _loader(shuffle: bool = False, n: int = 70) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=shuffle, generator=torch.Generator().manual_seed(1))


def test_auto_caches_within_the_budget_and_streams_beyond_it():
    model, loader = _model(), _loader()
    one = batch_bytes(next(iter(loader)))
    assert not Objective(model, F.cross_entropy, loader).streamed  # 70 examples: far below 1 GiB
    assert not Objective(model, F.cross_entropy, loader, cache_bytes=100 * one).streamed
    obj = Objective(model, F.cross_entropy, loader, cache_bytes=2 * one)
    assert obj.streamed and obj.hvp_mode == "forward-over-reverse" and obj.n_examples == 70
    assert Objective(model, F.cross_entropy, loader, cache=False, cache_bytes=10**12).streamed
    assert not Objective(model, F.cross_entropy, loader, cache=True, cache_bytes=0).streamed


def test_streaming_equals_caching():
    """The same batches in the same order through the same float64 arithmetic: the loss,
    gradient, products and Lanczos eigenvalues agree to float64 rounding (1e-12 relative
    leaves room for a different reduction order between the HVP modes)."""
    model, loader = _model(), _loader()
    kept = Objective(model, F.cross_entropy, loader, cache=True, hvp_mode="forward-over-reverse")
    streamed = Objective(model, F.cross_entropy, loader, cache=False)
    v = torch.randn(kept.n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert streamed.loss() == pytest.approx(kept.loss(), rel=1e-14)
    torch.testing.assert_close(streamed.grad(), kept.grad(), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(streamed.hvp(v), kept.hvp(v), rtol=1e-12, atol=1e-14)
    block = torch.randn(kept.n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(streamed.hvp(block), kept.hvp(block), rtol=1e-12, atol=1e-14)
    a = hessian.eigenvalues(kept, k=3, tol=1e-10, seed=0).eigenvalues
    b = hessian.eigenvalues(streamed, k=3, tol=1e-10, seed=0).eigenvalues
    assert b == pytest.approx(a, rel=1e-9)


def test_streamed_surface_and_interpolation_equal_the_cached_ones():
    model, other, loader = _model(0), _model(1), _loader()
    dirs = [random_direction(model, seed=0)]
    grid = [-0.5, 0.0, 0.5]
    cached = surface(model, F.cross_entropy, loader, dirs, grid, cache=True, chunk_size=16)
    streamed = surface(model, F.cross_entropy, loader, dirs, grid, cache=False)
    torch.testing.assert_close(torch.as_tensor(streamed.loss), torch.as_tensor(cached.loss), rtol=1e-13, atol=0)
    assert (streamed.accuracy == cached.accuracy).all()
    a = interpolate(model, other, F.cross_entropy, loader, [0.0, 0.5, 1.0], cache=True, chunk_size=16)
    b = interpolate(model, other, F.cross_entropy, loader, [0.0, 0.5, 1.0], cache=False)
    torch.testing.assert_close(torch.as_tensor(b.loss), torch.as_tensor(a.loss), rtol=1e-13, atol=0)


def test_a_reshuffling_loader_is_refused_when_streamed():
    model = _model()
    obj = Objective(model, F.cross_entropy, _loader(shuffle=True), cache=False)  # the first pass is fine
    with pytest.raises(ConfigError, match="different batch 0 on a later pass"):
        obj.loss()
    # cached, the one pass that was read is used every time: no refusal, no mixing
    kept = Objective(model, F.cross_entropy, _loader(shuffle=True), cache=True)
    assert kept.loss() == kept.loss()


def test_a_loader_that_changes_length_or_a_one_shot_iterator_is_refused():
    model = _model()
    data = [b for b in _loader()]
    obj = Objective(model, F.cross_entropy, data, cache=False)
    data.pop()
    with pytest.raises(ConfigError, match="4 batches on a later pass, 5 on the first"):
        obj.loss()
    with pytest.raises(ConfigError, match="one-shot iterator"):
        Objective(model, F.cross_entropy, iter(_loader()), cache=False)
    assert not Objective(model, F.cross_entropy, iter(_loader())).streamed  # fits: cached, read once
    with pytest.raises(ConfigError, match="reuse-graph"):
        Objective(model, F.cross_entropy, _loader(), cache=False, hvp_mode="reuse-graph")
    for bad in (dict(cache="sometimes"), dict(cache_bytes=-1), dict(cache_bytes=1.5)):
        with pytest.raises(ConfigError):
            Objective(model, F.cross_entropy, _loader(), **bad)


def test_fingerprint_sees_reordered_examples_and_labels():
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.arange(8)
    loss = BatchLoss(_model(), F.cross_entropy)
    b = loss.prepare((x, y), torch.device("cpu"), torch.float64)
    assert fingerprint(b) == fingerprint(loss.prepare((x.clone(), y.clone()), torch.device("cpu"), torch.float64))
    assert fingerprint(b) != fingerprint((x, y.flip(0)))  # same examples, labels moved
    assert fingerprint(b) != fingerprint((x[:7], y[:7]))


def test_hvp_block_size_follows_the_memory_budget():
    """Per column ~ 3 x the activations of the largest batch + 2 x the parameters (float64
    here): the MLP's outputs per example are 8 + 8 + 3 values, the largest batch 16 examples."""
    model, loader = _model(), _loader()
    obj = Objective(model, F.cross_entropy, loader, hvp_mode="forward-over-reverse")
    per_column = 3 * (16 * (8 + 8 + 3 + 3) * 8) + 2 * obj.n * 8  # Sequential's own output counted too
    assert obj.hvp_block_size(budget_bytes=10 * per_column) == 10
    assert obj.hvp_block_size(budget_bytes=1) == 1
    assert Objective(model, F.cross_entropy, loader, hvp_mode="reuse-graph").hvp_block_size() is None
    with pytest.raises(ConfigError):
        obj.hvp_block_size(budget_bytes=0)


def test_trace_is_the_same_whatever_the_block_size(monkeypatch):
    from sharpscope import objective
    columns: list[int] = []
    original = objective.Objective.hvp

    def spy(self, v):
        columns.append(1 if v.dim() == 1 else v.shape[1])
        return original(self, v)

    monkeypatch.setattr(objective.Objective, "hvp", spy)
    model, loader = _model(), _loader()
    whole = hessian.trace(model, F.cross_entropy, loader, n_matvecs=30, seed=1, hvp_mode="forward-over-reverse")
    assert max(columns) == 10  # Hutch++ phases of 10 columns, each in one block under the budget
    columns.clear()
    monkeypatch.setattr(objective.Objective.hvp_block_size, "__defaults__", (1,))  # a budget of 1 byte
    single = hessian.trace(model, F.cross_entropy, loader, n_matvecs=30, seed=1, hvp_mode="forward-over-reverse")
    assert max(columns) == 1 and sum(columns) == 30
    assert single.trace == pytest.approx(whole.trace, rel=1e-10) and single.n_hvp == whole.n_hvp
