"""The one cache of analyses, ``<run>/analysis.json``: ``{"schema": 2, "analyses": {name: {"key",
"result", "warnings", "environment", "error" (a failed analysis)}}}``. An entry is reused when its
key (:func:`analysis_key`) equals the one asked. Read also: schema 1 (the same without "schema")
and compare's older layout (``{"key", "checkpoint_step", "analysis"}``), converted entry by entry;
a newer schema is refused, naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import measure_table
from ..errors import ConfigError
from .analyses import VARIANTS, analysis_settings
from .files import check_schema, read_json, write_json

__all__ = ["SCHEMA", "analysis_key", "stored_under_old_name", "read_analyses", "write_analyses"]

SCHEMA = 2  # the version of analysis.json this code writes
# compare's older layout: the measures it held, under the names it held them.
_COMPARE_LAYOUT = {"lambda_max": "eigenvalues", "trace": "trace", "density": "density", "m_sharpness": "m_sharpness",
                   "gradcos": "gradcos"}


def analysis_key(name: str, s: Any, rho: float, seed: int, step: int) -> dict[str, Any]:
    """The key of an analysis: its name, the checkpoint's step and the settings its measure reads
    (a variant's overrides applied, and its labels)."""
    variant = VARIANTS.get(name)
    settings = analysis_settings(s, rho, seed)
    if variant is None:
        return {"analysis": name, **measure_table.MEASURES[name].key(settings), "step": step}
    return {"analysis": name, **measure_table.MEASURES[variant.measure].key({**settings, **variant.settings}),
            "labels": variant.labels, "step": step}


def stored_under_old_name(stored: dict[str, Any], name: str, key: Mapping[str, Any]) -> None:
    """Move an entry stored under an old name of measure ``name`` (e.g. "eigenvalues") to
    ``name`` when it was made with the same settings."""
    aliases = measure_table.MEASURES[name].aliases if name in measure_table.MEASURES else ()
    for old in aliases:
        entry = stored.get(old)
        if name not in stored and isinstance(entry, dict) and entry.get("key") == {**key, "analysis": old}:
            stored[name] = {**stored.pop(old), "key": dict(key)}


def read_analyses(run_dir: Path, seed: int) -> dict[str, Any]:
    """The analyses stored in ``run_dir/analysis.json`` (name -> entry); {} when there is none or
    it cannot be read; ConfigError for a newer schema."""
    path = run_dir / "analysis.json"
    cache = read_json(path)
    if not isinstance(cache, dict):
        return {}
    check_schema(cache, path, SCHEMA, "remove that file to recompute its analyses")
    if "analyses" not in cache and {"key", "checkpoint_step", "analysis"} <= set(cache):
        return _from_compare_layout(cache, seed, path)
    stored = cache.get("analyses")
    return dict(stored) if isinstance(stored, dict) else {}


def _from_compare_layout(cache: Mapping[str, Any], seed: int, path: Path) -> dict[str, Any]:
    """Entries from compare's older analysis.json, each under the key its settings, rho and step
    give today (lambda_max_clean, kept as a number, is computed again)."""
    from .analyses import AnalysisSettings

    try:
        old = json.loads(cache["key"])
        s = AnalysisSettings(**old["settings"])
        rho, step, analysis = float(old["rho"]), int(cache["checkpoint_step"]), cache["analysis"]
    except (TypeError, ValueError, KeyError) as err:
        raise ConfigError(f"cannot read {path}, in compare's layout before sharpscope's run engine ({err!r}); "
                          "remove that file to recompute its analyses (the training run is kept)") from None
    out = {}
    for name, old_name in _COMPARE_LAYOUT.items():
        if isinstance(analysis.get(old_name), dict):
            out[name] = {"key": analysis_key(name, s, rho, seed, step), "result": analysis[old_name], "warnings": [],
                         "environment": analysis.get("analysed_in")}
    return out


def write_analyses(run_dir: Path, stored: Mapping[str, Any]) -> None:
    """``stored`` (name -> entry) into ``run_dir/analysis.json`` at today's :data:`SCHEMA`."""
    write_json(run_dir / "analysis.json", {"schema": SCHEMA, "analyses": dict(stored)})
