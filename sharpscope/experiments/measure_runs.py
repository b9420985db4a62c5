"""Measures of finished runs, for ``sharpscope correlate``: every run folder's final checkpoint
measured on the same seeded training subset (the labels trained on), one row per run with its
training options, final train/test metrics and the measures: those of
:mod:`sharpscope.measure_table` whose settings :class:`MeasureSettings` provides
(:func:`run_measures`; worst_adaptive's rho 0.002 is Andriushchenko et al.'s, ICML 2023). Each run
keeps them in ``RUN/measures.json`` under a key naming the measure, its settings and the
checkpoint's step, so a rerun computes only what is new and a run trained further is measured again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn

from .. import measure_table
from ..checkpoint import checkpoint_data, load_checkpoint, read_checkpoint
from ..provenance import describe, environment, recorded
from ..errors import CheckpointError, ConfigError, ModelSpecError
from ..models import check_factory_allowed
from .files import write_json
from .tables import run_columns

__all__ = ["MeasureSettings", "run_measures", "compute_measure", "find_runs",
           "run_row", "measure_run", "measure_runs", "varying_config_options"]

_CACHE = "measures.json"
# Config fields that say where or how a run was done: never a hyperparameter.
_NOT_HYPERPARAMETERS = {"seed", "device", "data_root", "checkpoint_every", "keep_snapshots", "track", "track_every",
                        "track_samples", "compile", "channels_last",
                        "trained_in", "measured_in", "analysed_in"}  # provenance (warned about, not correlated)


@dataclass
class MeasureSettings:
    """How each measure is computed (a cache key holds the settings its measure reads)."""

    samples: int = 512               # seeded training subset
    seed: int = 0
    rho: float = 0.05                # m-sharpness, gradcos, worst (p = 2)
    m_values: list[int] = field(default_factory=lambda: [16, 128])
    m_steps: int = 5
    eig_tol: float = 1e-3
    trace_matvecs: int = 30
    worst_m: int = 128
    worst_steps: int = 20
    worst_restarts: int = 4          # ascents per subset (sharpscope.measures.DEFAULT_RESTARTS)
    adaptive_rho: float = 0.002      # worst_adaptive (p = inf) and average_adaptive
    average_rho: float = 0.01
    average_draws: int = 50


_FIXED = {"top_k": 5}  # fixed for every run (not in the cache key)
_DETAILS = ("error",)  # the supporting columns of the rows (worst*/average*: the error increase)


def run_measures() -> list[str]:
    """The measures whose settings :class:`MeasureSettings` provides (with the fixed top-k), in table order."""
    return measure_table.available([*(f.name for f in fields(MeasureSettings)), *_FIXED])


def _settings(s: MeasureSettings) -> dict[str, Any]:
    return {**asdict(s), **_FIXED}


def compute_measure(name: str, model: nn.Module, batches: list, s: MeasureSettings) -> dict[str, Any]:
    """Measure ``name`` of ``model`` on ``batches`` at ``s``: its row columns."""
    measure = measure_table.MEASURES[name]
    result = measure.compute(model, batches, _settings(s), None)
    if result is None:  # e.g. every m of m_sharpness above the subset: refused, not an empty column
        raise ConfigError(f"{name}: nothing to measure at these settings (--m above the {s.samples} examples?)")
    return measure.columns_of(result, _DETAILS)


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run folders (holding ``checkpoint.pt``) named in ``paths`` or found below them, sorted, each once."""
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / "checkpoint.pt").is_file():
            found.append(p)
        elif p.is_dir():
            found += sorted(c.parent for c in p.rglob("checkpoint.pt") if c.parent.name != "checkpoints")
        else:
            raise ConfigError(f"{p}: not a run folder (no checkpoint.pt) nor a folder holding runs")
    unique = list(dict.fromkeys(r.resolve() for r in found))
    if not unique:
        raise ConfigError("no runs found (folders holding checkpoint.pt)")
    return unique


def _read_cache(run_dir: Path) -> dict[str, Any]:
    path = run_dir / _CACHE
    return json.loads(path.read_text()) if path.exists() else {}


def _cache_key(name: str, s: MeasureSettings, step: int) -> str:
    return json.dumps({"measure": name, "settings": measure_table.MEASURES[name].key(_settings(s), _FIXED),
                       "step": step}, sort_keys=True)


def run_row(run_dir: Path) -> dict[str, Any]:
    """A run's row before measuring: its options, where it was trained, and status "finished"
    with :func:`~sharpscope.experiments.tables.run_columns` of its final metrics, or "unfinished"."""
    raw = read_checkpoint(run_dir / "checkpoint.pt")
    config, progress = raw.get("config") or {}, raw.get("progress") or {}
    metrics = raw.get("metrics") or []
    trained_in = " | ".join(describe(e) for e in recorded(raw.get("metadata") or {})) or None
    if not metrics or not progress.get("finished"):  # diverged or interrupted: nothing to correlate
        return {"run": str(run_dir), "status": "unfinished", **_options(config), "trained_in": trained_in}
    return {"run": str(run_dir), "status": "finished", **_options(config), "trained_in": trained_in,
            **run_columns(metrics[-1], ("train_loss", "train_acc", "test_loss", "test_acc"), {}),
            "_step": int(progress.get("step", 0)), "_model_spec": raw.get("model_spec")}


