"""linalg.layout.VectorLayout: a whole layout changes nothing; sharded layouts give Lanczos the
same answer on each shard as one process on the whole vector (two threads stand in for two
ranks here, summing through a barrier; tests/test_sharded.py runs real gloo ranks)."""

from __future__ import annotations

import threading

import pytest
import torch

from sharpscope.errors import ConfigError
from sharpscope.linalg import SymmetricOperator, hutchinson, hutchpp, lanczos, slq
from sharpscope.linalg import layout as layout_mod
from sharpscope.linalg.basis import random_unit
from sharpscope.linalg.layout import VectorLayout


def test_a_whole_layout_draws_and_sums_as_before():
    lay = VectorLayout.whole(7)
    assert lay.local_n == 7 and not lay.sharded
    a = lay.random_unit(torch.Generator().manual_seed(3), torch.device("cpu"))
    b = random_unit(torch.Generator().manual_seed(3), 7, torch.device("cpu"))
    assert torch.equal(a, b)
    w = torch.randn(7, dtype=torch.float64)
    assert lay.norm(w) == float(torch.linalg.vector_norm(w)) and lay.sum(w) is w


@pytest.mark.parametrize("pieces", [[(0, 2), (1, 3)], [(3, 2)], [(0, 9)], [(-1, 2)]])
def test_pieces_must_be_ascending_disjoint_ranges(pieces):
    with pytest.raises(ConfigError, match="pieces"):
        VectorLayout(8, pieces)


def _assemble(n: int, shards: list[tuple[list[tuple[int, int]], torch.Tensor]]) -> torch.Tensor:
    """The whole vector from (pieces, local entries) of every shard."""
    full = torch.full((n,), float("nan"), dtype=torch.float64)
    for pieces, local in shards:
        offset = 0
        for a, b in pieces:
            full[a:b] = local[offset:offset + b - a]
            offset += b - a
    return full


@pytest.mark.parametrize("rademacher", [False, True])
@pytest.mark.parametrize("chunk", [1000, 7])  # one chunk: the whole layout's vector; several: drawn by chunks
def test_the_shards_of_a_random_vector_make_one_unit_vector(monkeypatch, chunk, rademacher):
    monkeypatch.setattr(layout_mod, "RANDOM_CHUNK", chunk)
    n = 40

    def draw(partition: list[list[tuple[int, int]]]) -> torch.Tensor:
        return _assemble(n, [(p, VectorLayout(n, p, reduce=lambda t: t).random_unit(
            torch.Generator().manual_seed(1), torch.device("cpu"), rademacher=rademacher)) for p in partition])

    a = draw([[(0, 3), (5, 28)], [(3, 5), (28, 40)]])
    b = draw([[(0, 20)], [(20, 40)], [(40, 40)]])  # another partition, an empty shard
    assert torch.equal(a, b) and abs(float(a.norm()) - 1.0) < 1e-15
    whole = random_unit(torch.Generator().manual_seed(1), n, torch.device("cpu"), rademacher=rademacher)
    if chunk >= n:
        assert torch.equal(a, whole)


def _threaded_lanczos(A: torch.Tensor, pieces: list[list[tuple[int, int]]], algorithm=lanczos, **kw) -> list:
    """``algorithm`` (Lanczos) on each shard in its own thread, inner products summed over the threads."""
    world, n = len(pieces), A.shape[0]
    barrier = threading.Barrier(world)
    slots: list = [None] * world
    full = torch.zeros(n, dtype=A.dtype)
    results: list = [None] * world

    def run(r: int) -> None:
        def reduce(t: torch.Tensor) -> torch.Tensor:
            slots[r] = t.clone()
            barrier.wait()
            total = sum(slots[1:], slots[0].clone())
            barrier.wait()
            return total

        lay = VectorLayout(n, pieces[r], reduce=reduce)

        def matvec(v: torch.Tensor) -> torch.Tensor:  # gather the shards, multiply, keep this shard's rows
            offset = 0
            for a, b in pieces[r]:
                full[a:b] = v[offset:offset + b - a]
                offset += b - a
            barrier.wait()
            out = lay.take(A @ full)
            barrier.wait()
            return out

        results[r] = algorithm(SymmetricOperator(matvec, n, dtype=A.dtype, layout=lay), **kw)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


@pytest.mark.parametrize("spectrum", [torch.linspace(-3, 10, 40, dtype=torch.float64),
                                      torch.tensor([7.0] * 3 + [2.0] * 37, dtype=torch.float64)])  # restarts
