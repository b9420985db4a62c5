"""Krylov bases planned within a memory budget: which dtype, how many columns, whether to restart.

A Lanczos basis of ``m`` vectors over ``n`` parameters holds ``n m`` numbers; at 124 M
parameters one float64 vector is 0.99 GB, so 30 steps need 30 GB. Within a budget of
``B`` bytes an analysis holds

    basis                n * c * bytes(dtype)            c columns, float64 / float32 / float16 (bfloat16)
    working vectors      2 * n * bytes(work)             the vector multiplied and the product
                         + n * bytes(dtype)              (coarser basis) a column's copy as it is stored
                         + n * bytes(op dtype)           its cast, when the operator computes in another dtype
                         4 * n * 8 for a float64 basis   (today's float64 steps also hold two temporaries)
    Ritz vectors         k * n * bytes(op dtype)         only when the eigenvectors are asked for
    chunk buffers        3 * min(n, rows) * (c + 1) * 8  a lower-precision basis is read in chunks of
                                                         about 1 MiB, cast to float64

(``work`` = :func:`~sharpscope.linalg.basis.work_dtype`). The model and its products' own
graph are outside the budget: they cost the same whatever the analysis holds.

The plan (:func:`plan_basis`), first that fits (or the dtype asked for):

1. a float64, then a float32 basis of every step (``steps``): float64's numbers are today's;
   float32's eigenvalues match them (the Rayleigh-Ritz of :mod:`~sharpscope.linalg.restart`
   uses the stored basis's Gram matrix; measured in /work/notes/h34-readme.md);
2. thick restarts (:mod:`sharpscope.linalg.restart`) with a float32 basis of a comfortable
   ``max(2k + 10, 20)`` columns or more;
3. a float16 basis of every step (scaled into float16's range,
   :func:`~sharpscope.linalg.basis.storage_scale`; its rounding bounds the certified relative
   residual near ``1e-4``, though the eigenvalues stay far more accurate);
4. thick restarts with as many float32 columns as fit, at least ``k + 2`` (the ``k`` wanted
   Ritz vectors kept, two new steps per cycle), then with float16 ones (whose restarts bound
   the certified residual near ``eps(float16) ||A||``, about 1e-3 relative).

float16 rather than bfloat16, the same two bytes: 11 significant bits against 8, so 8x less
rounding, and a unit vector's entries, scaled by a power of two, sit well inside its range. With
12 columns on a clustered top 5 (tests/test_lanczos_memory.py), float16 converges in the products
float32 takes, where bfloat16's certified residuals stop near 7.5e-3 of the values and never reach
a tolerance below it; at 124 M parameters bfloat16 did not certify tol 1e-2 in 300 products.
bfloat16 is still there when asked for (``basis_dtype``).

SLQ (no ``k``) cannot restart: its quadrature needs all its steps (1 and 3 only). When even the
smallest plan does not fit, :class:`~sharpscope.errors.MemoryBudgetError` says what it would
need, before any product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import size_text
from ..errors import ConfigError, MemoryBudgetError
from .basis import CHUNK_BYTES, work_dtype

__all__ = ["BASIS_DTYPES", "BasisPlan", "parse_basis_dtype", "plan_basis"]

BASIS_DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
                "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class BasisPlan:
    """A basis that fits: its dtype, its columns, whether Lanczos restarts (columns < steps),
    the working dtype and the bytes the plan holds."""

    dtype: torch.dtype
    capacity: int
    restart: bool
    work: torch.dtype
    bytes: int


def parse_basis_dtype(value: object) -> torch.dtype | None:
    """``None``, a name of :data:`BASIS_DTYPES` or one of its dtypes, as a dtype (ConfigError otherwise)."""
    if value is None or value in BASIS_DTYPES.values():
        return value  # type: ignore[return-value]
    if isinstance(value, str) and value in BASIS_DTYPES:
        return BASIS_DTYPES[value]
    raise ConfigError(f"basis dtype must be one of {', '.join(BASIS_DTYPES)}, got {value!r}")


def _bytes(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits // 8


def plan_basis(n: int, steps: int, memory_bytes: float, op_dtype: torch.dtype, *, k: int | None = None,
               dtype: torch.dtype | None = None, vectors: bool = False, what: str = "Lanczos") -> BasisPlan:
    """The basis of a Lanczos run (``k`` wanted pairs) or of one SLQ run (``k=None``) of up to
    ``steps`` steps over ``n`` entries within ``memory_bytes`` (module docstring); ``vectors``
    counts the ``k`` Ritz vectors returned. Raises :class:`MemoryBudgetError` when nothing fits."""
    steps = min(steps, n)

    def held(dt: torch.dtype, c: int) -> int:
        work = work_dtype(dt, op_dtype)
        if dt == torch.float64:
            vecs = 4 * n * 8
        else:  # chunks of rows cast to float64 or to the working dtype, a few alive at once
            chunk = min(n, max(1024, CHUNK_BYTES // (c * 8))) * (c + 1) * 8
            vecs = 2 * n * _bytes(work) + 3 * chunk + n * _bytes(dt)  # and a column's copy as it is stored
        vecs += n * _bytes(op_dtype) if work != op_dtype else 0
        return vecs + ((k or 0) * n * _bytes(op_dtype) if vectors else 0) + n * c * _bytes(dt)

    def columns(dt: torch.dtype) -> int:
        c = min(steps, int(memory_bytes // (n * _bytes(dt))))
        while c > 0 and held(dt, c) > memory_bytes:
            c -= 1
        return c

    def plan(dt: torch.dtype, c: int) -> BasisPlan:
        return BasisPlan(dt, c, c < steps, work_dtype(dt, op_dtype), held(dt, c))

    f64, f32, f16 = BASIS_DTYPES["float64"], BASIS_DTYPES["float32"], BASIS_DTYPES["float16"]
    least = steps if k is None else min(steps, k + 2)
    comfortable = steps if k is None else min(steps, max(2 * k + 10, 20))
    order = [(f64, steps), (f32, steps), (f32, comfortable), (f16, steps), (f32, least), (f16, least)]
    if dtype is not None:
        order = [(dtype, steps), (dtype, least)]
    for dt, wanted in order:
        if columns(dt) >= wanted:
            return plan(dt, min(steps, columns(dt)))
    smallest = dtype or f16
    need = held(smallest, least)
    what_held = f"a basis of {least:,} {str(smallest).removeprefix('torch.')} vectors and the working vectors"
    raise MemoryBudgetError(f"{what} over {n:,} parameters needs at least {size_text(need)} ({what_held}), "
                            f"more than the memory budget of {size_text(memory_bytes)}")
