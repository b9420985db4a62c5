"""Sweeps: train the product of option lists over seeds, analyse every run, tabulate.

A sweep is a grid of :class:`~sharpscope.train.TrainConfig` options (``{"optimizer":
["sgd", "sam"], "rho": [0.05, 0.1], "label_noise": [0.0, 0.4]}``) times a list of seeds.
Options an optimizer does not read collapse: SGD ignores rho, p, m, eta and the
second-order switch, so it is trained once per remaining setting, not once per rho, and its
rows leave those options empty. Every run gets its own folder, named from its options,
and is analysed with a chosen set of analyses at one work profile.

Layout of ``out_dir``::

    runs/<name>/              one training run (checkpoint.pt, metrics.jsonl), named from its
                              options, e.g. sam_rho0.05_m16_seed0 (a hash when too long)
    runs/<name>/analysis.json its analyses, each stored with the settings that made it
    runs/<name>/diverged.json a run whose loss diverged (not retrained when rerun)
    sweep.json                the sweep's configuration and its runs
    results.csv, .json        one row per run: options, seed, every metric
    summary.csv, .json        per setting (options without seed): mean, std and Student-t CI
                              of every metric, and the paired difference to the matching SGD
                              setting (same other options, same seeds) with CI, p-value, verdict
    figures/<metric>_vs_<option>.png

Everything is resumable: a finished run is reused when its stored configuration equals the
one asked (a folder holding other settings is refused), an interrupted run continues where
it stopped (``train(..., resume=True)``: bit-for-bit the same weights), and an analysis is
reused when its settings match. Several sweeps may share ``out_dir``: a run's folder name
depends only on its own configuration, so a new grid reuses every run it has in common
with an old one.

``jobs > 1`` trains that many runs at once in separate processes (spawned, so that no
process inherits another's threads or locks). Each worker uses ``max(1, cores // jobs)``
intra-op threads: torch's default is one thread per core in every process, and two
processes each running two threads on two cores oversubscribe them; on this project's
2-core machines that took 2.5-3x the wall time of single-thread workers, and 11x while
another process wanted the cores (BENCHMARKS.md, ``benchmarks/bench_sweep_jobs.py``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import signal
import threading
import time
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..checks import finite_float, int_at_least
from ..checkpoint import read_checkpoint
from ..io import atomic_write_bytes
from ..errors import ConfigError, NonFiniteLossError, SharpscopeError
from ..provenance import describe, differences, environment, recorded, unlike_runs_warning
from ..models import is_factory
from ..optim import registry
from ..optim.registry import PERTURBATION_OPTIONS
from ..train import Callback, TrainConfig, TrainState, check_model, train
from ..train_options import NOT_SWEPT
from .. import measure_table
from .analyses import analyse_selected, analysis_names, analysis_settings
from .correlate import DEFAULT_MIN_TRAIN_ACC, check_min_train_acc
from .files import write_csv, write_json
from .runs import refuse_other_settings
from .verdicts import CI_METHOD_TEXT, CONVERGENCE_DEFINITION, METRIC_BOUNDS, run_convergence, unconverged_warning

__all__ = [
    "SweepConfig", "SweepResult", "RunSpec", "RunOutcome", "run_sweep", "replot", "expand_grid",
    "sweepable_options", "uses_option", "parse_values", "parse_seeds", "parse_plot", "metric_names",
    "analyse_selected", "summarize_rows", "ANALYSES", "DEFAULT_ANALYSES", "PERTURBATION_OPTIONS",
]

# The analyses a sweep can run on each finished run are the measures of sharpscope.measure_table
# that AnalysisSettings provides (analyses.analysis_names). By default lambda_max (Lanczos),
# the surrogate gap and the first-/second-order gradient cosine (one HVP), and m-sharpness:
# the three quantities SAM papers report, at a fraction of the cost of the trace and the density.
DEFAULT_ANALYSES = ("lambda_max", "gradcos", "m_sharpness")
# The supporting columns a sweep's rows hold beside each measure's values (the trace's standard error).
_DETAILS = ("stderr",)

# Fields that describe where or how a run is done rather than what is trained: fixed for a
# whole sweep (``SweepConfig.base``), never a grid axis. The seed is the sweep's own axis.
_NOT_SWEPT = NOT_SWEPT
# Short names in run folders; the other options appear under their own names.
_ABBREVIATIONS = {"label_noise": "noise", "batch_size": "bs", "weight_decay": "wd", "warmup_epochs": "warmup",
                  "second_order": "so", "n_train": "ntrain", "momentum": "mom"}
_NAME_FIRST = ("rho", "m", "p", "eta", "second_order")
_MAX_NAME = 80
_TRAIN_METRICS = ("train_loss", "train_acc", "train_loss_clean", "train_acc_clean", "test_loss", "test_acc",
                  "perturbed_loss")
RESULTS_KIND = "sharpscope sweep"


def __getattr__(name: str) -> Any:
    if name == "ANALYSES":  # as before: the analyses a sweep can run, read from the table when asked
        return tuple(analysis_names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def uses_option(optimizer: str, option: str) -> bool:
    """Whether runs with ``optimizer`` read ``option`` (else it collapses in the grid): the
    registry's answer (:meth:`sharpscope.optim.registry.OptimizerSpec.uses`).

    SGD reads none of :data:`PERTURBATION_OPTIONS` (the perturbation options); ``eta``
    (T_w = |w| + eta) is ASAM's own; ``m`` (m-SAM chunks) is read by SAM, ASAM and RSAM only
    (GSAM, WSAM, LookSAM and Friendly SAM take whole batches); the SAM family reads the others
    (``TrainConfig.validate`` refuses combinations that make no sense, e.g. the second-order
    switch with ASAM)."""
    return registry.get(optimizer).uses(option)


def _scalar_type(tp: Any) -> tuple[type, bool] | None:
    """(str | int | float | bool, optional?) for a scalar field annotation, else None."""
    if tp in (str, int, float, bool):
        return tp, False
    args = typing.get_args(tp)
    if len(args) == 2 and type(None) in args:
        base = next(a for a in args if a is not type(None))
        if base in (str, int, float, bool):
            return base, True
    return None


def sweepable_options() -> dict[str, tuple[type, bool]]:
    """TrainConfig fields a sweep may list several values of: name -> (type, None allowed).
    Every scalar field except the ones fixed for a sweep (device, data root, tracking, ...)."""
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for f in fields(TrainConfig):
        kind = _scalar_type(hints[f.name]) if f.name not in _NOT_SWEPT else None
        if kind is not None:
            out[f.name] = kind
    return out


def _option_name(option: str) -> str:
    return option.strip().replace("-", "_")


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _parse_one(option: str, text: str, kind: type, optional: bool, what: str) -> Any:
    low = text.lower()
    if optional and low in ("none", "null", "default"):
        return None
    try:
        if kind is bool:
            if low in ("true", "yes", "on", "1"):
                return True
            if low in ("false", "no", "off", "0"):
                return False
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            value = math.inf if low in ("inf", "infinity") else float(text)
            if math.isnan(value) or (value == -math.inf):
                raise ValueError
            return value
    except ValueError:
        names = {bool: "true/false", int: "integers", float: "numbers"}
        extra = " or none" if optional else ""
        raise ConfigError(f"{what} takes comma-separated {names[kind]}{extra}, got {text!r}") from None
    return text


def parse_values(option: str, text: str | Sequence[Any], what: str | None = None) -> list[Any]:
    """The values of one grid option: ``"0.05,0.1"`` (or a list) -> ``[0.05, 0.1]``, typed as the
    TrainConfig field (``inf`` for p, ``none`` for optional fields such as m). Unknown options,
    empty lists, unparsable and duplicate values are a ConfigError; ranges are checked when the
    runs are built (:func:`expand_grid`)."""
    name = _option_name(option)
    what = what or _flag(name)
    options = sweepable_options()
    if name not in options:
        raise ConfigError(f"cannot sweep {what}; sweepable options: {', '.join(_flag(o) for o in options)}")
    kind, optional = options[name]
    items = [t.strip() for t in text.split(",")] if isinstance(text, str) else list(text)
    items = [t for t in items if not (isinstance(t, str) and not t)]
    if not items:
        raise ConfigError(f"{what} is empty")
    values = [_parse_one(name, t, kind, optional, what) if isinstance(t, str) and kind is not str else t
              for t in items]
    for v in values:  # values given as Python objects
        ok = (v is None and optional) or (isinstance(v, bool) if kind is bool else
                                          isinstance(v, kind) and not isinstance(v, bool) if kind in (int, str) else
                                          isinstance(v, (int, float)) and not isinstance(v, bool))
        if not ok:
            raise ConfigError(f"{what} takes {kind.__name__} values{' or None' if optional else ''}, got {v!r}")
    if kind is float:
        values = [None if v is None else float(v) for v in values]
    seen: list[Any] = []
    for v in values:
        if v in seen:
            raise ConfigError(f"{what} lists {_show(v)} twice")
        seen.append(v)
    return values


def parse_seeds(text: str | int | Sequence[int]) -> list[int]:
    """``"3"`` or 3 -> seeds 0, 1, 2; ``"0,5,7"`` -> those seeds; ``"10:13"`` -> 10, 11, 12."""
    if isinstance(text, int) and not isinstance(text, bool):
        return list(range(int_at_least("--seeds (a count)", text, 1)))
    if not isinstance(text, str):
        seeds = list(text)
    else:
        raw = text.strip()
        try:
            if ":" in raw:
                lo, _, hi = raw.partition(":")
                seeds = list(range(int(lo), int(hi)))
                if not seeds:
                    raise ConfigError(f"--seeds {raw!r} is an empty range")
            elif "," in raw:
                seeds = [int(t) for t in raw.split(",") if t.strip()]
            else:
                return list(range(int_at_least("--seeds (a count)", int(raw), 1)))
        except ValueError:
            raise ConfigError(f"--seeds takes a count N (seeds 0..N-1), a comma list or A:B, got {text!r}") from None
    if not seeds:
        raise ConfigError("--seeds is empty")
    for s in seeds:
        int_at_least("a seed", s, 0)
        if s > 2**63 - 1:
            raise ConfigError(f"seeds must be in [0, 2**63), got {s}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds lists a seed twice: {seeds}")
    return seeds


def _show(value: Any) -> str:
    """A value as people write it (and as rows and folder names hold it)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value == math.inf:
            return "inf"
        short = format(value, "g")
        return short if float(short) == value else repr(value)
    return "none" if value is None else str(value)


