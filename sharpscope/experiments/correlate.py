"""Which sharpness measure tracks the generalization gap of a set of runs: the rank correlation,
over trained models, between a measure and the gap (Jiang et al., ICLR 2020; Andriushchenko et
al., ICML 2023; Foret et al., ICLR 2021, Fig. 3 for m-sharpness). Over the rows of runs:

- the gaps ``gap_error`` = train_acc - test_acc (test error - train error) and ``gap_loss`` =
  test_loss - train_loss;
- Kendall's tau-b and Spearman's rho of every measure column with each gap, with bootstrap
  intervals over runs (:func:`sharpscope.stats.rank_correlation`);
- tau(m, gap) - tau(largest m, gap) for every smaller m of m-sharpness, with a paired bootstrap
  interval (:func:`sharpscope.stats.correlation_difference`);
- Jiang et al.'s granulated Kendall coefficient (Sec. 6, Eq. 4-5): for each hyperparameter
  theta_i that varies, psi_i = the mean over the groups of runs that agree on every other
  hyperparameter (and the seed) of tau(measure, gap) within the group; Psi = the mean of the
  psi_i. Groups under two runs, or with a tau undefined by ties, are left out.

Correlated are the runs that finished with final train accuracy >= ``min_train_acc`` (default
0.99, the level Jiang et al. train to; :func:`run_status`); the others are counted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import measure_table, stats
from ..errors import ConfigError
from .files import write_csv, write_json
from .verdicts import finite_number

__all__ = ["GAPS", "DEFAULT_MIN_TRAIN_ACC", "check_min_train_acc", "run_status", "select_runs",
           "CorrelationTable", "generalization_gaps", "measure_columns", "correlate_rows", "write_correlations",
           "draw_correlations", "report_correlations"]

GAPS = ("gap_error", "gap_loss")
_M_PREFIX = "m_sharpness_m"
DEFAULT_MIN_TRAIN_ACC = 0.99
_NOT_FINISHED = ("diverged", "unfinished", "interrupted")
_KIND = "sharpscope correlations"


def _number(value: Any) -> float | None:
    return float(value) if finite_number(value) else None


def check_min_train_acc(min_train_acc: float) -> float:
    """``min_train_acc`` as a float in [0, 1], else ConfigError."""
    value = _number(min_train_acc)
    if value is None or not 0.0 <= value <= 1.0:
        raise ConfigError(f"--min-train-acc must be a number in [0, 1], got {min_train_acc!r}")
    return value


def run_status(row: Mapping[str, Any], min_train_acc: float = DEFAULT_MIN_TRAIN_ACC) -> str:
    """Whether a run's row is correlated: "unfinished", "underfit" (final train accuracy below
    ``min_train_acc`` or none recorded) or "kept"."""
    if row.get("status") in _NOT_FINISHED:
        return "unfinished"
    acc = _number(row.get("train_acc"))
    if min_train_acc > 0 and (acc is None or acc < min_train_acc):
        return "underfit"
    return "kept"


def select_runs(rows: Sequence[Mapping[str, Any]], min_train_acc: float = DEFAULT_MIN_TRAIN_ACC
                ) -> tuple[list[Mapping[str, Any]], dict[str, int]]:
    """The rows :func:`run_status` keeps, and ``{"unfinished": n, "underfit": n}`` left out."""
    min_train_acc = check_min_train_acc(min_train_acc)
    status = [run_status(r, min_train_acc) for r in rows]
    return ([r for r, st in zip(rows, status) if st == "kept"],
            {"unfinished": status.count("unfinished"), "underfit": status.count("underfit")})


def generalization_gaps(row: Mapping[str, Any]) -> dict[str, float | None]:
    """``gap_error`` and ``gap_loss`` of a run's row; None where a value is missing or not finite."""
    tr_acc, te_acc = _number(row.get("train_acc")), _number(row.get("test_acc"))
    tr_loss, te_loss = _number(row.get("train_loss")), _number(row.get("test_loss"))
    return {"gap_error": tr_acc - te_acc if tr_acc is not None and te_acc is not None else None,
            "gap_loss": te_loss - tr_loss if tr_loss is not None and te_loss is not None else None}


def _m_of(column: str) -> int:
    return int(column.removeprefix(_M_PREFIX))


