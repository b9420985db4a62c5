"""sharpscope.linalg against explicit symmetric matrices with KNOWN spectra.

Every matrix is ``Q diag(lam) Q^T`` with a seeded random orthogonal ``Q`` (float64), so the
exact eigenvalues are the chosen ``lam``. Accuracy claims rest on two classical bounds for a
symmetric ``A`` and a unit Ritz vector ``x`` with residual ``r = ||A x - theta x||``:

* Weyl / Bauer-Fike: some eigenvalue lies within ``r`` of ``theta``;
* Kato-Temple (Parlett, Thm. 11.7.1): if ``delta`` is the distance from ``theta`` to the rest
  of the spectrum, the nearest eigenvalue lies within ``r^2 / delta``.

With ``tol = 1e-6`` (``r <= 1e-6 |theta|``) and a relative gap ``delta / |theta| >= 1e-2`` the
second bound gives a relative eigenvalue error ``<= 1e-10``; the tests assert ``1e-8`` (and
the Kato-Temple bound itself, plus rounding).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sharpscope.errors import ConfigError, UnconvergedWarning
from sharpscope.linalg import (
    DensityResult,
    EigenResult,
    SymmetricOperator,
    TraceResult,
    hutchinson,
    hutchpp,
    lanczos,
    slq,
    smooth_density,
    spectral_density,
    tridiagonal_eigh,
)

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """These problems are tiny: intra-op threads only add synchronization overhead, which
    explodes on a loaded machine (seconds instead of milliseconds). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def orthogonal(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, R = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    return Q * torch.sign(torch.diagonal(R))


def with_spectrum(lam, seed: int = 0) -> torch.Tensor:
    lam = torch.as_tensor(lam, dtype=F64)
    Q = orthogonal(lam.numel(), seed)
    A = (Q * lam) @ Q.T
    return (A + A.T) / 2


def sorted_by(lam: torch.Tensor, which: str) -> torch.Tensor:
    lam = torch.as_tensor(lam, dtype=F64)
    if which == "LA":
        return torch.sort(lam, descending=True).values
    if which == "SA":
        return torch.sort(lam).values
    return lam[torch.argsort(lam.abs(), descending=True)]


def check_ritz_pairs(A: torch.Tensor, res: EigenResult) -> None:
    """Residual estimates match the true residuals; Ritz vectors are orthonormal unit vectors."""
    X = res.eigenvectors.to(F64)
    true_res = torch.linalg.vector_norm(A @ X - X * res.eigenvalues, dim=0)
    scale = float(A.abs().sum(dim=1).max())  # >= ||A||_2
    assert torch.all((true_res - res.residuals).abs() <= 1e-3 * res.residuals + 1e-12 * scale), (
        true_res,
        res.residuals,
    )
    k = X.shape[1]
    assert torch.allclose(X.T @ X, torch.eye(k, dtype=F64), atol=1e-10)


def kato_temple_ok(theta: torch.Tensor, resid: torch.Tensor, lam: torch.Tensor) -> bool:
    """|theta - lambda_nearest| <= r^2 / delta (+ rounding), delta = distance to the rest."""
    for t, r in zip(theta.tolist(), resid.tolist()):
        d = (lam - t).abs()
        i = int(torch.argmin(d))
        rest = torch.cat([d[:i], d[i + 1 :]])
        delta = float(rest.min()) if rest.numel() else math.inf
        if float(d[i]) > r * r / delta + 1e-13 * max(1.0, abs(t)):
            return False
    return True


# A spectrum with well separated extremes at both ends, negatives and exact zeros.
N_MIXED = 200
LAM_MIXED = torch.cat(
    [
        torch.tensor([10.0, 7.0, 5.0, 3.5, 2.6, -9.0, -6.0, -4.4]),
        torch.zeros(12),
        torch.linspace(-2.0, 2.0, N_MIXED - 20),
    ]
).to(F64)


# ------------------------------------------------------------------------------------------
# SymmetricOperator, tridiagonal_eigh
# ------------------------------------------------------------------------------------------


def test_operator_counts_products_and_casts() -> None:
    A = with_spectrum(torch.linspace(1, 5, 20))
    op = SymmetricOperator.from_matrix(A)
    assert (op.n, op.dtype, op.n_matvecs) == (20, F64, 0)
    v = torch.randn(20, dtype=torch.float32)
    assert torch.allclose(op.matvec(v), A @ v.to(F64))
    assert op.n_matvecs == 1
    V = torch.randn(20, 7, dtype=F64)
    assert torch.allclose(op.matmat(V), A @ V)
    assert op.n_matvecs == 8
    # without a matmat, columns are looped over and still counted one by one
    calls = []
    loop = SymmetricOperator(lambda x: calls.append(1) or A @ x, 20)
    assert torch.allclose(loop.matmat(V), A @ V)
    assert (loop.n_matvecs, len(calls)) == (7, 7)
    # a float32 operator receives float32 vectors
    seen = []
    op32 = SymmetricOperator(lambda x: seen.append(x.dtype) or x * 2, 20, dtype=torch.float32)
    assert op32.matvec(torch.ones(20, dtype=F64)).dtype == torch.float32
    assert seen == [torch.float32]


def test_operator_bad_arguments() -> None:
    A = with_spectrum(torch.linspace(1, 5, 6))
    op = SymmetricOperator.from_matrix(A)
    with pytest.raises(ConfigError):
        op.matvec(torch.ones(5, dtype=F64))
    with pytest.raises(ConfigError):
        op.matmat(torch.ones(6, dtype=F64))
    with pytest.raises(ConfigError):
        SymmetricOperator.from_matrix(torch.arange(9.0, dtype=F64).reshape(3, 3))
    with pytest.raises(ConfigError):
        SymmetricOperator.from_matrix(torch.ones(2, 3, dtype=F64))
    with pytest.raises(ConfigError):
        SymmetricOperator(lambda x: x, 0)
    with pytest.raises(ConfigError):
        SymmetricOperator(lambda x: x, 3, dtype=torch.int64)
    assert issubclass(ConfigError, ValueError)


def test_tridiagonal_eigh_matches_dense() -> None:
    g = torch.Generator().manual_seed(3)
    alpha, beta = torch.randn(30, generator=g, dtype=F64), torch.rand(29, generator=g, dtype=F64)
    T = torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)
    values, vectors = tridiagonal_eigh(alpha, beta)
    assert torch.allclose(values, torch.linalg.eigvalsh(T), atol=1e-12)
    assert torch.allclose(T @ vectors, vectors * values, atol=1e-12)
    assert torch.allclose(vectors.T @ vectors, torch.eye(30, dtype=F64), atol=1e-12)
    v1, s1 = tridiagonal_eigh(torch.tensor([2.5], dtype=F64), torch.zeros(0, dtype=F64))
    assert v1.tolist() == [2.5] and s1.tolist() == [[1.0]]
    with pytest.raises(ConfigError):
        tridiagonal_eigh(alpha, beta[:-1])