def _plain_option(value: Any) -> Any:
    """An option value as JSON and CSV hold it: inf as the string 'inf' (p = inf)."""
    return "inf" if isinstance(value, float) and value == math.inf else value


@dataclass
class RunSpec:
    """One run of the grid."""

    index: int                 # 0-based position in the order runs are started
    name: str                  # folder under OUT/runs
    options: dict[str, Any]    # every grid option as used (None where it does not apply), and the seed
    config: dict[str, Any]     # TrainConfig.to_dict()
    label: str                 # "sam rho=0.05 m=16 seed=0": the options that vary, for progress lines

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(dict(self.config))


@dataclass
class SweepConfig:
    """What a sweep trains and how it analyses each run.

    ``grid`` maps TrainConfig field names (dashes allowed) to lists of values, or to comma
    strings parsed by :func:`parse_values`; ``seeds`` is a list or a count N (seeds 0..N-1);
    ``base`` holds TrainConfig fields every run shares (e.g. ``model_kwargs``, ``n_train``,
    ``data_root``; snapshots are off unless ``keep_snapshots=True``). ``analyses`` are measures
    of :func:`~sharpscope.experiments.analyses.analysis_names` (old names accepted with a
    notice) at the work ``profile`` of :data:`sharpscope.experiments.analyses.PROFILES`;
    m-sharpness and the gradient cosine use ``analysis_rho`` for every run, so that their
    columns compare minima rather than probes of different sizes; ``analysis_m`` (a list or a
    comma string of positive ints) replaces the profile's m values of m-sharpness.
    """

    grid: dict[str, Any] = field(default_factory=lambda: {"optimizer": ["sgd", "sam"]})
    seeds: Any = field(default_factory=lambda: [0])
    base: dict[str, Any] = field(default_factory=dict)
    analyses: Sequence[str] = DEFAULT_ANALYSES
    profile: str = "default"
    analysis_rho: float = 0.05
    analysis_m: Any = None

    def __post_init__(self) -> None:
        grid: dict[str, list[Any]] = {}
        for key, values in self.grid.items():
            name = _option_name(key)
            if name in grid:
                raise ConfigError(f"{_flag(name)} is given twice")
            grid[name] = parse_values(name, values)
        base = {_option_name(k): v for k, v in self.base.items()}
        if "optimizer" not in grid:  # every row says which optimizer trained it
            grid = {"optimizer": parse_values("optimizer", [base.pop("optimizer", TrainConfig.optimizer)]), **grid}
        unknown = [o for o in grid["optimizer"] if registry.lookup(o) is None]
        if unknown:
            raise ConfigError(f"unknown optimizer {unknown[0]!r}; choose from {', '.join(registry.names())}")
        self.grid = grid
        self.seeds = parse_seeds(self.seeds)
        known = {f.name for f in fields(TrainConfig)}
        bad = sorted(k for k in base if k not in known or k == "seed" or k in grid)
        if bad:
            why = ("not a training option" if bad[0] not in known else
                   "set by --seeds" if bad[0] == "seed" else "also a grid option")
            raise ConfigError(f"fixed option {bad[0]!r}: {why}")
        self.base = {"keep_snapshots": False, **base}
        names = [a for a in (self.analyses.split(",") if isinstance(self.analyses, str) else self.analyses)
                 if a.strip() and a.strip().lower() != "none"]
        analyses = measure_table.resolve_all(names, "analysis")
        known = analysis_names()
        wrong = [a for a in analyses if a not in known]
        if wrong:
            raise ConfigError(f"unknown analysis {wrong[0]!r}; choose from {', '.join(known)} or none")
        if len(set(analyses)) != len(analyses):
            raise ConfigError(f"--analyses names an analysis twice: {', '.join(analyses)}")
        self.analyses = [a for a in known if a in analyses]
        from .analyses import PROFILES
        if self.profile not in PROFILES:
            raise ConfigError(f"unknown profile {self.profile!r}; choose from {', '.join(PROFILES)}")
        self.analysis_rho = finite_float("--analysis-rho", self.analysis_rho, at_least=0)
        if self.analysis_m is not None:
            ms = parse_values("m", self.analysis_m, "--analysis-m")
            if not ms or any(m is None or m < 1 for m in ms) or len(set(ms)) != len(ms):
                raise ConfigError(f"--analysis-m expects distinct positive sizes, e.g. 1,4,16,64; got "
                                  f"{self.analysis_m!r}")
            self.analysis_m = sorted(ms)
        self.runs()  # every run's TrainConfig is valid before the first one trains

    def settings(self) -> Any:
        """The :class:`~sharpscope.experiments.analyses.AnalysisSettings` of the profile (with
        ``analysis_m`` as its m values when given)."""
        from .analyses import PROFILES
        s = PROFILES[self.profile]
        return s if self.analysis_m is None else replace(s, m_values=list(self.analysis_m))

    def runs(self) -> list[RunSpec]:
        return expand_grid(self)

    def to_dict(self) -> dict[str, Any]:
        return {"grid": {k: [_plain_option(v) for v in vs] for k, vs in self.grid.items()}, "seeds": list(self.seeds),
                "base": {k: _plain_option(v) for k, v in self.base.items()}, "analyses": list(self.analyses),
                "profile": self.profile, "analysis_rho": self.analysis_rho, "analysis_m": self.analysis_m}


