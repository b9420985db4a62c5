"""Bit-for-bit repeatable runs (docs/reproducibility.md): deterministic kernels and, on CPU, a
fixed thread count (the user's or :data:`DETERMINISTIC_THREADS`) for a fixed summation order;
instruction sets, devices and library versions still differ (:mod:`sharpscope.provenance`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from .cpu import DETERMINISTIC_THREADS, deterministic_threads, set_threads

__all__ = ["enable_deterministic", "deterministic", "DETERMINISTIC_THREADS"]


def enable_deterministic(threads: int | None = None) -> int:
    """Turn on deterministic algorithms for the rest of the process (``CUBLAS_WORKSPACE_CONFIG``
    defaults to ``:4096:8``) and fix the thread count (:func:`sharpscope.cpu.deterministic_threads`); returns it."""
    count = deterministic_threads(threads)  # (checks ``threads`` before anything changes)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    return set_threads(count)


@contextlib.contextmanager
def deterministic(threads: int | None = None) -> Iterator[int]:
    """:func:`enable_deterministic` inside the block (yields the thread count); the previous
    settings come back on exit."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.get_num_threads())
    try:
        yield enable_deterministic(threads)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2], before[3]
        set_threads(before[4])
