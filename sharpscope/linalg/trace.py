"""Stochastic trace estimation. Hutchinson (1989): for probes with E[z z^T] = I, E[z^T A z] = tr(A),
so tr(A) ~ (1/m) sum_i z_i^T A z_i, standard error std_i(z_i^T A z_i) / sqrt(m); the variance is
2 sum_{i != j} A_ij^2 for Rademacher probes (exact on a diagonal), 2 ||A||_F^2 for Gaussian ones.
Hutch++ (Meyer, Musco, Musco & Woodruff, SOSA 2021, Alg. 1) takes tr(Q^T A Q) exactly on a
sketch Q = orth(A S) of the dominant range and runs Hutchinson on the deflated rest: error
O(1/m) instead of O(1/sqrt(m)) for a fast-decaying spectrum.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..checks import int_at_least
from ..errors import ConfigError
from .operator import SymmetricOperator

__all__ = ["TraceResult", "hutchinson", "hutchpp"]

_DISTRIBUTIONS = ("rademacher", "gaussian")


@dataclass
class TraceResult:
    """A trace estimate: ``estimate`` of tr(A), its ``stderr`` (0 when exact, nan from one probe),
    the ``n_matvecs`` spent, the ``method`` (``"hutchinson"``, ``"hutch++"``, ``"exact"``) and the
    float64 per-probe full-trace ``samples`` whose mean is ``estimate`` (empty when exact)."""

    estimate: float
    stderr: float
    n_matvecs: int
    method: str
    samples: Tensor


def _probes(gen: torch.Generator, n: int, b: int, distribution: str) -> Tensor:
    """``(n, b)`` float64 CPU probes with ``E[z z^T] = I``, drawn column by column (blocking-independent)."""
    if b == 0:
        return torch.zeros(n, 0, dtype=torch.float64)
    if distribution == "rademacher":
        cols = [torch.randint(0, 2, (n,), generator=gen, dtype=torch.int64) for _ in range(b)]
        return torch.stack(cols, dim=1).to(torch.float64) * 2.0 - 1.0
    return torch.stack([torch.randn(n, generator=gen, dtype=torch.float64) for _ in range(b)], dim=1)


def _quad_forms(op: SymmetricOperator, make: Callable[[int], Tensor], b: int, block_size: int | None) -> Tensor:
    """``z_i^T A z_i`` (float64) for ``b`` probes made ``make(count)`` at a time, ``block_size`` per block."""
    step = b if block_size is None else block_size
    out = torch.empty(b, dtype=torch.float64)
    for s in range(0, b, max(1, step)):
        Zb = make(min(step, b - s))
        AZ = op.matmat(Zb).to(device=Zb.device, dtype=torch.float64)
        out[s : s + Zb.shape[1]] = op.layout.sum((Zb * AZ).sum(dim=0)).cpu()  # over the shards, if sharded
    return out


def _products(op: SymmetricOperator, Z: Tensor, block_size: int | None) -> Tensor:
    """``A Z`` in float64, ``block_size`` columns per ``op.matmat``."""
    b = Z.shape[1]
    step = b if block_size is None else block_size
    parts = [
        op.matmat(Z[:, s : s + step]).to(device=Z.device, dtype=torch.float64) for s in range(0, b, max(1, step))
    ]
    return torch.cat(parts, dim=1) if parts else Z.clone()


def _mean_stderr(samples: Tensor) -> tuple[float, float]:
    m = samples.numel()
    mean = float(samples.mean())
    if m < 2:
        return mean, float("nan")
    return mean, float(samples.std(correction=1)) / math.sqrt(m)


def hutchinson(op: SymmetricOperator, n_matvecs: int = 100, seed: int = 0, distribution: str = "rademacher",
               block_size: int = 1) -> TraceResult:
    """Hutchinson's estimator (module docstring) with ``n_matvecs`` probes of ``distribution``
    (``"rademacher"`` or ``"gaussian"``) seeded by ``seed``, ``block_size`` per ``op.matmat``;
    ``stderr`` = sample std / sqrt(m) (nan for m = 1)."""
    if not isinstance(op, SymmetricOperator):
        raise ConfigError("hutchinson expects a SymmetricOperator")
    m = int_at_least("n_matvecs", n_matvecs, 1)
    block_size = int_at_least("block_size", block_size, 1)
    if distribution not in _DISTRIBUTIONS:
        raise ConfigError(f"distribution must be one of {_DISTRIBUTIONS}, got {distribution!r}")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    start = op.n_matvecs
    # sharded (op.layout): each shard keeps its entries of the same probes (drawn whole, a block at a time)
    samples = _quad_forms(op, lambda b: op.layout.take(_probes(gen, op.n, b, distribution)).to(op.device), m,
                          block_size)
    estimate, stderr = _mean_stderr(samples)
    return TraceResult(estimate, stderr, op.n_matvecs - start, "hutchinson", samples)


def exact_trace(op: SymmetricOperator, block_size: int | None = None) -> TraceResult:
    """``tr(A) = sum_i e_i^T A e_i`` with ``n`` products (method ``"exact"``, stderr 0)."""
    if not isinstance(op, SymmetricOperator):
        raise ConfigError("exact_trace expects a SymmetricOperator")
    if block_size is not None:
        block_size = int_at_least("block_size", block_size, 1)
    start = op.n_matvecs
    n = op.n
    step = n if block_size is None else block_size
    total = 0.0
    for s in range(0, n, step):
        cols = torch.arange(s, min(n, s + step))
        E = torch.zeros(n, cols.numel(), dtype=torch.float64)
        E[cols, torch.arange(cols.numel())] = 1.0
        AE = op.matmat(E.to(op.device)).to(dtype=torch.float64).cpu()
        total += float(AE[cols, torch.arange(cols.numel())].sum())
    return TraceResult(total, 0.0, op.n_matvecs - start, "exact", torch.zeros(0, dtype=torch.float64))


def hutchpp(op: SymmetricOperator, n_matvecs: int = 99, seed: int = 0, block_size: int | None = None) -> TraceResult:
    """Hutch++ (Meyer, Musco, Musco & Woodruff, SOSA 2021, Alg. 1) with ``m = n_matvecs >= 3``
    products, ``k = m // 3``:

    1. ``S`` (n x k) Rademacher, ``Q = orth(A S)``                          (k products)
    2. ``t_Q = tr(Q^T A Q)``, exact given ``Q``                              (k products)
    3. ``G`` (n x (m - 2k)) Rademacher, ``G' = (I - QQ^T) G``,
       ``estimate = t_Q + mean_i g'_i^T A g'_i``                            (m - 2k products)

    ``stderr`` is that of step 3 (nan for m = 3); ``samples`` are ``t_Q + g'_i^T A g'_i``. For
    ``m >= n`` the exact trace is returned (``n`` products). ``block_size``: columns per
    ``op.matmat`` (None: each phase at once).
    """
    if not isinstance(op, SymmetricOperator):
        raise ConfigError("hutchpp expects a SymmetricOperator")
    if op.layout.sharded:
        raise ConfigError("hutchpp needs a QR factorization of the sketch, not implemented on sharded vectors; use "
                          "hutchinson")
    m = int_at_least("n_matvecs", n_matvecs, 3)
    if block_size is not None:
        block_size = int_at_least("block_size", block_size, 1)
    n = op.n
    if m >= n:
        return exact_trace(op, block_size)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    start = op.n_matvecs
    k = m // 3
    S = _probes(gen, n, k, "rademacher").to(op.device)
    Y = _products(op, S, block_size)
    Q, _ = torch.linalg.qr(Y, mode="reduced")  # any orthonormal Q keeps the estimator unbiased
    del S, Y
    AQ = _products(op, Q, block_size)
    t_q = float((Q * AQ).sum())

    def projected_probes(b: int) -> Tensor:
        G = _probes(gen, n, b, "rademacher").to(device=Q.device)
        return G - Q @ (Q.T @ G)

    samples = t_q + _quad_forms(op, projected_probes, m - 2 * k, block_size)
    estimate, stderr = _mean_stderr(samples)
    return TraceResult(estimate, stderr, op.n_matvecs - start, "hutch++", samples)