def _defaults() -> dict[str, Any]:
    return {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}


def _run_name(cfg: TrainConfig) -> str:
    """Folder name from the run's own configuration (never from the grid around it): the
    optimizer, its rho, every sweepable option that differs from TrainConfig's default, the
    seed; a hash of that when it is too long or holds characters unfit for a file name."""
    defaults = _defaults()
    sweepable = list(sweepable_options())
    order = [o for o in _NAME_FIRST if o in sweepable] + [o for o in sweepable if o not in _NAME_FIRST]
    parts = [cfg.optimizer]
    for option in order:
        if option == "optimizer" or not uses_option(cfg.optimizer, option):
            continue
        value = getattr(cfg, option)
        if value == defaults.get(option) and option != "rho":
            continue
        short = _ABBREVIATIONS.get(option, option)
        if isinstance(value, bool):
            parts.append(short if value else f"no{short}")
        else:
            parts.append(f"{short}{_show(value)}")
    parts.append(f"seed{cfg.seed}")
    name = "_".join(parts)
    safe = re.sub(r"[^A-Za-z0-9._+-]", "-", name)
    if safe != name or len(safe) > _MAX_NAME:
        safe = f"{safe[:_MAX_NAME - 11]}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"
    return safe


def expand_grid(config: SweepConfig) -> list[RunSpec]:
    """The runs of a sweep, seeds outermost (every setting gets seed 0 before any gets seed 1),
    options an optimizer does not read collapsed (one SGD run per setting, whatever the rho
    list), duplicates removed. Every TrainConfig is built, so an invalid combination is
    refused here, naming the run."""
    keys = list(config.grid)
    varying = [k for k in keys if len(config.grid[k]) > 1]
    runs: list[RunSpec] = []
    seen: dict[str, RunSpec] = {}
    for seed in config.seeds:
        for combo in itertools.product(*(config.grid[k] for k in keys)):
            chosen = dict(zip(keys, combo))
            optimizer = chosen["optimizer"]
            kwargs = {**config.base, **{k: v for k, v in chosen.items() if uses_option(optimizer, k)}, "seed": seed}
            for option in PERTURBATION_OPTIONS:  # what an optimizer ignores takes the default
                if not uses_option(optimizer, option):
                    kwargs.pop(option, None)
            label_parts = [optimizer] + [f"{k}={_show(chosen[k])}" for k in varying
                                         if k != "optimizer" and uses_option(optimizer, k)] + [f"seed={seed}"]
            label = " ".join(label_parts)
            try:
                cfg = TrainConfig(**kwargs)
                if registry.get(optimizer).perturbs:
                    cfg.rho = cfg.effective_rho  # the same run whether rho was listed or left to its default
            except (ConfigError, TypeError) as err:
                raise ConfigError(f"run '{label}': {err}") from None
            d = cfg.to_dict()
            key = json.dumps(d, sort_keys=True, default=str)
            if key in seen:
                continue
            options = {k: (_plain_option(d[k]) if uses_option(optimizer, k) else None) for k in keys}
            options["seed"] = seed
            spec = RunSpec(len(runs), _run_name(cfg), options, d, label)
            seen[key] = spec
            runs.append(spec)
    names = [r.name for r in runs]
    if len(set(names)) != len(names):  # two configurations the name does not tell apart
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"two runs of this grid would share the folder {dup!r}; "
                          "vary a sweepable option instead of a fixed one")
    return runs


# ---------------------------------------------------------------------------------------
# Analyses
# ---------------------------------------------------------------------------------------
def _analysis_key(name: str, s: Any, rho: float, seed: int, step: int) -> dict[str, Any]:
    """The key an analysis is stored under in ``analysis.json``: its name, the checkpoint's
    step and the settings the measure reads (the subset's size and seed among them)."""
    return {"analysis": name, **measure_table.MEASURES[name].key(analysis_settings(s, rho, seed)), "step": step}


