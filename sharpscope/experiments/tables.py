"""The tables of a sweep: one row per run (options, seed, every metric), the summary per
setting (mean, std and CI over seeds, the paired difference to the matching SGD setting) and
the convergence of the runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import measure_table
from ..errors import ConfigError
from ..optim.registry import PERTURBATION_OPTIONS
from ..provenance import describe, environment
from .engine import RunOutcome
from .files import RESULTS_SCHEMA, read_results, write_csv, write_json
from .grid import RunSpec
from .verdicts import CI_METHOD_TEXT, CONVERGENCE_DEFINITION, METRIC_BOUNDS, finite_number, unconverged_warning

__all__ = ["RESULTS_KIND", "metric_names", "run_columns", "run_row", "varying_options", "summarize_rows",
           "summary_records", "sweep_convergence", "read_sweep_results", "write_tables"]

_DETAILS = ("stderr",)  # the supporting columns a sweep's rows hold (the trace's standard error)
_TRAIN_METRICS = ("train_loss", "train_acc", "train_loss_clean", "train_acc_clean", "test_loss", "test_acc",
                  "perturbed_loss")
RESULTS_KIND = "sharpscope sweep"


def metric_names(analyses: Sequence[str], settings: Any) -> list[str]:
    """The metric columns a sweep with these analyses writes (m-sharpness: one per m of the profile)."""
    names = list(_TRAIN_METRICS) + ["epochs_done", "train_seconds"]
    chosen = measure_table.resolve_all(analyses, "analysis")
    for name in [n for n in measure_table.MEASURES if n in chosen]:
        names += measure_table.MEASURES[name].column_names(asdict(settings), _DETAILS)
    if analyses:
        names += ["analysis_seconds"]
    return names


def run_columns(final: Mapping[str, Any], keys: Sequence[str], analyses: Mapping[str, Any],
                details: Sequence[str] = ()) -> dict[str, Any]:
    """THE flattener of a run into row columns (sweep, compare, correlate): the final epoch's
    ``keys`` (None where missing), then the columns (with ``details``) of every measure of
    :mod:`sharpscope.measure_table` in ``analyses`` (name -> result), in table order."""
    row = {k: final.get(k) for k in keys}
    for name, measure in measure_table.MEASURES.items():
        if name in analyses:
            row.update(measure.columns_of(analyses[name], details))
    return row


def run_row(spec: RunSpec, outcome: RunOutcome) -> dict[str, Any]:
    """A sweep's row: the run, its options, :func:`run_columns` and where it was made."""
    a = outcome.analyses
    row: dict[str, Any] = {"run": spec.name, "status": outcome.status, **spec.options,
                           **run_columns(outcome.final, _TRAIN_METRICS, a, _DETAILS), "epochs_done": outcome.epochs,
                           "train_seconds": outcome.train_seconds if outcome.epochs else None}
    if a:
        row["analysis_seconds"] = float(sum(r.get("wall_time", 0.0) for r in a.values()))
    row["converged"] = outcome.convergence["converged"] if outcome.convergence else None
    row["trained_in"] = " | ".join(describe(e) for e in outcome.environments) or None
    row["analysed_in"] = " | ".join(describe(e) for e in outcome.analysis_environments) or None
    row["notes"] = "; ".join(outcome.notes)
    return row


def varying_options(rows: Sequence[Mapping[str, Any]], options: Sequence[str]) -> list[str]:
    """The options (seed aside) that take more than one value over ``rows``."""
    return [o for o in options if o != "seed" and len({repr(r.get(o)) for r in rows}) > 1]


def summarize_rows(rows: Sequence[Mapping[str, Any]], options: Sequence[str], metrics: Sequence[str],
                   confidence: float = 0.95, baseline: str = "sgd", every_seed: bool = False) -> list[dict[str, Any]]:
    """THE summarizer of runs over seeds (``sweep`` and ``compare``). Per setting (the rows'
    values of ``options``): :func:`sharpscope.stats.summarize` of every metric's finite values
    and, for another optimizer than ``baseline``, :func:`sharpscope.stats.paired_difference`
    (setting - baseline) to the ``baseline`` setting with the same non-perturbation options
    over the seeds both have (``"vs_sgd"``, marked ``about_unconverged_runs`` when a run of the
    pair had not converged). ``every_seed``: only metrics every seed of both settings has."""
    settings: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        settings.setdefault(tuple(row.get(o) for o in options), []).append(row)

    def baseline_key(key: tuple) -> tuple:
        return tuple(v for o, v in zip(options, key) if o != "optimizer" and o not in PERTURBATION_OPTIONS)

    bases = {baseline_key(k): rs for k, rs in settings.items() if dict(zip(options, k)).get("optimizer") == baseline}
    out = []
    for key, group in settings.items():
        opts = dict(zip(options, key))
        entry: dict[str, Any] = {"options": opts, "seeds": [r["seed"] for r in group],
                                 "failed": sum(r.get("status") == "diverged" for r in group),
                                 "unconverged": sum(r.get("converged") is False for r in group), "metrics": {}}
        base = bases.get(baseline_key(key)) if opts.get("optimizer") != baseline else None
        for metric in metrics:
            if every_seed and not all(finite_number(r.get(metric)) for r in group):
                continue
            entry["metrics"][metric] = _metric_statistics(metric, group, base, confidence, every_seed)
        out.append(entry)
    return out