# ------------------------------------------------------------------------------------------
# lanczos
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which,k", [("LA", 5), ("SA", 3), ("LM", 4)])
def test_lanczos_extremes_of_mixed_spectrum(which: str, k: int) -> None:
    A = with_spectrum(LAM_MIXED, seed=1)
    op = SymmetricOperator.from_matrix(A)
    res = lanczos(op, k=k, which=which, tol=1e-6)
    expected = sorted_by(LAM_MIXED, which)[:k]
    assert res.eigenvalues.dtype == F64 and res.eigenvalues.shape == (k,)
    assert res.all_converged and res.converged.dtype == torch.bool
    rel = (res.eigenvalues - expected).abs() / expected.abs()
    assert float(rel.max()) <= 1e-8, rel
    assert kato_temple_ok(res.eigenvalues, res.residuals, LAM_MIXED)
    assert torch.all(res.residuals <= 1e-6 * res.eigenvalues.abs())
    check_ritz_pairs(A, res)
    assert res.n_matvecs == op.n_matvecs == res.n_iter < N_MIXED
    assert (res.which, res.tol) == (which, 1e-6)


def test_lanczos_is_frugal_on_decaying_spectrum() -> None:
    n = 400
    lam = 10.0 * 0.8 ** torch.arange(n, dtype=F64)
    A = with_spectrum(lam, seed=2)
    op = SymmetricOperator.from_matrix(A)
    res = lanczos(op, k=5, tol=1e-6)
    assert res.all_converged
    assert torch.allclose(res.eigenvalues, lam[:5], rtol=1e-10, atol=0)
    assert res.n_matvecs == op.n_matvecs <= 30  # top-5 of 400 x 400 in < 8% of n products
    check_ritz_pairs(A, res)
    # the default tol = 1e-4 is cheaper still and (residual^2 / gap) still far below 1e-6 relative
    op2 = SymmetricOperator.from_matrix(A)
    res2 = lanczos(op2, k=5)
    assert res2.all_converged and res2.n_matvecs <= res.n_matvecs
    assert torch.allclose(res2.eigenvalues, lam[:5], rtol=1e-7, atol=0)