def test_lanczos_on_two_shards_equals_one_process(spectrum):
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    A = Q @ torch.diag(spectrum) @ Q.T
    A = (A + A.T) / 2
    pieces = [[(0, 7), (20, 33)], [(7, 20), (33, 40)]]
    one = lanczos(SymmetricOperator.from_matrix(A), k=3, tol=1e-10, seed=4)
    shards = _threaded_lanczos(A, pieces, k=3, tol=1e-10, seed=4)
    for res in shards:
        assert res.n_iter == one.n_iter
        assert torch.allclose(res.eigenvalues, one.eigenvalues, rtol=1e-12, atol=0)
    vec = torch.stack([_assemble(40, [(p, res.eigenvectors[:, j]) for res, p in zip(shards, pieces)])
                       for j in range(3)], dim=1)  # the Ritz vectors' rows come back on their shards
    if spectrum[0] != spectrum[1]:  # (a repeated eigenvalue's vectors are any basis of its space)
        assert torch.allclose(vec, one.eigenvectors, atol=1e-8)


def test_a_vector_of_the_wrong_local_length_is_refused():
    op = SymmetricOperator(lambda v: v, 10, layout=VectorLayout(10, [(0, 4)], reduce=lambda t: t))
    assert op.local_n == 4
    with pytest.raises(ConfigError, match=r"shape \(4,\)"):
        op.matvec(torch.ones(10, dtype=torch.float64))
    with pytest.raises(ConfigError, match="layout"):
        SymmetricOperator(lambda v: v, 10, layout=VectorLayout(9))


def test_hutchinson_on_two_shards_equals_one_process_and_hutchpp_refuses_shards():
    g = torch.Generator().manual_seed(5)
    B = torch.randn(30, 30, generator=g, dtype=torch.float64)
    A = B + B.T
    pieces = [[(0, 11)], [(11, 30)]]
    one = hutchinson(SymmetricOperator.from_matrix(A), n_matvecs=7, seed=3, block_size=2)
    for res in _threaded_lanczos(A, pieces, algorithm=hutchinson, n_matvecs=7, seed=3, block_size=2):
        assert res.n_matvecs == 7 and abs(res.estimate - one.estimate) <= 1e-12 * float(A.abs().sum())
        assert torch.allclose(res.samples, one.samples, rtol=1e-12, atol=1e-12)
    sharded = SymmetricOperator(lambda v: v, 30, layout=VectorLayout(30, [(0, 11)], reduce=lambda t: t))
    with pytest.raises(ConfigError, match="sharded"):
        hutchpp(sharded, n_matvecs=9)


def test_slq_on_two_shards_equals_one_process():
    g = torch.Generator().manual_seed(6)
    B = torch.randn(30, 30, generator=g, dtype=torch.float64)
    A = B + B.T
    one = slq(SymmetricOperator.from_matrix(A), n_runs=2, n_steps=8, seed=2)
    for nodes, weights, count in _threaded_lanczos(A, [[(0, 4), (20, 30)], [(4, 20)]], algorithm=slq, n_runs=2,
                                                   n_steps=8, seed=2):
        assert count == one[2] == 16
        assert torch.allclose(nodes, one[0], rtol=1e-12, atol=1e-12) and torch.allclose(weights, one[1], atol=1e-12)


def test_sum_of_squares_is_accurate_at_millions_of_entries():
    """float32 vectors of 2^23 + 5 entries: the float64 sum of squares to ~1e-7 (a plain float32
    vector_norm of this size was measured 2e-4 off on CPU, torch 2.13), a tail below a block
    included; a whole layout's norm uses it for anything but float64."""
    from sharpscope.reductions import NORM_BLOCK, sum_of_squares

    g = torch.Generator().manual_seed(0)
    for v in (torch.randn(2**23 + 5, generator=g), torch.full((2**23 + 5,), 0.1), torch.randn(NORM_BLOCK - 3, generator=g)):
        exact = float(v.double().square().sum())
        assert abs(float(sum_of_squares(v)) / exact - 1) < 1e-6
        assert abs(VectorLayout.whole(len(v)).norm(v) / exact**0.5 - 1) < 1e-6
    w = torch.randn(1000, dtype=torch.float64, generator=g)
    assert float(sum_of_squares(w)) == float(w.square().sum())
    b = torch.randn(2**20 + 7, generator=g).bfloat16()  # block norms in float32, not rounded to bfloat16
    assert abs(float(sum_of_squares(b)) / float(b.double().square().sum()) - 1) < 1e-6
