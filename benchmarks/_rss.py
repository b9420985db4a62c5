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


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS: writing 5 to
    /proc/self/clear_refs (Linux >= 4.0). False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _vm_hwm() -> int:
    """The peak RSS since the last reset, in bytes (/proc/self/status VmHWM, in kB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def peak_rss_above(fn: Callable[[], Any]) -> tuple[int, float, Any]:
    """(peak RSS during ``fn`` minus the RSS before it, in bytes; its wall time in s; its result).

    The peak mark is reset to the current RSS first where the kernel allows it, so a set-up that
    peaked higher (importing torch, building the model) does not hide the operation's peak;
    elsewhere ``ru_maxrss`` is read, and a set-up peak above the operation's is an error."""
    before = current_rss()
    reset = _reset_peak()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    start = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - start
    if reset:
        return _vm_hwm() - before, wall, out
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if peak <= peak_before:
        raise RuntimeError("the set-up's peak RSS exceeds the operation's: its own peak is not known")
    return peak - before, wall, out