def test_lanczos_clustered_eigenvalues() -> None:
    n = 150
    top = torch.tensor([5.0, 4.999, 4.998], dtype=F64)  # gaps 1e-3
    lam = torch.cat([top, torch.linspace(0.0, 4.0, n - 3, dtype=F64)])
    A = with_spectrum(lam, seed=3)
    res = lanczos(SymmetricOperator.from_matrix(A), k=3, tol=1e-6, max_iter=n)
    assert res.all_converged
    # Kato-Temple with delta = 1e-3 and r <= 5e-6: error <= 2.5e-8 absolute
    assert torch.allclose(res.eigenvalues, top, rtol=0, atol=3e-8)
    assert kato_temple_ok(res.eigenvalues, res.residuals, lam)
    check_ritz_pairs(A, res)


def test_lanczos_repeated_eigenvalues_found_with_multiplicity() -> None:
    # few distinct eigenvalues: each Krylov sequence breaks down after <= 4 steps and the
    # random restarts uncover one more copy each
    lam = torch.cat([torch.full((3,), 4.0), torch.full((3,), 2.0), torch.full((4,), -3.0), torch.ones(90)]).to(F64)
    A = with_spectrum(lam, seed=4)
    for which, k, expected in [
        ("LA", 3, [4.0, 4.0, 4.0]),
        ("LA", 4, [4.0, 4.0, 4.0, 2.0]),
        ("SA", 4, [-3.0] * 4),
        ("SA", 5, [-3.0] * 4 + [1.0]),
        ("LM", 6, [4.0, 4.0, 4.0, -3.0, -3.0, -3.0]),
    ]:
        op = SymmetricOperator.from_matrix(A)
        res = lanczos(op, k=k, which=which, tol=1e-8)
        assert res.all_converged, (which, k)
        assert torch.allclose(res.eigenvalues, torch.tensor(expected, dtype=F64), atol=1e-10), (which, res)
        check_ritz_pairs(A, res)
        assert res.n_matvecs == op.n_matvecs <= 20  # 4 distinct values: a handful per copy


def test_lanczos_rank_deficient_and_zero_eigenvalues() -> None:
    n, r = 120, 10
    lam = torch.cat([torch.linspace(1.0, 10.0, r, dtype=F64), torch.zeros(n - r, dtype=F64)])
    A = with_spectrum(lam, seed=5)
    op = SymmetricOperator.from_matrix(A)
    top = lanczos(op, k=3, tol=1e-8)
    assert top.all_converged
    assert torch.allclose(top.eigenvalues, torch.tensor([10.0, 9.0, 8.0], dtype=F64), rtol=1e-10)
    assert top.n_matvecs <= r + 2  # the Krylov space has dimension r + 1
    # zero eigenvalues: the relative criterion turns absolute below sqrt(eps) ||A||
    low = lanczos(SymmetricOperator.from_matrix(A), k=3, which="SA", tol=1e-6)
    assert low.all_converged
    assert torch.allclose(low.eigenvalues, torch.zeros(3, dtype=F64), atol=1e-10)
    check_ritz_pairs(A, low)
    lm = lanczos(SymmetricOperator.from_matrix(A), k=2, which="LM")
    assert torch.allclose(lm.eigenvalues, torch.tensor([10.0, 9.0], dtype=F64), rtol=1e-8)


