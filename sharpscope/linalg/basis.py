"""What Lanczos and stochastic Lanczos quadrature share: an orthonormal basis (classical
Gram-Schmidt twice, Giraud, Langou & Rozloznik 2005; a lower-precision basis's second pass only
where the first cancelled, Daniel, Gragg, Kaufman & Stewart 1976) stored in float64 (default),
float32, float16 (scaled, :func:`storage_scale`) or bfloat16 on any device, breakdown
threshold, start vectors, eigh of T_m."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from ..errors import ConfigError
from .layout import VectorLayout
from .operator import SymmetricOperator

__all__ = ["Basis", "matvec_work", "work_dtype", "breakdown_threshold", "random_unit",
           "tridiagonal_eigh", "wanted_key", "storage_scale", "CHUNK_BYTES"]


def storage_scale(dtype: torch.dtype, n: int) -> float:
    """The power of two a basis vector is multiplied by as it is stored in ``dtype`` (divided by
    as it is read: both exact). float16 keeps 11 significant bits (bfloat16 8) but only from
    6.1e-5 up to 65504, and the entries of a unit vector of ``n`` entries are about
    1 / sqrt(n) (9e-5 at 124 M, at the edge of the range): stored times 2^floor(log2 sqrt(n))
    (at most 2^14, so even an entry of 1 fits) they are about 1, normal float16 numbers.
    1 for every other dtype."""
    if dtype != torch.float16:
        return 1.0
    return 2.0 ** min(14, max(0, math.floor(0.5 * math.log2(max(1, n)))))


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


# The plain float64 path reads its basis (rotations, Ritz vectors) in chunks of rows of about this
# many bytes; a lower-precision basis is read in chunks of entries of about CHUNK_BYTES in float64,
# small enough to stay in a core's L2 cache while it is subtracted and projected (measured at
# n = 2e7, 10 bfloat16 columns, 1 thread: a step's passes took 0.38 s in 1 MiB chunks, 0.43 s in
# 4 MiB ones and 0.48 s in 256 KiB ones).
PLAIN_CHUNK_BYTES = 8 << 20
CHUNK_BYTES = 1 << 20
# Daniel, Gragg, Kaufman & Stewart (1976): a second Gram-Schmidt pass only when the first left
# less than this fraction of the vector's norm (the cancellation that amplifies its rounding).
DGKS = 2**-0.5


class Basis:
    """A growing orthonormal basis ``Q`` (n x size) with CGS2 orthogonalization, stored in
    ``dtype`` on ``device`` (default float64 on the operator's device).

    The working vectors (the product, the vector being orthogonalized) are in
    :func:`work_dtype`: float64 for a float64 basis, else the finer of the operator's dtype
    and float32. The float64 basis of the default analyses is an ``n x capacity`` matrix used
    whole. Any other (a coarser dtype, or another device than the working vectors') stores
    ``Q^T`` (``capacity x n``: each basis vector contiguous, so appending one writes ``n``
    consecutive entries) and is read in chunks of entries cast to float64 (the projections
    Rayleigh-Ritz uses) or to the working dtype (subtractions), so no full-size temporary is
    made and each pass over the basis reads it once (see :meth:`orthogonalize`).
    :meth:`append` returns the vector as stored: the algorithm multiplies the rounded vector it
    keeps, so the basis and the products stay consistent (the rounding shows only as a loss of
    orthogonality of about ``eps(dtype) / sqrt(n)`` per pair; measured in /work/notes/h34-readme.md).

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
        self.scale = storage_scale(dtype, self.layout.n)
        # the plain float64 path of the default analyses, kept operation for operation
        self._plain = dtype == work == torch.float64 and (work_device is None or torch.device(work_device) == device)
        if self._plain:
            self._Q = torch.empty(n, max(1, capacity), dtype=dtype, device=device)
        else:  # Q^T: a basis vector per row
            self._T = torch.empty(max(1, capacity), n, dtype=dtype, device=device)

    @property
    def Q(self) -> Tensor:
        return self._Q[:, : self.size] if self._plain else self._T[: self.size].T

    @property
    def capacity(self) -> int:
        return self._Q.shape[1] if self._plain else self._T.shape[0]

    def append(self, q: Tensor) -> Tensor:
        """Store ``q`` as the next column; returns it as stored (``q`` itself for float64)."""
        if self.size == self.capacity:
            if self.fixed:
                raise RuntimeError(f"the basis is full ({self.size} columns)")
            if self._plain:
                grown = torch.empty(self.n, 2 * self._Q.shape[1], dtype=self.dtype, device=self.device)
                grown[:, : self.size] = self._Q[:, : self.size]
                self._Q = grown
            else:
                grown = torch.empty(2 * self._T.shape[0], self.n, dtype=self.dtype, device=self.device)
                grown[: self.size] = self._T[: self.size]
                self._T = grown
        if self._plain:
            self._Q[:, self.size] = q
            self.size += 1
            return q
        self._store(self._T[self.size], q)
        self.size += 1
        stored = self._T[self.size - 1].to(device=q.device, dtype=self.work)
        return stored.mul_(1.0 / self.scale) if self.scale != 1.0 else stored

    def _store(self, target: Tensor, values: Tensor) -> None:
        """``target`` (rows of ``Q^T``) = ``values`` (unit vectors, or a chunk of them) times
        :attr:`scale`, rounded to the basis's dtype; a whole vector is scaled a chunk at a time
        before the cast (no full-size temporary; float16 never sees the unscaled entries)."""
        if self.scale == 1.0:
            target.copy_(values)
        elif values.dim() == 2:
            target.copy_(values * self.scale)
        else:
            step = CHUNK_BYTES // 4
            for a in range(0, values.shape[0], step):
                target[a : a + step] = values[a : a + step].to(self.work) * self.scale

    def _rows(self, cols: int, dtype: torch.dtype | None = None) -> int:
        """Entries per chunk so ``cols`` columns of a chunk cast to ``dtype`` (default the
        working dtype) take about :data:`CHUNK_BYTES` (:data:`PLAIN_CHUNK_BYTES` for float64)."""
        budget = PLAIN_CHUNK_BYTES if self._plain else CHUNK_BYTES
        return max(1024, budget // max(1, cols * torch.finfo(dtype or self.work).bits // 8))

    def _chunks(self, cols: int, dtype: torch.dtype) -> list[slice]:
        step = self._rows(cols, dtype)
        return [slice(a, min(a + step, self.n)) for a in range(0, self.n, step)]

    def _parts(self, cols: int, dtype: torch.dtype, device: torch.device) -> Iterator[tuple[slice, Tensor]]:
        """Each chunk of entries and its ``Q[rows]^T`` (size x chunk, contiguous) cast to
        ``dtype`` on ``device``, copied into one buffer reused across the chunks (one allocation
        per pass: with glibc returning freed blocks over 64 KiB to the system, as the memory
        benchmarks run it, a fresh chunk each time cost a page fault per 4 KiB, 3-4x the pass)."""
        chunks = self._chunks(cols, dtype)
        buffer = torch.empty(self.size * (chunks[0].stop - chunks[0].start), dtype=dtype, device=device)
        for rows in chunks:
            part = buffer[: self.size * (rows.stop - rows.start)].view(self.size, -1)
            part.copy_(self._Q[rows, : self.size].T if self._plain else self._T[: self.size, rows])
            if self.scale != 1.0:
                part.mul_(1.0 / self.scale)
            yield rows, part

    def _project(self, w: tuple[Tensor, ...]) -> tuple[Tensor, float]:
        """``Q^T w`` for each vector of ``w``, ``(size, len(w))`` float64 on their device, and, from
        the same pass over the basis (in chunks), ``||w[0]||``: a float32 dot product over millions
        of entries would lose digits (measured: 8e-4 relative Ritz-value errors at n = 400,000 with
        a whole float32 dot), so each chunk is cast to float64 and the sums run in float64."""
        device = w[0].device
        h = torch.zeros(self.size, len(w), dtype=torch.float64, device=device)
        squares = torch.zeros((), dtype=torch.float64, device=device)
        vectors = None
        for rows, part in self._parts(self.size, torch.float64, device):
            if vectors is None:
                vectors = torch.empty(len(w), part.shape[1], dtype=torch.float64, device=device)
            v = vectors[:, : part.shape[1]]
            for i, x in enumerate(w):
                v[i].copy_(x[rows])
            h.addmm_(part, v.T)
            squares += torch.dot(v[0], v[0])
        return self.layout.sum(h), float(self.layout.sum(squares)) ** 0.5

    def subtract(self, w: Tensor, h: Tensor) -> None:
        """``w -= Q h`` in place (chunks; ``h`` float64, applied in the working dtype)."""
        hw = h.to(device=w.device, dtype=self.work)
        for rows, part in self._parts(self.size, self.work, w.device):
            w[rows].addmv_(part.T, hw, alpha=-1)

    def _subtract_project(self, w: Tensor, h: Tensor) -> tuple[Tensor, float]:
        """``w -= Q h`` in place (as :meth:`subtract`) and, in the same pass over the basis,
        ``Q^T w`` and ``||w||`` of the result, each chunk's dot products in the working dtype and
        their sums in float64. Only the second Gram-Schmidt pass uses them: its coefficients
        remove what the first left, so their relative error (a float32 dot of ``m`` entries
        errs by at most ``m u ||q|| ||w||``, typically ``sqrt(m) u``) only sets how nearly
        orthogonal the remainder ends, and the Gram matrix of the stored basis records that."""
        hw = h.to(device=w.device, dtype=self.work)
        h2 = torch.zeros(self.size, dtype=torch.float64, device=w.device)
        squares = torch.zeros((), dtype=torch.float64, device=w.device)
        for rows, part in self._parts(self.size, self.work, w.device):
            piece = w[rows]
            piece.addmv_(part.T, hw, alpha=-1)
            h2 += (part @ piece).double()
            squares += torch.dot(piece, piece).double()
        return self.layout.sum(h2), float(self.layout.sum(squares)) ** 0.5

    def combine(self, Y: Tensor, out: Tensor) -> Tensor:
        """``out = Q Y`` for a float64 ``(size, c)`` matrix ``Y`` (chunks of rows; ``out`` any dtype)."""
        Yw = Y.to(device=out.device, dtype=self.work)
        if self._plain:
            for rows in self._chunks(self.size + Y.shape[1], self.work):
                out[rows] = self._Q[rows, : self.size].to(device=out.device, dtype=self.work) @ Yw
            return out
        for rows, part in self._parts(self.size + Y.shape[1], self.work, out.device):
            out[rows] = part.T @ Yw
        return out

    def rotate(self, Y: Tensor, f: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Thick restart: ``Q <- Q Y`` in place for a float64 ``(size, l)`` matrix ``Y``; the
        basis keeps ``l`` columns. Each chunk of rows depends only on the same rows, so it is
        overwritten as it is computed (no second basis). The storage rounds the new columns,
        ``Q_s = Q Y + E``; returned (float64, CPU) so the caller can correct its projections:
        ``C = E^T Q Y``, ``D = E^T E``, ``c = E^T f`` for the vector ``f`` and the norms of
        the columns of ``E`` (all zero for a float64 basis)."""
        if self._plain:
            return self._rotate_plain(Y)
        l = Y.shape[1]
        Yt = Y.T.to(device=self.device, dtype=self.work)
        sums = torch.zeros(l, 2 * l + 1, dtype=torch.float64, device=self.device)  # C, D and c side by side
        buffers: list[Tensor] = []
        for rows, part in self._parts(self.size + l, self.work, self.device):
            if not buffers:
                buffers = [torch.empty(l * part.shape[1], dtype=self.work, device=self.device) for _ in range(2)]
            exact, E = (b[: l * part.shape[1]].view(l, -1) for b in buffers)
            torch.mm(Yt, part, out=exact)
            self._store(self._T[:l, rows], exact)
            E.copy_(self._T[:l, rows]).mul_(1.0 / self.scale).sub_(exact)
            sums[:, :l] += (E @ exact.T).double()
            sums[:, l : 2 * l] += (E @ E.T).double()
            sums[:, 2 * l] += (E @ f[rows].to(device=self.device, dtype=self.work)).double()
        self.size = l
        sums = sums.cpu()
        C, D, c = sums[:, :l].clone(), sums[:, l : 2 * l].clone(), sums[:, 2 * l].clone()
        return C, D, c, D.diagonal().clamp_min(0).sqrt()

    def _rotate_plain(self, Y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """:meth:`rotate` of the plain float64 basis (exact storage: no rounding terms)."""
        l = Y.shape[1]
        Yw = Y.to(device=self.device, dtype=torch.float64)
        step = self._rows(self.size + l)
        for a in range(0, self.n, step):
            self._Q[a : a + step, :l] = self._Q[a : a + step, : self.size].to(dtype=torch.float64) @ Yw
        self.size = l
        zeros = torch.zeros(l, l, dtype=torch.float64)
        return zeros, zeros.clone(), torch.zeros(l, dtype=torch.float64), torch.zeros(l, dtype=torch.float64)

    def orthogonalize(self, w: Tensor, x: Tensor | None = None) -> tuple[Tensor, ...]:
        """``w - Q Q^T w`` by classical Gram-Schmidt done twice; returns it and ``Q^T w_original``
        (float64), and ``Q^T x`` when a vector ``x`` is given (from the same pass).

        For a float64 basis the second pass's coefficients are added to the first (they correct
        its rounding). A lower-precision basis is orthonormal only to its rounding (``Q^T Q = G
        != I``), so the first pass's ``Q^T w``, exactly the projection the Rayleigh-Ritz matrix
        ``Q^T A Q`` needs, is returned, and ``w`` is updated in place in at most three passes
        over the basis: ``h = Q^T w`` (and ``Q^T x``); ``w -= Q h`` fused with ``h2 = Q^T w`` and
        ``||w||``; ``w -= Q h2`` only if the first pass cancelled more than ``1 - 1/sqrt(2)`` of
        ``||w||`` (DGKS, Daniel, Gragg, Kaufman & Stewart 1976: otherwise the first pass's
        rounding, ``O(u ||w||)``, is already ``O(u)`` of what is left, and its remainder
        ``Q^T w = (I - G) h`` is at the basis's own loss of orthogonality, which ``G`` records)."""
        if self.size == 0:
            empty = torch.zeros(0, dtype=torch.float64, device=w.device)
            return (w, empty) if x is None else (w, empty, empty)
        if not self._plain:
            both, before = self._project((w,) if x is None else (w, x))
            h2, after = self._subtract_project(w, both[:, 0])
            if after < DGKS * before:
                self.subtract(w, h2)
            return (w, both[:, 0]) if x is None else (w, both[:, 0], both[:, 1])
        Q = self.Q
        h = self.layout.sum(Q.T @ w)
        w = w - Q @ h
        h2 = self.layout.sum(Q.T @ w)
        w = w - Q @ h2
        return (w, h + h2) if x is None else (w, h + h2, self.layout.sum(Q.T @ x))


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