def _metric_statistics(metric: str, group: Sequence[Mapping[str, Any]], base: Sequence[Mapping[str, Any]] | None,
                       confidence: float, every_seed: bool) -> dict[str, Any]:
    """One metric of one setting (:func:`summarize_rows`): its summary and the paired difference."""
    from .. import stats

    bounds = METRIC_BOUNDS.get(metric)
    values = [r.get(metric) for r in group if finite_number(r.get(metric))]
    item: dict[str, Any] = {"summary": stats.summarize(values, confidence, bounds).to_dict() if values else None}
    if base is not None:
        mine = {r["seed"]: r.get(metric) for r in group}
        theirs = {r["seed"]: r.get(metric) for r in base}
        seeds = [s for s in mine if s in theirs and finite_number(mine[s]) and finite_number(theirs[s])]
        if every_seed and not (len(seeds) == len(mine) and all(finite_number(v) for v in theirs.values())):
            seeds = []
        item["vs_sgd"] = (stats.paired_difference([theirs[s] for s in seeds], [mine[s] for s in seeds],
                                                  confidence, bounds).to_dict() if seeds else None)
        if item["vs_sgd"] is not None:
            pair = [r for r in (*group, *base) if r["seed"] in seeds]
            item["vs_sgd"]["about_unconverged_runs"] = any(r.get("converged") is False for r in pair)
    return item


_SUMMARY_FIELDS = ("n", "mean", "std", "ci_low", "ci_high")
_DIFF_COLUMNS = {k: f"diff_{k}" for k in _SUMMARY_FIELDS} | {"p_value": "p_value", "verdict": "verdict"}


def summary_records(summary: Sequence[Mapping[str, Any]], options: Sequence[str]) -> tuple[list[str], list[dict]]:
    """summary.csv's header and records: one per setting and metric."""
    header = [*options, "metric", "unconverged", *_SUMMARY_FIELDS, *_DIFF_COLUMNS.values(),
              "verdict_about_unconverged_runs"]
    records = []
    for entry in summary:
        for metric, item in entry["metrics"].items():
            summ, diff = item["summary"] or {}, item.get("vs_sgd") or {}
            records.append({**entry["options"], "metric": metric, "unconverged": entry.get("unconverged"),
                            **{k: summ.get(k) for k in _SUMMARY_FIELDS},
                            **{column: diff.get(k) for k, column in _DIFF_COLUMNS.items()},
                            "verdict_about_unconverged_runs": diff.get("about_unconverged_runs")})
    return header, records


def sweep_convergence(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The convergence definition, the runs that had not converged and the warning (None: all did)."""
    names = [str(r["run"]) for r in rows if r.get("converged") is False]
    judged = sum(r.get("converged") is not None for r in rows)
    return {"definition": CONVERGENCE_DEFINITION, "unconverged": names,
            "warning": unconverged_warning(names, judged)}


def read_sweep_results(out: Path) -> dict[str, Any]:
    """A finished sweep's results.json, else ConfigError."""
    stored = read_results(out)
    if not (isinstance(stored, dict) and stored.get("kind") == RESULTS_KIND):
        raise ConfigError(f"no finished sweep in {out} (results.json missing or not a sweep's)")
    return stored


def write_tables(out: Path, config: Mapping[str, Any], rows: list[dict], summary: list[dict], options: list[str],
                  metrics: list[str], unlike: dict[str, list[Any]], unlike_analyses: dict[str, list[Any]]) -> None:
    header = ["run", "status", *options, *metrics, "converged", "trained_in", "analysed_in", "notes"]
    write_csv(out / "results.csv", header, rows)
    convergence = sweep_convergence(rows)
    write_json(out / "results.json", {"kind": RESULTS_KIND, "schema": RESULTS_SCHEMA, "config": dict(config),
                                       "options": options, "metrics": metrics, "rows": rows,
                                       "environment": environment(), "environment_differences": unlike,
                                       "analysis_environment_differences": unlike_analyses, "convergence": convergence,
                                       "warnings": [convergence["warning"]] if convergence["warning"] else []})
    setting_options = [o for o in options if o != "seed"]
    s_header, s_records = summary_records(summary, setting_options)
    write_csv(out / "summary.csv", s_header, s_records)
    write_json(out / "summary.json", {"kind": RESULTS_KIND, "confidence": 0.95, "ci_method": CI_METHOD_TEXT,
                                       "difference": "setting - matching SGD setting, paired by seed",
                                       "convergence": convergence, "options": setting_options, "settings": summary})
