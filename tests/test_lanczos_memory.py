"""Lanczos and SLQ within a memory budget (issue 26, item 2): a basis stored in float32 or
bfloat16, thick restarts, Ritz vectors only when asked for, refusals before any product.

Known spectra: ``diag(lam)`` (sparse eigenvectors: the bfloat16 rounding of a Ritz vector is
nearly parallel to it) and ``C^T diag(lam) C`` with ``C`` the orthonormal DCT-II (dense
eigenvectors: the rounding is spread over every coordinate), n = 2,000, in float64.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn as nn
import torch.nn.functional as F

import sharpscope.hessian as sh
from sharpscope.errors import ConfigError, MemoryBudgetError, UnconvergedWarning
from sharpscope.linalg import SymmetricOperator
from sharpscope.linalg.budget import plan_basis
from sharpscope.linalg.density import slq
from sharpscope.linalg.lanczos import lanczos

N = 2000
LAM = torch.cat([torch.tensor([10.0, 9.0, 8.5, 8.0, 7.6]), torch.linspace(-1.0, 5.0, N - 5, dtype=torch.float64)])
TOP = torch.sort(LAM, descending=True).values[:5]


def diagonal() -> tuple[SymmetricOperator, torch.Tensor]:
    return SymmetricOperator.from_matrix(torch.diag(LAM)), torch.diag(LAM)


def dct() -> tuple[SymmetricOperator, torch.Tensor]:
    """``C^T diag(lam) C`` by two fast transforms; the dense matrix for the true residuals."""
    lam = LAM.numpy()

    def mv(v: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(scipy.fft.idct(lam * scipy.fft.dct(v.numpy(), norm="ortho"), norm="ortho"))

    C = torch.from_numpy(scipy.fft.dct(np.eye(N), norm="ortho", axis=0))
    return SymmetricOperator(mv, N, dtype=torch.float64), C.T @ torch.diag(LAM) @ C


GAP = 0.4  # the smallest gap around the top 5 (8 - 7.6)


def budget(columns: int, dtype: str) -> float:
    """Bytes that hold ``columns`` basis vectors of ``dtype`` for a float64 operator of size N
    (:func:`~sharpscope.linalg.budget.plan_basis`: float64 keeps 4 working vectors; a coarser
    basis 2 float64 ones, 3 chunks of rows that are, at this n, the whole basis and one more
    column in float64, and one column of its own dtype)."""
    if dtype == "float64":
        return 4 * N * 8 + columns * N * 8 + 100
    size = 4 if dtype == "float32" else 2
    return 2 * N * 8 + 3 * N * (columns + 1) * 8 + N * size + columns * N * size + 100


def check_ritz_pairs(res, A, floor: float) -> None:
    """Every reported residual bounds the true one (up to 1.5x: the rounding terms are summed as
    uncorrelated), and every eigenvalue is within Kato-Temple's residual^2 / gap of the truth
    (Parlett, Thm 11.7.1), plus ``floor`` (relative) for the Rayleigh quotient's own rounding."""
    x = res.eigenvectors
    true = (A @ x - x * res.eigenvalues).norm(dim=0)
    assert bool((true <= 1.5 * res.residuals + 1e-12).all()), (true, res.residuals)
    err = (res.eigenvalues - TOP).abs()
    assert bool((err <= true**2 / GAP + floor * TOP).all()), (err, true)


@pytest.mark.parametrize("make", [diagonal, dct])
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-6), ("float16", 1e-4), ("bfloat16", 1e-2)])
def test_coarse_bases_converge_on_known_spectra(make, dtype, tol):
    """float32 storage (unit roundoff u = 6e-8) reaches tol 1e-6; bfloat16 (u = 3.9e-3) certifies
    residuals only near u ||A||, so tol 1e-2; float16 (u = 4.9e-4, scaled into its range) 1e-4
    (measured with every step stored: float16 certifies 1e-4 and not 1e-5, bfloat16 1e-3 and not 1e-4).
    The eigenvalues are Rayleigh quotients of the
    stored basis (Gram-matrix Rayleigh-Ritz); measured with every step stored, float32 gives the
    float64 values to 4e-13 and bfloat16 to 3e-7 relative (/work/notes/h34-readme.md)."""
    op, A = make()
    res = lanczos(op, k=5, tol=tol, basis_dtype=dtype)
    assert res.all_converged
    check_ritz_pairs(res, A, {"float32": 1e-12, "float16": 1e-6, "bfloat16": 1e-5}[dtype])


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_thick_restart_within_a_small_basis(dtype):
    """A budget of about 16 basis vectors: Lanczos restarts (more products than columns) and
    still converges to the known top 5; float64 / float32 as accurately as a full basis."""
    op, A = dct()
    tol = {"float16": 1e-3, "bfloat16": 1e-2}.get(dtype, 1e-6)
    memory = budget(16, dtype) + 5 * N * 8  # and the 5 Ritz vectors
    plan = plan_basis(N, 300, memory, torch.float64, k=5, dtype=getattr(torch, dtype), vectors=True)
    assert plan.restart and plan.capacity == 16 and plan.bytes <= memory
    res = lanczos(op, k=5, tol=tol, memory_bytes=memory, basis_dtype=dtype)
    assert res.all_converged and res.n_matvecs > 16
    check_ritz_pairs(res, A, {"float16": 1e-6, "bfloat16": 1e-5}.get(dtype, 1e-12))


