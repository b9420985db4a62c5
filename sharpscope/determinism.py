"""Bit-for-bit repeatable runs: deterministic algorithms and a thread count that does not
depend on the machine.

Two runs of the same command on the same machine, software and settings give the same
bits when (1) every kernel is deterministic (``torch.use_deterministic_algorithms``: on CUDA
this rules out atomics-based reductions such as ``index_add_`` / scatter-add backward and
needs ``CUBLAS_WORKSPACE_CONFIG``; cuDNN must not benchmark-pick algorithms) and (2) the
summation order is fixed, which on CPU means the same intra-op thread count: torch splits
reductions and matrix products per thread, so 1 and 2 threads round differently (measured
in docs/reproducibility.md). sharpscope's default thread count follows the CPUs a process
may use (:mod:`sharpscope.cpu`), so it changes with the machine and with ``sweep --jobs``;
under ``--deterministic`` it is the one the user chose (``--threads`` / SHARPSCOPE_THREADS)
or else :data:`DETERMINISTIC_THREADS`.

What this does not give: the same bits across CPU instruction sets (AVX2 vs AVX512 kernels),
devices, or torch / BLAS versions; :mod:`sharpscope.provenance` records those, so results
can be compared like with like.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from .cpu import DETERMINISTIC_THREADS, deterministic_threads, set_threads

__all__ = ["enable_deterministic", "deterministic", "DETERMINISTIC_THREADS"]


def enable_deterministic(threads: int | None = None) -> int:
    """Turn on deterministic algorithms for the rest of the process and fix the thread count
    (``threads``, else the user's choice, else :data:`DETERMINISTIC_THREADS`); returns it.
    Sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless already set (CUDA's deterministic GEMMs)."""
    count = deterministic_threads(threads)  # (checks ``threads`` before anything changes)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    return set_threads(count)


@contextlib.contextmanager
def deterministic(threads: int | None = None) -> Iterator[int]:
    """:func:`enable_deterministic` inside the block; the previous settings (deterministic
    algorithms and their warn-only mode, cuDNN flags, thread count) come back on exit.
    Yields the thread count."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.get_num_threads())
    try:
        yield enable_deterministic(threads)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2], before[3]
        set_threads(before[4])
