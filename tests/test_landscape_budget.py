"""Surfaces and interpolations within a memory budget (issue 26, item 2; sharpscope.landscape.budget):
what a point holds is measured (LivePeak against a hand count of an MLP's activations), the
chunk of examples is sized from the budget, the values equal an unbudgeted run's at that chunk
bit for bit, a budget too small is refused before the first point (API and CLI, one line, exit
2), and the tensors a budgeted surface holds at once stay within the budget."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharpscope.checks import GIB
from sharpscope.errors import ConfigError, MemoryBudgetError
from sharpscope.landscape import SurfaceResult, auto_range, interpolate, random_direction, surface
from sharpscope.landscape.budget import LivePeak, fitting_chunks, state_bytes
from sharpscope.landscape.surface import CHUNK_CANDIDATES, point_chunks, point_plan

from _runs import tiny_run

D, H, C, N = 20, 64, 5, 300


def mlp(seed: int = 0, hidden: int = H, d: int = D) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, C))


def batches(n: int = N, d: int = D, size: int = 100) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, d, generator=g), torch.randint(0, C, (n,), generator=g)
    return [(x[i:i + size], y[i:i + size]) for i in range(0, n, size)]


def test_live_peak_counts_the_tensors_a_forward_holds_at_once():
    """Linear -> ReLU -> Linear on s examples holds at most the first layer's output and the
    ReLU's (2 s H float32) at once; what stays alive afterwards (the output) is still counted
    until it is freed, the input never."""
    model, x = mlp(), torch.randn(32, D)
    with torch.inference_mode(), LivePeak() as m:
        out = model(x)
    assert m.peak == 2 * 32 * H * 4 and m.live == out.numel() * 4
    del out
    assert m.live == 0


def test_plan_measures_a_point_of_an_mlp():
    """The plan's state: the parameters' copy plus two temporaries of the largest tensor; its
    activations: 2 H float32 per example (the hand count above) plus a few scalars."""
    model = mlp()
    plan = point_plan(model, F.cross_entropy, batches(), 1.0)
    n_bytes = sum(p.numel() for p in model.parameters()) * 4
    assert plan.state == state_bytes(model) == n_bytes + 2 * D * H * 4
    assert plan.per_example == 2 * H * 4 and 0 <= plan.fixed <= 256
    assert plan.n_examples == N and plan.splittable and plan.budget == GIB


def _budget_for(plan, examples: float) -> float:
    """memory_gb holding one point's state and ``examples`` examples' activations."""
    return (plan.state + plan.fixed + plan.per_example * examples) / GIB


def test_the_chunk_for_a_budget():
    """Every candidate that fits (the timing picks among them), else the largest chunk that
    fits, else a refusal that says what it would need; a chunk asked for is kept if it fits."""
    model, data = mlp(), batches()
    plan = point_plan(model, F.cross_entropy, data, 1.0)
    assert point_chunks(model, F.cross_entropy, data, 1.0) == [64, 256, N]
    assert point_chunks(model, F.cross_entropy, data, _budget_for(plan, 300)) == [64, 256, N]
    assert point_chunks(model, F.cross_entropy, data, _budget_for(plan, 255.9)) == [64]
    assert point_chunks(model, F.cross_entropy, data, _budget_for(plan, 50.5)) == [50]
    assert point_chunks(model, F.cross_entropy, data, _budget_for(plan, 100), chunk_size=100) == [100]
    with pytest.raises(MemoryBudgetError, match="chunks of at most 100 examples fit"):
        point_chunks(model, F.cross_entropy, data, _budget_for(plan, 100), chunk_size=256)
    with pytest.raises(MemoryBudgetError, match=r"needs at least .*more than the memory budget"):
        point_chunks(model, F.cross_entropy, data, _budget_for(plan, 0.5))
    assert fitting_chunks(plan, CHUNK_CANDIDATES, None) == [64, 256, N]


@pytest.mark.parametrize("examples, chunk", [(50.5, 50), (100, 64), (1.2, 1)])
def test_budgeted_surface_equals_the_unbudgeted_one_at_its_chunk(examples, chunk):
    """The budget only picks the chunk: a 2-D surface and an interpolation within it equal,
    bit for bit, the unbudgeted ones with that chunk (the chunk itself moves the loss by rounding)."""
    model, data = mlp(), batches()
    memory = _budget_for(point_plan(model, F.cross_entropy, data, 1.0), examples)
    dirs = [random_direction(model, seed=s) for s in (1, 2)]
    xs = np.linspace(-1, 1, 3)
    got = surface(model, F.cross_entropy, data, dirs, xs, xs, memory_gb=memory)
    ref = surface(model, F.cross_entropy, data, dirs, xs, xs, chunk_size=chunk)
    assert np.array_equal(got.loss, ref.loss) and np.array_equal(got.accuracy, ref.accuracy, equal_nan=True)
    other = mlp(seed=3)
    got = interpolate(model, other, F.cross_entropy, data, xs, memory_gb=memory)
    ref = interpolate(model, other, F.cross_entropy, data, xs, chunk_size=chunk)
    assert np.array_equal(got.loss, ref.loss)


def test_a_budget_too_small_is_refused_before_the_first_point():
    model, data, seen = mlp(), batches(), []
    dirs = [random_direction(model, seed=1)]
    with pytest.raises(MemoryBudgetError, match=r"a grid point over 1,669 parameters needs at least .* \(its "
                                                r"parameters and buffers as they are shifted, .*more than the memory budget"):
        surface(model, F.cross_entropy, data, dirs, [0.0, 1.0], memory_gb=1e-6, on_point=lambda *p: seen.append(p))
    with pytest.raises(MemoryBudgetError, match="needs at least"):
        interpolate(model, mlp(seed=3), F.cross_entropy, data, [0.0, 1.0], memory_gb=1e-6,
                    on_point=lambda *p: seen.append(p))
    assert seen == []
    for bad in (-1.0, 0.0, float("nan")):
        with pytest.raises(ConfigError, match="memory_gb"):
            surface(model, F.cross_entropy, data, dirs, [0.0], memory_gb=bad)


def test_batches_that_cannot_be_resplit_are_measured_whole():
    """Ragged batches (different feature sizes cannot be joined: here a model that pools)
    keep their batching; the largest one's activations are what a point needs."""
    class Pool(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(1, C)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x.mean(1, keepdim=True))

    torch.manual_seed(0)
    model = Pool()
    data = [(torch.randn(10, 7), torch.randint(0, C, (10,))), (torch.randn(40, 3), torch.randint(0, C, (40,)))]
    plan = point_plan(model, F.cross_entropy, data, 1.0)
    assert not plan.splittable and plan.per_example == 0 and plan.fixed > 0
    assert point_chunks(model, F.cross_entropy, data, 1.0) == [None]
    with pytest.raises(MemoryBudgetError, match="the activations of its largest batch"):
        point_chunks(model, F.cross_entropy, data, (plan.state + plan.fixed - 1) / GIB)