def test_lanczos_diagonal_matrix() -> None:
    lam = torch.linspace(-1.0, 3.0, 60, dtype=F64) ** 3
    res = lanczos(SymmetricOperator.from_matrix(torch.diag(lam)), k=2, which="LM", tol=1e-8)
    assert res.all_converged
    assert torch.allclose(res.eigenvalues, sorted_by(lam, "LM")[:2], rtol=1e-12)
    # the Ritz vectors are (up to sign) the coordinate vectors of the two largest entries
    assert torch.allclose(res.eigenvectors.abs()[[59, 58], [0, 1]], torch.ones(2, dtype=F64), atol=1e-6)


def test_lanczos_k_equals_n_is_exact() -> None:
    n = 30
    lam = torch.linspace(-2.0, 5.0, n, dtype=F64)
    A = with_spectrum(lam, seed=6)
    op = SymmetricOperator.from_matrix(A)
    res = lanczos(op, k=n, which="SA")
    assert res.all_converged and res.n_iter == n == op.n_matvecs
    assert torch.allclose(res.eigenvalues, lam, atol=1e-12)
    check_ritz_pairs(A, res)


def test_lanczos_start_vector_inside_an_invariant_subspace() -> None:
    lam = torch.linspace(1.0, 8.0, 40, dtype=F64)
    Q = orthogonal(40, 7)
    A = with_spectrum(lam, seed=7)
    # v0 is the eigenvector of the SMALLEST eigenvalue: its Krylov space is invariant at once
    res = lanczos(SymmetricOperator.from_matrix(A), k=1, tol=1e-8, v0=Q[:, 0] * 3.0)
    assert res.all_converged
    assert abs(float(res.eigenvalues[0]) - 8.0) <= 1e-10


def test_lanczos_reports_non_convergence_honestly() -> None:
    n = 300
    lam = torch.linspace(0.0, 1.0, n, dtype=F64)  # tiny gaps: slow convergence
    A = with_spectrum(lam, seed=8)
    op = SymmetricOperator.from_matrix(A)
    with pytest.warns(UnconvergedWarning, match=r"0 of 4 eigenvalues converged .*larger max_iter"):
        res = lanczos(op, k=4, tol=1e-8, max_iter=8)
    assert res.n_iter == res.n_matvecs == op.n_matvecs == 8
    assert not res.all_converged and not bool(res.converged.all())
    # the flag agrees with the criterion and with the true residuals
    X = res.eigenvectors
    true_res = torch.linalg.vector_norm(A @ X - X * res.eigenvalues, dim=0)
    assert torch.all(true_res[~res.converged] > 1e-8 * res.eigenvalues.abs()[~res.converged])


def test_default_cap_is_generous_but_fits_in_memory() -> None:
    from sharpscope.linalg.lanczos import default_max_iter
    assert default_max_iter(2410, 5, memory=1e12) == 300 and default_max_iter(2410, 20, memory=1e12) == 600
    assert default_max_iter(120, 5, memory=1e12) == 120  # never more than n
    # 11 M parameters, 16 GiB: the float64 basis may take 8 GiB, i.e. 97 steps
    assert default_max_iter(11_000_000, 5, memory=16 * 2**30) == 97
    # a basis that does not fit: the old default, max(2k + 40, 10k), and no less
    assert default_max_iter(36_000_000, 5, memory=2**30) == 50


