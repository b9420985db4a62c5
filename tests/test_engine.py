"""The one run engine (sharpscope.experiments.engine) that sweep and compare share: its
versioned analysis cache (old folders read or refused, never recomputed under a wrong key),
the measures computed one by one equal to the measures computed on one shared Objective,
and the one summarizer."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
import torch
from torch import nn

from sharpscope import stats
from sharpscope.errors import ConfigError
from sharpscope.experiments import compare as cmp
from sharpscope.experiments import engine
from sharpscope.experiments.analyses import COMPARED, PROFILES, analyse_selected
from sharpscope.experiments.cache import SCHEMA, read_analyses
from sharpscope.experiments.tables import summarize_rows

TINY = {"model": "mlp", "model_kwargs": {"hidden": [8]}, "data": "synthetic", "n_train": 200, "epochs": 1}
CLI_TINY = ["--model", "mlp", "--model-opt", "hidden=[8]", "--data", "synthetic", "--n-train", "200", "--epochs", "1",
            "--profile", "quick", "--no-progress", "--optimizer", "sgd", "--seeds", "1"]


def _without_times(results: dict) -> dict:
    return {name: {k: v for k, v in r.items() if k != "wall_time"} for name, r in results.items()}


def test_measures_one_by_one_equal_measures_on_one_shared_objective():
    """compare computed lambda_max, trace, density and gradcos on one shared Objective; the
    engine computes each measure alone (its own Objective), in any order: the same bits."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    batches = [(x[:20], y[:20]), (x[20:], y[20:])]
    s = PROFILES["quick"]
    together = _without_times(analyse_selected(model, batches, list(COMPARED), s, 0.05, 3))
    alone = _without_times({n: analyse_selected(model, batches, [n], s, 0.05, 3)[n] for n in COMPARED})
    backwards = _without_times({n: analyse_selected(model, batches, [n], s, 0.05, 3)[n] for n in reversed(COMPARED)})
    assert set(together) == set(COMPARED)
    # json of floats is their repr: equal strings are equal bits
    assert json.dumps(together, sort_keys=True) == json.dumps(alone, sort_keys=True) == \
        json.dumps(backwards, sort_keys=True)


def _compare(tmp_path, **kw):
    config = cmp.CompareConfig(quick=True, optimizers=["sgd"], seeds=[0], **{**TINY, **kw})
    return config, cmp.run_compare(config, tmp_path)


def _old_compare_layout(config: cmp.CompareConfig, folder, results: dict, rho: float) -> dict:
    """analysis.json as compare wrote it before the one engine (sharpscope 3c6d1be)."""
    seed = results["optimizers"]["sgd"]["seeds"]["0"]
    s = config.settings
    key = json.dumps({"settings": asdict(s), "n": min(s.samples, config.n_train), "rho": rho, "density": True,
                      "clean": False}, sort_keys=True)
    analysis = {k: seed[k] for k in ("eigenvalues", "lambda_max", "trace", "gradcos", "surrogate_gap",
                                     "m_sharpness", "density")}
    analysis["ratio"] = seed["lambda_ratio"]  # its name before the table of measures
    return {"key": key, "checkpoint_step": seed["final"]["step"], "analysis": {**analysis,
                                                                               "analysed_in": seed["analysed_in"]}}


def test_a_compare_folder_of_the_old_layout_is_read_under_the_keys_its_settings_give(tmp_path, monkeypatch):
    """An analysis.json in compare's old layout is converted measure by measure: what its
    settings match is reused (a marked value comes back), what was made at another rho
    (m-sharpness, gradient cosine) is computed again under today's key, never reused."""
    config, first = _compare(tmp_path)
    folder = tmp_path / "sgd" / "seed0"
    old = _old_compare_layout(config, folder, first, rho=0.1)  # made at another analysis rho
    old["analysis"]["eigenvalues"] = {**old["analysis"]["eigenvalues"],
                                      "eigenvalues": [123.0, *old["analysis"]["eigenvalues"]["eigenvalues"][1:]]}
    old["analysis"]["gradcos"] = {**old["analysis"]["gradcos"], "cosine": 0.5}
    (folder / "analysis.json").write_text(json.dumps(old))
    computed: list[str] = []
    real = engine.analyse_selected
    monkeypatch.setattr(engine, "analyse_selected", lambda m, b, which, *a, **k: computed.extend(which)
                        or real(m, b, which, *a, **k))
    again = cmp.run_compare(config, tmp_path)
    assert sorted(computed) == ["gradcos", "m_sharpness"]  # they read rho: 0.1 then, 0.05 now
    seed, before = again["optimizers"]["sgd"]["seeds"]["0"], first["optimizers"]["sgd"]["seeds"]["0"]
    assert seed["lambda_max"] == 123.0  # read from the old file
    assert seed["trace"] == before["trace"] and seed["density"] == before["density"]
    assert seed["surrogate_gap"] == before["surrogate_gap"] and seed["scalars"]["gradcos"] == \
        before["scalars"]["gradcos"] != 0.5  # computed again: today's value
    assert _without_times({"m": seed["m_sharpness"]}) == _without_times({"m": before["m_sharpness"]})
    stored = json.loads((folder / "analysis.json").read_text())
    assert stored["schema"] == SCHEMA and stored["analyses"]["gradcos"]["key"]["rho"] == 0.05
    assert stored["analyses"]["lambda_max"]["key"] == engine.analysis_key("lambda_max", config.settings, 0.05, 0,
                                                                          before["final"]["step"])