def measure_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The measure columns with a finite value in some row: the measure table's value columns
    in table order, then m-sharpness by increasing m."""
    present = {k for r in rows for k, v in r.items() if _number(v) is not None}
    m_cols = sorted((k for k in present if k.startswith(_M_PREFIX) and k[len(_M_PREFIX):].isdigit()), key=_m_of)
    return [m for m in measure_table.correlated_columns() if m in present] + m_cols


@dataclass
class CorrelationTable:
    """Rank correlations of measures with the gaps over ``n_runs`` runs (module docstring):
    ``entries`` per (measure, gap) with ``n`` and the ``kendall`` and ``spearman`` dicts,
    ``m_comparisons`` per smaller m and gap, ``skipped``: why a pair is missing."""

    n_runs: int
    entries: list[dict[str, Any]] = field(default_factory=list)
    m_comparisons: list[dict[str, Any]] = field(default_factory=list)
    granulated: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    confidence: float = 0.95
    resamples: int = 2000
    min_train_acc: float = DEFAULT_MIN_TRAIN_ACC
    left_out: dict[str, int] = field(default_factory=lambda: {"unfinished": 0, "underfit": 0})

    def to_dict(self) -> dict[str, Any]:
        return {"kind": _KIND, "n_runs": self.n_runs, "min_train_acc": self.min_train_acc, "left_out": self.left_out,
                "confidence": self.confidence, "resamples": self.resamples,
                "ci_method": stats.BOOTSTRAP_METHOD, "gaps": {"gap_error": "train_acc - test_acc",
                                                             "gap_loss": "test_loss - train_loss"},
                "entries": self.entries, "m_comparisons": self.m_comparisons, "granulated": self.granulated,
                "skipped": self.skipped}


def _pairs(rows: Sequence[Mapping[str, Any]], gaps: Sequence[Mapping[str, Any]], *columns: str,
           gap: str) -> list[tuple[float, ...]]:
    out = []
    for row, g in zip(rows, gaps):
        values = [_number(row.get(c)) for c in columns] + [g[gap]]
        if all(v is not None for v in values):
            out.append(tuple(values))  # type: ignore[arg-type]
    return out


def granulated_tau(rows: Sequence[Mapping[str, Any]], measure: str, gap: str, hyperparameters: Sequence[str],
                   group_keys: Sequence[str] = ("seed",)) -> dict[str, Any]:
    """Jiang et al.'s granulated Kendall coefficient (module docstring): ``{"psi": {theta: value},
    "groups": {theta: groups used}, "Psi": mean}``, runs grouped also by ``group_keys``."""
    gaps = [generalization_gaps(r)[gap] for r in rows]
    psi: dict[str, float | None] = {}
    used: dict[str, int] = {}
    for theta in hyperparameters:
        others = [k for k in (*hyperparameters, *group_keys) if k != theta]
        groups: dict[tuple, list[tuple[float, float]]] = {}
        for row, g in zip(rows, gaps):
            x = _number(row.get(measure))
            if x is not None and g is not None:
                groups.setdefault(tuple(repr(row.get(k)) for k in others), []).append((x, g))
        taus = [float(stats.kendall_tau_b(*map(np.array, zip(*pairs)))) for pairs in groups.values() if len(pairs) > 1]
        taus = [t for t in taus if math.isfinite(t)]
        psi[theta] = sum(taus) / len(taus) if taus else None
        used[theta] = len(taus)
    defined = [v for v in psi.values() if v is not None]
    return {"psi": psi, "groups": used, "Psi": sum(defined) / len(defined) if defined else None}


def correlate_rows(rows: Sequence[Mapping[str, Any]], measures: Sequence[str] | None = None,
                   gaps: Sequence[str] = GAPS, confidence: float = 0.95, resamples: int = 2000,
                   seed: int = 0, hyperparameters: Sequence[str] = (),
                   min_train_acc: float = DEFAULT_MIN_TRAIN_ACC) -> CorrelationTable:
    """The :class:`CorrelationTable` of the rows :func:`select_runs` keeps, for ``measures``
    (default :func:`measure_columns`), intervals from ``resamples`` bootstrap resamples drawn
    from ``seed``; granulated coefficients over ``hyperparameters`` (none: not computed)."""
    usable, left_out = select_runs(rows, min_train_acc)
    measures = measure_columns(usable) if measures is None else list(measures)
    table = CorrelationTable(len(usable), confidence=confidence, resamples=resamples,
                             min_train_acc=float(min_train_acc), left_out=left_out)
    row_gaps = [generalization_gaps(r) for r in usable]
    if len(usable) < 3:
        table.skipped.append(f"every measure: {len(usable)} runs kept ({left_out['unfinished']} unfinished, "
                             f"{left_out['underfit']} with train accuracy below {min_train_acc:g}); 3 needed")
        return table
    for measure in measures:
        for gap in gaps:
            pairs = _pairs(usable, row_gaps, measure, gap=gap)
            if len(pairs) < 3:
                table.skipped.append(f"{measure} vs {gap}: {len(pairs)} runs with both values (3 needed)")
                continue
            x, y = map(list, zip(*pairs))
            table.entries.append({"measure": measure, "gap": gap, "n": len(pairs), **{
                method: stats.rank_correlation(x, y, method, confidence, resamples, seed).to_dict()
                for method in stats.CORRELATIONS}})
    if hyperparameters:
        table.granulated = [{"measure": m, "gap": g, **granulated_tau(usable, m, g, hyperparameters)}
                            for m in measures for g in gaps]
    m_cols = [m for m in measures if m.startswith(_M_PREFIX)]
    if len(m_cols) > 1:
        largest = max(m_cols, key=_m_of)
        for small in sorted((m for m in m_cols if m != largest), key=_m_of):
            for gap in gaps:
                pairs = _pairs(usable, row_gaps, small, largest, gap=gap)
                if len(pairs) < 3:
                    continue
                d = stats.correlation_difference(*map(list, zip(*pairs)), "kendall", confidence, resamples, seed)
                table.m_comparisons.append({"m": _m_of(small), "against_m": _m_of(largest), "gap": gap,
                                            "kendall_difference": d.to_dict()})
    return table


def rows_environment(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """This process's environment, and the distinct ``trained_in``, ``measured_in`` and
    ``analysed_in`` records of the rows where they differ."""
    from ..provenance import environment
    unlike = {}
    for column in ("trained_in", "measured_in", "analysed_in"):
        distinct = list(dict.fromkeys(r[column] for r in rows if r.get(column)))
        if len(distinct) > 1:
            unlike[column] = distinct
    return {"environment": environment(), "environment_differences": unlike}


def write_correlations(out_dir: str | Path, table: CorrelationTable,
                       extra: Mapping[str, Any] | None = None) -> list[Path]:
    """``correlations.json`` (the table and ``extra``), ``correlations.csv`` (per measure and gap)
    and ``granulated.csv`` in ``out_dir``."""
    out = Path(out_dir)
    write_json(out / "correlations.json", {**table.to_dict(), **(extra or {})})
    fields = ("estimate", "ci_low", "ci_high", "p_value")
    header = ["measure", "gap", "n"] + [f"{m}_{k}" for m in stats.CORRELATIONS for k in fields]
    records = [{"measure": e["measure"], "gap": e["gap"], "n": e["n"],
                **{f"{m}_{k}": e[m][k] for m in stats.CORRELATIONS for k in fields}} for e in table.entries]
    write_csv(out / "correlations.csv", header, records)
    files = [out / "correlations.json", out / "correlations.csv"]
    if table.granulated:
        thetas = list(table.granulated[0]["psi"])
        header = ["measure", "gap", "Psi"] + [f"psi_{t}" for t in thetas]
        write_csv(out / "granulated.csv", header, [{"measure": g["measure"], "gap": g["gap"], "Psi": g["Psi"],
                                                    **{f"psi_{t}": g["psi"][t] for t in thetas}}
                                                   for g in table.granulated])
        files.append(out / "granulated.csv")
    return files


def _note(entry: Mapping[str, Any]) -> str:
    k = entry["kendall"]
    if k["estimate"] is None or not math.isfinite(k["estimate"]):
        return f"tau undefined (n={entry['n']})"
    return f"tau {k['estimate']:+.2f} [{k['ci_low']:+.2f}, {k['ci_high']:+.2f}], n={entry['n']}"


def draw_correlations(rows: Sequence[Mapping[str, Any]], table: CorrelationTable, figures_dir: str | Path,
                      formats: Sequence[str] = ("png",), group_by: str = "optimizer") -> list[Path]:
    """``correlations_GAP.png`` per gap: every measure against it, runs coloured by ``group_by``."""
    from .. import plots

    usable = select_runs(rows, table.min_train_acc)[0]
    written: list[Path] = []
    for gap in dict.fromkeys(e["gap"] for e in table.entries):
        panels: dict[str, dict[str, list]] = {}
        notes: dict[str, str] = {}
        for e in (e for e in table.entries if e["gap"] == gap):
            pts = [(_number(r.get(e["measure"])), generalization_gaps(r)[gap], r.get(group_by)) for r in usable]
            pts = [p for p in pts if p[0] is not None and p[1] is not None]
            panels[e["measure"]] = {"x": [p[0] for p in pts], "y": [p[1] for p in pts], "group": [p[2] for p in pts]}
            notes[e["measure"]] = _note(e)
        label = "test error - train error" if gap == "gap_error" else "test loss - train loss"
        written += plots.plot_correlations(panels, Path(figures_dir) / f"correlations_{gap}", ylabel=label,
                                           notes=notes, formats=formats,
                                           title=f"Measures against the generalization gap over {table.n_runs} runs "
                                                 f"(Kendall tau, {table.confidence:.0%} bootstrap CI)")
    return written


def report_correlations(rows: Sequence[Mapping[str, Any]], out_dir: str | Path, formats: Sequence[str] = ("png",),
                        resamples: int = 2000, seed: int = 0, hyperparameters: Sequence[str] = (),
                        min_train_acc: float = DEFAULT_MIN_TRAIN_ACC) -> tuple[CorrelationTable, list[Path]]:
    """:func:`correlate_rows`, its tables in ``out_dir`` and figures in ``out_dir/figures``: the
    table and the files written (``sharpscope correlate`` and ``sweep --correlate``)."""
    table = correlate_rows(rows, resamples=resamples, seed=seed, hyperparameters=hyperparameters,
                           min_train_acc=min_train_acc)
    files = write_correlations(out_dir, table, rows_environment(select_runs(rows, min_train_acc)[0]))
    if table.entries:
        files += draw_correlations(rows, table, Path(out_dir) / "figures", formats)
    return table, files
