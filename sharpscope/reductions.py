"""Sums over millions of entries that stay accurate: norms and inner products of long vectors.

torch 2.13's CPU ``vector_norm`` (and ``Tensor.norm``, ``dot``, ``@`` of two vectors) of a
float32 tensor accumulates without cascading, so its relative error grows with the length:
measured 9e-6 at 10^6 entries, 3.7e-4 at 10^7 and 1.3e-2 at 124 M (GPT-2 small's size; the
dot product 6e-4 there), while ``sum`` cascades. Here blocks of :data:`NORM_BLOCK` entries
get float32 norms or dot products and the blocks are summed in float64: one pass, no float64
copy of the vector. Up to :data:`SMALL_REDUCTION` entries torch's own reduction is kept, so
every model of sharpscope's zoo (at most 0.85 M parameters) keeps its numbers bit for bit.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["NORM_BLOCK", "SMALL_REDUCTION", "sum_of_squares", "norm", "large_norm", "large_inner", "norms"]

# entries per block of :func:`sum_of_squares`: a float32 norm of 256 entries errs below 2e-7 even
# for a constant vector (the worst case: no rounding cancels; 2e-5 with 2^14-entry blocks, measured)
NORM_BLOCK = 2**8


def sum_of_squares(w: Tensor) -> Tensor:
    """sum_i w_i^2 of any tensor as a float64 scalar, accurate at any size (module docstring): the
    float32 norms of blocks of :data:`NORM_BLOCK` entries (error below 2e-7), squared and summed
    in float64; a float64 ``w`` is squared and summed as it is."""
    flat = w.reshape(-1)
    if flat.dtype == torch.float64:
        return flat.square().sum()
    m = flat.numel() // NORM_BLOCK * NORM_BLOCK
    blocks = torch.linalg.vector_norm(_blocks(flat, m), dim=1).double().square().sum()
    return blocks + flat[m:].double().square().sum()


def _blocks(flat: Tensor, m: int) -> Tensor:
    """The first ``m`` entries as rows of :data:`NORM_BLOCK`, in float32 at least (a bfloat16
    block norm would be rounded to 8 bits)."""
    rows = flat[:m].view(-1, NORM_BLOCK)
    return rows.float() if rows.dtype in (torch.float16, torch.bfloat16) else rows

# up to this many entries torch's own float32 norm (error below 1e-5, measured) and dot product (below
# 1e-6) are kept, so every model of sharpscope's zoo (at most 0.85 M parameters) keeps its numbers
SMALL_REDUCTION = 2**20


def norm(w: Tensor) -> Tensor:
    """||w|| as a 0-dim tensor of ``w``'s dtype: torch's own for up to :data:`SMALL_REDUCTION`
    entries, else from :func:`sum_of_squares`."""
    return torch.linalg.vector_norm(w) if w.numel() <= SMALL_REDUCTION else sum_of_squares(w).sqrt().to(w.dtype)


def large_norm(w: Tensor) -> float:
    """:func:`norm` as a float."""
    return float(norm(w))


def norms(tensors: list[Tensor]) -> list[Tensor]:
    """:func:`norm` of each tensor, the small ones in one ``torch._foreach_norm``."""
    small = [t for t in tensors if t.numel() <= SMALL_REDUCTION]
    small_norms = iter(torch._foreach_norm(small, 2) if small else ())
    return [next(small_norms) if t.numel() <= SMALL_REDUCTION else norm(t) for t in tensors]


def large_inner(a: Tensor, b: Tensor) -> float:
    """a . b of two flat vectors: torch's own for up to :data:`SMALL_REDUCTION` entries, else
    float32 dot products of :data:`NORM_BLOCK`-entry blocks summed in float64 (a whole float32
    ``dot`` of 124 M entries was measured 6e-4 off on CPU)."""
    if a.numel() <= SMALL_REDUCTION or a.dtype == torch.float64:
        return float(a @ b)
    m = a.numel() // NORM_BLOCK * NORM_BLOCK
    blocks = torch.linalg.vecdot(_blocks(a, m), _blocks(b, m)).double().sum()
    return float(blocks + a[m:].double() @ b[m:].double())
