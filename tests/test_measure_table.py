"""The table of measures (issue 24.2): one declaration per measure, read by tracking, the
analyses of sweep and compare, and correlate; one name per quantity, old names accepted with a
notice; cache keys unchanged, so run folders analysed before keep their results."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from sharpscope import measure_table
from sharpscope.errors import ConfigError
from sharpscope.experiments import analyses, correlate, engine, measure_runs as mr, sweep
from sharpscope.experiments.analyses import PROFILES
from sharpscope.experiments.sweep import SweepConfig, run_sweep
from sharpscope.train import TrainConfig, train
from sharpscope.train import tracking

TINY = {"model": "mlp", "model_kwargs": {"hidden": [8]}, "data": "synthetic", "n_train": 96, "epochs": 1,
        "batch_size": 32}


def _mean_loss(model, batches, s, objective):
    """The toy measure: the mean cross-entropy on the subset (one forward pass per batch)."""
    with torch.no_grad():
        total = sum(float(F.cross_entropy(model(x), y, reduction="sum")) for x, y in batches)
    return {"value": total / sum(len(y) for _, y in batches)}


@pytest.fixture
def toy():
    """A measure declared here, in the test, and nowhere else."""
    measure = measure_table.register(measure_table.Measure(
        "toy_loss", _mean_loss, measure_table.SUBSET, ("toy_loss",), lambda r: {"toy_loss": r["value"]},
        "forward", "the mean loss on the subset", headline=lambda r: r["value"]))
    yield measure
    del measure_table.MEASURES["toy_loss"]


def test_a_measure_declared_once_is_offered_by_every_place(toy, tmp_path):
    """Adding a measure touches one file: registered in this test, it is an analysis of sweep,
    a measure of correlate, trackable, and its column is correlated with the gap."""
    assert "toy_loss" in analyses.analysis_names() and "toy_loss" in mr.run_measures()
    assert "toy_loss" in tracking.trackable() and "toy_loss" in correlate.measure_columns([{"toy_loss": 1.0}])
    config = SweepConfig(grid={"optimizer": ["sgd"]}, seeds=1, base=dict(TINY), profile="quick", analyses="toy_loss")
    assert "toy_loss" in sweep.metric_names(config.analyses, config.settings())
    result = run_sweep(config, tmp_path / "sweep", plots=[])
    run = mr.find_runs([tmp_path / "sweep"])[0]
    row = mr.measure_runs([run], ["toy_loss"], mr.MeasureSettings(samples=64))[0]
    # each on its seeded subset (correlate: 64 examples; the sweep: all 96, fewer than the quick
    # profile's 128): the exact mean loss of the checkpoint there
    from sharpscope.checkpoint import checkpoint_data, load_checkpoint
    ckpt = load_checkpoint(run / "checkpoint.pt")
    for n, value in ((64, row["toy_loss"]), (96, result.rows[0]["toy_loss"])):
        batches = checkpoint_data(ckpt).batches("train", n, 4096, 0)
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        with torch.no_grad():
            exact = float(F.cross_entropy(ckpt.model(x), y, reduction="sum")) / len(y)
        assert value == pytest.approx(exact, rel=1e-6)  # float32 sums in another order
    assert TrainConfig(**TINY, track=["toy_loss"]).track == ["toy_loss"]


def test_every_measure_declares_what_it_reads_costs_and_writes():
    """Cost units from the list; the columns a result gets are the declared ones; the weights'
    columns are weight_spectra's summary metrics; names and old names are unique."""
    from sharpscope.weight_spectra import SUMMARY_METRICS
    names = [n for m in measure_table.MEASURES.values() for n in (m.name, *m.aliases)]
    assert len(names) == len(set(names))
    assert all(m.cost in measure_table.COST_UNITS for m in measure_table.MEASURES.values())
    assert measure_table.MEASURES["weights"].columns == tuple(f"ww_{k}" for k in SUMMARY_METRICS)
    with pytest.raises(ConfigError, match="already"):
        measure_table.register(measure_table.MEASURES["trace"])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))  # weights: 10 >= 8
    x, y = torch.randn(32, 10), torch.randint(0, 3, (32,))
    s = {"samples": 32, "seed": 0, "rho": 0.05, "top_k": 2, "eig_tol": 1e-3, "trace_matvecs": 6, "density_runs": 1,
         "density_steps": 5, "m_values": [4, 64], "m_steps": 1, "worst_m": 8, "worst_steps": 2, "worst_restarts": 1,
         "adaptive_rho": 0.002, "average_rho": 0.01, "average_draws": 3}
    for m in measure_table.MEASURES.values():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cols = m.columns_of(m.compute(model, [(x, y)], s, None), ("stderr", "error"))
        assert list(cols) == m.column_names(s, ("stderr", "error")), m.name
        assert all(math.isfinite(v) for v in cols.values()), m.name