def _stored_under_old_name(stored: dict[str, Any], name: str, key: Mapping[str, Any]) -> None:
    """Move an entry stored under an old name of measure ``name`` (e.g. "eigenvalues", before
    the table of measures) to ``name`` when it was made with the same settings: a run folder
    analysed before keeps its analyses."""
    for old in measure_table.MEASURES[name].aliases:
        entry = stored.get(old)
        if name not in stored and isinstance(entry, dict) and entry.get("key") == {**key, "analysis": old}:
            stored[name] = {**stored.pop(old), "key": dict(key)}


# ---------------------------------------------------------------------------------------
# One run (in this process or in a worker)
# ---------------------------------------------------------------------------------------
@dataclass
class RunOutcome:
    """What became of one run."""

    index: int
    name: str
    status: str                      # trained, resumed, reused, diverged, interrupted
    final: dict[str, Any]            # the last epoch's metrics record
    epochs: int                      # epochs done
    train_seconds: float             # sum of the epochs' step times (survives resumes)
    analyses: dict[str, dict[str, Any]] = field(default_factory=dict)
    analysis_status: dict[str, str] = field(default_factory=dict)  # name -> computed / reused
    notes: list[str] = field(default_factory=list)   # warnings, analysis errors, the divergence
    environments: list[dict[str, Any]] = field(default_factory=list)  # what trained it (provenance.recorded)
    analysis_environments: list[dict[str, Any]] = field(default_factory=list)  # what computed its analyses
    convergence: dict[str, Any] | None = None  # verdicts.run_convergence of its epochs (None: diverged)


@dataclass
class _Task:
    spec: RunSpec
    run_dir: str
    analyses: list[str]
    settings: dict[str, Any]
    analysis_rho: float
    total: int
    callbacks: list = field(default_factory=list)