def test_thick_restart_warns_when_capped():
    op, _ = dct()
    with pytest.warns(UnconvergedWarning, match="thick-restart"):
        res = lanczos(op, k=5, tol=1e-10, max_iter=40, memory_bytes=budget(12, "float32") + 5 * N * 8,
                      basis_dtype="float32")
    assert not res.all_converged and res.n_matvecs == 40


def test_ritz_vectors_only_when_asked():
    op, _ = diagonal()
    with_vectors = lanczos(op, k=3, tol=1e-8)
    without = lanczos(op, k=3, tol=1e-8, vectors=False)
    assert without.eigenvectors is None and with_vectors.eigenvectors.shape == (N, 3)
    assert torch.equal(without.eigenvalues, with_vectors.eigenvalues)


def test_plan_prefers_the_finest_dtype_that_holds_every_step():
    """n = 1e6 float32 parameters, 100 steps: float64 every step needs 836 MB (4 working vectors
    + the basis); float32 415 MB (2 working vectors, 3 chunks of about 1 MiB, a column, the
    basis); float16 213 MB; thick restarts: 20 float32 columns 95 MB, 7 of them 44 MB, 7
    float16 28 MB. bfloat16, the same size as float16 but 8x coarser, only when asked for."""
    f64, f32, b16 = torch.float64, torch.float32, torch.float16
    n, steps = 1_000_000, 100
    expected = [(1e9, f64, 100), (5e8, f32, 100), (2e8, f32, 46), (0.8e8, f32, 16), (0.4e8, b16, 13)]
    for memory, dtype, columns in expected:
        p = plan_basis(n, steps, memory, f32, k=5)
        assert (p.dtype, p.capacity, p.restart) == (dtype, columns, columns < steps) and p.bytes <= memory
    assert plan_basis(n, steps, 3e8, f32).dtype == b16  # SLQ: every step, here in float16
    assert plan_basis(n, steps, 0.4e8, f32, k=5, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(MemoryBudgetError, match=r"needs at least 26\.3 MiB \(a basis of 7 float16"):
        plan_basis(n, steps, 0.25e8, f32, k=5)
    with pytest.raises(MemoryBudgetError, match="SLQ run"):
        plan_basis(n, steps, 2e8, f32, what="an SLQ run")


def test_a_budget_too_small_is_refused_before_any_product():
    op, _ = diagonal()
    with pytest.raises(MemoryBudgetError, match=r"needs at least [\d.]+ KiB \(a basis of 7 float16"):
        lanczos(op, k=5, memory_bytes=10_000)
    with pytest.raises(MemoryBudgetError):
        slq(op, n_runs=2, n_steps=50, memory_bytes=10_000)
    assert op.n_matvecs == 0
    assert issubclass(MemoryBudgetError, ConfigError)  # the CLI's exit 2
    with pytest.raises(ConfigError, match="basis dtype"):
        lanczos(op, k=1, basis_dtype="int8")


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_slq_with_a_coarse_basis(dtype):
    """SLQ's nodes from a float32 / float16 / bfloat16 basis against float64's: the quadrature
    moments (what a density is made of) agree to about the storage's rounding."""
    op, _ = dct()
    ref_nodes, ref_weights, _ = slq(op, n_runs=2, n_steps=30, seed=1)
    nodes, weights, used = slq(op, n_runs=2, n_steps=30, seed=1, basis_dtype=dtype)
    assert used == 60
    for p in (1, 2, 3):
        ref = (ref_nodes**p * ref_weights).sum(dim=1)
        got = (nodes**p * weights).sum(dim=1)
        assert float(((got - ref).abs() / ref.abs()).max()) <= {"float32": 1e-6, "float16": 3e-3, "bfloat16": 2e-2}[dtype]


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 40), nn.Tanh(), nn.Linear(40, 5))
    x, y = torch.randn(200, 20), torch.randint(0, 5, (200,))
    return model, [(x[:100], y[:100]), (x[100:], y[100:])]