def test_old_names_work_with_a_one_line_notice():
    with pytest.warns(FutureWarning) as notices:
        config = SweepConfig(grid={"optimizer": ["sgd"]}, seeds=1, base=dict(TINY), analyses="eigenvalues,m-sharpness")
    assert config.analyses == ["lambda_max", "m_sharpness"]
    assert [str(n.message) for n in notices] == [
        "analysis 'eigenvalues' is now called 'lambda_max'; the old name works until the next release",
        "analysis 'm-sharpness' is now called 'm_sharpness'; the old name works until the next release"]
    with pytest.warns(FutureWarning, match="'surrogate-gap' is now called 'gradcos'"):
        assert measure_table.resolve("surrogate-gap") == "gradcos"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # canonical names: no notice
        assert measure_table.resolve_all(["lambda_max", "m_sharpness"]) == ["lambda_max", "m_sharpness"]
    with pytest.raises(ConfigError, match="unknown analysis 'worst'; choose from lambda_max"):
        SweepConfig(grid={"optimizer": ["sgd"]}, seeds=1, base=dict(TINY), analyses="worst")  # correlate's only


def test_cache_keys_are_those_of_run_folders_made_before():
    """The keys sweep (analysis.json) and correlate (measures.json) store, for today's
    settings, equal the ones sharpscope wrote before the table (literals of that version)."""
    s = PROFILES["quick"]
    assert engine.analysis_key("lambda_max", s, 0.05, 3, 40) == {
        "analysis": "lambda_max", "samples": 128, "seed": 3, "step": 40, "top_k": 5, "eig_tol": 1e-3}
    assert engine.analysis_key("m_sharpness", s, 0.1, 3, 40) == {
        "analysis": "m_sharpness", "samples": 128, "seed": 3, "step": 40, "m_values": [4, 16], "m_steps": 2, "rho": 0.1}
    assert engine.analysis_key("gradcos", s, 0.1, 3, 40) == {
        "analysis": "gradcos", "samples": 128, "seed": 3, "step": 40, "rho": 0.1}
    ms = mr.MeasureSettings()
    old = {"lambda_max": ["eig_tol"], "trace": ["trace_matvecs"], "m_sharpness": ["rho", "m_values", "m_steps"],
           "gradcos": ["rho"], "worst": ["rho", "worst_m", "worst_steps", "worst_restarts"],
           "worst_adaptive": ["adaptive_rho", "worst_m", "worst_steps", "worst_restarts"],
           "average": ["average_rho", "worst_m", "average_draws"],
           "average_adaptive": ["average_rho", "worst_m", "average_draws"]}
    for name, reads in old.items():
        settings = {k: getattr(ms, k) for k in ["samples", "seed", *reads]}
        assert mr._cache_key(name, ms, 7) == json.dumps({"measure": name, "settings": settings, "step": 7},
                                                         sort_keys=True)
    assert mr._cache_key("weights", ms, 7) == json.dumps({"measure": "weights", "settings": {}, "step": 7},
                                                         sort_keys=True)


def test_analyses_stored_under_old_names_are_reused(tmp_path):
    """A sweep folder analysed before the table (entries under "eigenvalues" and "m-sharpness")
    is reused: nothing is computed again and the rows hold the stored numbers."""
    config = SweepConfig(grid={"optimizer": ["sgd"]}, seeds=1, base=dict(TINY), profile="quick",
                         analyses="lambda_max,m_sharpness")
    first = run_sweep(config, tmp_path, plots=[])
    path = next(tmp_path.rglob("analysis.json"))
    stored = json.loads(path.read_text())["analyses"]
    for new, old in (("lambda_max", "eigenvalues"), ("m_sharpness", "m-sharpness")):  # as written before
        entry = stored.pop(new)
        stored[old] = {**entry, "key": {**entry["key"], "analysis": old}}
    path.write_text(json.dumps({"analyses": stored}))
    again = run_sweep(config, tmp_path, plots=[])
    assert again.analyses_computed == 0
    assert [o.analysis_status for o in again.outcomes] == [{"lambda_max": "reused", "m_sharpness": "reused"}]
    keep = ("lambda_max", "lambda_ratio", "m_sharpness_m4", "m_sharpness_m16")
    assert {k: again.rows[0][k] for k in keep} == {k: first.rows[0][k] for k in keep}


def test_tracking_reads_the_table_with_its_own_settings(tmp_path):
    """Tracking's numbers are the table's measures at tracking's settings (k = 1, tol 1e-3,
    30 products, m = 16, 3 steps): recomputed here from the final weights, they agree to the bit."""
    from sharpscope import hessian, sharpness
    from sharpscope.checkpoint import checkpoint_data, load_checkpoint
    from sharpscope.objective import Objective
    cfg = TrainConfig(**TINY, optimizer="sam", rho=0.05, track=["m_sharpness", "trace", "lambda_max", "gradcos"],
                      track_samples=48)
    metrics = train(cfg, tmp_path).metrics
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    batches = checkpoint_data(ckpt).batches("train", 48, 4096, 0)
    obj = Objective(ckpt.model, F.cross_entropy, batches)
    assert metrics[-1]["lambda_max"] == hessian.eigenvalues(obj, k=1, tol=1e-3, seed=0).eigenvalues[0]
    assert metrics[-1]["trace"] == hessian.trace(obj, n_matvecs=30, seed=0).trace
    assert metrics[-1]["gradcos"] == sharpness.sam_gradient_cosine(obj, rho=0.05).cosine
    assert metrics[-1]["m_sharpness"] == sharpness.m_sharpness(ckpt.model, F.cross_entropy, batches, m=16, rho=0.05,
                                                              steps=3, seed=0).results[0].mean
    with pytest.raises(ConfigError, match="cannot track m_sharpness on 8 examples"):
        train(TrainConfig(**TINY, track=["m_sharpness"], track_samples=8), tmp_path / "few")
