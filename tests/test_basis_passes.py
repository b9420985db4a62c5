"""A basis stored in bfloat16 / float32 (issue 26, item 2) at the cost of few passes over it.

At 124 M parameters a pass over a 12-column bfloat16 basis reads 3 GB, so what a Lanczos step
costs beside its product is the number of passes: here a step's Gram-Schmidt reads the basis
twice, three times when the first pass cancelled most of the vector (DGKS: Daniel, Gragg,
Kaufman & Stewart 1976), and the projection ``Q^T q`` of the stored vector (a column of the
Gram matrix) rides on the first pass. The numbers it returns are the float64 projections of
the stored basis. What it leaves is orthogonal to the stored basis ``S`` up to the basis's own
loss of orthogonality ``||I - G||`` (``G = S S^T``: about 1e-4 in bfloat16 at this n, 1e-7 in
float32) times the coefficients it removed, plus the float32 rounding of the subtractions.
"""

from __future__ import annotations

import pytest
import torch

from sharpscope.linalg.basis import DGKS, Basis

N = 5000
U32 = torch.finfo(torch.float32).eps / 2  # float32 unit roundoff


def coarse_basis(columns: int, dtype: torch.dtype = torch.bfloat16) -> tuple[Basis, torch.Tensor]:
    """A basis of ``columns`` orthonormal vectors stored in ``dtype`` (float32 work), and the
    stored vectors in float64 (rows)."""
    gen = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(N, columns, generator=gen, dtype=torch.float64))
    basis = Basis(N, torch.device("cpu"), columns + 2, dtype, torch.float32, fixed=True)
    stored = torch.stack([basis.append(Q[:, j].float()).double() for j in range(columns)])
    return basis, stored


@pytest.fixture
def passes(monkeypatch):
    """Counts the passes over the basis (each reads every chunk of it once)."""
    count = {"n": 0}
    parts = Basis._parts

    def counted(self, *args):
        count["n"] += 1
        return parts(self, *args)

    monkeypatch.setattr(Basis, "_parts", counted)
    return count


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_vector_mostly_outside_the_basis_takes_two_passes(passes, dtype):
    """A random vector keeps ~ sqrt(1 - 10/N) of its norm: one projection is enough (DGKS), so
    two passes, the first also giving ``Q^T x``; the coefficients are the float64 projections
    of the stored basis (chunks summed in float64: 1e-12 relative)."""
    basis, S = coarse_basis(10, dtype)
    gen = torch.Generator().manual_seed(1)
    w, x = torch.randn(N, generator=gen), S[3].float()
    w0 = w.double().clone()
    out, h, g = basis.orthogonalize(w, x)
    assert passes["n"] == 2
    assert torch.allclose(h, S @ w0, rtol=0, atol=1e-12 * float(w0.norm()))
    assert torch.allclose(g, S @ x.double(), rtol=0, atol=1e-12)
    # one pass leaves (I - G) h of the stored basis, and the float32 rounding, ~ size u ||w||
    skew = float(torch.linalg.matrix_norm(S @ S.T - torch.eye(10, dtype=torch.float64), ord=2))
    assert float((S @ out.double()).norm()) <= 2 * skew * float(h.norm()) + 100 * U32 * float(w0.norm())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_vector_mostly_inside_the_basis_takes_a_second_pass(passes, dtype):
    """``w = Q c + 1e-3 r`` (``r`` unit, ``||c|| ~ 3``): the first pass cancels all but ~3e-4 of
    ``||w||`` (far below 1/sqrt(2)),
    so a second pass removes what it left, ``(I - G) h`` and its rounding O(u ||w||) (3e3 u of
    the remainder): three passes, and the remainder ends orthogonal to the stored basis to
    ``||I - G||^2 ||h||`` and O(u) of its norm."""
    basis, S = coarse_basis(10, dtype)
    gen = torch.Generator().manual_seed(2)
    r = torch.randn(N, generator=gen, dtype=torch.float64)
    r /= r.norm()
    w = (S.T @ torch.randn(10, generator=gen, dtype=torch.float64) + 1e-3 * r).float()
    before = float(w.double().norm())
    out, h = basis.orthogonalize(w)  # w is updated in place
    assert passes["n"] == 3
    left = float(out.double().norm())
    assert left < 1e-3 * before < DGKS * before
    # two passes leave (I - G)^2 h and the float32 rounding of the second, ~ size u ||w_1||
    skew = float(torch.linalg.matrix_norm(S @ S.T - torch.eye(10, dtype=torch.float64), ord=2))
    assert float((S @ out.double()).norm()) <= 2 * skew**2 * float(h.norm()) + 100 * U32 * left


def test_the_float64_basis_keeps_its_single_matrix_passes(passes):
    """The default float64 basis is used whole (today's arithmetic): no chunked pass at all."""
    gen = torch.Generator().manual_seed(3)
    basis = Basis(N, torch.device("cpu"), 4)
    for _ in range(3):
        q, _ = basis.orthogonalize(torch.randn(N, generator=gen, dtype=torch.float64))
        basis.append(q / q.norm())
    assert passes["n"] == 0 and torch.allclose(basis.Q.T @ basis.Q, torch.eye(3, dtype=torch.float64), atol=1e-14)


@pytest.mark.parametrize("memory", [None, 1.5e6])
def test_a_lanczos_step_reads_the_basis_at_most_three_times(passes, memory):
    """Lanczos top 3 with a bfloat16 basis on a float32 diag(lam) (4, 3.95, 3.9, the rest in
    [1, 3.5]; 22 products), the basis growing, or within a budget of 10 columns (thick
    restarts): each product costs at most 3 passes over the basis (the first also gives the Gram
    column), each restart 1 more, and the top 3 converge (tol 1e-2: each within its residual,
    at most 1e-2 relative, of an eigenvalue; measured 2e-4)."""
    from sharpscope.linalg import SymmetricOperator
    from sharpscope.linalg.budget import plan_basis
    from sharpscope.linalg.lanczos import lanczos

    lam = torch.linspace(1.0, 3.5, N, dtype=torch.float32)
    lam[-3:] = torch.tensor([3.9, 3.95, 4.0])
    op = SymmetricOperator(lambda v: lam * v, N, dtype=torch.float32)
    rotations = []
    rotate = Basis.rotate
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Basis, "rotate", lambda self, *a: rotations.append(1) or rotate(self, *a))
        res = lanczos(op, k=3, tol=1e-2, basis_dtype="bfloat16", max_iter=60, vectors=False, memory_bytes=memory)
    top = torch.tensor([4.0, 3.95, 3.9], dtype=torch.float64)
    assert res.all_converged and float(((res.eigenvalues - top).abs() / top).max()) <= 1e-2
    if memory is not None:
        plan = plan_basis(N, 60, memory, torch.float32, k=3, dtype=torch.bfloat16)
        assert plan.capacity == 10 and res.n_matvecs > 10 and rotations
    assert passes["n"] <= 3 * res.n_matvecs + len(rotations)
