"""Tables of experiments, written atomically: JSON (NaN/Inf as null, numpy values as plain
ones) and CSV (None as an empty cell, floats in full precision)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError
from ..io import atomic_write_bytes

__all__ = ["write_json", "read_json", "read_results", "check_schema", "RESULTS_SCHEMA", "json_safe", "write_csv", "csv_cell"]


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None, tuples as lists, numpy values as Python ones."""
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


def csv_cell(value: Any) -> Any:
    """A CSV cell: None empty, floats by repr (inf as "inf", nan as "nan"), bools lower case."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "inf" if value == math.inf else repr(value)
    if isinstance(value, bool):
        return str(value).lower()
    return value


def write_csv(path: Path, header: Sequence[str], records: Sequence[Mapping[str, Any]]) -> None:
    """Write ``records`` (dicts; missing keys empty) under ``header`` to ``path`` atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for r in records:
        writer.writerow([csv_cell(r.get(h)) for h in header])
    data = buf.getvalue().encode()
    atomic_write_bytes(path, lambda fh: fh.write(data))


def read_json(path: Path) -> Any:
    """The JSON value stored at ``path``; None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


RESULTS_SCHEMA = 1  # the layout of results.json (a file without the field is 1)


def check_schema(stored: Any, path: Path, supported: int, remedy: str) -> None:
    """ConfigError when ``stored`` (read from ``path``) has a ``schema`` that is not an int or
    is above ``supported`` (none: 1)."""
    version = stored.get("schema", 1) if isinstance(stored, dict) else 1
    if not isinstance(version, int) or version > supported:
        raise ConfigError(f"{path} was written by a newer sharpscope (schema {version!r}; this one reads up to "
                          f"{supported}); upgrade sharpscope, or {remedy}")


def read_results(out: Path) -> Any:
    """``out/results.json`` (:func:`read_json`), its schema checked."""
    stored = read_json(out / "results.json")
    check_schema(stored, out / "results.json", RESULTS_SCHEMA, "use another --out")
    return stored
