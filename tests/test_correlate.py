"""Rank correlations of sharpness measures with the generalization gap over runs
(sharpscope.experiments.correlate and ``sweep --correlate``)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy import stats as sps
from typer.testing import CliRunner

from sharpscope.cli import app
from sharpscope.experiments.correlate import (
    correlate_rows, generalization_gaps, measure_columns, report_correlations,
)
from sharpscope.experiments.sweep import SweepConfig, run_sweep


def _rows(n: int = 12, seed: int = 0) -> list[dict]:
    """Rows whose error gap rises with m_sharpness_m4 exactly, less with m_sharpness_m64
    (noise added) and not at all with lambda_max."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        gap = 0.01 * i
        rows.append({"run": f"r{i}", "status": "trained", "optimizer": "sam" if i % 2 else "sgd",
                     "train_acc": 1.0, "test_acc": 1.0 - gap, "train_loss": 0.01, "test_loss": 0.01 + 3 * gap,
                     "m_sharpness_m4": 2 * gap + 1, "m_sharpness_m64": gap + 0.02 * rng.normal(),
                     "lambda_max": float(rng.uniform(1, 2)), "m_sharpness_m16": None})
    return rows


def test_gaps_and_measure_columns():
    g = generalization_gaps({"train_acc": 0.9, "test_acc": 0.7, "train_loss": 0.2, "test_loss": 0.9})
    assert g["gap_error"] == pytest.approx(0.2) and g["gap_loss"] == pytest.approx(0.7)
    assert generalization_gaps({"train_acc": 0.9, "test_acc": math.nan}) == {"gap_error": None, "gap_loss": None}
    rows = _rows()
    assert measure_columns(rows) == ["lambda_max", "m_sharpness_m4", "m_sharpness_m64"]  # m16 holds no value


def test_correlate_rows_against_scipy_and_the_m_comparison():
    rows = _rows()
    rows.append({**rows[0], "run": "bad", "status": "diverged", "m_sharpness_m4": 1e9})  # left out
    table = correlate_rows(rows, resamples=500)
    assert table.n_runs == 12
    by = {(e["measure"], e["gap"]): e for e in table.entries}
    exact = by[("m_sharpness_m4", "gap_error")]
    assert exact["n"] == 12 and exact["kendall"]["estimate"] == pytest.approx(1.0)
    assert exact["kendall"]["ci_low"] == 1.0 and exact["spearman"]["estimate"] == pytest.approx(1.0)
    gaps = [generalization_gaps(r)["gap_error"] for r in rows[:12]]
    for measure in ("m_sharpness_m64", "lambda_max"):
        want = sps.kendalltau([r[measure] for r in rows[:12]], gaps).statistic
        assert by[(measure, "gap_error")]["kendall"]["estimate"] == pytest.approx(want, abs=1e-12)
    assert by[("lambda_max", "gap_error")]["kendall"]["verdict"] == "no difference at this scale"
    [small] = [c for c in table.m_comparisons if c["gap"] == "gap_error"]
    assert small["m"] == 4 and small["against_m"] == 64
    d = small["kendall_difference"]
    want = 1.0 - by[("m_sharpness_m64", "gap_error")]["kendall"]["estimate"]
    assert d["estimate"] == pytest.approx(want, abs=1e-12) and d["ci_low"] >= 0


def test_too_few_runs_are_skipped_with_a_reason():
    rows = _rows(n=4)
    for r in rows[1:]:
        r["lambda_max"] = None
    table = correlate_rows(rows, resamples=200)
    assert not any(e["measure"] == "lambda_max" for e in table.entries)
    assert any(s.startswith("lambda_max vs gap_error: 1 runs") for s in table.skipped)


