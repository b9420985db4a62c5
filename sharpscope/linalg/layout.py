"""Where an operator's vectors live: whole in this process, or sharded over processes.

The algorithms of :mod:`sharpscope.linalg` touch a vector in three ways besides handing it
to the operator: elementwise arithmetic (``w - Q h``, ``w / beta``), inner products
(``Q^T w``, ``||w||``) and drawing random vectors. Only the last two care where the entries
are. A :class:`VectorLayout` answers them:

* whole (the default, :meth:`VectorLayout.whole`): this process holds all ``n`` entries;
  sums are local and random vectors are drawn exactly as :func:`.basis.random_unit` draws
  them, so an algorithm given a whole layout computes what it computed before layouts.
* sharded: this process holds the entries at some global index ranges (``pieces``, in
  order; e.g. its rows of every parameter of a model sharded by FSDP2 ``fully_shard``), and
  ``reduce`` sums a tensor of partial sums over all processes (an all-reduce). An inner
  product is the reduced sum of the local partial products, so every process gets the same
  value and takes the same branch of the algorithm; a random vector is the global one
  (drawn identically on every process from the shared seed) restricted to this process's
  pieces. The Krylov basis then lives as each process's rows of it: no process ever holds
  a whole n-vector, and the algorithm's arithmetic is that of one process but for the
  order in which the partial sums are added (float64 rounding).

Nothing here communicates by itself: ``reduce`` is the caller's (e.g. an all-reduce of
``torch.distributed``, :mod:`sharpscope.sharded`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..checks import int_at_least
from ..errors import ConfigError

__all__ = ["VectorLayout", "RANDOM_CHUNK", "NORM_BLOCK", "sum_of_squares", "large_norm", "large_inner",
           "SMALL_REDUCTION"]

# a sharded layout draws its global random vector in chunks of this many entries (128 MiB of
# float64 at a time): for n up to RANDOM_CHUNK it is bit for bit the whole layout's vector
RANDOM_CHUNK = 2**24

# entries per block of :func:`sum_of_squares`: a float32 norm of 256 entries errs below 2e-7 even
# for a constant vector (the worst case: no rounding cancels; 2e-5 with 2^14-entry blocks, measured)
NORM_BLOCK = 2**8


def sum_of_squares(w: Tensor) -> Tensor:
    """sum_i w_i^2 of any tensor as a float64 scalar, accurate at any size, without a float64
    copy of ``w``. torch 2.13's CPU ``vector_norm`` (and ``Tensor.norm``, ``dot``) of a float32
    vector accumulates without cascading, so its relative error grows with n: measured
    9e-6 at 10^6 entries, 3.7e-4 at 10^7 and 1.3e-2 at 124 M (GPT-2 small's size). Here each
    block of :data:`NORM_BLOCK` entries gets a float32 norm (error below 2e-7), and the blocks'
    squares are summed in float64; a float64 ``w`` is squared and summed as it is."""
    flat = w.reshape(-1)
    if flat.dtype == torch.float64:
        return flat.square().sum()
    m = flat.numel() // NORM_BLOCK * NORM_BLOCK
    blocks = torch.linalg.vector_norm(flat[:m].view(-1, NORM_BLOCK), dim=1).double().square().sum()
    return blocks + flat[m:].double().square().sum()



# up to this many entries torch's own float32 norm (error below 1e-5, measured) and dot product (below
# 1e-6) are kept, so every model of sharpscope's zoo (at most 0.85 M parameters) keeps its numbers
SMALL_REDUCTION = 2**20


def large_norm(w: Tensor) -> float:
    """||w||: torch's own for up to :data:`SMALL_REDUCTION` entries, else from :func:`sum_of_squares`."""
    return float(w.norm()) if w.numel() <= SMALL_REDUCTION else math.sqrt(float(sum_of_squares(w)))


def large_inner(a: Tensor, b: Tensor) -> float:
    """a . b of two flat vectors: torch's own for up to :data:`SMALL_REDUCTION` entries, else
    float32 dot products of :data:`NORM_BLOCK`-entry blocks summed in float64 (a whole float32
    ``dot`` of 124 M entries was measured 6e-4 off on CPU)."""
    if a.numel() <= SMALL_REDUCTION or a.dtype == torch.float64:
        return float(a @ b)
    m = a.numel() // NORM_BLOCK * NORM_BLOCK
    blocks = torch.linalg.vecdot(a[:m].view(-1, NORM_BLOCK), b[:m].view(-1, NORM_BLOCK)).double().sum()
    return float(blocks + a[m:].double() @ b[m:].double())

class VectorLayout:
    """The entries of an ``n``-vector this process holds (module docstring).

    Args:
        n: the global dimension.
        pieces: ``(start, stop)`` global index ranges held here, ascending and disjoint;
            None: all of them (a whole layout).
        reduce: ``t -> t`` summed over every process holding a shard (in place or not);
            None: the identity (one process).
    """

    def __init__(self, n: int, pieces: Sequence[tuple[int, int]] | None = None,
                 reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        self.n = n = int_at_least("n", n, 1)
        self.sharded = pieces is not None
        self.pieces = [(0, n)] if pieces is None else [(int(a), int(b)) for a, b in pieces]
        last = 0
        for a, b in self.pieces:
            if not (last <= a <= b <= n):
                raise ConfigError(f"pieces must be ascending disjoint ranges within [0, {n}], got {list(pieces or [])}")
            last = b
        self.local_n = sum(b - a for a, b in self.pieces)
        self._reduce = reduce

    @classmethod
    def whole(cls, n: int) -> VectorLayout:
        return cls(n)

    def __repr__(self) -> str:
        return f"VectorLayout(n={self.n}, local_n={self.local_n}, sharded={self.sharded})"

    def sum(self, t: Tensor) -> Tensor:
        """Partial sums (of this process's entries) -> the global sums, on every process."""
        return t if self._reduce is None else self._reduce(t)

    def norm(self, w: Tensor) -> float:
        """The global Euclidean norm of the vector whose local entries are ``w`` (float64
        sums of squares, :func:`sum_of_squares`, except for a whole float64 vector)."""
        if self._reduce is None and w.dtype == torch.float64:
            return float(torch.linalg.vector_norm(w))
        return float(self.sum(sum_of_squares(w).reshape(1)).sqrt())

    def take(self, full: Tensor) -> Tensor:
        """This process's entries (dim 0) of a whole vector or ``(n, b)`` block."""
        if not self.sharded:
            return full
        return torch.cat([full[a:b] for a, b in self.pieces])

    def random_unit(self, gen: torch.Generator, device: torch.device, rademacher: bool = False) -> Tensor:
        """This process's entries of the unit vector ``z / ||z||`` that
        :func:`.basis.random_unit` draws from ``gen`` (Gaussian, or Rademacher), float64 on
        ``device``. Sharded, ``z`` is drawn in chunks of :data:`RANDOM_CHUNK` entries on
        every process (the same draws everywhere: ``gen`` is seeded alike), keeping this
        process's entries of each; identical to the whole vector's entries for ``n`` up to
        the chunk, a different (equally random) vector above it."""
        from .basis import random_unit

        if not self.sharded or self.n <= RANDOM_CHUNK:
            return self.take(random_unit(gen, self.n, device, rademacher=rademacher))
        parts, sumsq = [], 0.0
        for lo in range(0, self.n, RANDOM_CHUNK):
            hi = min(self.n, lo + RANDOM_CHUNK)
            if rademacher:
                z = torch.randint(0, 2, (hi - lo,), generator=gen, dtype=torch.int64).to(torch.float64) * 2.0 - 1.0
            else:
                z = torch.randn(hi - lo, generator=gen, dtype=torch.float64)
            sumsq += float(z.square().sum())
            parts += [z[max(a, lo) - lo:min(b, hi) - lo] for a, b in self.pieces if a < hi and b > lo]
        local = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
        return (local / sumsq ** 0.5).to(device)
