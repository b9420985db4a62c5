"""Sweeps: train the product of :class:`~sharpscope.train.TrainConfig` option lists
(``{"optimizer": ["sgd", "sam"], "rho": [0.05, 0.1]}``) over seeds, analyse every run, tabulate.
Options an optimizer does not read collapse (SGD is trained once per remaining setting, not
once per rho, and its rows leave them empty).

Layout of ``out_dir``: ``runs/<name>/`` (one run, named from its own configuration, e.g.
sam_rho0.05_m16_seed0, with its ``analysis.json`` or ``diverged.json``), ``sweep.json``,
``results.csv/.json`` (a row per run), ``summary.csv/.json`` (per setting: mean, std and
Student-t CI of every metric and the paired difference to the matching SGD setting) and
``figures/<metric>_vs_<option>.png``. Everything is resumable, and sweeps sharing ``out_dir``
share the runs they have in common. ``jobs > 1`` workers use ``max(1, cores // jobs)`` threads
each: one per core in every process oversubscribes the cores (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..checks import finite_float, int_at_least
from ..errors import ConfigError
from ..optim import registry
from ..provenance import differences, unlike_runs_warning
from ..train import Callback, TrainConfig
from .. import measure_table
from .analyses import PROFILES, analyse_selected, analysis_names
from .correlate import DEFAULT_MIN_TRAIN_ACC, check_min_train_acc
from .engine import RunOutcome, RunTask, check_models, run_tasks
from .files import read_results, write_json
from .grid import (PERTURBATION_OPTIONS, RunSpec, expand_grid, flag, option_name, parse_seeds, parse_values,
                   plain_option, show_value, sweepable_options, uses_option)
from .runs import refuse_other_settings
from .tables import (RESULTS_KIND, metric_names, read_sweep_results, run_row, summarize_rows, sweep_convergence,
                     varying_options, write_tables)

__all__ = [
    "SweepConfig", "SweepResult", "RunSpec", "RunOutcome", "run_sweep", "replot", "expand_grid",
    "sweepable_options", "uses_option", "parse_values", "parse_seeds", "parse_plot", "metric_names",
    "analyse_selected", "summarize_rows", "DEFAULT_ANALYSES", "PERTURBATION_OPTIONS",
    "varying_options", "sweep_convergence", "default_plots", "RESULTS_KIND",
]

# The three quantities SAM papers report, at a fraction of the cost of the trace and the density.
DEFAULT_ANALYSES = ("lambda_max", "gradcos", "m_sharpness")


@dataclass
class SweepConfig:
    """What a sweep trains and how it analyses each run. ``grid``: TrainConfig field -> values
    (a list or a comma string, :func:`parse_values`); ``seeds``: a list or a count; ``base``:
    fields every run shares (snapshots off unless asked). ``analyses`` (measures of
    :func:`~sharpscope.experiments.analyses.analysis_names`) run at the ``profile``'s work, with
    one ``analysis_rho`` for every run (the columns compare minima, not probes of different
    sizes); ``analysis_m`` replaces the profile's m values."""

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
            name = option_name(key)
            if name in grid:
                raise ConfigError(f"{flag(name)} is given twice")
            grid[name] = parse_values(name, values)
        base = {option_name(k): v for k, v in self.base.items()}
        if "optimizer" not in grid:  # every row says which optimizer trained it
            grid = {"optimizer": parse_values("optimizer", [base.pop("optimizer", TrainConfig.optimizer)]), **grid}
        for name in grid["optimizer"]:
            registry.get(name)  # an unknown name: ConfigError listing the choices
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
        if self.profile not in PROFILES:
            raise ConfigError(f"unknown profile {self.profile!r}; choose from {', '.join(PROFILES)}")
        self.analysis_rho = finite_float("--analysis-rho", self.analysis_rho, at_least=0)
        if self.analysis_m is not None:
            ms = parse_values("m", self.analysis_m, "--analysis-m")
            if any(m is None or m < 1 for m in ms):  # parse_values refused empty lists and duplicates
                raise ConfigError(f"--analysis-m expects distinct positive sizes, e.g. 1,4,16,64; got "
                                  f"{self.analysis_m!r}")
            self.analysis_m = sorted(ms)
        self.runs()  # every run's TrainConfig is valid before the first one trains

    def settings(self) -> Any:
        """The profile's AnalysisSettings, with ``analysis_m`` as its m values when given."""
        s = PROFILES[self.profile]
        return s if self.analysis_m is None else replace(s, m_values=list(self.analysis_m))

    def runs(self) -> list[RunSpec]:
        return expand_grid(self)

    def to_dict(self) -> dict[str, Any]:
        return {"grid": {k: [plain_option(v) for v in vs] for k, vs in self.grid.items()}, "seeds": list(self.seeds),
                "base": {k: plain_option(v) for k, v in self.base.items()}, "analyses": list(self.analyses),
                "profile": self.profile, "analysis_rho": self.analysis_rho, "analysis_m": self.analysis_m}