def test_report_writes_tables_and_figures(tmp_path):
    table, files = report_correlations(_rows(), tmp_path, resamples=200)
    names = sorted(f.name for f in files)
    assert names == ["correlations.csv", "correlations.json", "correlations_gap_error.png",
                     "correlations_gap_loss.png"]
    stored = json.loads((tmp_path / "correlations.json").read_text())
    assert stored["kind"] == "sharpscope correlations" and len(stored["entries"]) == 6
    with open(tmp_path / "correlations.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and float(rows[0]["kendall_estimate"]) == pytest.approx(table.entries[0]["kendall"]["estimate"])


def test_sweep_correlate_end_to_end(tmp_path):
    base = {"model": "mlp", "model_kwargs": {"hidden": [8]}, "data": "synthetic", "n_train": 200, "epochs": 2,
            "batch_size": 32}
    config = SweepConfig(grid={"optimizer": ["sgd", "sam"], "lr": [0.05, 0.2]}, seeds=2, base=base,
                         profile="quick", analyses="lambda_max,m_sharpness", analysis_m="4,32")
    result = run_sweep(config, tmp_path / "sw", plots=[], correlate=True, min_train_acc=0)
    assert result.correlations is not None and result.correlations.n_runs == 8
    measures = {e["measure"] for e in result.correlations.entries}
    assert measures == {"lambda_max", "lambda_ratio", "m_sharpness_m4", "m_sharpness_m32"}
    assert (tmp_path / "sw" / "figures" / "correlations_gap_error.png") in result.figures
    (tmp_path / "sw" / "correlations.json").unlink()
    out = CliRunner().invoke(app, ["sweep", "--out", str(tmp_path / "sw"), "--replot", "--correlate",
                                   "--plot", "test_acc:lr", "--min-train-acc", "0"])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "sw" / "correlations.json").exists() and "correlations_gap_loss.png" in out.output


def test_sweep_correlate_and_correlate_keep_the_same_runs_and_agree(tmp_path, cli):
    """Issue 23: on the same runs ``sweep --correlate`` said n = 6 and ``correlate`` n = 0 (the
    sweep kept every run, correlate only those at train accuracy >= 0.99). Both now keep runs
    by the one rule (correlate.select_runs) and go through report_correlations. The runs are
    trained on 96 examples, fewer than either path's subset, so both measure lambda_max and
    the gradient cosine on the same examples: the same n and the same tau."""
    base = {"model": "mlp", "model_kwargs": {"hidden": [8]}, "data": "synthetic", "n_train": 96, "epochs": 3,
            "batch_size": 32}
    config = SweepConfig(grid={"optimizer": ["sgd", "sam"], "lr": [0.02, 0.5]}, seeds=2, base=base,
                         profile="quick", analyses="lambda_max,gradcos")
    first = run_sweep(config, tmp_path / "sw", plots=[])
    accs = sorted(r["train_acc"] for r in first.rows)
    threshold = accs[-5]  # keeps at least 5 of the 8 runs, and leaves some out unless they tie
    swept = run_sweep(config, tmp_path / "sw", plots=[], correlate=True, min_train_acc=threshold).correlations
    code, out, err = cli(["correlate", str(tmp_path / "sw" / "runs"), "--out", str(tmp_path / "c"), "--measures",
                          "lambda_max,gradcos", "--samples", "128", "--min-train-acc", repr(threshold),
                          "--no-progress"])
    assert code in (0, None), err
    measured = json.loads((tmp_path / "c" / "correlations.json").read_text())
    kept = sum(a >= threshold for a in accs)
    assert swept.n_runs == measured["n_runs"] == kept >= 5
    assert swept.left_out == measured["left_out"] == {"unfinished": 0, "underfit": 8 - kept}
    assert f"{kept} runs correlated" in out
    by_sweep = {(e["measure"], e["gap"]): e for e in swept.entries}
    by_correlate = {(e["measure"], e["gap"]): e for e in measured["entries"]}
    for key in [("lambda_max", "gap_error"), ("gradcos", "gap_error"), ("lambda_max", "gap_loss")]:
        assert by_sweep[key]["n"] == by_correlate[key]["n"] == kept
        assert by_sweep[key]["kendall"]["estimate"] == pytest.approx(by_correlate[key]["kendall"]["estimate"],
                                                                     abs=1e-12), key