class _Reporter(Callback):
    """Progress lines per epoch, and a stop flag the parent can raise (workers)."""

    def __init__(self, emit: Callable[[str], None], prefix: str, stop: Any = None) -> None:
        self.emit, self.prefix, self.stop = emit, prefix, stop

    def on_train_begin(self, state: TrainState) -> None:
        total = state.config.epochs
        where = (f"resuming at epoch {state.epoch + 1}/{total}" if state.epoch or state.batch_in_epoch
                 else f"training {total} epoch{'s' if total != 1 else ''}")
        self.emit(f"{self.prefix}: {where}")

    def on_step_end(self, state: TrainState) -> None:
        if self.stop is not None and self.stop.is_set():
            state.stop_requested = True

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        self.emit(f"{self.prefix}: training epoch {metrics['epoch']}/{state.config.epochs}  "
                  f"train loss {metrics['train_loss']:.4f}  test acc {metrics['test_acc']:.4f}  "
                  f"({metrics['epoch_time']:.1f}s)")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _finished(run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint's record if the run in ``run_dir`` finished, else None."""
    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.exists():
        return None
    raw = read_checkpoint(ckpt)
    return raw if (raw.get("progress") or {}).get("finished") else None


def _outcome_from(spec: RunSpec, raw: dict[str, Any], status: str) -> RunOutcome:
    metrics = list(raw.get("metrics") or [])
    return RunOutcome(spec.index, spec.name, status, dict(metrics[-1]) if metrics else {}, len(metrics),
                      float(sum(r.get("epoch_time", 0.0) for r in metrics)),
                      environments=recorded(raw.get("metadata") or {}), convergence=run_convergence(metrics))


def _cached_analyses(task: _Task, step: int) -> tuple[dict[str, Any], list[str]]:
    """The stored analyses of the run, and the names still to compute."""
    from .analyses import AnalysisSettings
    s = AnalysisSettings(**task.settings)
    cache = _read_json(Path(task.run_dir) / "analysis.json") or {}
    stored = cache.get("analyses", {}) if isinstance(cache, dict) else {}
    todo = []
    seed = task.spec.config["seed"]
    for name in task.analyses:
        key = _analysis_key(name, s, task.analysis_rho, seed, step)
        _stored_under_old_name(stored, name, key)
        entry = stored.get(name)
        if not (isinstance(entry, dict) and entry.get("key") == key):
            todo.append(name)
    return stored, todo


def _complete(task: _Task) -> RunOutcome | None:
    """The outcome of a run that needs no work (finished, analyses stored, or diverged), else None."""
    run_dir = Path(task.run_dir)
    marker = _read_json(run_dir / "diverged.json")  # the last good checkpoint stays beside it
    if isinstance(marker, dict) and marker.get("config") == task.spec.config:
        return RunOutcome(task.spec.index, task.spec.name, "diverged", {}, 0, 0.0, notes=[marker.get("error", "")])
    raw = _finished(run_dir)
    if raw is None:
        return None
    outcome = _outcome_from(task.spec, raw, "reused")
    stored, todo = _cached_analyses(task, int(outcome.final.get("step", 0)))
    if todo:
        return None
    outcome.analysis_status = dict.fromkeys(task.analyses, "reused")
    _take_analyses(outcome, stored, task.analyses)
    return outcome


def _take_analyses(outcome: RunOutcome, stored: Mapping[str, Any], names: Sequence[str]) -> None:
    """Results, failures and warnings of the stored analyses into the outcome."""
    for name in names:
        entry = stored.get(name) or {}
        if entry.get("result") is not None:
            outcome.analyses[name] = entry["result"]
        if entry.get("error"):
            outcome.notes.append(f"{name} failed: {entry['error']}")
        outcome.notes += [f"{name}: {w}" for w in entry.get("warnings", [])]
        if entry.get("environment") and entry["environment"] not in outcome.analysis_environments:
            outcome.analysis_environments.append(entry["environment"])


def _named_factory(spec: RunSpec) -> str | bool:
    """The model factory the sweep's own configuration names for this run (trusted: the
    user named it), else False: a run folder never chooses what code runs."""
    model = spec.config.get("model")
    return model if is_factory(model) else False


def _check_models(specs: Sequence[RunSpec]) -> None:
    """Each model of the grid built once on its data (:func:`sharpscope.train.check_model`),
    before the first folder is written or run trained."""
    seen = set()
    for spec in specs:
        c = spec.config
        key = json.dumps([c.get("model"), c.get("model_kwargs"), c.get("data"), c.get("data_root")],
                         sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            check_model(spec.train_config())


def _run_task(task: _Task, emit: Callable[[str], None], stop: Any = None) -> RunOutcome:
    """Train (or resume, or reuse) one run, then compute the analyses not yet stored."""
    spec, run_dir = task.spec, Path(task.run_dir)
    prefix = f"[{spec.index + 1}/{task.total}] {spec.label}"
    if stop is not None and stop.is_set():  # queued before the stop: do not start
        return RunOutcome(spec.index, spec.name, "interrupted", {}, 0, 0.0)
    refuse_other_settings(run_dir, spec.config)
    done = _complete(task)
    if done is not None:
        emit(f"{prefix}: reused ({done.status if done.status == 'diverged' else 'finished before'})")
        return done
    raw = _finished(run_dir)
    if raw is not None:
        outcome = _outcome_from(spec, raw, "reused")
        emit(f"{prefix}: training reused (finished before)")
    else:
        resuming = (run_dir / "checkpoint.pt").exists()
        callbacks = [_Reporter(emit, prefix, stop), *task.callbacks]
        try:
            result = train(spec.train_config(), run_dir, resume=True, callbacks=callbacks,
                           allow_factory=_named_factory(spec))
        except NonFiniteLossError as err:
            marker = json.dumps({"config": spec.config, "error": str(err)}, indent=2).encode()  # p = inf kept
            atomic_write_bytes(run_dir / "diverged.json", lambda fh: fh.write(marker))
            emit(f"{prefix}: diverged: {err}")
            return RunOutcome(spec.index, spec.name, "diverged", {}, 0, 0.0, notes=[str(err)])
        if result.interrupted:
            emit(f"{prefix}: stopped; saved at epoch {len(result.metrics)} (rerun to continue)")
            return RunOutcome(spec.index, spec.name, "interrupted", {}, len(result.metrics), 0.0)
        outcome = _outcome_from(spec, read_checkpoint(run_dir / "checkpoint.pt"), "resumed" if resuming else "trained")
    stored, todo = _cached_analyses(task, int(outcome.final.get("step", 0)))
    if todo:
        from ..checkpoint import checkpoint_data, load_checkpoint
        from .analyses import AnalysisSettings

        s = AnalysisSettings(**task.settings)
        seed = spec.config["seed"]
        ckpt = load_checkpoint(run_dir / "checkpoint.pt", allow_factory=_named_factory(spec))
        data = checkpoint_data(ckpt)
        n = min(s.samples, int(data.x_train.shape[0]))
        batches = data.batches("train", n, 4096, seed)
        for name in todo:
            if stop is not None and stop.is_set():
                return RunOutcome(spec.index, spec.name, "interrupted", {}, outcome.epochs, 0.0)
            entry: dict[str, Any] = {"key": _analysis_key(name, s, task.analysis_rho, seed,
                                                          int(outcome.final.get("step", 0)))}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    entry["result"] = analyse_selected(ckpt.model, batches, [name], s, task.analysis_rho, seed,
                                                       lambda what: emit(f"{prefix}: {what}")).get(name)
                except SharpscopeError as err:  # e.g. a zero gradient: stored and noted, the sweep goes on
                    entry["error"] = " ".join(str(err).split())
                    emit(f"{prefix}: {name} failed: {entry['error']}")
            entry["warnings"] = [" ".join(str(w.message).split()) for w in caught]
            entry["environment"] = environment()  # what computed it (a rerun reuses the entry)
            for w in entry["warnings"]:
                emit(f"{prefix}: warning: {name}: {w}")
            stored[name] = entry
            outcome.analysis_status[name] = "computed"
            write_json(run_dir / "analysis.json", {"analyses": stored})
    for name in task.analyses:
        outcome.analysis_status.setdefault(name, "reused")
    _take_analyses(outcome, stored, task.analyses)
    emit(f"{prefix}: done, test acc {outcome.final.get('test_acc', math.nan):.4f}")
    return outcome


# Worker processes (jobs > 1): set up once per process by the pool's initializer.
_WORKER: dict[str, Any] = {}


def _init_worker(threads: int, queue: Any, stop: Any, deterministic: bool = False) -> None:
    from ..cpu import set_threads

    if deterministic:
        from ..determinism import enable_deterministic
        enable_deterministic(threads)
    set_threads(threads)
    # Ctrl-C reaches every process of the terminal's group: the parent decides, the workers
    # finish their step, save and return (the trainer's own handler does that while training).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER.update(queue=queue, stop=stop)


def _worker_run(task: _Task) -> RunOutcome:
    queue = _WORKER["queue"]
    return _run_task(task, lambda msg: queue.put(msg), _WORKER["stop"])


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


# ---------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------
def metric_names(analyses: Sequence[str], settings: Any) -> list[str]:
    """The metric columns a sweep with these analyses writes (m-sharpness: one per m of the
    profile; fewer when a run has fewer examples than m)."""
    names = list(_TRAIN_METRICS) + ["epochs_done", "train_seconds"]
    chosen = measure_table.resolve_all(analyses, "analysis")
    for name in [n for n in measure_table.MEASURES if n in chosen]:
        names += measure_table.MEASURES[name].column_names(asdict(settings), _DETAILS)
    if analyses:
        names += ["analysis_seconds"]
    return names


def _row(spec: RunSpec, outcome: RunOutcome) -> dict[str, Any]:
    f = outcome.final
    row: dict[str, Any] = {"run": spec.name, "status": outcome.status, **spec.options}
    for key in _TRAIN_METRICS:
        row[key] = f.get(key)
    row["epochs_done"] = outcome.epochs
    row["train_seconds"] = outcome.train_seconds if outcome.epochs else None
    a = outcome.analyses
    for name, measure in measure_table.MEASURES.items():
        if name in a:
            row.update(measure.columns_of(a[name], _DETAILS))
    if a:
        row["analysis_seconds"] = float(sum(r.get("wall_time", 0.0) for r in a.values()))
    row["converged"] = outcome.convergence["converged"] if outcome.convergence else None
    row["trained_in"] = " | ".join(describe(e) for e in outcome.environments) or None
    row["analysed_in"] = " | ".join(describe(e) for e in outcome.analysis_environments) or None
    row["notes"] = "; ".join(outcome.notes)
    return row


def varying_options(rows: Sequence[Mapping[str, Any]], options: Sequence[str]) -> list[str]:
    """The options (seed aside) that take more than one value over ``rows``: the
    hyperparameters of the granulated correlations."""
    return [o for o in options if o != "seed" and len({repr(r.get(o)) for r in rows}) > 1]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def summarize_rows(rows: Sequence[Mapping[str, Any]], options: Sequence[str], metrics: Sequence[str],
                   confidence: float = 0.95) -> list[dict[str, Any]]:
    """Per setting (the rows' values of ``options``, seed excluded): the
    :func:`sharpscope.stats.summarize` of every metric over its seeds (finite values only),
    and for a non-SGD setting the :func:`sharpscope.stats.paired_difference` (setting - SGD)
    against the SGD setting with the same non-perturbation options, over the seeds both have."""
    from .. import stats

    settings: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        settings.setdefault(tuple(row.get(o) for o in options), []).append(row)

    def baseline_key(key: tuple) -> tuple:
        return tuple(v for o, v in zip(options, key) if o != "optimizer" and o not in PERTURBATION_OPTIONS)

    sgd = {baseline_key(k): rs for k, rs in settings.items() if dict(zip(options, k)).get("optimizer") == "sgd"}
    out = []
    for key, group in settings.items():
        opts = dict(zip(options, key))
        entry: dict[str, Any] = {"options": opts, "seeds": [r["seed"] for r in group],
                                 "failed": sum(r.get("status") == "diverged" for r in group),
                                 "unconverged": sum(r.get("converged") is False for r in group), "metrics": {}}
        base = sgd.get(baseline_key(key)) if opts.get("optimizer") != "sgd" else None
        for metric in metrics:
            bounds = METRIC_BOUNDS.get(metric)
            values = [r.get(metric) for r in group if _finite(r.get(metric))]
            item: dict[str, Any] = {"summary": stats.summarize(values, confidence, bounds).to_dict() if values
                                    else None}
            if base is not None:
                mine = {r["seed"]: r.get(metric) for r in group}
                theirs = {r["seed"]: r.get(metric) for r in base}
                seeds = [s for s in mine if s in theirs and _finite(mine[s]) and _finite(theirs[s])]
                item["vs_sgd"] = (stats.paired_difference([theirs[s] for s in seeds], [mine[s] for s in seeds],
                                                          confidence, bounds).to_dict() if seeds else None)
                if item["vs_sgd"] is not None:
                    pair = [r for r in (*group, *base) if r["seed"] in seeds]
                    item["vs_sgd"]["about_unconverged_runs"] = any(r.get("converged") is False for r in pair)
            entry["metrics"][metric] = item
        out.append(entry)
    return out


_SUMMARY_FIELDS = ("n", "mean", "std", "ci_low", "ci_high")
_DIFF_FIELDS = ("n", "mean", "std", "ci_low", "ci_high", "p_value", "verdict")


def _summary_records(summary: Sequence[Mapping[str, Any]], options: Sequence[str]) -> tuple[list[str], list[dict]]:
    """summary.csv: one record per setting and metric; ``unconverged`` counts the setting's
    runs that had not converged, and ``verdict_about_unconverged_runs`` marks a verdict that
    compares such runs (verdicts.py)."""
    header = [*options, "metric", "unconverged", *_SUMMARY_FIELDS,
              *(f"diff_{k}" if k not in ("p_value", "verdict") else k for k in _DIFF_FIELDS),
              "verdict_about_unconverged_runs"]
    records = []
    for entry in summary:
        for metric, item in entry["metrics"].items():
            rec: dict[str, Any] = {**entry["options"], "metric": metric, "unconverged": entry.get("unconverged")}
            for k in _SUMMARY_FIELDS:
                rec[k] = (item["summary"] or {}).get(k)
            diff = item.get("vs_sgd") or {}
            for k in _DIFF_FIELDS:
                rec[k if k in ("p_value", "verdict") else f"diff_{k}"] = diff.get(k)
            rec["verdict_about_unconverged_runs"] = diff.get("about_unconverged_runs")
            records.append(rec)
    return header, records


# ---------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------
def parse_plot(text: str) -> tuple[str, str]:
    """``"test_acc:rho"`` -> ("test_acc", "rho"): METRIC:OPTION."""
    metric, sep, option = text.partition(":")
    if not sep or not metric.strip() or not option.strip():
        raise ConfigError(f"--plot takes METRIC:OPTION (e.g. test_acc:rho), got {text!r}")
    return metric.strip().replace("-", "_"), _option_name(option)


def _check_plots(plots: Sequence[tuple[str, str]], metrics: Sequence[str], options: Sequence[str]) -> None:
    for metric, option in plots:
        if metric not in metrics:
            raise ConfigError(f"--plot: no metric {metric!r} in this sweep; choose from {', '.join(metrics)}")
        if option not in options:
            raise ConfigError(f"--plot: {option!r} is not an option of this sweep; choose from {', '.join(options)}")


def default_plots(grid: Mapping[str, Sequence[Any]], analyses: Sequence[str]) -> list[tuple[str, str]]:
    """test accuracy against rho and against label noise (else against the first option that
    varies), and lambda_max against the first of them when the eigenvalues are analysed."""
    varying = [k for k, vs in grid.items() if len(vs) > 1 and k != "optimizer"]
    preferred = [k for k in ("rho", "label_noise") if k in varying] or varying[:1]
    if not preferred and len(grid.get("optimizer", ())) > 1:
        preferred = ["optimizer"]
    out = [("test_acc", k) for k in preferred]
    if preferred and "lambda_max" in measure_table.resolve_all(analyses, "analysis"):
        out.append(("lambda_max", preferred[0]))
    return out


def _draw(rows: Sequence[Mapping[str, Any]], options: Sequence[str], plots_wanted: Sequence[tuple[str, str]],
          figures: Path, formats: Sequence[str]) -> list[Path]:
    from .. import plots

    written: list[Path] = []
    for metric, option in plots_wanted:
        others = [o for o in options if o not in (option, "seed") and len({_key(r.get(o)) for r in rows}) > 1]
        groups: dict[str, dict[Any, dict[Any, Any]]] = {}
        for r in rows:
            parts = [str(r.get("optimizer"))] if "optimizer" in others else []
            parts += [f"{o}={_show(r.get(o))}" for o in others if o != "optimizer" and r.get(o) is not None]
            label = " ".join(parts) or str(r.get("optimizer"))  # no other option varies: name the optimizer
            if r.get(option) is None and option != "optimizer":
                label += f" ({option} n/a)"
            groups.setdefault(label, {}).setdefault(r["seed"], {})[r.get(option)] = r.get(metric)
        written += plots.plot_sweep(groups, figures / f"{metric}_vs_{option}", xlabel=option.replace("_", " "),
                                    ylabel=metric.replace("_", " "), formats=formats)
    return written


def _key(value: Any) -> str:
    return json.dumps(value, default=str)


# ---------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """What :func:`run_sweep` did and wrote."""

    out_dir: Path
    runs: list[RunSpec]
    outcomes: list[RunOutcome]
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    options: list[str]            # the option columns of the rows (grid options, then seed)
    metrics: list[str]            # the metric columns
    figures: list[Path]
    wall_time: float
    correlations: Any = None      # a CorrelationTable when the sweep was asked to correlate
    warnings: list[str] = field(default_factory=list)  # e.g. runs that had not converged

    @property
    def counts(self) -> dict[str, int]:
        """How many runs were trained, resumed, reused, diverged."""
        out: dict[str, int] = {}
        for o in self.outcomes:
            out[o.status] = out.get(o.status, 0) + 1
        return out

    @property
    def analyses_computed(self) -> int:
        return sum(v == "computed" for o in self.outcomes for v in o.analysis_status.values())


def _check_out(out: Path) -> None:
    """Refuse a folder that holds something other than a sweep (a compare or a training run)."""
    results = out / "results.json"
    if results.exists():
        stored = _read_json(results)
        if not (isinstance(stored, dict) and stored.get("kind") == RESULTS_KIND):
            raise ConfigError(f"{out} holds a results.json that is not a sweep's; choose another --out")
    if (out / "checkpoint.pt").exists():
        raise ConfigError(f"{out} holds a training run; choose another --out")


def run_sweep(config: SweepConfig, out_dir: str | os.PathLike[str], *, jobs: int = 1,
              plots: Sequence[tuple[str, str] | str] | None = None, formats: Sequence[str] = ("png",),
              say: Callable[[str], None] = lambda msg: None,
              callbacks_for: Callable[[RunSpec], list[Callback]] | None = None,
              on_run_done: Callable[[RunSpec, RunOutcome], None] | None = None,
              threads: int | None = None, correlate: bool = False, deterministic: bool = False,
              min_train_acc: float = DEFAULT_MIN_TRAIN_ACC) -> SweepResult:
    """Train every run of ``config`` into ``out_dir/runs``, analyse them, write the tables and
    figures (module docstring); returns a :class:`SweepResult`.

    ``jobs`` runs at once in spawned worker processes with ``max(1, cores // jobs)`` threads
    each (``threads`` overrides that; runs that need no work are read here, without a
    worker; ``jobs=1`` runs in this process with its own threads). ``plots``: METRIC:OPTION
    pairs (strings or tuples); None draws :func:`default_plots`, ``[]`` none. ``say`` gets one
    progress line at a time ("[3/24] sam rho=0.05 seed=0: training epoch 4/10 ...").
    ``callbacks_for(spec)`` adds training callbacks to a run (pickled to the worker when
    ``jobs > 1``); ``on_run_done(spec, outcome)`` is called here as each run completes.
    ``correlate``: also the rank correlations of every measure with the generalization gap
    over the runs that :func:`sharpscope.experiments.correlate.select_runs` keeps at
    ``min_train_acc`` (:func:`~sharpscope.experiments.correlate.report_correlations`, the path
    ``sharpscope correlate`` takes).
    ``deterministic``: the workers run with :func:`sharpscope.determinism.enable_deterministic`
    and ``threads`` (default 1, not a share of the cores, so the bits do not depend on ``jobs``);
    with ``jobs=1`` the caller sets up this process (the CLI's ``--deterministic`` does).

    Ctrl-C (or a callback's ``stop_requested``) saves the running runs at their next step and
    raises KeyboardInterrupt; the same call again continues them and reuses the rest.
    """
    start = time.perf_counter()
    jobs = int_at_least("--jobs", jobs, 1)
    min_train_acc = check_min_train_acc(min_train_acc)
    if threads is not None:
        int_at_least("threads", threads, 1)
    out = Path(out_dir)
    specs = config.runs()
    s = config.settings()
    options = [*config.grid, "seed"]
    metrics = metric_names(config.analyses, s)
    clash = sorted(set(metrics) & set(options))
    if clash:  # a training option named like a metric would share its column
        raise ConfigError(f"grid option {clash[0]!r} has the name of a metric")
    wanted = default_plots(config.grid, config.analyses) if plots is None else \
        [parse_plot(p) if isinstance(p, str) else (p[0], _option_name(p[1])) for p in plots]
    _check_plots(wanted, metrics, options)
    _check_out(out)
    for spec in specs:  # every folder is checked before the first run trains
        refuse_other_settings(out / "runs" / spec.name, spec.config)
    _check_models(specs)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "sweep.json", {"kind": RESULTS_KIND, "config": config.to_dict(),
                                     "runs": [{"name": r.name, "options": r.options} for r in specs]})

    total = len(specs)
    tasks = [_Task(spec, str(out / "runs" / spec.name), list(config.analyses), asdict(s), config.analysis_rho, total,
                   list(callbacks_for(spec)) if callbacks_for else []) for spec in specs]
    outcomes: dict[int, RunOutcome] = {}

    def record(task: _Task, outcome: RunOutcome) -> None:
        if outcome.status == "interrupted":
            raise KeyboardInterrupt(f"{task.run_dir} saved mid-run; rerun the same command to continue")
        outcomes[task.spec.index] = outcome
        if on_run_done is not None:
            on_run_done(task.spec, outcome)

    pending = []
    for task in tasks:  # what needs no work is read here, in order
        done = _complete(task)
        if done is None:
            pending.append(task)
            continue
        say(f"[{task.spec.index + 1}/{total}] {task.spec.label}: reused"
            f"{' (diverged before)' if done.status == 'diverged' else ''}")
        record(task, done)
    if pending:
        say(f"{len(pending)} of {total} runs to train or analyse"
            + (f", {min(jobs, len(pending))} at a time" if jobs > 1 else ""))
    if jobs == 1 or len(pending) <= 1:
        for task in pending:
            record(task, _run_task(task, say))
    else:
        _run_pool(pending, jobs, say, record, threads, deterministic)

    ordered = [outcomes[spec.index] for spec in specs]
    rows = [_row(spec, o) for spec, o in zip(specs, ordered)]
    extra = [k for r in rows for k in r
             if k not in options and k not in metrics and k not in ("run", "status", "converged", "trained_in",
                                                                     "analysed_in", "notes")]
    metrics = metrics + list(dict.fromkeys(extra))  # e.g. m-sharpness at an m the profile did not predict
    summary = summarize_rows(rows, [o for o in options if o != "seed"], metrics)
    unlike = differences([e for o in ordered for e in o.environments])
    unlike_analyses = differences([e for o in ordered for e in o.analysis_environments])
    for what, found in (("", unlike), ("analyses: ", unlike_analyses)):
        if found:
            say(f"warning: {what}{unlike_runs_warning(found)}")
    warning = sweep_convergence(rows)["warning"]
    _write_tables(out, config, rows, summary, options, metrics, unlike, unlike_analyses)
    figures = _draw(rows, options, wanted, out / "figures", formats)
    table = None
    if correlate:
        table, files = _correlate(rows, options, out, formats, min_train_acc)
        figures += [f for f in files if f.parent == out / "figures"]
    result = SweepResult(out, specs, ordered, rows, summary, options, metrics, figures, time.perf_counter() - start,
                         table, [warning] if warning else [])
    counts = ", ".join(f"{n} {k}" for k, n in result.counts.items())
    say(f"{total} runs ({counts}), {result.analyses_computed} analyses computed, {result.wall_time:.0f}s")
    return result


def _run_pool(pending: list[_Task], jobs: int, say: Callable[[str], None],
              record: Callable[[_Task, RunOutcome], None], threads: int | None = None,
              deterministic: bool = False) -> None:
    """Run ``pending`` on ``jobs`` spawned workers; progress lines come back through a queue."""
    import multiprocessing
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = multiprocessing.get_context("spawn")
    messages = ctx.Queue()
    stop = ctx.Event()
    from ..cpu import worker_threads

    threads = worker_threads(jobs, threads, deterministic)
    say(f"{min(jobs, len(pending))} worker processes, {threads} thread{'s' if threads > 1 else ''} each")

    def drain() -> None:
        while True:
            try:
                say(messages.get_nowait())
            except queue_mod.Empty:
                return

    pool = ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=ctx, initializer=_init_worker,
                               initargs=(threads, messages, stop, deterministic))
    # The workers start (on submit) with SIGINT ignored, which a new interpreter keeps: a
    # Ctrl-C while they import torch would otherwise kill them with a traceback each.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
    try:
        futures = {pool.submit(_worker_run, task): task for task in pending}
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    waiting = set(futures)
    try:
        while waiting:
            done, waiting = wait(waiting, timeout=0.2, return_when=FIRST_COMPLETED)
            drain()
            for fut in sorted(done, key=lambda f: futures[f].spec.index):
                record(futures[fut], fut.result())
    except KeyboardInterrupt as err:
        _stop_pool(pool, stop, waiting, drain)
        raise KeyboardInterrupt(str(err) or "the running runs are saved; rerun the same command to continue") \
            from None
    except BaseException:
        _stop_pool(pool, stop, waiting, drain)
        raise
    pool.shutdown(wait=True)
    drain()


