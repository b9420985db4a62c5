"""What Lanczos and stochastic Lanczos quadrature share: an orthonormal basis (classical
Gram-Schmidt twice, Giraud, Langou & Rozloznik 2005) stored in float64 (default), float32 or
bfloat16 on any device, breakdown threshold, start vectors, eigh of T_m."""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from ..errors import ConfigError
from .layout import VectorLayout
from .operator import SymmetricOperator

__all__ = ["Basis", "matvec_work", "work_dtype", "breakdown_threshold", "random_unit",
           "tridiagonal_eigh", "wanted_key", "CHUNK_BYTES"]


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


# A lower-precision basis is read in chunks of rows of about this many bytes in the working dtype.
CHUNK_BYTES = 8 << 20


class Basis:
    """A growing orthonormal basis ``Q`` (n x size) with CGS2 orthogonalization, stored in
    ``dtype`` on ``device`` (default float64 on the operator's device).

    The working vectors (the product, the vector being orthogonalized) are in
    :func:`work_dtype`: float64 for a float64 basis, else the finer of the operator's dtype
    and float32. A lower-precision basis (float32, bfloat16) is read in chunks of rows cast
    to the working dtype, so no full-size temporary is made, and :meth:`append` returns the
    vector as stored: the algorithm multiplies the rounded vector it keeps, so the basis and
    the products stay consistent (the rounding shows only as a loss of orthogonality of
    about ``eps(dtype) / sqrt(n)`` per pair; measured in /work/notes/h34-readme.md).

    ``fixed=True`` allocates ``capacity`` columns once and never grows (a memory budget):
    appending beyond it is a bug of the caller. With a sharded ``layout`` (float64 only), this
    process's ``layout.local_n`` rows of it (``n`` is then ignored), the products ``Q^T w``
    summed over the processes (:mod:`.layout`).
    """

    def __init__(self, n: int, device: torch.device, capacity: int, dtype: torch.dtype = torch.float64,
                 work: torch.dtype = torch.float64, fixed: bool = False,
                 work_device: torch.device | None = None, layout: VectorLayout | None = None) -> None:
        self.layout = VectorLayout.whole(n) if layout is None else layout
        n = self.layout.local_n
        self.n = n
        self.device = device
        self.dtype = dtype
        self.work = work
        self.fixed = fixed
        self.size = 0
        self._Q = torch.empty(n, max(1, capacity), dtype=dtype, device=device)
        # the plain float64 path of the default analyses, kept operation for operation
        self._plain = dtype == work == torch.float64 and (work_device is None or torch.device(work_device) == device)

    @property
    def Q(self) -> Tensor:
        return self._Q[:, : self.size]

    @property
    def capacity(self) -> int:
        return self._Q.shape[1]

    def append(self, q: Tensor) -> Tensor:
        """Store ``q`` as the next column; returns it as stored (``q`` itself for float64)."""
        if self.size == self._Q.shape[1]:
            if self.fixed:
                raise RuntimeError(f"the basis is full ({self.size} columns)")
            grown = torch.empty(self.n, 2 * self._Q.shape[1], dtype=self.dtype, device=self.device)
            grown[:, : self.size] = self._Q[:, : self.size]
            self._Q = grown
        self._Q[:, self.size] = q
        self.size += 1
        if self._plain:
            return q
        return self._Q[:, self.size - 1].to(device=q.device, dtype=self.work)

    def _rows(self, cols: int, dtype: torch.dtype | None = None) -> int:
        """Rows per chunk so a chunk cast to ``dtype`` (the working dtype) stays near :data:`CHUNK_BYTES`."""
        return max(1024, CHUNK_BYTES // max(1, cols * torch.finfo(dtype or self.work).bits // 8))

    def project(self, w: Tensor) -> Tensor:
        """``Q^T w`` in float64 on ``w``'s device (chunks of rows): a float32 dot product over
        millions of entries would lose digits (measured: 8e-4 relative Ritz-value errors at
        n = 400,000), so each chunk is cast to float64 and the sums run in float64."""
        size = self.size
        h = torch.zeros(size, dtype=torch.float64, device=w.device)
        step = self._rows(size, torch.float64)
        for a in range(0, self.n, step):
            h += self._Q[a : a + step, :size].to(device=w.device, dtype=torch.float64).T @ w[a : a + step].double()
        return self.layout.sum(h)

    def subtract(self, w: Tensor, h: Tensor) -> None:
        """``w -= Q h`` in place (chunks of rows; ``h`` float64, applied in the working dtype)."""
        size = self.size
        step = self._rows(size)
        hw = h.to(self.work)
        for a in range(0, self.n, step):
            w[a : a + step] -= self._Q[a : a + step, :size].to(device=w.device, dtype=self.work) @ hw

    def combine(self, Y: Tensor, out: Tensor) -> Tensor:
        """``out = Q Y`` for a float64 ``(size, c)`` matrix ``Y`` (chunks of rows; ``out`` any dtype)."""
        Yw = Y.to(device=out.device, dtype=self.work)
        step = self._rows(self.size + Y.shape[1])
        for a in range(0, self.n, step):
            out[a : a + step] = self._Q[a : a + step, : self.size].to(device=out.device, dtype=self.work) @ Yw
        return out

    def rotate(self, Y: Tensor, f: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Thick restart: ``Q <- Q Y`` in place for a float64 ``(size, l)`` matrix ``Y``; the
        basis keeps ``l`` columns. Each chunk of rows depends only on the same rows, so it is
        overwritten as it is computed (no second basis). The storage rounds the new columns,
        ``Q_s = Q Y + E``; returned (float64, CPU) so the caller can correct its projections:
        ``C = E^T Q Y``, ``D = E^T E``, ``c = E^T f`` for the vector ``f`` and the norms of
        the columns of ``E`` (all zero for a float64 basis)."""
        l = Y.shape[1]
        dtype = torch.float64 if self._plain else self.work
        Yw = Y.to(device=self.device, dtype=dtype)
        step = self._rows(self.size + l)
        C, D = torch.zeros(l, l, dtype=torch.float64), torch.zeros(l, l, dtype=torch.float64)
        c = torch.zeros(l, dtype=torch.float64)
        for a in range(0, self.n, step):
            exact = self._Q[a : a + step, : self.size].to(dtype=dtype) @ Yw
            self._Q[a : a + step, :l] = exact
            if not self._plain:
                E = self._Q[a : a + step, :l].to(dtype) - exact
                C += (E.T @ exact).double().cpu()
                D += (E.T @ E).double().cpu()
                c += (E.T @ f[a : a + step].to(device=self.device, dtype=dtype)).double().cpu()
        self.size = l
        return C, D, c, D.diagonal().clamp_min(0).sqrt()

    def orthogonalize(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """``w - Q Q^T w`` by classical Gram-Schmidt done twice; returns it and ``Q^T w_original``
        (float64). For a float64 basis the second pass's coefficients are added to the first
        (they correct its rounding); a lower-precision basis is orthonormal only to its
        rounding (``Q^T Q = G != I``), so the first pass's ``Q^T w``, exactly the projection the
        Rayleigh-Ritz matrix ``Q^T A Q`` needs, is returned, and ``w`` is updated in place."""
        if self.size == 0:
            return w, torch.zeros(0, dtype=torch.float64, device=w.device)
        if not self._plain:
            h = self.project(w)
            self.subtract(w, h)
            self.subtract(w, self.project(w))
            return w, h
        Q = self.Q
        h = self.layout.sum(Q.T @ w)
        w = w - Q @ h
        h2 = self.layout.sum(Q.T @ w)
        w = w - Q @ h2
        return w, h + h2


def work_dtype(storage: torch.dtype, op_dtype: torch.dtype) -> torch.dtype:
    """The working vectors' dtype for a basis stored in ``storage``: float64 for a float64
    basis (the default, today's arithmetic), else the finer of the operator's dtype and float32."""
    if storage == torch.float64:
        return torch.float64
    return torch.promote_types(torch.promote_types(storage, op_dtype), torch.float32)


def matvec_work(op: SymmetricOperator, q: Tensor) -> Tensor:
    """One product in the operator's dtype, returned in ``q``'s dtype and device."""
    return op.matvec(q).to(device=q.device, dtype=q.dtype)


def wanted_key(values: Tensor, which: str) -> Tensor:
    """A key that is larger for the more wanted value (``which``: LA, SA or LM)."""
    if which == "LA":
        return values
    if which == "SA":
        return -values
    return values.abs()


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