def test_an_old_compare_layout_that_matches_is_reused_whole(tmp_path, monkeypatch):
    config, first = _compare(tmp_path)
    folder = tmp_path / "sgd" / "seed0"
    (folder / "analysis.json").write_text(json.dumps(_old_compare_layout(config, folder, first, rho=config.rho)))
    monkeypatch.setattr(engine, "analyse_selected", lambda *a, **k: pytest.fail("computed again"))
    again = cmp.run_compare(config, tmp_path)
    keep = ("lambda_max", "lambda_ratio", "trace", "density", "gradcos", "m_sharpness", "scalars")
    assert {k: again["optimizers"]["sgd"]["seeds"]["0"][k] for k in keep} == \
        {k: first["optimizers"]["sgd"]["seeds"]["0"][k] for k in keep}
    assert again["optimizers"]["sgd"]["summary"] == first["optimizers"]["sgd"]["summary"]


def test_a_newer_schema_is_refused_in_one_line(tmp_path, cli):
    _compare(tmp_path)
    path = tmp_path / "sgd" / "seed0" / "analysis.json"
    path.write_text(json.dumps({"schema": SCHEMA + 1, "analyses": {}}))
    with pytest.raises(ConfigError, match="newer sharpscope"):
        read_analyses(path.parent, 0)
    code, _, err = cli(["compare", *CLI_TINY, "--out", str(tmp_path)])
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(path) in err and "remove that file" in err


def test_an_unreadable_old_compare_layout_is_refused(tmp_path):
    (tmp_path / "analysis.json").write_text(json.dumps({"key": "not json", "checkpoint_step": 4, "analysis": {}}))
    with pytest.raises(ConfigError, match="cannot read .*analysis.json.*remove that file"):
        read_analyses(tmp_path, 0)


def test_sweep_folders_without_a_schema_are_read(tmp_path):
    entry = {"key": {"analysis": "trace"}, "result": {"trace": 1.0}}
    (tmp_path / "analysis.json").write_text(json.dumps({"analyses": {"trace": entry}}))  # sweep's layout before
    assert read_analyses(tmp_path, 0) == {"trace": entry}
    assert read_analyses(tmp_path / "none", 0) == {}


def test_clean_label_lambda_max_is_a_cached_variant(tmp_path, monkeypatch):
    """Under label noise compare's lambda_max on the clean labels comes through the engine's
    cache (its own key: the labels and top_k 1), equal to the table's lambda_max on the
    examples with their clean labels."""
    config, first = _compare(tmp_path, label_noise=0.3)
    stored = json.loads((tmp_path / "sgd" / "seed0" / "analysis.json").read_text())["analyses"]
    entry = stored["lambda_max_clean"]
    assert entry["key"]["labels"] == "clean" and entry["key"]["top_k"] == 1
    assert first["optimizers"]["sgd"]["seeds"]["0"]["lambda_max_clean"] == entry["result"]["eigenvalues"][0]
    assert "lambda_max_clean" in first["optimizers"]["sgd"]["summary"]
    monkeypatch.setattr(engine, "analyse_variant", lambda *a, **k: pytest.fail("computed again"))
    assert cmp.run_compare(config, tmp_path)["optimizers"]["sgd"]["seeds"]["0"]["lambda_max_clean"] == \
        entry["result"]["eigenvalues"][0]


def test_compare_statistics_are_the_summarizers():
    """compare's statistics are summarize_rows' with every_seed: a metric some seed lacks is
    left out, a difference is over the metrics every seed of both has, paired by seed."""
    config = cmp.CompareConfig(quick=True, seeds=[0, 1, 2])
    scalars = {"sgd": {0: {"a": 1.0, "b": 2.0}, 1: {"a": 1.5, "b": 2.5}, 2: {"a": 1.2}},
               "sam": {0: {"a": 2.0, "b": 3.0}, 1: {"a": 2.1, "b": 3.5}, 2: {"a": 2.9, "b": 3.1}}}
    st = cmp._statistics(config, scalars)
    assert set(st["sgd"]["summary"]) == {"a"} and set(st["sam"]["summary"]) == {"a", "b"}
    assert set(st["sam"]["difference"]) == {"a"} and "difference" not in st["sgd"]
    assert st["sam"]["summary"]["b"] == stats.summarize([3.0, 3.5, 3.1]).to_dict()
    assert st["sam"]["difference"]["a"] == {**stats.paired_difference([1.0, 1.5, 1.2], [2.0, 2.1, 2.9]).to_dict(),
                                            "about_unconverged_runs": False}
    rows = [{"optimizer": "sgd", "seed": 0, "a": 1.0}, {"optimizer": "sgd", "seed": 1, "a": math.nan}]
    assert summarize_rows(rows, ["optimizer"], ["a"], every_seed=True)[0]["metrics"] == {}
    assert summarize_rows(rows, ["optimizer"], ["a"])[0]["metrics"]["a"]["summary"]["n"] == 1


def test_results_json_carries_its_schema_and_a_newer_one_is_refused(tmp_path):
    """compare's and sweep's results.json: written with RESULTS_SCHEMA, read without the field
    (written before it), refused in one line when a newer sharpscope wrote it."""
    import json

    from sharpscope.errors import ConfigError
    from sharpscope.experiments.files import RESULTS_SCHEMA, read_results
    from sharpscope.experiments.html_report import write_report_html
    from sharpscope.experiments.sweep import replot

    (tmp_path / "results.json").write_text(json.dumps({"kind": "sharpscope sweep", "rows": []}))
    assert read_results(tmp_path)["kind"] == "sharpscope sweep"  # no field: the first layout
    (tmp_path / "results.json").write_text(json.dumps({"kind": "sharpscope sweep", "schema": RESULTS_SCHEMA + 1}))
    for reader in (read_results, replot, write_report_html):
        with pytest.raises(ConfigError, match=r"newer sharpscope \(schema 2; this one reads up to 1\)") as err:
            reader(tmp_path)
        assert "\n" not in str(err.value)
