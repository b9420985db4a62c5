"""JSON files of experiments: written atomically, NaN/Inf as null, numpy values as plain ones."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write_bytes

__all__ = ["write_json", "json_safe"]


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None, tuples as lists, numpy scalars and arrays as
    Python values (JSON has no NaN and no numpy)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy scalars and arrays, 0-d tensors
        return json_safe(value.tolist())
    return value


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (temp file, fsync, rename)."""
    text = json.dumps(json_safe(obj), indent=2).encode()
    atomic_write_bytes(path, lambda fh: fh.write(text))
