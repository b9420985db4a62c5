"""Spectral density by stochastic Lanczos quadrature (SLQ).

The spectral density of a symmetric ``A`` with eigenvalues ``lambda_i`` is
``phi(t) = (1/n) sum_i delta(t - lambda_i)``. For a unit start vector ``v`` with
``E[v v^T] = I / n`` (a normalized Rademacher vector), ``v^T f(A) v = sum_i (u_i^T v)^2
f(lambda_i)`` is an unbiased estimate of ``(1/n) sum_i f(lambda_i)``, and ``m`` Lanczos
steps from ``v`` turn it into a Gauss quadrature (Golub & Meurant, *Matrices, Moments and
Quadrature*, 2010):

    v^T f(A) v  ~  sum_j tau_j f(theta_j),   T_m = S diag(theta) S^T,   tau_j = S_1j^2,

exact for polynomials of degree up to ``2m - 1``. Averaging over runs and replacing the
deltas by Gaussians of variance ``s^2`` gives the smoothed density of Ghorbani, Krishnan &
Xiao (ICML 2019, Sec. 3; the recipe of google/spectral-density and PyHessian):

    phi_s(t) = (1/runs) sum_runs sum_j tau_j N(t; theta_j, s^2).

The maths lives in three small pure pieces: :func:`slq` (operator -> nodes/weights),
:func:`smooth_density` (nodes/weights -> density), and :func:`tridiagonal_eigh`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..checks import finite_float, int_at_least
from ..errors import ConfigError
from .basis import Basis, breakdown_threshold, matvec_work, tridiagonal_eigh, work_dtype
from .budget import parse_basis_dtype, plan_basis
from .operator import SymmetricOperator

__all__ = ["DensityResult", "slq", "smooth_density", "spectral_density"]


@dataclass
class DensityResult:
    """A smoothed SLQ spectral density.

    Attributes:
        grid: ``(g,)`` float64 eigenvalue grid.
        density: ``(g,)`` float64, ``>= 0``, trapezoid-integrates to 1 over ``grid``.
        nodes: ``(runs, steps)`` Ritz values of each run (Gauss nodes).
        weights: ``(runs, steps)`` squared first components of the Ritz vectors; each row
            sums to 1.
        sigma: standard deviation ``s`` of the Gaussian kernel actually used.
        n_matvecs: products spent.
        n_runs: number of SLQ runs.
        n_steps: Lanczos steps per run actually used (``min(n_steps, n)``).
    """

    grid: Tensor
    density: Tensor
    nodes: Tensor
    weights: Tensor
    sigma: float
    n_matvecs: int
    n_runs: int
    n_steps: int

    def moment(self, p: int) -> float:
        """``sum(nodes**p * weights) / runs``: an unbiased estimate of ``tr(A^p) / n`` (exact in
        expectation for ``p <= 2 * steps - 1``)."""
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 0:
            raise ConfigError(f"moment order must be an int >= 0, got {p!r}")
        return float((self.nodes**p * self.weights).sum()) / self.nodes.shape[0]

    def mean(self) -> float:
        """``sum(nodes * weights) / runs``: an unbiased estimate of ``tr(A) / n``. Per run it
        equals ``v^T A v`` for the normalized start vector ``v`` (``z^T A z / n``)."""
        return self.moment(1)


def slq(op: SymmetricOperator, n_runs: int = 10, n_steps: int = 80, seed: int = 0, *,
        memory_bytes: float | None = None, basis_dtype: torch.dtype | str | None = None,
        basis_device: str | torch.device | None = None) -> tuple[Tensor, Tensor, int]:
    """Stochastic Lanczos quadrature nodes and weights (Ghorbani et al., ICML 2019, Sec. 3).

    For each run: a Rademacher start vector normalized, ``m = min(n_steps, n)`` Lanczos
    steps with full reorthogonalization (float64 basis), eigen-decomposition of ``T_m``
    -> nodes ``theta_j`` and weights ``tau_j = (first component of eigenvector j)^2``.

    If a run meets an invariant subspace after ``d < m`` steps, its spectral measure is
    exactly captured by ``d`` nodes; the remaining ``m - d`` slots repeat the first node with
    weight 0 (so the output stays rectangular and the density is unaffected).

    The runs go one after the other, one basis held at a time. ``basis_dtype`` /
    ``basis_device`` store it as :func:`~sharpscope.linalg.lanczos.lanczos` does;
    ``memory_bytes`` picks the finest dtype whose ``m``-vector basis fits
    (:func:`~sharpscope.linalg.budget.plan_basis`; SLQ cannot restart: its quadrature needs
    every step) and raises :class:`~sharpscope.errors.MemoryBudgetError` before any product
    when not even a float16 one does.

    Returns:
        ``(nodes, weights, n_matvecs)`` with ``nodes`` and ``weights`` float64 of shape
        ``(n_runs, m)`` on the CPU, each weight row summing to 1.
    """
    if not isinstance(op, SymmetricOperator):
        raise ConfigError("slq expects a SymmetricOperator")
    n_runs = int_at_least("n_runs", n_runs, 1)
    n_steps = int_at_least("n_steps", n_steps, 1)
    n = op.n
    m = min(n_steps, n)
    dtype = parse_basis_dtype(basis_dtype)
    if memory_bytes is not None:
        memory_bytes = finite_float("memory_bytes", memory_bytes, above=0)
        dtype = plan_basis(n, m, memory_bytes, op.dtype, dtype=dtype, what=f"an SLQ run of {m:,} steps").dtype
    dtype = dtype or torch.float64
    if op.layout.sharded and (memory_bytes is not None or dtype != torch.float64):
        raise ConfigError("a memory budget or a basis dtype other than float64 is not supported for a sharded operator")
    store = op.device if basis_device is None else torch.device(basis_device)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    start = op.n_matvecs
    nodes = torch.empty(n_runs, m, dtype=torch.float64)
    weights = torch.zeros(n_runs, m, dtype=torch.float64)
    for r in range(n_runs):
        basis = Basis(n, store, m, dtype, work_dtype(dtype, op.dtype), fixed=memory_bytes is not None,
                      work_device=op.device, layout=op.layout)
        # the start vector (this shard's entries, if sharded) is passed without a name, so that only _run holds it
        alphas, betas = _run(op, basis, op.layout.random_unit(gen, op.device, rademacher=True).to(basis.work), m)
        del basis  # before the next run's basis is allocated
        theta, S = tridiagonal_eigh(torch.tensor(alphas, dtype=torch.float64), torch.tensor(betas, dtype=torch.float64))
        d = theta.numel()
        nodes[r, :d] = theta
        nodes[r, d:] = theta[0]
        weights[r, :d] = S[0, :] ** 2
    return nodes, weights, op.n_matvecs - start


def _run(op: SymmetricOperator, basis: Basis, q: Tensor, m: int) -> tuple[list[float], list[float]]:
    """One SLQ run's ``alpha`` and ``beta``: ``m`` Lanczos steps from ``q`` with full
    reorthogonalization, fewer when ``beta`` reaches the breakdown threshold."""
    alphas: list[float] = []
    betas: list[float] = []
    anorm = 0.0
    for j in range(m):
        q = basis.append(q)
        w, h = basis.orthogonalize(matvec_work(op, q))
        alpha = float(h[-1])
        beta = basis.layout.norm(w)
        anorm = max(anorm, abs(alpha) + beta + (betas[-1] if betas else 0.0))
        alphas.append(alpha)
        if j == m - 1 or beta <= breakdown_threshold(op, anorm):
            break
        betas.append(beta)
        q = w / beta
    return alphas, betas


def smooth_density(
    nodes: Tensor,
    weights: Tensor,
    *,
    sigma_squared: float = 1e-5,
    grid_points: int = 10_000,
    lambda_range: tuple[float, float] | None = None,
    n_sigma: float = 6.0,
) -> tuple[Tensor, Tensor, float]:
    """Gaussian-smoothed SLQ density ``phi(t) = (1/runs) sum_runs sum_j tau_j N(t; theta_j, s^2)``.

    The kernel variance follows Ghorbani et al. / PyHessian:
    ``s^2 = sigma_squared * max(1, lambda_max - lambda_min)``. The grid has
    ``grid_points`` equispaced points on ``[lambda_min - n_sigma s, lambda_max + n_sigma s]``
    so the kernel tails are covered (``lambda_min, lambda_max`` from the nodes unless
    ``lambda_range`` is given). The density is finally divided by its trapezoid integral,
    so it integrates to exactly 1 on the grid; with the default ``n_sigma = 6`` and a fine
    grid this correction is tiny (the mass outside 6 sigma is 2e-9), but with a
    ``lambda_range`` that cuts off nodes it renormalizes the visible part.

    Returns:
        ``(grid, density, s)``: float64 CPU tensors of shape ``(grid_points,)`` and the
        kernel's standard deviation.
    """
    nodes = torch.as_tensor(nodes).detach().to(device="cpu", dtype=torch.float64)
    weights = torch.as_tensor(weights).detach().to(device="cpu", dtype=torch.float64)
    if nodes.ndim == 1:
        nodes, weights = nodes[None, :], weights.reshape(1, -1)
    if nodes.ndim != 2 or nodes.shape != weights.shape or nodes.numel() == 0:
        raise ConfigError("nodes and weights must be non-empty tensors of the same shape (runs, steps)")
    if not (bool(torch.isfinite(nodes).all()) and bool(torch.isfinite(weights).all())):
        raise ConfigError("nodes and weights must be finite")
    if bool((weights < 0).any()):
        raise ConfigError("weights must be >= 0")
    if not (isinstance(sigma_squared, (int, float)) and math.isfinite(sigma_squared) and sigma_squared > 0):
        raise ConfigError(f"sigma_squared must be a finite number > 0, got {sigma_squared!r}")
    grid_points = int_at_least("grid_points", grid_points, 2)
    if not (isinstance(n_sigma, (int, float)) and math.isfinite(n_sigma) and n_sigma >= 0):
        raise ConfigError(f"n_sigma must be a finite number >= 0, got {n_sigma!r}")
    if lambda_range is None:
        lo, hi = float(nodes.min()), float(nodes.max())
    else:
        try:
            lo, hi = (float(x) for x in lambda_range)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"lambda_range must be a pair of numbers, got {lambda_range!r}") from exc
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ConfigError(f"lambda_range must be finite with low <= high, got {lambda_range!r}")
    s = math.sqrt(sigma_squared * max(1.0, hi - lo))
    grid = torch.linspace(lo - n_sigma * s, hi + n_sigma * s, grid_points, dtype=torch.float64)

    theta = nodes.reshape(-1)
    tau = weights.reshape(-1)
    keep = tau > 0
    theta, tau = theta[keep], tau[keep]
    density = torch.zeros(grid_points, dtype=torch.float64)
    chunk = max(1, (1 << 22) // max(1, theta.numel()))
    norm = 1.0 / (nodes.shape[0] * s * math.sqrt(2.0 * math.pi))
    for a in range(0, grid_points, chunk):
        t = grid[a : a + chunk, None]
        density[a : a + chunk] = (tau * torch.exp(-0.5 * ((t - theta) / s) ** 2)).sum(dim=1) * norm
    total = float(torch.trapezoid(density, grid))
    if not total > 0:
        raise ConfigError("the grid holds none of the spectral mass (check lambda_range)")
    return grid, density / total, s


def spectral_density(
    op: SymmetricOperator,
    n_runs: int = 10,
    n_steps: int = 80,
    seed: int = 0,
    sigma_squared: float = 1e-5,
    grid_points: int = 10_000,
    *,
    memory_bytes: float | None = None,
    basis_dtype: torch.dtype | str | None = None,
    basis_device: str | torch.device | None = None,
) -> DensityResult:
    """SLQ spectral density of ``op``: :func:`slq` then :func:`smooth_density`.

    Costs ``n_runs * min(n_steps, n)`` products (fewer if a run meets an invariant subspace).
    ``memory_bytes``, ``basis_dtype``, ``basis_device``: the basis, as in :func:`slq`.
    """
    nodes, weights, used = slq(op, n_runs=n_runs, n_steps=n_steps, seed=seed, memory_bytes=memory_bytes,
                               basis_dtype=basis_dtype, basis_device=basis_device)
    grid, density, s = smooth_density(nodes, weights, sigma_squared=sigma_squared, grid_points=grid_points)
    return DensityResult(
        grid=grid,
        density=density,
        nodes=nodes,
        weights=weights,
        sigma=s,
        n_matvecs=used,
        n_runs=nodes.shape[0],
        n_steps=nodes.shape[1],
    )
