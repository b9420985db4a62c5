"""What Lanczos and stochastic Lanczos quadrature share: a float64 orthonormal basis (classical
Gram-Schmidt twice, Giraud, Langou & Rozloznik 2005), breakdown threshold, start vectors, eigh of T_m."""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from ..errors import ConfigError
from .operator import SymmetricOperator

__all__ = ["Basis", "matvec_float64", "breakdown_threshold", "random_unit", "tridiagonal_eigh"]


def tridiagonal_eigh(alpha: Tensor | np.ndarray, beta: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """``(values, vectors)`` of ``T = tridiag(beta, alpha, beta)`` (``m`` diagonal, ``m - 1``
    off-diagonal entries), float64 on the CPU: values ascending, ``T = V diag(values) V^T``.
    LAPACK's ``scipy.linalg.eigh_tridiagonal``, else a dense ``torch.linalg.eigh``."""
    a = np.asarray(torch.as_tensor(alpha).detach().cpu().double().numpy(), dtype=np.float64).reshape(-1)
    b = np.asarray(torch.as_tensor(beta).detach().cpu().double().numpy(), dtype=np.float64).reshape(-1)
    m = a.shape[0]
    if m == 0:
        raise ConfigError("tridiagonal_eigh needs at least one diagonal entry")
    if b.shape[0] != m - 1:
        raise ConfigError(f"tridiagonal_eigh needs {m - 1} off-diagonal entries, got {b.shape[0]}")
    if m == 1:
        return torch.from_numpy(a.copy()), torch.ones(1, 1, dtype=torch.float64)
    try:
        values, vectors = scipy.linalg.eigh_tridiagonal(a, b)
        values_t, vectors_t = torch.from_numpy(values), torch.from_numpy(vectors)
    except (np.linalg.LinAlgError, ValueError):
        T = torch.diag(torch.from_numpy(a)) + torch.diag(torch.from_numpy(b), 1) + torch.diag(torch.from_numpy(b), -1)
        values_t, vectors_t = torch.linalg.eigh(T)
    return values_t.contiguous(), vectors_t.contiguous()


class Basis:
    """A growing float64 orthonormal basis ``Q`` (n x size) with CGS2 orthogonalization."""

    def __init__(self, n: int, device: torch.device, capacity: int) -> None:
        self.n = n
        self.device = device
        self.size = 0
        self._Q = torch.empty(n, max(1, capacity), dtype=torch.float64, device=device)

    @property
    def Q(self) -> Tensor:
        return self._Q[:, : self.size]

    def append(self, q: Tensor) -> None:
        if self.size == self._Q.shape[1]:
            grown = torch.empty(self.n, 2 * self._Q.shape[1], dtype=torch.float64, device=self.device)
            grown[:, : self.size] = self._Q[:, : self.size]
            self._Q = grown
        self._Q[:, self.size] = q
        self.size += 1

    def orthogonalize(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """``w - Q Q^T w`` by classical Gram-Schmidt done twice; returns it and ``Q^T w_original``."""
        Q = self.Q
        if Q.shape[1] == 0:
            return w, torch.zeros(0, dtype=torch.float64, device=w.device)
        h = Q.T @ w
        w = w - Q @ h
        h2 = Q.T @ w
        w = w - Q @ h2
        return w, h + h2


def matvec_float64(op: SymmetricOperator, q: Tensor) -> Tensor:
    """One product in the operator's dtype, returned in float64 on the basis device."""
    return op.matvec(q).to(device=q.device, dtype=torch.float64)


def breakdown_threshold(op: SymmetricOperator, anorm: float) -> float:
    """``beta`` below this counts as an invariant subspace: 100 eps(op dtype) ||T||."""
    eps = max(torch.finfo(op.dtype).eps, torch.finfo(torch.float64).eps)
    return 100.0 * eps * max(anorm, torch.finfo(torch.float64).tiny)


def random_unit(gen: torch.Generator, n: int, device: torch.device, rademacher: bool = False) -> Tensor:
    """A unit float64 vector of length ``n`` on ``device``: ``z / ||z||`` with ``z`` standard normal, or
    Rademacher (+-1) with ``rademacher=True``; ``gen`` (a CPU generator) draws it."""
    if rademacher:
        z = torch.randint(0, 2, (n,), generator=gen, dtype=torch.int64).to(torch.float64) * 2.0 - 1.0
    else:
        z = torch.randn(n, generator=gen, dtype=torch.float64)
    z = z.to(device)
    return z / torch.linalg.vector_norm(z)