def test_hessian_eigenvalues_within_a_budget(mlp):
    """A float32 MLP (1,045 parameters) within 270 kB: thick restarts in float32 give the top 5
    of the default float64 run to 1e-6 (tol 1e-6: residual^2 / gap far below)."""
    model, data = mlp
    ref = sh.eigenvalues(model, F.cross_entropy, data, k=5, tol=1e-6)
    got = sh.eigenvalues(model, F.cross_entropy, data, k=5, tol=1e-6, memory_gb=270e3 / 2**30)
    assert all(got.converged) and got.n_hvp > ref.n_hvp
    assert max(abs(a - b) / abs(b) for a, b in zip(got.eigenvalues, ref.eigenvalues)) <= 1e-6


def test_hessian_refusals_name_what_they_need(mlp):
    model, data = mlp
    with pytest.raises(MemoryBudgetError, match="Lanczos over 1,045 parameters needs at least"):
        sh.eigenvalues(model, F.cross_entropy, data, k=5, memory_gb=1e-6)
    with pytest.raises(MemoryBudgetError, match="trace estimate with 99"):
        sh.trace(model, F.cross_entropy, data, memory_gb=1e-5)
    with pytest.raises(MemoryBudgetError, match="SLQ run of 80 steps"):
        sh.density(model, F.cross_entropy, data, memory_gb=1e-5)
    with pytest.raises(ConfigError, match="memory_gb"):
        sh.eigenvalues(model, F.cross_entropy, data, memory_gb=-1)


def test_hessian_density_and_trace_within_a_budget(mlp):
    model, data = mlp
    ref = sh.density(model, F.cross_entropy, data, n_runs=2, n_steps=30)
    got = sh.density(model, F.cross_entropy, data, n_runs=2, n_steps=30, memory_gb=1e6 / 2**30,
                     basis_dtype="float32")
    assert abs(got.mean - ref.mean) <= 1e-5 * abs(ref.mean)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tr = sh.trace(model, F.cross_entropy, data, n_matvecs=30, memory_gb=0.01)
    assert tr.trace == sh.trace(model, F.cross_entropy, data, n_matvecs=30).trace


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_basis_on_the_cpu_for_an_operator_on_the_gpu(dtype):
    """The basis kept on the CPU (read in chunks of rows) for products on the GPU: the same
    top 5 as a basis on the operator's device, within the dtype's accuracy (tests above)."""
    _, A = dct()
    op = SymmetricOperator.from_matrix(A.cuda())
    tol = 1e-2 if dtype == "bfloat16" else 1e-6
    res = lanczos(op, k=5, tol=tol, basis_dtype=dtype, basis_device="cpu")
    assert res.all_converged and res.eigenvectors.device.type == "cpu"
    check_ritz_pairs(res, A, 1e-5 if dtype == "bfloat16" else 1e-12)
    nodes, weights, _ = slq(op, n_runs=1, n_steps=20, basis_dtype=dtype, basis_device="cpu")
    ref_nodes, ref_weights, _ = slq(SymmetricOperator.from_matrix(A), n_runs=1, n_steps=20)
    assert abs(float((nodes * weights).sum() - (ref_nodes * ref_weights).sum())) <= 1e-2


def test_hessian_basis_dtype_and_device_options(mlp):
    """The API's basis options reach Lanczos and SLQ: a float32 basis kept on the CPU gives the
    default's top 3 to 1e-6 and the density's mean to 1e-6 (float32 storage: tables above)."""
    model, data = mlp
    ref = sh.eigenvalues(model, F.cross_entropy, data, k=3, tol=1e-6)
    got = sh.eigenvalues(model, F.cross_entropy, data, k=3, tol=1e-6, basis_dtype="float32", basis_device="cpu")
    assert max(abs(a - b) / abs(b) for a, b in zip(got.eigenvalues, ref.eigenvalues)) <= 1e-6
    dens = sh.density(model, F.cross_entropy, data, n_runs=1, n_steps=20, basis_dtype="bfloat16", basis_device="cpu")
    dref = sh.density(model, F.cross_entropy, data, n_runs=1, n_steps=20)
    assert abs(dens.mean - dref.mean) <= 1e-2 * abs(dref.mean)
    with pytest.raises(ConfigError, match="basis dtype"):
        sh.density(model, F.cross_entropy, data, basis_dtype="int8")


