"""What produced a number: the software, the device and the settings that change float rounding.

Thread counts, devices, CPU instruction sets and library versions change results by float
rounding (docs/reproducibility.md). :func:`environment` records them for every result
sharpscope writes (checkpoint metadata, results.json, sweep rows, analysis JSON, reports);
:func:`differences` names the fields in which records disagree, so that reports can warn.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    import torch

__all__ = ["environment", "planned_environment", "cpu_capability_from_flags", "of_model", "git_commit", "differences",
           "describe", "unlike_runs_warning", "recorded", "COMPARABLE_FIELDS"]

# The fields that can change a result, as :func:`describe` prints them (not python or platform).
COMPARABLE_FIELDS = ("sharpscope_version", "git_commit", "git_dirty", "torch_version", "numpy_version", "device",
                     "device_name", "cpu_capability", "dtype", "autocast", "threads", "world_size", "deterministic")


@functools.lru_cache(maxsize=1)
def git_commit() -> tuple[str | None, bool | None]:
    """(commit, tracked files modified) of sharpscope's checkout; (None, None) without one."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None, None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(status.strip())


@functools.lru_cache(maxsize=4)
def _cpuinfo(key: str) -> str | None:
    """The value of ``key`` for the first CPU in /proc/cpuinfo (None if unreadable)."""
    try:
        return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith(key)), None)
    except OSError:
        return None


def _cpu_name() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown CPU"


def environment(device: torch.device | str | None = None, dtype: torch.dtype | str | None = None,
                world_size: int | None = None, autocast: str | None = None) -> dict[str, Any]:
    """The record of this process: versions (with sharpscope's git commit), device and its name,
    CPU instruction set, dtype and autocast, threads, ranks and deterministic algorithms."""
    import numpy as np
    import torch

    from . import distributed as dist_utils
    device = torch.device(device) if device is not None else torch.device("cpu")
    name = (torch.cuda.get_device_name(device) if device.type == "cuda" and torch.cuda.is_available()
            else _cpu_name() if device.type == "cpu" else device.type)
    record = _record(str(torch.__version__), np.__version__, device=str(device), device_name=name,
                     cpu_capability=torch.backends.cpu.get_cpu_capability(),
                     dtype=str(dtype if dtype is not None else torch.get_default_dtype()).replace("torch.", ""),
                     autocast=autocast, threads=torch.get_num_threads(),
                     world_size=dist_utils.world_size() if world_size is None else int(world_size),
                     deterministic=torch.are_deterministic_algorithms_enabled())
    if device.type == "cuda":
        record["cuda_version"] = torch.version.cuda
        record["cudnn_version"] = torch.backends.cudnn.version()
    return record


def _record(torch_version: str, numpy_version: str, **rest: Any) -> dict[str, Any]:
    """The versions every record starts with, then ``rest`` (device ... deterministic) in order."""
    commit, dirty = git_commit()
    return {"sharpscope_version": __version__, "git_commit": commit, "git_dirty": dirty,
            "python_version": platform.python_version(), "torch_version": torch_version,
            "numpy_version": numpy_version, "platform": platform.platform(), **rest}


def cpu_capability_from_flags(flags: set[str]) -> str:
    """The instruction set torch picks on x86-64 from /proc/cpuinfo's flags, by ATen's
    ``compute_cpu_capability`` rule."""
    if {"avx512vl", "avx512bw", "avx512dq", "fma"} <= flags:
        return "AVX512"
    if {"avx2", "fma"} <= flags:
        return "AVX2"
    return "DEFAULT"


def planned_environment(threads: int | None = None) -> dict[str, Any] | None:
    """What :func:`environment` would record for a CPU float32 run after
    :func:`sharpscope.cpu.configure_threads` (``threads``), without importing torch (``sharpscope
    info`` stays fast); None where only torch can tell (torch imported, not Linux x86-64,
    ``ATEN_CPU_CAPABILITY`` set, a thread count torch chooses)."""
    from importlib import metadata

    from .cpu import planned_threads

    text = _cpuinfo("flags") if sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64") else None
    flags = set(text.split()) if text is not None else None
    count = planned_threads(threads)
    if "torch" in sys.modules or flags is None or os.environ.get("ATEN_CPU_CAPABILITY") or count is None:
        return None
    try:
        versions = metadata.version("torch"), metadata.version("numpy")
    except metadata.PackageNotFoundError:
        return None
    return _record(*versions, device="cpu", device_name=_cpu_name(), cpu_capability=cpu_capability_from_flags(flags),
                   dtype="float32", autocast=None, threads=count, world_size=1, deterministic=False)


def of_model(model: torch.nn.Module, **kwargs: Any) -> dict[str, Any]:
    """:func:`environment` with the device and dtype of ``model``'s first parameter (or buffer)."""
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    if tensor is None:
        return environment(**kwargs)
    return environment(tensor.device, tensor.dtype, **kwargs)


def differences(records: Sequence[Mapping[str, Any] | None],
                fields: Sequence[str] = COMPARABLE_FIELDS) -> dict[str, list[Any]]:
    """The ``fields`` that take several values over ``records`` (None skipped), with those values."""
    values = {f: list(dict.fromkeys(r.get(f) for r in records if r is not None)) for f in fields}
    return {f: v for f, v in values.items() if len(v) > 1}


def describe(record: Mapping[str, Any] | None) -> str:
    """One line: 'sharpscope 0.1.0 (git 1a2b3c4d, modified), torch 2.13.0+cpu, numpy 2.1.0, cpu
    (Intel Xeon ..., AVX2), float32, 2 threads, 1 rank, deterministic off'."""
    if not record:
        return "not recorded (written before sharpscope recorded its environment)"
    commit = record.get("git_commit")
    git = f" (git {commit[:8]}{', modified' if record.get('git_dirty') else ''})" if commit else ""
    dtype = record.get("dtype", "?") + (f" + autocast {record['autocast']}" if record.get("autocast") else "")
    ranks = record.get("world_size", 1)
    return (f"sharpscope {record.get('sharpscope_version')}{git}, torch {record.get('torch_version')}, "
            f"numpy {record.get('numpy_version')}, {record.get('device')} ({record.get('device_name')}, "
            f"{record.get('cpu_capability')}), {dtype}, {record.get('threads')} thread"
            f"{'s' if record.get('threads') != 1 else ''}, {ranks} rank{'s' if ranks != 1 else ''}, "
            f"deterministic {'on' if record.get('deterministic') else 'off'}")


def unlike_runs_warning(unlike: Mapping[str, Sequence[Any]]) -> str:
    """The one-line warning for runs put side by side that :func:`differences` found unlike."""
    parts = "; ".join(f"{field} {' vs '.join(map(str, values))}" for field, values in unlike.items())
    return (f"the runs were not all produced alike ({parts}): another code version, thread count, device or "
            "library changes results (by float rounding or more), so their differences mix that with the effect "
            "compared (docs/reproducibility.md)")


def recorded(metadata: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The environments a checkpoint's run was trained in, oldest first (``environments``, else ``environment``)."""
    history = metadata.get("environments")
    if isinstance(history, list) and history:
        return [dict(h) for h in history]
    single = metadata.get("environment")
    return [dict(single)] if isinstance(single, Mapping) else []