def test_converged_runs_do_not_warn(recwarn) -> None:
    lam = torch.linspace(0.0, 1.0, 60, dtype=F64) ** 3
    res = lanczos(SymmetricOperator.from_matrix(with_spectrum(lam, seed=2)), k=2, tol=1e-6)
    assert res.all_converged and not [w for w in recwarn if w.category is UnconvergedWarning]


def test_lanczos_float32_operator() -> None:
    n = 200
    lam = torch.cat([torch.tensor([6.0, 4.5, 3.0]), torch.linspace(-1.0, 2.0, n - 3)]).to(F64)
    A = with_spectrum(lam, seed=9)
    op = SymmetricOperator.from_matrix(A.to(torch.float32))
    res = lanczos(op, k=3, tol=1e-4)
    assert res.all_converged and res.eigenvectors.dtype == torch.float32
    assert res.eigenvalues.dtype == F64
    rel = (res.eigenvalues - lam[:3]).abs() / lam[:3]
    assert float(rel.max()) <= 1e-5, rel


def test_lanczos_callback_check_every_and_seed() -> None:
    lam = 5.0 * 0.9 ** torch.arange(100, dtype=F64)
    A = with_spectrum(lam, seed=10)
    seen: list[tuple[int, torch.Tensor]] = []
    res = lanczos(SymmetricOperator.from_matrix(A), k=2, tol=1e-6, check_every=4,
                  callback=lambda it, vals: seen.append((it, vals)))
    iters = [it for it, _ in seen]
    assert iters == list(range(2, res.n_iter + 1, 4)) and iters[-1] == res.n_iter
    assert all(v.shape == (2,) for _, v in seen)
    assert torch.equal(seen[-1][1], res.eigenvalues)
    again = lanczos(SymmetricOperator.from_matrix(A), k=2, tol=1e-6, check_every=4)
    assert torch.equal(again.eigenvalues, res.eigenvalues)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 25), seed=st.integers(0, 10_000), which=st.sampled_from(["LA", "SA", "LM"]))
def test_lanczos_random_small_matrices(n: int, seed: int, which: str) -> None:
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(n, n, generator=g, dtype=F64)
    A = (B + B.T) / 2
    lam = torch.linalg.eigvalsh(A)
    k = min(2, n)
    res = lanczos(SymmetricOperator.from_matrix(A), k=k, which=which, tol=1e-10, max_iter=n)
    assert res.all_converged
    expected = sorted_by(lam, which)[:k]
    assert torch.allclose(res.eigenvalues.abs(), expected.abs(), atol=1e-8)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"k": 0},
        {"k": 11},
        {"which": "LR"},
        {"tol": 0.0},
        {"tol": -1e-3},
        {"check_every": 0},
        {"max_iter": 1, "k": 2},
        {"v0": torch.zeros(10, dtype=F64)},
        {"v0": torch.ones(3, dtype=F64)},
    ],
)
def test_lanczos_bad_arguments(kwargs: dict) -> None:
    op = SymmetricOperator.from_matrix(with_spectrum(torch.arange(10.0)))
    with pytest.raises(ConfigError):
        lanczos(op, **kwargs)


# ------------------------------------------------------------------------------------------
# Hutchinson, Hutch++
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(distribution: str) -> None:
    lam = torch.linspace(-1.0, 3.0, 50, dtype=F64)
    A = with_spectrum(lam, seed=11)
    op = SymmetricOperator.from_matrix(A)
    results = [hutchinson(op, n_matvecs=10, seed=s, distribution=distribution, block_size=4) for s in range(200)]
    est = torch.tensor([r.estimate for r in results], dtype=F64)
    assert op.n_matvecs == 2000 and all(r.n_matvecs == 10 and r.method == "hutchinson" for r in results)
    se = float(est.std()) / math.sqrt(200)
    assert abs(float(est.mean()) - float(lam.sum())) <= 3 * se
    # the reported stderr matches the spread of the estimates, and the theoretical variance
    assert 0.8 <= float(torch.tensor([r.stderr for r in results]).mean()) / float(est.std()) <= 1.2
    # Var(z^T A z) = 2 sum_{i != j} A_ij^2 (Rademacher), 2 ||A||_F^2 (Gaussian)
    frob2, diag2 = float((A**2).sum()), float((torch.diagonal(A) ** 2).sum())
    var1 = 2 * (frob2 - diag2) if distribution == "rademacher" else 2 * frob2
    theory_sd = math.sqrt(var1 / 10)
    assert 0.8 <= float(est.std()) / theory_sd <= 1.2


