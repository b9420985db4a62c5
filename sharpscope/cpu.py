"""How many threads torch may use without oversubscribing the CPUs this process may run on.

torch's default intra-op thread count is the number of physical cores of the machine. Two
things make that too many:

- a container or job scheduler gives the process fewer CPUs than the machine has: a CPU
  affinity mask (``taskset``, Slurm, ``docker --cpuset-cpus``) or a CFS quota
  (``docker --cpus``, Kubernetes limits; cgroup v2 ``cpu.max`` or v1
  ``cpu.cfs_quota_us / cpu.cfs_period_us``);
- several processes share the CPUs (``sweep --jobs``): each should get its share.

Threads beyond the CPUs available spin and wait on each other; on 2 cores, two processes
with 2 threads each ran 3-35x slower than one (``benchmarks/bench_threads.py`` measures
it). :func:`available_cores` reads the affinity mask and the quota; :func:`configure_threads`
sets torch's thread count to ``available_cores() // jobs`` unless the user chose one
(``sharpscope --threads N``, or the environment variables ``SHARPSCOPE_THREADS`` or
``OMP_NUM_THREADS``, which torch itself reads).

This module owns the thread policy: :func:`set_threads` is the one place in sharpscope that
writes torch's thread count, and the choices (:func:`configure_threads` for a command,
:func:`deterministic_threads` under ``--deterministic``, :func:`worker_threads` for the
worker processes of ``sweep --jobs``) are made here.
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
# How idle OpenMP threads wait, set for sharpscope's commands before torch loads its OpenMP
# runtime (prepare_wait_policy): chosen by benchmarks/bench_neighbour.py (BENCHMARKS.md).
WAIT_POLICY = {"OMP_WAIT_POLICY": "PASSIVE"}
# The variables by which a user chooses the waiting themselves (libgomp, Intel's OpenMP).
WAIT_POLICY_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def cgroup_cpu_limit(root: str | os.PathLike[str] = "/sys/fs/cgroup") -> float | None:
    """The CPUs a CFS quota allows (quota / period), or None without a quota: cgroup v2's
    ``cpu.max`` ("max 100000" or "200000 100000"), else v1's ``cpu/cpu.cfs_quota_us`` (-1:
    none) over ``cpu/cpu.cfs_period_us``."""
    base = Path(root)
    try:
        text = (base / "cpu.max").read_text().split()
    except OSError:
        text = []
    if len(text) == 2 and text[0] == "max":
        return None
    try:
        if len(text) == 2 and float(text[1]) > 0:
            return float(text[0]) / float(text[1])
    except ValueError:  # unreadable: try cgroup v1
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
    """The thread count the user chose: ``--threads`` (through :func:`configure_threads`) or
    ``SHARPSCOPE_THREADS``; None when torch's default or a derived share is in use."""
    return _CHOSEN.get("threads") or _from_env()


def configure_threads(threads: int | None = None, jobs: int = 1) -> int:
    """Set torch's intra-op thread count and return it: ``threads`` when given, else
    ``SHARPSCOPE_THREADS``, else torch's own choice when ``OMP_NUM_THREADS`` is set, else
    :func:`default_threads` (``jobs``)."""
    import torch

    _check_count(threads)
    if threads is not None:
        _CHOSEN["threads"] = threads
    chosen = threads or _from_env()
    if chosen is None and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    return set_threads(chosen or default_threads(jobs))


def planned_threads(threads: int | None = None, jobs: int = 1) -> int | None:
    """The thread count :func:`configure_threads` (``threads``, ``jobs``) would leave torch with,
    worked out without importing torch (``sharpscope info`` starts fast): ``threads``, else
    ``SHARPSCOPE_THREADS``, else :func:`default_threads` when ``OMP_NUM_THREADS`` is unset.
    When it is set, torch keeps its own count: that is ``OMP_NUM_THREADS`` itself when it is
    one positive integer and ``MKL_NUM_THREADS`` is unset or the same (with MKL, torch takes
    MKL's count, which reads ``MKL_NUM_THREADS`` first); otherwise None: only torch can say."""
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
    """Set torch's intra-op thread count to ``threads`` (a no-op when it already is) and return
    it: the one writer of the thread count in sharpscope."""
    import torch

    _check_count(threads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def deterministic_threads(threads: int | None = None) -> int:
    """The thread count of a ``--deterministic`` run: ``threads``, else the user's choice
    (:func:`chosen_threads`), else :data:`DETERMINISTIC_THREADS`, never a share of the cores."""
    _check_count(threads)
    return threads or chosen_threads() or DETERMINISTIC_THREADS


def worker_threads(jobs: int, threads: int | None = None, deterministic: bool = False) -> int:
    """Threads for each of ``jobs`` worker processes: ``threads`` when given, else
    :data:`DETERMINISTIC_THREADS` for deterministic runs, else :func:`default_threads` (``jobs``)."""
    return threads or (DETERMINISTIC_THREADS if deterministic else default_threads(jobs))


def prepare_wait_policy(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set :data:`WAIT_POLICY` in ``environ`` (default ``os.environ``) unless the user chose
    how OpenMP threads wait (any of :data:`WAIT_POLICY_VARIABLES` set) or torch is already
    imported (its OpenMP runtime read the environment when it loaded: too late). Returns what
    it set ({} when nothing).

    Why: torch's OpenMP runtime (libgomp) lets an idle thread spin about 300,000 times before
    it sleeps. Alone on its cores that saves a wake-up; beside another busy process on too few
    cores the spinning threads of both take the cores from the threads doing work, and a job
    of 5.5 s took 61 s (issue 24; ``benchmarks/bench_neighbour.py``, BENCHMARKS.md).
    Passive waiting gives the core up at once."""
    env = os.environ if environ is None else environ
    if "torch" in sys.modules or any(k in env for k in WAIT_POLICY_VARIABLES):
        return {}
    env.update(WAIT_POLICY)
    return dict(WAIT_POLICY)
