"""``sharpscope correlate``: measuring finished runs (cached per run) and Jiang et al.'s
granulated Kendall coefficient."""

from __future__ import annotations

import dataclasses
import json

import pytest
from scipy import stats as sps

from sharpscope import measure_table
from sharpscope.errors import ConfigError
from sharpscope.experiments import measure_runs as mr
from sharpscope.experiments.correlate import granulated_tau, rows_environment
from sharpscope.train import TrainConfig, train


def _row(a, b, seed, measure, gap):
    return {"a": a, "b": b, "seed": seed, "m": measure, "train_acc": 1.0, "test_acc": 1.0 - gap,
            "train_loss": 0.0, "test_loss": gap}


def test_granulated_tau_by_hand():
    """Within every group that varies only a, the measure orders the gap as a does (tau = +1);
    within every group that varies only b, it orders it the other way (tau = -1): psi_a = 1,
    psi_b = -1, Psi = 0. Every group counts once, seeds are grouped apart."""
    rows = []
    for seed in (0, 1):
        for a in (1, 2, 3):
            for b in (1, 2):
                gap = a + 10 * b + 0.1 * seed
                rows.append(_row(a, b, seed, measure=a - 100 * b, gap=gap))
    g = granulated_tau(rows, "m", "gap_error", ["a", "b"])
    assert g["psi"] == pytest.approx({"a": 1.0, "b": -1.0}) and g["Psi"] == pytest.approx(0.0)
    assert g["groups"] == {"a": 4, "b": 6}  # (b, seed) pairs for a; (a, seed) pairs for b


def test_granulated_tau_is_the_mean_of_scipy_taus_over_groups():
    import numpy as np
    rng = np.random.default_rng(0)
    rows = [_row(a, b, s, float(rng.normal()), float(rng.normal())) for s in (0, 1) for a in (1, 2, 3, 4)
            for b in (1, 2, 3)]
    g = granulated_tau(rows, "m", "gap_error", ["a", "b"])
    taus = []
    for b in (1, 2, 3):
        for s in (0, 1):
            grp = [r for r in rows if r["b"] == b and r["seed"] == s]
            taus.append(sps.kendalltau([r["m"] for r in grp], [r["train_acc"] - r["test_acc"] for r in grp])[0])
    assert g["psi"]["a"] == pytest.approx(float(np.mean(taus)), abs=1e-12)


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for lr in (0.02, 0.05, 0.1):
        train(TrainConfig(optimizer="sgd", model="mlp", model_kwargs={"hidden": [16]}, n_train=128, epochs=2, lr=lr,
                          keep_snapshots=False), root / f"lr{lr}")
    return root


def test_measures_are_cached_per_run_and_redone_for_new_settings(three_runs, monkeypatch):
    runs = mr.find_runs([three_runs])
    assert len(runs) == 3
    s = mr.MeasureSettings(samples=64, trace_matvecs=6)
    first = mr.measure_runs(runs, ["trace"], s)
    calls = []
    real = measure_table.MEASURES["trace"]
    monkeypatch.setitem(measure_table.MEASURES, "trace",
                        dataclasses.replace(real, compute=lambda *a: calls.append(1) or real.compute(*a)))
    again = mr.measure_runs(runs, ["trace"], s)
    assert calls == [] and [r["trace"] for r in again] == [r["trace"] for r in first]
    mr.measure_runs(runs[:1], ["trace"], mr.MeasureSettings(samples=32, trace_matvecs=6))
    assert calls == [1]
    mr.measure_runs(runs[:1], ["trace"], mr.MeasureSettings(samples=32, trace_matvecs=6, average_draws=7))
    assert calls == [1]  # a setting trace does not read leaves its cache alone
    cached = json.loads((runs[0] / "measures.json").read_text())
    assert len(cached) == 2
    assert mr.varying_config_options(first) == ["lr"]
    # provenance: what trained and what measured each run; unlike runs are warned about, not correlated
    assert all(r["trained_in"] and r["measured_in"] and "deterministic off" in r["measured_in"] for r in first)
    unlike = [{**first[0], "trained_in": "elsewhere"}, *first[1:]]
    assert mr.varying_config_options(unlike) == ["lr"]
    assert set(rows_environment(unlike)["environment_differences"]) == {"trained_in"}
    assert rows_environment(first)["environment_differences"] == {}


