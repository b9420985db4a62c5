"""How many threads torch may use without oversubscribing the CPUs this process may run on.

torch defaults to the machine's cores: too many under an affinity mask or a CFS quota
(containers, Slurm) or when processes share the CPUs (``sweep --jobs``). :func:`configure_threads`
sets ``available_cores() // jobs`` unless the user chose (``--threads``, ``SHARPSCOPE_THREADS``,
``OMP_NUM_THREADS``); :func:`set_threads` is sharpscope's one writer of torch's thread count.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

from .errors import ConfigError

__all__ = ["available_cores", "cgroup_cpu_limit", "default_threads", "configure_threads", "chosen_threads",
           "planned_threads", "set_threads", "deterministic_threads", "worker_threads", "prepare_wait_policy",
           "THREADS_ENV", "DETERMINISTIC_THREADS", "WAIT_POLICY", "WAIT_POLICY_VARIABLES"]

THREADS_ENV = "SHARPSCOPE_THREADS"
DETERMINISTIC_THREADS = 1  # the same on every machine; --threads N chooses another fixed count
# How idle OpenMP threads wait in sharpscope's commands (prepare_wait_policy; bench_neighbour.py).
WAIT_POLICY = {"OMP_WAIT_POLICY": "PASSIVE"}
# The variables by which a user chooses the waiting themselves (libgomp, Intel's OpenMP).
WAIT_POLICY_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def cgroup_cpu_limit(root: str | os.PathLike[str] = "/sys/fs/cgroup") -> float | None:
    """The CPUs a CFS quota allows (quota / period), or None without one: cgroup v2's ``cpu.max``
    ("max 100000" or "200000 100000"), else v1's ``cpu.cfs_quota_us`` (-1: none) / ``cpu.cfs_period_us``."""
    base = Path(root)
    try:
        text = (base / "cpu.max").read_text().split()
        if len(text) == 2 and text[0] == "max":
            return None
        if len(text) == 2 and float(text[1]) > 0:
            return float(text[0]) / float(text[1])
    except (OSError, ValueError):  # unreadable: try cgroup v1
        pass
    try:
        quota = float((base / "cpu" / "cpu.cfs_quota_us").read_text())
        period = float((base / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def available_cores() -> int:
    """The CPUs this process may use: its affinity mask, capped by the CFS quota (rounded up)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def default_threads(jobs: int = 1) -> int:
    """Threads per process when ``jobs`` processes share :func:`available_cores`."""
    return max(1, available_cores() // max(1, jobs))


def _from_env() -> int | None:
    text = os.environ.get(THREADS_ENV)
    if text is None or not text.strip():
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{THREADS_ENV} must be a positive number of threads, got {text!r}")
    return value


_CHOSEN: dict[str, int] = {}  # the thread count the user asked for in this process (--threads)


def chosen_threads() -> int | None:
    """The thread count the user chose (``--threads`` or ``SHARPSCOPE_THREADS``), else None."""
    return _CHOSEN.get("threads") or _from_env()


def configure_threads(threads: int | None = None, jobs: int = 1) -> int:
    """Set and return torch's thread count: ``threads``, ``SHARPSCOPE_THREADS``, torch's own when
    ``OMP_NUM_THREADS`` is set, else :func:`default_threads`."""
    import torch

    _check_count(threads)
    if threads is not None:
        _CHOSEN["threads"] = threads
    chosen = threads or _from_env()
    if chosen is None and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    return set_threads(chosen or default_threads(jobs))


def planned_threads(threads: int | None = None, jobs: int = 1) -> int | None:
    """:func:`configure_threads`' count without importing torch; with ``OMP_NUM_THREADS`` set, its
    value if one positive integer and ``MKL_NUM_THREADS`` (MKL reads it first) is unset or equal."""
    _check_count(threads)
    chosen = threads or _from_env()
    if chosen is not None:
        return chosen
    omp = os.environ.get("OMP_NUM_THREADS")
    if not omp:
        return default_threads(jobs)
    mkl = os.environ.get("MKL_NUM_THREADS")
    text = omp.strip()
    if text.isascii() and text.isdigit() and int(text) >= 1 and (not mkl or mkl.strip() == text):
        return int(text)
    return None


def _check_count(threads: int | None) -> None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive number, got {threads!r}")


def set_threads(threads: int) -> int:
    """Set torch's intra-op thread count to ``threads`` (a no-op when it already is); returns it."""
    import torch

    _check_count(threads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def deterministic_threads(threads: int | None = None) -> int:
    """A ``--deterministic`` run's threads: ``threads``, the user's choice or :data:`DETERMINISTIC_THREADS`."""
    _check_count(threads)
    return threads or chosen_threads() or DETERMINISTIC_THREADS


def worker_threads(jobs: int, threads: int | None = None, deterministic: bool = False) -> int:
    """Threads for each of ``jobs`` worker processes (``sweep --jobs``)."""
    return threads or (DETERMINISTIC_THREADS if deterministic else default_threads(jobs))


def prepare_wait_policy(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set :data:`WAIT_POLICY` in ``environ`` unless the user chose (:data:`WAIT_POLICY_VARIABLES`) or
    torch is imported (its OpenMP runtime read it on load); returns what it set. libgomp's idle
    threads spin before sleeping, taking a busy neighbour's cores; passive ones yield at once."""
    env = os.environ if environ is None else environ
    if "torch" in sys.modules or any(k in env for k in WAIT_POLICY_VARIABLES):
        return {}
    env.update(WAIT_POLICY)
    return dict(WAIT_POLICY)
