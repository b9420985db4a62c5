"""Peak resident memory of one operation, read in a fresh process (shared by the memory benchmarks).

torch's CPU tensors come from malloc, which tracemalloc does not see; the resident set size
(RSS) does. :func:`peak_rss_above` runs ``fn`` once and returns the process's peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``) minus the RSS just before ``fn``: the operation's own
peak, provided the set-up before it peaked lower (else it raises: the operation's peak is hidden).
Run it in a fresh process started with :func:`measuring_env`: glibc's
``MALLOC_MMAP_THRESHOLD_=65536`` mmaps every block over 64 KiB and returns it to the system
when freed, so the RSS tracks the live tensors rather than the allocator's retention (glibc's
default threshold rises to 32 MiB after a large free, and freed blocks then stay resident).
"""

from __future__ import annotations

import os
import resource
import time
from typing import Any, Callable

MMAP_THRESHOLD = "65536"


def measuring_env(**extra: str) -> dict[str, str]:
    """This process's environment with glibc returning freed blocks over 64 KiB (module docstring)."""
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD), **extra}


def current_rss() -> int:
    """The resident set size of this process in bytes (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_above(fn: Callable[[], Any]) -> tuple[int, float, Any]:
    """(peak RSS during ``fn`` minus the RSS before it, in bytes; its wall time in s; its result)."""
    before = current_rss()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    start = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if peak <= peak_before:
        raise RuntimeError("the set-up's peak RSS exceeds the operation's: its own peak is not known")
    return peak - before, wall, out