def test_cli_correlates_runs(three_runs, tmp_path, cli):
    code, out, err = cli(["correlate", str(three_runs), "--out", str(tmp_path / "c"), "--measures",
                          "lambda_max,worst", "--samples", "64", "--worst-m", "32", "--no-progress",
                          "--min-train-acc", "0"])
    assert code in (0, None), err
    assert "3 runs correlated (0 unfinished and 0 below --min-train-acc 0 left out); hyperparameters varying: lr" in out
    table = json.loads((tmp_path / "c" / "correlations.json").read_text())
    assert {e["measure"] for e in table["entries"]} >= {"lambda_max", "worst"}
    assert (tmp_path / "c" / "granulated.csv").is_file() and (tmp_path / "c" / "rows.csv").is_file()
    code, _, err = cli(["correlate", str(three_runs), "--out", str(tmp_path / "d"), "--measures", "nope"])
    assert code == 2 and "unknown measure nope" in err
    code, _, err = cli(["correlate", str(tmp_path / "empty"), "--out", str(tmp_path / "e")])
    assert code == 2 and "not a run folder" in err


def test_unfinished_run_is_left_out(tmp_path):
    from sharpscope.train import Callback

    class Stop(Callback):
        def on_step_end(self, state):
            state.stop_requested = True

    train(TrainConfig(optimizer="sgd", model="mlp", model_kwargs={"hidden": [8]}, n_train=128, epochs=2),
          tmp_path / "half", callbacks=[Stop()])
    row = mr.measure_runs([tmp_path / "half"], ["trace"], mr.MeasureSettings(samples=32))[0]
    assert row["status"] == "unfinished" and "trace" not in row and not (tmp_path / "half" / "measures.json").exists()
    with pytest.raises(ConfigError, match="unknown measure"):
        mr.measure_runs([tmp_path / "half"], ["best"], mr.MeasureSettings())


def test_cli_writes_the_interactive_correlations_page(three_runs, tmp_path, cli):
    pytest.importorskip("plotly")
    import re
    code, out, err = cli(["correlate", str(three_runs), "--out", str(tmp_path / "h"), "--measures", "lambda_max,weights",
                          "--samples", "64", "--no-progress", "--min-train-acc", "0", "--html"])
    assert code in (0, None), err
    page = (tmp_path / "h" / "correlations.html").read_text()
    table = json.loads((tmp_path / "h" / "correlations.json").read_text())
    n_error = sum(e["gap"] == "gap_error" for e in table["entries"])
    assert page.count('class="figure"') == n_error > 0
    assert not re.search(r"<script[^>]+src=", page) and "lr=0.05" in page


def test_min_train_acc_is_applied_before_measuring(three_runs, tmp_path, monkeypatch, cli):
    """Issue 23: correlate measured every run for minutes, then reported "0 runs correlated"
    because none reached --min-train-acc. The accuracy is read from each checkpoint first; the
    runs below it are not measured, and fewer than 3 kept is refused before any measuring."""
    runs = mr.find_runs([three_runs])
    accs = sorted(mr.run_row(r)["train_acc"] for r in runs)
    calls = []
    real = measure_table.MEASURES["trace"]
    monkeypatch.setitem(measure_table.MEASURES, "trace",
                        dataclasses.replace(real, compute=lambda *a: calls.append(1) or real.compute(*a)))
    rows = mr.measure_runs(runs, ["trace"], mr.MeasureSettings(samples=16, trace_matvecs=3), min_train_acc=accs[1])
    kept = [r for r in rows if r["status"] == "finished"]
    assert len(calls) == len(kept) == sum(a >= accs[1] for a in accs) >= 2
    assert all("trace" not in r for r in rows if r["status"] == "underfit")
    too_high = accs[-1] + 1e-9
    with pytest.raises(ConfigError, match="3 are needed"):
        mr.measure_runs(runs, ["trace"], mr.MeasureSettings(samples=16, trace_matvecs=3), min_train_acc=too_high,
                        need=3)
    assert len(calls) == len(kept)  # nothing measured before the refusal
    before = [(r / "measures.json").read_text() if (r / "measures.json").exists() else None for r in runs]
    code, out, err = cli(["correlate", str(three_runs), "--out", str(tmp_path / "c"), "--measures", "average_adaptive",
                          "--min-train-acc", "1.0", "--no-progress"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--min-train-acc 1" in err, err
    assert before == [(r / "measures.json").read_text() if (r / "measures.json").exists() else None for r in runs]
    code, _, err = cli(["correlate", str(three_runs), "--out", str(tmp_path / "d"), "--min-train-acc", "1.5"])
    assert code == 2 and "must be a number in [0, 1]" in err