def measure_run(run_dir: Path, names: Sequence[str], s: MeasureSettings,
                say: Callable[[str], None] = lambda what: None, row: dict[str, Any] | None = None,
                allow_factory: bool | str = False) -> dict[str, Any]:
    """One row: :func:`run_row` (or ``row``) and, for a finished run, the measures ``names``
    (cached in ``run_dir/measures.json``)."""
    names = measure_table.resolve_all(names)
    row = dict(run_row(run_dir) if row is None else row)
    step = row.pop("_step", 0)
    row.pop("_model_spec", None)
    if row["status"] != "finished":
        return row
    cache = _read_cache(run_dir)
    model, batches = None, None
    measured_in: dict[str, None] = {}
    for name in names:
        key = _cache_key(name, s, step)
        if key not in cache:
            if model is None:
                model, batches = _model_and_batches(run_dir, s, allow_factory)
            say(f"{run_dir.name}: {name}")
            start = time.perf_counter()
            cache[key] = {**compute_measure(name, model, batches, s), "seconds": time.perf_counter() - start,
                          "environment": environment()}  # what computed it: a rerun reuses it
            write_json(run_dir / _CACHE, cache)  # after every measure: an interrupted run keeps what it did
        row.update({k: v for k, v in cache[key].items() if k not in ("seconds", "environment")})
        row[f"{name}_seconds"] = cache[key]["seconds"]
        if cache[key].get("environment"):  # None: cached before sharpscope recorded it (skipped)
            measured_in[describe(cache[key]["environment"])] = None
    row["measured_in"] = " | ".join(measured_in) or None
    return row


def _model_and_batches(run_dir: Path, s: MeasureSettings, allow_factory: bool | str = False
                       ) -> tuple[nn.Module, list]:
    ckpt = load_checkpoint(run_dir / "checkpoint.pt", allow_factory=allow_factory)
    data = checkpoint_data(ckpt)  # refused if it no longer fits the model; a warning if it changed
    n = min(s.samples, int(data.x_train.shape[0]))  # a run trained on fewer examples: all of them
    return ckpt.model, data.batches("train", n, 4096, s.seed)


def _options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The training options as row columns (dicts and lists as sorted JSON)."""
    return {k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v) for k, v in config.items()}


def varying_config_options(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Training options that differ over the runs (seed and run mechanics aside)."""
    keys = dict.fromkeys(k for r in rows for k in r)
    skip = _NOT_HYPERPARAMETERS | {"run", "status", "train_loss", "train_acc", "test_loss", "test_acc"}
    return [k for k in keys if k not in skip and not k.endswith("_seconds") and k not in measure_table.MEASURES
            and len({repr(r.get(k)) for r in rows}) > 1 and not measure_table.is_column(k)]


def measure_runs(run_dirs: Sequence[Path], names: Sequence[str], s: MeasureSettings,
                 say: Callable[[str], None] = lambda what: None, min_train_acc: float = 0.0,
                 need: int = 0, allow_factory: bool | str = False) -> list[dict[str, Any]]:
    """:func:`measure_run` for each run that :func:`~sharpscope.experiments.correlate.run_status`
    keeps at ``min_train_acc`` (the others' rows say "unfinished" or "underfit"). Refused
    (ConfigError, CheckpointError) before anything is measured: fewer than ``need`` kept runs, or
    a kept run whose model is a factory ``allow_factory`` does not allow."""
    from .correlate import check_min_train_acc, run_status

    names = measure_table.resolve_all(names)
    known = run_measures()
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ConfigError(f"unknown measure {unknown[0] if unknown else '(none)'}; choose from "
                          f"{', '.join(known)}")
    min_train_acc = check_min_train_acc(min_train_acc)
    rows = [run_row(r) for r in run_dirs]
    for row in rows:
        if run_status(row, min_train_acc) == "underfit":
            row["status"] = "underfit"
    kept = sum(r["status"] == "finished" for r in rows)
    if kept < need:
        accs = [r["train_acc"] for r in rows if isinstance(r.get("train_acc"), (int, float))]
        best = f" (best final train accuracy {max(accs):.3g})" if accs else ""
        raise ConfigError(f"{kept} of {len(rows)} runs finished with train accuracy >= --min-train-acc "
                          f"{min_train_acc:g}{best}; {need} are needed: train longer or lower "
                          "--min-train-acc (0 keeps every finished run)")
    for run_dir, row in zip(run_dirs, rows):
        if row["status"] == "finished":
            _refuse_factory(run_dir, row, names, s, allow_factory)
    say(f"measuring {kept} of {len(rows)} runs" + (f" ({len(rows) - kept} unfinished or below --min-train-acc "
                                                   f"{min_train_acc:g} left out)" if kept < len(rows) else ""))
    return [measure_run(run_dir, names, s, say, row=row, allow_factory=allow_factory)
            for run_dir, row in zip(run_dirs, rows)]


def _refuse_factory(run_dir: Path, row: dict[str, Any], names: Sequence[str], s: MeasureSettings,
                    allow_factory: bool | str) -> None:
    """CheckpointError when :func:`measure_run` would build the run's model (a measure not
    cached) and it is a factory ``allow_factory`` does not allow (nothing is imported)."""
    cache = _read_cache(run_dir)
    if all(_cache_key(n, s, row["_step"]) in cache for n in names):
        return
    try:
        check_factory_allowed(row["_model_spec"], allow_factory)
    except ModelSpecError as err:
        raise CheckpointError(f"{run_dir}: {err}") from None