def test_a_float32_thick_restart_at_millions_of_entries_normalizes_in_float64():
    """n = 3 M, a float32 operator C^T diag(10, 9, 8, bulk in [0, 1]) C (C the orthonormal DCT:
    eigenvectors spread over every entry) and a float32 basis within a budget that restarts:
    the Ritz vectors' norms are float64 sums (sharpscope.reductions), so they come back of
    norm 1 to 1e-6; torch's float32 column norms (vector_norm(dim=0)) err 1.3e-3 at this size."""
    n = 3_000_000
    lam = torch.rand(n, generator=torch.Generator().manual_seed(0)).numpy()
    lam[:3] = [10.0, 9.0, 8.0]

    def mv(v: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(scipy.fft.idct(lam * scipy.fft.dct(v.numpy(), norm="ortho"), norm="ortho"))

    op = SymmetricOperator(mv, n, dtype=torch.float32)
    memory = 4 * n * 4 + 4 * n * 8
    assert plan_basis(n, 300, memory, torch.float32, k=2, dtype=torch.float32, vectors=True).capacity == 6
    res = lanczos(op, k=2, tol=1e-5, memory_bytes=memory, basis_dtype="float32")
    assert res.all_converged and res.n_matvecs > 6  # restarted
    assert torch.allclose(res.eigenvalues.double(), torch.tensor([10.0, 9.0], dtype=torch.float64), rtol=1e-5)
    norms = res.eigenvectors.double().norm(dim=0)
    assert bool(((norms - 1).abs() < 1e-6).all()), norms


def test_float16_storage_is_scaled_into_its_range():
    """A unit vector's entries (about 1 / sqrt(n): 9e-5 at 124 M) sit at the bottom of float16's
    normal range (6.1e-5); stored times 2^floor(log2 sqrt(n)) every entry above 6e-8 keeps
    float16's relative rounding u = 2^-11. Unscaled, an entry of 1e-6 would be a subnormal
    rounded to 6e-8 absolute (6e-2 relative)."""
    from sharpscope.linalg.basis import Basis, storage_scale

    assert storage_scale(torch.float16, 124_439_808) == 2.0**13 and storage_scale(torch.bfloat16, 10**8) == 1.0
    assert storage_scale(torch.float16, 2**40) == 2.0**14  # an entry of 1 still fits (65504)
    n = 2**20
    x = torch.logspace(-7.5, -0.5, n, dtype=torch.float32)
    x[::2] *= -1
    x /= x.norm()
    basis = Basis(n, torch.device("cpu"), 2, dtype=torch.float16, work=torch.float32)
    stored = basis.append(x)
    big = x.abs() >= 6e-8
    assert float(((stored - x).abs() / x.abs())[big].max()) <= 2.0**-11
    assert torch.equal(stored, basis.combine(torch.tensor([[1.0]], dtype=torch.float64), torch.empty(n, 1))[:, 0])


def test_float16_certifies_where_bfloat16_stalls_at_its_rounding():
    """Top 5 of a clustered spectrum (GPT-2 small's measured top 5, 1-3 % apart, above a decaying
    tail and a bulk in [-1, 1]) with 12 basis columns, tol 5e-3: float16 storage converges in
    the products float32 takes (31 here); bfloat16's certified residuals stop at 7.5e-3 of the
    values (its restarts' rounding, about eps(bfloat16) ||A||) and never reach the tolerance.
    (At 2 M entries and tol 1e-2, the same: float16 28 products, bfloat16 none in 300.)"""
    n = 50_000
    g = torch.Generator().manual_seed(0)
    top = torch.tensor([509.5, 499.2, 486.6, 478.5, 463.6], dtype=torch.float64)
    lam = torch.cat([top, torch.logspace(2.65, 0.0, 200, dtype=torch.float64),
                     torch.rand(n - 205, generator=g, dtype=torch.float64) * 2 - 1])
    d = lam[torch.randperm(n, generator=g)].float()
    op = SymmetricOperator(lambda v: d * v, n, dtype=torch.float32)
    runs = {}
    for dtype in ("float32", "float16", "bfloat16"):
        def columns(memory: float, dt: torch.dtype = getattr(torch, dtype)) -> int:
            try:
                return plan_basis(n, 120, memory, torch.float32, k=5, dtype=dt, vectors=True).capacity
            except MemoryBudgetError:
                return 0
        memory = next(m for m in range(10**6, 10**8, 5000) if columns(m) >= 12)
        assert columns(memory) == 12
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnconvergedWarning)
            runs[dtype] = lanczos(op, k=5, tol=5e-3, max_iter=120, memory_bytes=memory, basis_dtype=dtype)
    assert runs["float32"].all_converged and runs["float16"].all_converged
    assert runs["float16"].n_matvecs <= runs["float32"].n_matvecs + 4 < 60
    assert torch.allclose(runs["float16"].eigenvalues, top, rtol=2e-3)
    assert not runs["bfloat16"].all_converged and runs["bfloat16"].n_matvecs == 120