def parse_plot(text: str) -> tuple[str, str]:
    """``"test_acc:rho"`` -> ("test_acc", "rho"): METRIC:OPTION."""
    metric, sep, option = text.partition(":")
    if not sep or not metric.strip() or not option.strip():
        raise ConfigError(f"--plot takes METRIC:OPTION (e.g. test_acc:rho), got {text!r}")
    return metric.strip().replace("-", "_"), option_name(option)


def _wanted(grid: Mapping[str, Sequence[Any]], analyses: Sequence[str], plots: Sequence[tuple[str, str] | str] | None,
            metrics: Sequence[str], options: Sequence[str]) -> list[tuple[str, str]]:
    """The METRIC:OPTION figures asked (None: :func:`default_plots`), each checked."""
    wanted = default_plots(grid, analyses) if plots is None else \
        [parse_plot(p) if isinstance(p, str) else (p[0], option_name(p[1])) for p in plots]
    for metric, option in wanted:
        if metric not in metrics:
            raise ConfigError(f"--plot: no metric {metric!r} in this sweep; choose from {', '.join(metrics)}")
        if option not in options:
            raise ConfigError(f"--plot: {option!r} is not an option of this sweep; choose from {', '.join(options)}")
    return wanted


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
        others = [o for o in options
                  if o not in (option, "seed") and len({json.dumps(r.get(o), default=str) for r in rows}) > 1]
        groups: dict[str, dict[Any, dict[Any, Any]]] = {}
        for r in rows:
            parts = [str(r.get("optimizer"))] if "optimizer" in others else []
            parts += [f"{o}={show_value(r.get(o))}" for o in others if o != "optimizer" and r.get(o) is not None]
            label = " ".join(parts) or str(r.get("optimizer"))  # no other option varies: name the optimizer
            if r.get(option) is None and option != "optimizer":
                label += f" ({option} n/a)"
            groups.setdefault(label, {}).setdefault(r["seed"], {})[r.get(option)] = r.get(metric)
        written += plots.plot_sweep(groups, figures / f"{metric}_vs_{option}", xlabel=option.replace("_", " "),
                                    ylabel=metric.replace("_", " "), formats=formats)
    return written


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
        return dict(Counter(o.status for o in self.outcomes))

    @property
    def analyses_computed(self) -> int:
        return sum(v == "computed" for o in self.outcomes for v in o.analysis_status.values())