def test_hutchinson_samples_block_size_and_diagonal_exactness() -> None:
    A = with_spectrum(torch.linspace(0.0, 2.0, 30), seed=12)
    r1 = hutchinson(SymmetricOperator.from_matrix(A), n_matvecs=13, seed=5, block_size=1)
    r2 = hutchinson(SymmetricOperator.from_matrix(A), n_matvecs=13, seed=5, block_size=6)
    assert torch.allclose(r1.samples, r2.samples, atol=1e-12) and r1.samples.shape == (13,)
    assert r1.samples.dtype == F64
    assert math.isclose(r1.estimate, float(r1.samples.mean()), rel_tol=1e-12)
    assert math.isclose(r1.stderr, float(r1.samples.std()) / math.sqrt(13), rel_tol=1e-12)
    # z^T D z = sum_i d_i z_i^2 = tr(D) for every Rademacher z
    d = torch.linspace(-3.0, 7.0, 40, dtype=F64)
    rd = hutchinson(SymmetricOperator.from_matrix(torch.diag(d)), n_matvecs=5)
    assert rd.stderr == 0.0 and math.isclose(rd.estimate, float(d.sum()), rel_tol=1e-12)


def test_hutchpp_beats_hutchinson_on_decaying_spectrum() -> None:
    n, m = 300, 60
    lam = 0.8 ** torch.arange(n, dtype=F64)
    A = with_spectrum(lam, seed=13)
    truth = float(lam.sum())
    err_pp, err_h = [], []
    for s in range(10):
        op = SymmetricOperator.from_matrix(A)
        rpp = hutchpp(op, n_matvecs=m, seed=s)
        assert rpp.method == "hutch++" and rpp.n_matvecs == op.n_matvecs == m
        err_pp.append(abs(rpp.estimate - truth))
        err_h.append(abs(hutchinson(SymmetricOperator.from_matrix(A), n_matvecs=m, seed=s).estimate - truth))
    assert np.median(err_pp) <= 0.1 * np.median(err_h)
    assert max(err_pp) / truth <= 1e-2