def test_what_a_budgeted_surface_holds_stays_within_the_budget():
    """A wider MLP (1.1 MB of parameters) on 256 examples, a 2-D surface under a budget of one
    point's state and 40 examples' activations: every tensor the surface creates, counted while
    alive (LivePeak, not RSS), stays within the budget plus the data's joined copy (outside the
    budget, as the model is); the plan is not loose either (the peak comes within 20 % of it)."""
    model, data = mlp(hidden=1024, d=256), batches(n=256, d=256, size=128)
    plan = point_plan(model, F.cross_entropy, data, 1.0)
    memory = _budget_for(plan, 40)
    dirs = [random_direction(model, seed=s) for s in (1, 2)]
    xs = [-0.5, 0.0, 0.5]
    with LivePeak() as m:
        res = surface(model, F.cross_entropy, data, dirs, xs, xs, memory_gb=memory)
    data_bytes = 256 * 256 * 4 + 256 * 8
    assert np.isfinite(res.loss).all()
    assert 0.8 * memory * GIB <= m.peak <= memory * GIB + data_bytes


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget_cli")
    return tiny_run(root / "run")


def test_cli_memory(run_dir, tmp_path, cli):
    """--memory GB on surface and interpolate: too small -> one line, exit 2, saying what a point
    needs; ample -> the same numbers as without (the chunk is the same here: 32 examples)."""
    fast = ["--samples", "32", "--no-progress"]
    surf = ["surface", str(run_dir), "--dim", "1", "--grid", "-1:1:3", *fast]
    inter = ["interpolate", str(run_dir), str(run_dir), "--grid", "0:1:3", *fast]
    for args in (surf, inter):
        code, _, err = cli([*args, "--out", str(tmp_path / "refused"), "--memory", "1e-9"])
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert "needs at least" in err and "memory budget" in err and "Traceback" not in err
        code, _, err = cli([*args, "--out", str(tmp_path / "bad"), "--memory", "-1"])
        assert code == 2 and "--memory" in err
    losses = []
    for extra in ([], ["--memory", "0.5"]):
        folder = tmp_path / f"s{len(extra)}"
        code, _, err = cli([*surf, "--out", str(folder), *extra])
        assert code == 0, err
        losses.append(SurfaceResult.load(folder / "surface_1d.npz").loss)
    assert np.array_equal(losses[0], losses[1])


def test_auto_range_within_a_budget():
    """--range auto's evaluations use the largest chunk (at most 1,024) that fits: the same
    extents as without a budget at that chunk; a budget that holds no point is refused."""
    model, data = mlp(), batches()
    memory = _budget_for(point_plan(model, F.cross_entropy, data, 1.0), 50.5)
    dirs = [random_direction(model, seed=1)]
    got = auto_range(model, F.cross_entropy, data, dirs, 1.5, memory_gb=memory)
    ref = auto_range(model, F.cross_entropy, data, dirs, 1.5, chunk_size=50)
    assert got.extents == ref.extents and got.centre_loss == ref.centre_loss
    with pytest.raises(MemoryBudgetError, match="needs at least"):
        auto_range(model, F.cross_entropy, data, dirs, 1.5, memory_gb=1e-6)