def _stop_pool(pool: Any, stop: Any, waiting: set, drain: Callable[[], None]) -> None:
    """Ask the running runs to save at their next step, drop the queued ones, wait for the
    workers; a second Ctrl-C meanwhile ends them at once (the last checkpoints stay)."""
    stop.set()
    for fut in waiting:
        fut.cancel()
    try:
        pool.shutdown(wait=True, cancel_futures=True)
    except KeyboardInterrupt:
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()
        raise KeyboardInterrupt("stopped at once; rerun the same command to continue from the last "
                                "checkpoints") from None
    finally:
        drain()


def sweep_convergence(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The convergence definition, the runs (by name) that had not converged and the warning
    (None when all converged; diverged runs are counted as failures elsewhere)."""
    names = [str(r["run"]) for r in rows if r.get("converged") is False]
    judged = sum(r.get("converged") is not None for r in rows)
    return {"definition": CONVERGENCE_DEFINITION, "unconverged": names,
            "warning": unconverged_warning(names, judged)}


def _write_tables(out: Path, config: SweepConfig, rows: list[dict], summary: list[dict], options: list[str],
                  metrics: list[str], unlike: dict[str, list[Any]], unlike_analyses: dict[str, list[Any]]) -> None:
    header = ["run", "status", *options, *metrics, "converged", "trained_in", "analysed_in", "notes"]
    write_csv(out / "results.csv", header, rows)
    convergence = sweep_convergence(rows)
    write_json(out / "results.json", {"kind": RESULTS_KIND, "config": config.to_dict(), "options": options,
                                       "metrics": metrics, "rows": rows, "environment": environment(),
                                       "environment_differences": unlike,
                                       "analysis_environment_differences": unlike_analyses,
                                       "convergence": convergence,
                                       "warnings": [convergence["warning"]] if convergence["warning"] else []})
    setting_options = [o for o in options if o != "seed"]
    s_header, s_records = _summary_records(summary, setting_options)
    write_csv(out / "summary.csv", s_header, s_records)
    write_json(out / "summary.json", {"kind": RESULTS_KIND, "confidence": 0.95, "ci_method": CI_METHOD_TEXT,
                                       "difference": "setting - matching SGD setting, paired by seed",
                                       "convergence": convergence, "options": setting_options,
                                       "settings": summary})


def replot(out_dir: str | os.PathLike[str], plots: Sequence[tuple[str, str] | str] | None = None,
           formats: Sequence[str] = ("png",), correlate: bool = False,
           min_train_acc: float = DEFAULT_MIN_TRAIN_ACC) -> list[Path]:
    """Redraw the figures of a finished sweep from ``out_dir/results.json`` (no training);
    ``correlate``: also (re)compute its correlation tables and figures (runs kept at
    ``min_train_acc``)."""
    min_train_acc = check_min_train_acc(min_train_acc)
    out = Path(out_dir)
    stored = _read_json(out / "results.json")
    if not (isinstance(stored, dict) and stored.get("kind") == RESULTS_KIND):
        raise ConfigError(f"no finished sweep in {out} (results.json missing or not a sweep's)")
    options, metrics, rows = stored["options"], stored["metrics"], stored["rows"]
    grid = stored["config"]["grid"]
    wanted = default_plots(grid, stored["config"]["analyses"]) if plots is None else \
        [parse_plot(p) if isinstance(p, str) else (p[0], _option_name(p[1])) for p in plots]
    _check_plots(wanted, metrics, options)
    written = _draw(rows, options, wanted, out / "figures", formats)
    if correlate:
        written += _correlate(rows, options, out, formats, min_train_acc)[1]
    return written


def _correlate(rows: Sequence[Mapping[str, Any]], options: Sequence[str], out: Path, formats: Sequence[str],
               min_train_acc: float) -> tuple[Any, list[Path]]:
    """The sweep's rank correlations over the runs kept at ``min_train_acc``; the granulated
    coefficients vary the options that vary over those runs."""
    from .correlate import report_correlations, select_runs
    kept = select_runs(rows, min_train_acc)[0]
    return report_correlations(rows, out, formats, hyperparameters=varying_options(kept, options),
                               min_train_acc=min_train_acc)
