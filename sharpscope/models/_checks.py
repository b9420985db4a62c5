"""Checks of model specs and options, each raising a one-line :class:`~sharpscope.errors.ModelSpecError`."""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Sequence

from sharpscope.checks import is_int
from sharpscope.errors import ModelSpecError

__all__ = ["check_int", "check_bool", "check_prob", "check_widths", "check_input_shape", "image_shape",
           "check_depth", "json_plain", "one_line", "spec_kwargs", "check_keys"]


def check_int(what: str, value: Any, minimum: int = 1) -> int:
    if not is_int(value) or value < minimum:
        raise ModelSpecError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_bool(what: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ModelSpecError(f"{what} must be true or false, got {value!r}")
    return value


def check_prob(what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) < 1.0:
        raise ModelSpecError(f"{what} must be a number in [0, 1), got {value!r}")
    return float(value)


def check_widths(what: str, value: Any, allow_empty: bool) -> tuple[int, ...]:
    """An int or a list of ints >= 1 -> tuple of ints."""
    if is_int(value):
        return (check_int(what, value),)
    if not isinstance(value, (list, tuple)) or (not value and not allow_empty):
        raise ModelSpecError(f"{what} must be an integer or a{'' if allow_empty else ' non-empty'} list of "
                             f"integers, got {value!r}")
    return tuple(check_int(f"{what} entries", v) for v in value)


def check_input_shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or len(value) not in (1, 3) or not all(is_int(v) and v >= 1 for v in value):
        raise ModelSpecError(f"input_shape must be [C, H, W] or [D] with positive integers, got {value!r}")
    return tuple(int(v) for v in value)


def image_shape(model: str, input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = check_input_shape(input_shape)
    if len(shape) != 3:
        raise ModelSpecError(f"model {model!r} needs image input (C, H, W); got input_shape {list(shape)}")
    return shape  # type: ignore[return-value]


def check_depth(model: str, depth: Any, offset: int, minimum: int) -> int:
    if not is_int(depth) or depth < minimum or (depth - offset) % 6 != 0:
        raise ModelSpecError(f"{model} depth must be 6n+{offset} with n >= 1 "
                             f"(e.g. {offset + 6}, {offset + 12}, {offset + 18}), got {depth!r}")
    return int(depth)


def json_plain(value: Any, where: str) -> Any:
    """Return ``value`` as JSON-plain data (tuples become lists); reject anything else."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if is_int(value):
        return int(value)
    if isinstance(value, numbers.Real):
        if not math.isfinite(float(value)):
            raise ModelSpecError(f"{where} must be finite, got {value!r}")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [json_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise ModelSpecError(f"{where} keys must be strings, got {key!r}")
            out[key] = json_plain(v, f"{where}[{key!r}]")
        return out
    raise ModelSpecError(f"{where} must be str/int/float/bool/None/list/dict, got {type(value).__name__}")


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def spec_kwargs(spec: Mapping[str, Any]) -> dict:
    kwargs = {} if spec.get("kwargs") is None else spec["kwargs"]
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ModelSpecError(f"model spec 'kwargs' must be a dict with string keys, got {kwargs!r}")
    return dict(kwargs)


def check_keys(spec: Mapping[str, Any], allowed: Sequence[str], required: Sequence[str]) -> None:
    extra = sorted(str(k) for k in spec if k not in allowed)
    if extra:
        raise ModelSpecError(f"model spec has unknown key(s) {', '.join(map(repr, extra))}; "
                             f"expected: {', '.join(allowed)}")
    missing = [k for k in required if k not in spec]
    if missing:
        raise ModelSpecError(f"model spec is missing {', '.join(map(repr, missing))}")
