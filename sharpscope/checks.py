"""Checks of numeric arguments, shared by the library's entry points and the CLI.

Ground floor: imports nothing but :mod:`sharpscope.errors`. Every check raises
:class:`~sharpscope.errors.ConfigError` with one line saying what was expected and what
was given, so an API user and the command line get the same refusal, before any work.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import TypeGuard

from .errors import ConfigError, MemoryBudgetError

__all__ = ["bool_option", "BOOL_WORDS",
           "is_int", "int_at_least", "finite_float", "float_problem", "available_memory", "require_memory",
           "require_grid_memory", "require_lanczos_memory", "require_trace_memory", "parameter_count",
           "GRID_POINT_BYTES", "size_text", "GIB"]

# Memory one grid point of a surface or interpolation costs while it is evaluated: loss,
# accuracy and done flags, its coordinates and its place in the work list (measured about
# 215-240 bytes per point on 1-D and 2-D grids of 200,000 points, CPython 3.11).
GRID_POINT_BYTES = 256

# One unit of the ``--memory GB`` budgets (and the API's ``memory_gb``): 2^30 bytes.
GIB = 1 << 30


# How an option's true/false may be written (case aside); anything else is refused.
BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False, "1": True, "0": False}


def bool_option(name: str, value: object) -> bool:
    """A boolean option's value: True/False, the integers 1/0 (what ``1`` reads as), or one of
    :data:`BOOL_WORDS` as text; anything else is refused (``bool("no")`` is True, so text is
    never passed through ``bool``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
        return BOOL_WORDS[value.strip().lower()]
    raise ConfigError(f"{name} must be true or false (or yes/no, on/off, 1/0), got {value!r}")


def is_int(value: object) -> TypeGuard[numbers.Integral]:
    """A whole number: Python's or NumPy's integers (``bool`` and ``numpy.bool_`` excluded)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def int_at_least(name: str, value: object, minimum: int) -> int:
    """``value`` as an int, refused unless it is an integer >= ``minimum`` (bools are not ints)."""
    if not is_int(value) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def float_problem(value: object, *, above: float | None = None, at_least: float | None = None,
                  below: float | None = None) -> str | None:
    """None if ``value`` is a finite real number in the range, else what was expected
    (``above``: strictly greater; ``at_least``: greater or equal; ``below``: strictly less)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (above is None or value > above) and (at_least is None or value >= at_least)
    if ok and (below is None or value < below):
        return None
    bounds = [f"> {above:g}" if above is not None else "", f">= {at_least:g}" if at_least is not None else "",
              f"< {below:g}" if below is not None else ""]
    wanted = " and ".join(b for b in bounds if b)
    return f"a finite number{' ' + wanted if wanted else ''}"


def finite_float(name: str, value: object, *, above: float | None = None, at_least: float | None = None,
                 below: float | None = None) -> float:
    """``value`` as a float, refused unless it is a finite real number in the given range."""
    expected = float_problem(value, above=above, at_least=at_least, below=below)
    if expected is not None:
        raise ConfigError(f"{name} must be {expected}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def parameter_count(model: object) -> int:
    """Entries of the parameter vector: ``model.n`` of an Objective, else every parameter of
    an ``nn.Module`` (an upper bound when an analysis selects some of them)."""
    if hasattr(model, "named_parameters"):  # an nn.Module
        return sum(p.numel() for p in model.parameters())  # type: ignore[attr-defined]
    return int(model.n)  # type: ignore[attr-defined]


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux: MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def size_text(n_bytes: float) -> str:
    """``n_bytes`` in words: bytes, KiB, MiB, GiB, ... (powers of 1024)."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n_bytes < 1024 or unit == "PiB":
            return f"{n_bytes:.0f} {unit}" if unit == "bytes" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError("unreachable")


def require_memory(n_bytes: float, what: str, budget: float | None = None) -> None:
    """Refuse work whose arrays would need more than the memory available now
    (:class:`ConfigError`) or, when given, more than the ``budget`` in bytes
    (:class:`~sharpscope.errors.MemoryBudgetError`)."""
    if budget is not None:
        if n_bytes > budget:
            raise MemoryBudgetError(f"{what} would need about {size_text(n_bytes)} of memory, more than the "
                                    f"memory budget of {size_text(budget)}")
        return
    available = available_memory()
    if available is not None and n_bytes > available:
        raise ConfigError(f"{what} would need about {size_text(n_bytes)} of memory, more than the "
                          f"{size_text(available)} available")


def require_grid_memory(n_points: int) -> None:
    """Refuse a surface or interpolation grid whose evaluation would not fit in memory."""
    require_memory(float(n_points) * GRID_POINT_BYTES, f"a grid of {n_points:,} points")


def require_lanczos_memory(n: int, n_steps: int, n_runs: int = 1) -> None:
    """Refuse Lanczos runs whose float64 basis (n x steps) and quadrature nodes would not fit."""
    m = min(n_steps, n)
    require_memory(8.0 * m * (n + 2 * n_runs), f"{n_runs:,} Lanczos run(s) of {m:,} steps over {n:,} parameters")


def require_trace_memory(n: int, n_matvecs: int, budget: float | None = None) -> float:
    """Refuse a trace estimate whose probe blocks (n x matvecs, float64, a few of them; the
    exact trace when matvecs >= n: two n x n blocks) would not fit in the memory available or
    in the ``budget`` (bytes); returns the bytes they need."""
    m = min(n_matvecs, n)
    need = 16.0 * n * m
    require_memory(need, f"a trace estimate with {m:,} Hessian-vector products over {n:,} parameters", budget)
    return need
