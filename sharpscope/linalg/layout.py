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

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..checks import int_at_least
from ..errors import ConfigError
from ..reductions import sum_of_squares

__all__ = ["VectorLayout", "RANDOM_CHUNK"]

# a sharded layout draws its global random vector in chunks of this many entries (128 MiB of
# float64 at a time): for n up to RANDOM_CHUNK it is bit for bit the whole layout's vector
RANDOM_CHUNK = 2**24


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
