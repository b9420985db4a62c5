"""``sharpscope sweep``: grid expansion, resume after a stop, the tables, the statistics,
--jobs 2 against --jobs 1, the command line end to end and its refusals.

Runs are tiny (an MLP with 8 hidden units on 200 synthetic examples, 2 epochs, the quick
analysis profile), so a sweep of six runs takes a few seconds.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import pytest
import torch

from sharpscope import stats
from sharpscope.errors import ConfigError
from sharpscope.experiments.sweep import (
    PERTURBATION_OPTIONS, SweepConfig, expand_grid, parse_seeds, parse_values, run_sweep, summarize_rows,
    uses_option,
)
from sharpscope.experiments.verdicts import METRIC_BOUNDS, run_convergence
from sharpscope.train import OPTIMIZERS, Callback

BASE = {"model": "mlp", "model_kwargs": {"hidden": [8]}, "data": "synthetic", "n_train": 200, "epochs": 2,
        "batch_size": 32}
GRID = {"optimizer": ["sgd", "sam"], "rho": [0.05, 0.1]}  # sgd once, sam twice: 3 settings
# not numbers of the run: timing, and provenance (the thread count differs between jobs=1 and jobs=2)
TIMING = {"train_seconds", "analysis_seconds", "status", "trained_in", "analysed_in"}
CLI_TINY = ["--model", "mlp", "--model-opt", "hidden=[8]", "--data", "synthetic", "--n-train", "200",
            "--epochs", "1", "--batch-size", "32", "--profile", "quick", "--no-progress"]


def _config(**kw) -> SweepConfig:
    return SweepConfig(**{"grid": dict(GRID), "seeds": 2, "base": dict(BASE), "profile": "quick", **kw})


def _numbers(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMING}


# ----------------------------------------------------------------------------------------
# Grid expansion (no training)
# ----------------------------------------------------------------------------------------
def test_grid_is_the_product_with_ignored_options_collapsed():
    config = SweepConfig(grid={"optimizer": "sgd,sam", "rho": "0.02,0.05", "m": "none,4",
                               "label-noise": "0,0.2"}, seeds=3, base=dict(BASE))
    runs = expand_grid(config)
    sgd = [r for r in runs if r.options["optimizer"] == "sgd"]
    sam = [r for r in runs if r.options["optimizer"] == "sam"]
    assert len(sgd) == 2 * 3 and len(sam) == 2 * 2 * 2 * 3  # SGD: noise x seeds only
    assert all(r.options["rho"] is None and r.options["m"] is None for r in sgd)
    assert all(r.config["rho"] is None and r.config["m"] is None for r in sgd)
    assert {(r.options["rho"], r.options["m"]) for r in sam} == {(0.02, None), (0.02, 4), (0.05, None), (0.05, 4)}
    assert len({r.name for r in runs}) == len(runs)
    assert [r.options["seed"] for r in runs[:10]] == [0] * 10  # seeds outermost: every setting at seed 0 first
    assert [r.index for r in runs] == list(range(len(runs)))
    first_sam = next(r for r in sam if r.options["rho"] == 0.05 and r.options["m"] == 4)
    assert first_sam.name == "sam_rho0.05_m4_modelmlp_datasynthetic_ntrain200_epochs2_bs32_seed0"
    assert first_sam.label == "sam rho=0.05 m=4 label_noise=0 seed=0"


def test_names_depend_on_the_run_only_so_other_grids_share_runs():
    big = {r.name: r.config for r in expand_grid(SweepConfig(grid={"optimizer": "sgd,sam", "rho": "0.05,0.1"},
                                                             seeds=1, base=dict(BASE)))}
    small = expand_grid(SweepConfig(grid={"optimizer": "sam"}, seeds=1, base=dict(BASE)))  # rho left to its default
    assert len(small) == 1 and small[0].name in big and big[small[0].name] == small[0].config
    assert small[0].config["rho"] == 0.05  # the default rho is written out: the same run either way


def test_every_perturbation_optimizer_keeps_its_options():
    for opt in OPTIMIZERS:
        for option in PERTURBATION_OPTIONS:
            expected = (opt not in ("sgd", "adamw") and (option != "eta" or opt == "asam")
                        and (option != "m" or opt in ("sam", "asam", "rsam")))
            assert uses_option(opt, option) == expected
    assert uses_option("sgd", "label_noise") and uses_option("sgd", "lr")
    config = SweepConfig(grid={"optimizer": ",".join(OPTIMIZERS), "rho": "0.05,0.5"}, seeds=1, base=dict(BASE))
    assert len(config.runs()) == 2 + 2 * (len(OPTIMIZERS) - 2)  # sgd and adamw read no rho
    asam = SweepConfig(grid={"optimizer": "sam,asam", "eta": "0.01,0.1"}, seeds=1, base=dict(BASE)).runs()
    assert len(asam) == 1 + 2  # SAM ignores eta
    family = SweepConfig(grid={"optimizer": "sam,gsam,looksam", "m": "none,4"}, seeds=1, base=dict(BASE)).runs()
    assert len(family) == 2 + 1 + 1  # GSAM and LookSAM take whole batches: m collapses for them


def test_values_are_parsed_typed_and_refused_when_bad():
    assert parse_values("p", "2,inf") == [2.0, math.inf]
    assert parse_values("m", "none,4") == [None, 4]
    assert parse_values("label-noise", ["0", 0.2]) == [0.0, 0.2]
    assert parse_values("nesterov", "true,false") == [True, False]
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("0,5,7") == [0, 5, 7] and parse_seeds("10:12") == [10, 11]
    for option, text, fragment in [("rhoo", "0.1", "cannot sweep"), ("device", "cpu,cuda", "cannot sweep"),
                                   ("rho", ",", "empty"), ("rho", "0.05,5e-2", "twice"), ("rho", "x", "numbers"),
                                   ("rho", "nan", "numbers"), ("m", "1.5", "integers"), ("epochs", [1.5], "int")]:
        with pytest.raises(ConfigError, match=fragment):
            parse_values(option, text)
    for text in ("0", "-1", "1,1", "x", "3:3"):
        with pytest.raises(ConfigError, match="seed"):
            parse_seeds(text)
    for bad in [dict(grid={"optimizer": "sgd,adam"}), dict(grid={"optimizer": "sam", "m": "64"}),  # m > batch 32
                dict(grid={"rho": "-1"}), dict(analyses="lambda_max,bogus"), dict(profile="huge"),
                dict(analysis_rho=math.nan), dict(base={**BASE, "seed": 3}), dict(base={**BASE, "nosuch": 1}),
                dict(grid={"optimizer": "sam", "rho": "0.1"}, base={**BASE, "rho": 0.2}),
                dict(analysis_m="0,4"), dict(analysis_m="4,4"), dict(analysis_m="none"), dict(analysis_m="1.5")]:
        with pytest.raises(ConfigError):
            SweepConfig(**{"seeds": 1, "base": dict(BASE), **bad})
    with pytest.raises(ConfigError, match="run 'sam m=64"):
        SweepConfig(grid={"optimizer": "sam", "m": "4,64"}, seeds=1, base=dict(BASE))


# ----------------------------------------------------------------------------------------
# Sweeps that train
# ----------------------------------------------------------------------------------------
class _Count(Callback):
    """Records (run, epoch at start) whenever a run trains; optionally stops it at a step."""

    def __init__(self, log: list, name: str, stop_at: int | None = None) -> None:
        self.log, self.name, self.stop_at = log, name, stop_at

    def on_train_begin(self, state) -> None:
        self.log.append((self.name, state.step))

    def on_step_end(self, state) -> None:
        if self.stop_at is not None and state.step == self.stop_at:
            state.stop_requested = True


@pytest.fixture
def one_thread():
    """Tiny runs are 5-10x faster on one thread than on two (more so on a busy machine); the
    reference sweep keeps torch's default, so the comparisons also span thread counts."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The grid swept in one go, one run at a time, with torch's default threads."""
    return run_sweep(_config(), tmp_path_factory.mktemp("ref"), jobs=1)


@pytest.fixture(scope="module")
def parallel(tmp_path_factory):
    return run_sweep(_config(), tmp_path_factory.mktemp("par"), jobs=2)


def test_a_stopped_sweep_computes_only_what_is_missing(reference, tmp_path, one_thread):
    config, log = _config(), []
    done = []

    def stop_after_two(spec, outcome):
        done.append(spec.name)
        if len(done) == 2:
            raise KeyboardInterrupt("stopped by the test")

    with pytest.raises(KeyboardInterrupt):  # stopped between runs
        run_sweep(config, tmp_path, on_run_done=stop_after_two, callbacks_for=lambda s: [_Count(log, s.name)])
    names = [r.name for r in config.runs()]
    assert done == names[:2] and [n for n, _ in log] == names[:2]
    stamps = {n: (tmp_path / "runs" / n / "checkpoint.pt").stat().st_mtime_ns for n in names[:2]}

    third = names[2]
    with pytest.raises(KeyboardInterrupt, match="saved mid-run"):  # stopped inside the third run, at step 3
        run_sweep(config, tmp_path, callbacks_for=lambda s: [_Count(log, s.name, 3 if s.name == third else None)])
    assert log[2:] == [(third, 0)]

    log.clear()
    result = run_sweep(config, tmp_path, callbacks_for=lambda s: [_Count(log, s.name)], plots=[])
    # only the missing runs train, the third from its step 3
    assert log == [(third, 3)] + [(n, 0) for n in names[3:]] and len(names) == 6
    assert [o.status for o in result.outcomes] == ["reused", "reused", "resumed", "trained", "trained", "trained"]
    assert result.analyses_computed == 4 * len(config.analyses)
    assert {n: (tmp_path / "runs" / n / "checkpoint.pt").stat().st_mtime_ns for n in names[:2]} == stamps
    # resumed or not, every number equals the uninterrupted sweep's (resume is exact)
    assert [_numbers(r) for r in result.rows] == [_numbers(r) for r in reference.rows]


def test_jobs_2_gives_the_same_numbers_as_jobs_1(reference, parallel):
    """Bit for bit: each run is deterministic given its seed, and these tiny matrix products
    give the same floats on one thread (jobs 2 on 2 cores) as on two (jobs 1)."""
    assert [o.status for o in parallel.outcomes] == ["trained"] * 6
    assert [_numbers(r) for r in parallel.rows] == [_numbers(r) for r in reference.rows]
    assert (Path(parallel.out_dir) / "results.csv").read_text().count("\n") == 7


def test_tables_hold_every_option_and_metric(reference):
    out = Path(reference.out_dir)
    assert reference.options == ["optimizer", "rho", "seed"]
    for metric in ("train_loss", "train_acc", "train_acc_clean", "test_loss", "test_acc", "lambda_max",
                   "lambda_ratio", "m_sharpness_m4", "m_sharpness_m16", "gradcos", "surrogate_gap",
                   "train_seconds", "analysis_seconds"):
        assert metric in reference.metrics, metric
    with open(out / "results.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == ["run", "status", *reference.options, *reference.metrics, "converged", "trained_in",
                              "analysed_in", "notes"]
    stored = json.loads((out / "results.json").read_text())
    # provenance: every row says what trained it; the runs were trained alike
    assert all(f"torch {torch.__version__}" in r["trained_in"] and r["analysed_in"] for r in reference.rows)
    assert stored["environment"]["torch_version"] == torch.__version__ and stored["environment_differences"] == {}
    assert stored["schema"] == 1  # experiments.files.RESULTS_SCHEMA
    assert stored["rows"] == reference.rows and stored["metrics"] == reference.metrics
    for row, line in zip(reference.rows, table):
        for key, value in row.items():
            if isinstance(value, float):
                assert float(line[key]) == value  # full precision in the CSV
            elif value is None:
                assert line[key] == ""
            elif isinstance(value, bool):  # the converged column
                assert line[key] == str(value).lower()
            else:
                assert line[key] == str(value)
    sgd = [r for r in reference.rows if r["optimizer"] == "sgd"]
    assert len(sgd) == 2 and all(r["rho"] is None and r["perturbed_loss"] is None for r in sgd)
    assert all(r["perturbed_loss"] is not None for r in reference.rows if r["optimizer"] == "sam")
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["lambda_max_vs_rho.png", "test_acc_vs_rho.png"]
    assert all(p.stat().st_size > 10_000 for p in reference.figures)


def test_unconverged_runs_are_flagged_in_every_table_and_marked_in_verdicts(reference):
    """Issue 23: a sweep's verdicts say when they compare runs that had not converged
    (verdicts.run_convergence of each run's metrics.jsonl), and its accuracy intervals stay in [0, 1]."""
    out = Path(reference.out_dir)
    for row in reference.rows:
        path = out / "runs" / row["run"] / "metrics.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        assert row["converged"] is run_convergence(records)["converged"]
    unconverged = [r["run"] for r in reference.rows if r["converged"] is False]
    stored = json.loads((out / "results.json").read_text())
    assert stored["convergence"]["unconverged"] == unconverged
    summary = json.loads((out / "summary.json").read_text())
    assert "clipped to that range" in summary["ci_method"]
    for entry in summary["settings"]:
        assert entry["unconverged"] == sum(r["run"] in unconverged for r in reference.rows
                                           if r["optimizer"] == entry["options"]["optimizer"]
                                           and r["rho"] == entry["options"]["rho"])
        acc = entry["metrics"]["test_acc"]["summary"]
        assert 0 <= acc["ci_low"] <= acc["ci_high"] <= 1
        d = entry["metrics"]["test_acc"].get("vs_sgd")
        if d:
            assert d["about_unconverged_runs"] is bool(unconverged)
    if unconverged:  # the tiny grid trains for 2 epochs: some runs cannot have levelled off
        assert reference.warnings and reference.warnings[0].startswith(f"{len(unconverged)} of 6 runs have not")
        assert stored["warnings"] == reference.warnings
    with open(out / "summary.csv", newline="") as fh:
        assert "verdict_about_unconverged_runs" in next(csv.reader(fh))


def test_summary_is_sharpscope_stats_on_the_rows(reference):
    rows, metrics = reference.rows, reference.metrics
    summary = json.loads((Path(reference.out_dir) / "summary.json").read_text())["settings"]
    assert [e["options"] for e in summary] == [{"optimizer": "sgd", "rho": None}, {"optimizer": "sam", "rho": 0.05},
                                               {"optimizer": "sam", "rho": 0.1}]
    for entry in summary:
        mine = [r for r in rows if r["optimizer"] == entry["options"]["optimizer"]
                and r["rho"] == entry["options"]["rho"]]
        sgd = [r for r in rows if r["optimizer"] == "sgd"]
        for metric in ("test_acc", "lambda_max", "m_sharpness_m4"):
            bounds = METRIC_BOUNDS.get(metric)
            want = stats.summarize([r[metric] for r in mine], bounds=bounds).to_dict()
            assert entry["metrics"][metric]["summary"] == pytest.approx(want, nan_ok=True)
            if entry["options"]["optimizer"] == "sam":
                diff = stats.paired_difference([r[metric] for r in sgd], [r[metric] for r in mine], bounds=bounds)
                got = entry["metrics"][metric]["vs_sgd"]
                assert {k: got[k] for k in ("n", "mean", "ci_low", "ci_high", "p_value")} == pytest.approx(
                    {"n": diff.n, "mean": diff.mean, "ci_low": diff.ci_low, "ci_high": diff.ci_high,
                     "p_value": diff.p_value})
                assert got["verdict"] == stats.verdict(diff)
            else:
                assert "vs_sgd" not in entry["metrics"][metric]
    assert summarize_rows(rows, ["optimizer", "rho"], metrics) == reference.summary
    with open(Path(reference.out_dir) / "summary.csv", newline="") as fh:
        lines = list(csv.DictReader(fh))
    assert len(lines) == 3 * len(metrics)
    assert {"metric", "mean", "ci_low", "ci_high", "diff_mean", "diff_ci_low", "p_value", "verdict"} <= set(lines[0])


def test_another_grid_in_the_same_folder_reuses_runs_and_other_settings_are_refused(reference, tmp_path, one_thread):
    out = tmp_path / "copy"
    import shutil
    shutil.copytree(reference.out_dir, out)
    log: list = []
    smaller = run_sweep(SweepConfig(grid={"optimizer": "sam"}, seeds=2, base=dict(BASE), profile="quick"), out,
                        callbacks_for=lambda s: [_Count(log, s.name)], plots=[])
    assert log == [] and [o.status for o in smaller.outcomes] == ["reused", "reused"]  # the rho = 0.05 runs
    assert smaller.rows[0]["test_acc"] == next(r for r in reference.rows if r["rho"] == 0.05)["test_acc"]
    assert smaller.analyses_computed == 0
    more = run_sweep(SweepConfig(grid={"optimizer": "sam"}, seeds=2, base=dict(BASE), profile="quick",
                                 analyses="lambda_max,trace"), out, plots=[])  # only the trace is new
    assert [o.analysis_status for o in more.outcomes] == [{"lambda_max": "reused", "trace": "computed"}] * 2
    assert more.rows[0]["lambda_max"] == smaller.rows[0]["lambda_max"] and more.rows[0]["trace"] > 0
    other_m = run_sweep(SweepConfig(grid={"optimizer": "sam"}, seeds=2, base=dict(BASE), profile="quick",
                                    analyses="m_sharpness", analysis_m="2,8"), out, plots=[])
    assert [o.analysis_status for o in other_m.outcomes] == [{"m_sharpness": "computed"}] * 2  # new m: new result
    assert {k for k in other_m.rows[0] if k.startswith("m_sharpness")} == {"m_sharpness_m2", "m_sharpness_m8"}
    before = sorted(p.name for p in (out / "runs").iterdir())
    with pytest.raises(ConfigError, match="other settings .*model_kwargs"):
        run_sweep(_config(base={**BASE, "model_kwargs": {"hidden": [6]}}), out)
    assert sorted(p.name for p in (out / "runs").iterdir()) == before
    (tmp_path / "compare").mkdir()
    (tmp_path / "compare" / "results.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a sweep"):
        run_sweep(_config(), tmp_path / "compare")


def test_a_diverged_run_is_reported_and_not_retrained(tmp_path, one_thread):
    config = SweepConfig(grid={"optimizer": "sgd", "lr": "0.1,1e6"}, seeds=1, base=dict(BASE), profile="quick",
                         analyses="none")
    first = run_sweep(config, tmp_path, plots=[])
    assert [o.status for o in first.outcomes] == ["trained", "diverged"]
    assert "smaller --lr" in first.rows[1]["notes"] and first.rows[1]["test_acc"] is None
    assert first.summary[1]["metrics"]["test_acc"]["summary"] is None and first.summary[1]["failed"] == 1
    start = time.perf_counter()
    again = run_sweep(config, tmp_path, plots=[])
    assert [o.status for o in again.outcomes] == ["reused", "diverged"] and time.perf_counter() - start < 5


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------
def test_cli_end_to_end_and_replot(cli, tmp_path, one_thread):
    out = tmp_path / "sweep"
    code, stdout, err = cli(["sweep", "--out", str(out), "--optimizer", "sgd,sam", "--rho", "0.05,0.1",
                             "--seeds", "2", *CLI_TINY, "--analyses", "lambda_max,gradcos",
                             "--plot", "test_acc:rho", "--plot", "surrogate_gap:rho"])
    assert code == 0, err
    assert "sam rho=0.1 (n=2): test_acc" in stdout and "vs SGD" in stdout
    for name in ("results.csv", "results.json", "summary.csv", "summary.json", "sweep.json",
                 "figures/test_acc_vs_rho.png", "figures/surrogate_gap_vs_rho.png"):
        assert (out / name).is_file(), name
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == 6 and {"lambda_max", "gradcos", "surrogate_gap"} <= set(rows[0])
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert len(header) == len(set(header)) and "epochs" in header and "epochs_done" in header  # option vs metric
    assert all(r["epochs"] == 1 and r["epochs_done"] == 1 for r in rows)
    code, stdout, err = cli(["sweep", "--out", str(out), "--replot", "--plot", "lambda_max:optimizer"])
    assert code == 0 and (out / "figures" / "lambda_max_vs_optimizer.png").is_file(), err
    with pytest.MonkeyPatch.context() as mp:  # a rerun trains nothing
        mp.setattr("sharpscope.experiments.engine.train", lambda *a, **k: pytest.fail("trained again"))
        code, _, err = cli(["sweep", "--out", str(out), "--optimizer", "sgd,sam", "--rho", "0.05,0.1",
                            "--seeds", "2", *CLI_TINY, "--analyses", "lambda_max,gradcos"])
    assert code == 0, err


BAD = [
    (["--rhoo", "0.1"], "No such option"),
    (["--optimizer", "sgd,adam"], "adam"),
    (["--rho", ","], "--rho is empty"),
    (["--rho", "0.05,0.05"], "twice"),
    (["--rho", "nan"], "--rho"),
    (["--rho=-1"], "rho must be >= 0"),
    (["--m", "0"], "m must be >= 1"),
    (["--optimizer", "sam", "--m", "64"], "batch size"),
    (["--label-noise", "1.5"], "label noise"),
    (["--epochs", "0"], "epochs"),
    (["--jobs", "0"], "--jobs"),
    (["--seeds", "0"], "--seeds"),
    (["--seeds", "1,1"], "twice"),
    (["--analyses", "lambda_max,bogus"], "bogus"),
    (["--analyses", "trace,trace"], "twice"),
    (["--profile", "huge"], "huge"),
    (["--analysis-rho", "-1"], "--analysis-rho"),
    (["--plot", "test_acc"], "METRIC:OPTION"),
    (["--plot", "nosuch:rho"], "nosuch"),
    (["--plot", "test_acc:lr"], "'lr' is not an option"),
    (["--plot", "trace:rho"], "'trace'"),  # not among the analyses asked
    (["--vary", "device=cpu,cuda"], "cannot sweep"),
    (["--vary", "nesterov"], "KEY=V1,V2"),
    (["--vary", "rho=0.1"], "given twice"),
]


@pytest.mark.parametrize("args,fragment", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(args, fragment, cli, tmp_path):
    argv = ["sweep", "--out", str(tmp_path / "out"), "--rho", "0.05", *CLI_TINY, "--batch-size", "32", *args]
    if args[0] == "--rho" or args[0].startswith("--rho="):
        argv = ["sweep", "--out", str(tmp_path / "out"), *CLI_TINY, *args]
    start = time.perf_counter()
    code, _, err = cli(argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("sharpscope: error: "), err
    assert fragment in lines[0], lines[0]
    assert time.perf_counter() - start < 10
    assert not (tmp_path / "out" / "runs").exists()  # refused before any run started


def test_replot_and_out_refusals(cli, tmp_path):
    for argv, fragment in [(["--replot"], "no finished sweep"), (["--replot", "--rho", "0.1"], "no grid options")]:
        code, _, err = cli(["sweep", "--out", str(tmp_path), *argv])
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")
    code, _, err = cli(["sweep", "--out", str(tmp_path / "run"), *CLI_TINY])
    assert code == 2 and "training run" in err, err


def test_one_flattener_gives_the_rows_of_sweep_compare_and_correlate():
    """tables.run_columns: the final metrics asked (None where missing), then every measure's
    columns in table order (details only when asked); compare's scalars are the same columns,
    less the density, with the gradient norm and lambda_max_clean, finite values only."""
    from sharpscope.experiments.compare import run_scalars
    from sharpscope.experiments.tables import run_columns

    analyses = {"gradcos": {"cosine": 0.5, "surrogate_gap": 0.1, "gradient_norm": 2.0},
                "trace": {"trace": 7.0, "stderr": 0.3}, "density": {"trace_estimate": 6.5},
                "m_sharpness": {"results": [{"m": 4, "mean": 0.2}, {"m": 16, "mean": float("nan")}]},
                "lambda_max": {"eigenvalues": [3.0, 1.0], "ratio": 3.0},
                "lambda_max_clean": {"eigenvalues": [2.5]}}
    final = {"test_acc": 0.9, "train_loss": 0.1, "epoch": 3}
    row = run_columns(final, ("test_acc", "train_acc"), analyses, ("stderr",))
    assert list(row) == ["test_acc", "train_acc", "lambda_max", "lambda_ratio", "trace", "trace_stderr",
                         "density_trace", "m_sharpness_m4", "m_sharpness_m16", "gradcos", "surrogate_gap"]
    assert row["train_acc"] is None and row["trace_stderr"] == 0.3 and row["density_trace"] == 6.5
    assert "trace_stderr" not in run_columns(final, (), analyses)
    assert run_scalars(final, analyses) == {"test_acc": 0.9, "train_loss": 0.1, "lambda_max": 3.0, "lambda_ratio": 3.0,
                                            "trace": 7.0, "m_sharpness_m4": 0.2, "gradcos": 0.5,
                                            "surrogate_gap": 0.1, "gradient_norm": 2.0, "lambda_max_clean": 2.5}