def test_hutchpp_stderr_covers_truth_and_block_size() -> None:
    n, m = 200, 60
    lam = 1.0 / (1.0 + torch.arange(n, dtype=F64)) ** 0.5
    A = with_spectrum(lam, seed=14)
    truth = float(lam.sum())
    covered = 0
    for s in range(100):
        r = hutchpp(SymmetricOperator.from_matrix(A), n_matvecs=m, seed=s)
        assert r.samples.shape == (m - 2 * (m // 3),)
        assert math.isclose(r.estimate, float(r.samples.mean()), rel_tol=1e-12)
        covered += abs(r.estimate - truth) <= 1.96 * r.stderr
    assert 85 <= covered <= 100
    op = SymmetricOperator.from_matrix(A)
    rb = hutchpp(op, n_matvecs=m, seed=3, block_size=7)
    assert op.n_matvecs == m
    ra = hutchpp(SymmetricOperator.from_matrix(A), n_matvecs=m, seed=3)
    assert math.isclose(rb.estimate, ra.estimate, rel_tol=1e-10)


def test_hutchpp_exact_mode() -> None:
    lam = torch.linspace(-2.0, 5.0, 40, dtype=F64)
    A = with_spectrum(lam, seed=15)
    for budget, block in [(40, None), (99, 8)]:
        op = SymmetricOperator.from_matrix(A)
        r = hutchpp(op, n_matvecs=budget, block_size=block)
        assert isinstance(r, TraceResult)
        assert (r.method, r.stderr, r.n_matvecs, op.n_matvecs) == ("exact", 0.0, 40, 40)
        assert math.isclose(r.estimate, float(lam.sum()), abs_tol=1e-10)
    r3 = hutchpp(SymmetricOperator.from_matrix(A), n_matvecs=39)
    assert r3.method == "hutch++" and r3.n_matvecs == 39


@pytest.mark.parametrize(
    "call",
    [
        lambda op: hutchinson(op, n_matvecs=0),
        lambda op: hutchinson(op, distribution="normal"),
        lambda op: hutchinson(op, block_size=0),
        lambda op: hutchpp(op, n_matvecs=2),
        lambda op: hutchpp(op, block_size=0),
    ],
)
def test_trace_bad_arguments(call) -> None:
    op = SymmetricOperator.from_matrix(with_spectrum(torch.arange(10.0)))
    with pytest.raises(ConfigError):
        call(op)


# ------------------------------------------------------------------------------------------
# SLQ / spectral density
# ------------------------------------------------------------------------------------------


def test_slq_with_full_steps_recovers_the_spectrum() -> None:
    n = 40
    lam = torch.linspace(-3.0, 4.0, n, dtype=F64) ** 3 / 10
    A = with_spectrum(lam, seed=16)
    op = SymmetricOperator.from_matrix(A)
    nodes, weights, used = slq(op, n_runs=3, n_steps=60, seed=1)
    assert nodes.shape == weights.shape == (3, n) and used == op.n_matvecs == 3 * n
    for r in range(3):
        assert torch.allclose(nodes[r], lam, atol=1e-10)
    assert torch.allclose(weights.sum(dim=1), torch.ones(3, dtype=F64), atol=1e-12)
    assert bool((weights >= 0).all())


def test_slq_invariant_subspace_pads_with_zero_weights() -> None:
    lam = torch.cat([torch.full((5,), 2.0), torch.full((45,), -1.0)]).to(F64)
    op = SymmetricOperator.from_matrix(with_spectrum(lam, seed=17))
    nodes, weights, used = slq(op, n_runs=2, n_steps=10)
    assert used == 4 and nodes.shape == (2, 10)  # 2 distinct eigenvalues: 2 steps per run
    for r in range(2):
        active = weights[r] > 0
        assert int(active.sum()) == 2
        assert torch.allclose(torch.sort(nodes[r][active]).values, torch.tensor([-1.0, 2.0], dtype=F64), atol=1e-12)
        # the weights are the squared projections: mean over many vectors ~ 5/50 and 45/50
    assert torch.allclose(weights.sum(dim=1), torch.ones(2, dtype=F64), atol=1e-12)


def test_spectral_density_normalization_grid_and_kernel_rule() -> None:
    n = 100
    lam = torch.linspace(-1.0, 9.0, n, dtype=F64)
    A = with_spectrum(lam, seed=18)
    op = SymmetricOperator.from_matrix(A)
    dens = spectral_density(op, n_runs=4, n_steps=30, seed=2, sigma_squared=1e-3, grid_points=5000)
    assert isinstance(dens, DensityResult)
    assert (dens.n_runs, dens.n_steps, dens.n_matvecs, op.n_matvecs) == (4, 30, 120, 120)
    assert dens.grid.shape == dens.density.shape == (5000,)
    assert bool((dens.density >= 0).all())
    assert math.isclose(float(torch.trapezoid(dens.density, dens.grid)), 1.0, rel_tol=1e-12)
    lo, hi = float(dens.nodes.min()), float(dens.nodes.max())
    s = math.sqrt(1e-3 * max(1.0, hi - lo))
    assert math.isclose(dens.sigma, s, rel_tol=1e-12)
    assert math.isclose(float(dens.grid[0]), lo - 6 * s, abs_tol=1e-12)
    assert math.isclose(float(dens.grid[-1]), hi + 6 * s, abs_tol=1e-12)
    # the extreme nodes converge to the extreme eigenvalues
    assert abs(hi - 9.0) < 1e-4 and abs(lo + 1.0) < 1e-4
    # range < 1: the variance is sigma_squared itself
    _, _, s_small = smooth_density(torch.tensor([[0.1, 0.3]]), torch.tensor([[0.5, 0.5]]), sigma_squared=1e-4)
    assert math.isclose(s_small, 1e-2, rel_tol=1e-12)


def test_smooth_density_is_the_stated_gaussian_mixture() -> None:
    nodes = torch.tensor([[0.0, 2.0], [1.0, 2.0]], dtype=F64)
    weights = torch.tensor([[0.25, 0.75], [0.5, 0.5]], dtype=F64)
    grid, density, s = smooth_density(nodes, weights, sigma_squared=0.01, grid_points=4001, n_sigma=8.0)
    s2 = 0.01 * 2.0
    assert math.isclose(s, math.sqrt(s2))
    expected = torch.zeros_like(grid)
    for th, ta in zip(nodes.reshape(-1), weights.reshape(-1)):
        expected += ta * torch.exp(-((grid - th) ** 2) / (2 * s2)) / math.sqrt(2 * math.pi * s2)
    expected /= 2
    assert torch.allclose(density, expected, rtol=1e-6, atol=1e-10)  # normalization is a tiny correction
    # a lambda_range that cuts the mass is renormalized to integrate to 1
    grid2, dens2, _ = smooth_density(nodes, weights, sigma_squared=0.01, lambda_range=(1.5, 3.0), n_sigma=0.0)
    assert float(grid2[0]) == 1.5 and math.isclose(float(torch.trapezoid(dens2, grid2)), 1.0, rel_tol=1e-12)


def test_slq_mean_is_the_hutchinson_quadratic_form() -> None:
    n, runs = 150, 40
    lam = torch.linspace(0.5, 4.0, n, dtype=F64)
    A = with_spectrum(lam, seed=19)
    starts: list[torch.Tensor] = []
    op = SymmetricOperator(lambda v: starts.append(v.clone()) or A @ v, n)
    dens = spectral_density(op, n_runs=runs, n_steps=12, seed=3, grid_points=200)
    per_run = (dens.nodes * dens.weights).sum(dim=1)
    z = torch.stack(starts[:: dens.n_steps])  # the first product of each run is A v, v = z / sqrt(n)
    assert torch.allclose(z.abs(), torch.full_like(z, 1 / math.sqrt(n)), atol=1e-15)  # normalized Rademacher
    assert torch.allclose(per_run, torch.einsum("ri,ij,rj->r", z, A, z), rtol=1e-12)
    assert math.isclose(dens.mean(), float(per_run.mean()), rel_tol=1e-12)
    truth = float(lam.sum())
    assert abs(dens.mean() * n - truth) / truth <= 0.03
    # the second moment is tr(A^2)/n in expectation (Gauss quadrature is exact for degree <= 23)
    assert abs(dens.moment(2) * n - float((lam**2).sum())) / float((lam**2).sum()) <= 0.05
    assert dens.moment(0) == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize(
    "call",
    [
        lambda op: slq(op, n_runs=0),
        lambda op: slq(op, n_steps=0),
        lambda op: spectral_density(op, sigma_squared=0.0),
        lambda op: spectral_density(op, grid_points=1),
        lambda op: smooth_density(torch.ones(2, 3), torch.ones(2, 2)),
        lambda op: smooth_density(torch.ones(2, 3), -torch.ones(2, 3)),
        lambda op: smooth_density(torch.ones(1, 2), torch.ones(1, 2) / 2, lambda_range=(2.0, 1.0)),
        lambda op: smooth_density(torch.zeros(1, 2), torch.ones(1, 2) / 2, lambda_range=(50.0, 60.0), n_sigma=0.0),
        lambda op: spectral_density(op, n_steps=5).moment(-1),
    ],
)
def test_density_bad_arguments(call) -> None:
    op = SymmetricOperator.from_matrix(with_spectrum(torch.arange(10.0)))
    with pytest.raises(ConfigError):
        call(op)