def run_sweep(config: SweepConfig, out_dir: str | os.PathLike[str], *, jobs: int = 1,
              plots: Sequence[tuple[str, str] | str] | None = None, formats: Sequence[str] = ("png",),
              say: Callable[[str], None] = lambda msg: None,
              callbacks_for: Callable[[RunSpec], list[Callback]] | None = None,
              on_run_done: Callable[[RunSpec, RunOutcome], None] | None = None,
              threads: int | None = None, correlate: bool = False, deterministic: bool = False,
              min_train_acc: float = DEFAULT_MIN_TRAIN_ACC) -> SweepResult:
    """Train every run of ``config`` into ``out_dir/runs``, analyse them, write the tables and
    figures (module docstring); returns a :class:`SweepResult`. ``jobs``, ``threads``,
    ``deterministic``: as :func:`~sharpscope.experiments.engine.run_tasks` (deterministic workers
    use ``threads``, default 1, so the bits do not depend on ``jobs``; with ``jobs=1`` the caller
    sets up this process). ``plots``: METRIC:OPTION pairs; None draws :func:`default_plots`.
    ``callbacks_for(spec)``: training callbacks of a run (pickled to its worker).
    ``correlate``: also :func:`~sharpscope.experiments.correlate.report_correlations` over the
    runs kept at ``min_train_acc``. Ctrl-C saves the running runs and raises KeyboardInterrupt;
    the same call again continues them."""
    start = time.perf_counter()
    jobs = int_at_least("--jobs", jobs, 1)
    min_train_acc = check_min_train_acc(min_train_acc)
    if threads is not None:
        int_at_least("threads", threads, 1)
    out = Path(out_dir)
    specs = config.runs()
    options = [*config.grid, "seed"]
    metrics = metric_names(config.analyses, config.settings())
    wanted = _prepare(config, out, specs, options, metrics, plots)
    s = asdict(config.settings())
    tasks = [RunTask(spec, str(out / "runs" / spec.name), list(config.analyses), s, config.analysis_rho, len(specs),
                     list(callbacks_for(spec)) if callbacks_for else []) for spec in specs]
    outcomes = run_tasks(tasks, jobs=jobs, say=say, on_done=on_run_done, threads=threads, deterministic=deterministic)
    rows = [run_row(spec, o) for spec, o in zip(specs, outcomes)]
    extra = [k for r in rows for k in r
             if k not in options and k not in metrics and k not in ("run", "status", "converged", "trained_in",
                                                                     "analysed_in", "notes")]
    metrics = metrics + list(dict.fromkeys(extra))  # e.g. m-sharpness at an m the profile did not predict
    summary = summarize_rows(rows, [o for o in options if o != "seed"], metrics)
    unlike = differences([e for o in outcomes for e in o.environments])
    unlike_analyses = differences([e for o in outcomes for e in o.analysis_environments])
    for what, found in (("", unlike), ("analyses: ", unlike_analyses)):
        if found:
            say(f"warning: {what}{unlike_runs_warning(found)}")
    warning = sweep_convergence(rows)["warning"]
    write_tables(out, config.to_dict(), rows, summary, options, metrics, unlike, unlike_analyses)
    figures = _draw(rows, options, wanted, out / "figures", formats)
    table = None
    if correlate:
        table, files = _correlate(rows, options, out, formats, min_train_acc)
        figures += [f for f in files if f.parent == out / "figures"]
    result = SweepResult(out, specs, outcomes, rows, summary, options, metrics, figures, time.perf_counter() - start,
                         table, [warning] if warning else [])
    counts = ", ".join(f"{n} {k}" for k, n in result.counts.items())
    say(f"{len(specs)} runs ({counts}), {result.analyses_computed} analyses computed, {result.wall_time:.0f}s")
    return result


def _prepare(config: SweepConfig, out: Path, specs: Sequence[RunSpec], options: Sequence[str],
             metrics: Sequence[str], plots: Sequence[tuple[str, str] | str] | None) -> list[tuple[str, str]]:
    """Every check before the first folder is written or run trained, then ``sweep.json``: the
    figures to draw."""
    clash = sorted(set(metrics) & set(options))
    if clash:  # a training option named like a metric would share its column
        raise ConfigError(f"grid option {clash[0]!r} has the name of a metric")
    wanted = _wanted(config.grid, config.analyses, plots, metrics, options)
    stored = read_results(out) if (out / "results.json").exists() else {"kind": RESULTS_KIND}
    if not (isinstance(stored, dict) and stored.get("kind") == RESULTS_KIND):
        raise ConfigError(f"{out} holds a results.json that is not a sweep's; choose another --out")
    if (out / "checkpoint.pt").exists():
        raise ConfigError(f"{out} holds a training run; choose another --out")
    for spec in specs:  # every folder is checked before the first run trains
        refuse_other_settings(out / "runs" / spec.name, spec.config)
    check_models(specs)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "sweep.json", {"kind": RESULTS_KIND, "config": config.to_dict(),
                                     "runs": [{"name": r.name, "options": r.options} for r in specs]})
    return wanted


def replot(out_dir: str | os.PathLike[str], plots: Sequence[tuple[str, str] | str] | None = None,
           formats: Sequence[str] = ("png",), correlate: bool = False,
           min_train_acc: float = DEFAULT_MIN_TRAIN_ACC) -> list[Path]:
    """Redraw the figures of a finished sweep from ``out_dir/results.json``; ``correlate``: also
    its correlation tables and figures."""
    min_train_acc = check_min_train_acc(min_train_acc)
    out = Path(out_dir)
    stored = read_sweep_results(out)
    options, metrics, rows = stored["options"], stored["metrics"], stored["rows"]
    wanted = _wanted(stored["config"]["grid"], stored["config"]["analyses"], plots, metrics, options)
    written = _draw(rows, options, wanted, out / "figures", formats)
    if correlate:
        written += _correlate(rows, options, out, formats, min_train_acc)[1]
    return written


def _correlate(rows: Sequence[Mapping[str, Any]], options: Sequence[str], out: Path, formats: Sequence[str],
               min_train_acc: float) -> tuple[Any, list[Path]]:
    """The sweep's rank correlations over the runs kept at ``min_train_acc``."""
    from .correlate import report_correlations, select_runs
    kept = select_runs(rows, min_train_acc)[0]
    return report_correlations(rows, out, formats, hyperparameters=varying_options(kept, options),
                               min_train_acc=min_train_acc)
