"""The canonical form of benchmarks/result_digests.py: times, provenance and paths dropped,
every number kept exactly (a changed number, even in the last bit, changes the digest)."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest
import torch

from _benchmarks import load_benchmark  # noqa: E402



rd = load_benchmark("result_digests")

RESULT = {"eigenvalues": {"eigenvalues": [0.5886086957408194, 0.5569550508628919], "wall_time": 1.66,
                          "n_hvp": 32, "converged": [True, True]},
          "train_seconds": 12.0, "points_per_second": 410.0,
          "environment": {"git_commit": "90e8fed", "threads": 1, "torch_version": "2.13.0"},
          "trained_in": {"platform": "Linux"},
          "checkpoint": "/tmp/sharpscope-digests-abc/train/checkpoint.pt", "npz": "surface/surface_1d.npz"}


def _canon(obj, root="/tmp/sharpscope-digests-abc"):
    return rd.Canonicalizer({root: "<work>"})(obj)


def test_times_provenance_and_paths_dropped():
    canon = rd.Canonicalizer({"/tmp/sharpscope-digests-abc": "<work>"})
    tree = canon(RESULT)
    assert tree == {"eigenvalues": {"eigenvalues": [0.5886086957408194, 0.5569550508628919], "n_hvp": 32,
                                    "converged": [True, True]},
                    "checkpoint": "<work>/train/checkpoint.pt", "npz": "surface/surface_1d.npz"}
    assert canon.dropped == {"wall_time": 1, "train_seconds": 1, "points_per_second": 1, "environment": 1,
                             "trained_in": 1}
    # another run: other times, machine, commit and temporary folder give the same digest
    other = json.loads(json.dumps(RESULT).replace("abc", "xyz"))
    other["eigenvalues"]["wall_time"] = 99.0
    other["environment"] = {"git_commit": "ffffff", "threads": 2}
    other["train_seconds"] = 0.5
    assert rd.digest(_canon(other, "/tmp/sharpscope-digests-xyz")) == rd.digest(tree)


def test_a_changed_number_changes_the_digest():
    base = rd.digest(_canon(RESULT))
    nudged = json.loads(json.dumps(RESULT))
    value = nudged["eigenvalues"]["eigenvalues"][1]
    nudged["eigenvalues"]["eigenvalues"][1] = math.nextafter(value, 1.0)  # one ulp
    assert rd.digest(_canon(nudged)) != base
    for change in ({"n_hvp": 33}, {"converged": [True, False]}, {"n_hvp": 32.0}):
        other = json.loads(json.dumps(RESULT))
        other["eigenvalues"].update(change)
        assert rd.digest(_canon(other)) != base, change
    assert rd.digest(_canon({"x": -0.0})) != rd.digest(_canon({"x": 0.0}))
    assert rd.digest(_canon({"x": math.nan})) == rd.digest(_canon({"x": float("nan")}))


def test_key_order_does_not_matter():
    a = {"b": 1, "a": {"y": 2.5, "x": [1, 2]}}
    b = {"a": {"x": [1, 2], "y": 2.5}, "b": 1}
    assert rd.digest(_canon(a)) == rd.digest(_canon(b))
    assert rd.digest(_canon({"x": [1, 2]})) != rd.digest(_canon({"x": [2, 1]}))


def test_tensors_and_arrays_hashed_by_their_bytes():
    t = torch.linspace(0, 1, 50)
    rec = _canon({"w": t})["w"]
    assert rec["__tensor__"] == "float32" and rec["shape"] == [50]
    u = t.clone()
    u[17] = torch.nextafter(u[17], torch.tensor(2.0))
    assert _canon({"w": u})["w"]["sha256"] != rec["sha256"]
    assert _canon({"w": t.double()})["w"] != rec  # the dtype counts
    a = np.arange(6.0).reshape(2, 3)
    assert _canon({"a": a})["a"]["shape"] == [2, 3]
    assert _canon({"a": a})["a"]["sha256"] != _canon({"a": a.T.copy()})["a"]["sha256"]
    half = _canon({"h": torch.ones(3, dtype=torch.bfloat16)})["h"]
    assert half["__tensor__"] == "bfloat16" and half["shape"] == [3]


def test_files_read_by_kind(tmp_path):
    (tmp_path / "r.csv").write_text("run,test_acc,train_seconds,trained_in\na,0.5,3.2,x\nb,0.75,4.1,y\n")
    canon = rd.Canonicalizer({str(tmp_path): "<work>"})
    assert rd.canonical(tmp_path / "r.csv", canon) == {"columns": ["run", "test_acc"],
                                                        "rows": [["a", "0.5"], ["b", "0.75"]]}
    assert canon.dropped == {"train_seconds": 1, "trained_in": 1}
    (tmp_path / "s.csv").write_text("optimizer,metric,mean\nsgd,test_acc,0.5\nsgd,train_seconds,0.07\n")
    assert rd.canonical(tmp_path / "s.csv", canon)["rows"] == [["sgd", "test_acc", "0.5"]]
    assert canon.dropped["train_seconds (row)"] == 1
    assert _canon([{"metric": "analysis_seconds", "mean": 2.0}, {"metric": "trace", "mean": 9.5}]) == \
        [{"metric": "trace", "mean": 9.5}]
    (tmp_path / "m.jsonl").write_text('{"epoch": 1, "loss": 2.5, "epoch_time": 0.1}\n{"epoch": 2, "loss": 2.25}\n')
    assert rd.canonical(tmp_path / "m.jsonl", canon) == [{"epoch": 1, "loss": 2.5}, {"epoch": 2, "loss": 2.25}]
    np.savez(tmp_path / "s.npz", loss=np.array([1.0, 2.0]),
             options_json=np.array(json.dumps({"seed": 0, "wall_time": 3.0, "checkpoint": f"{tmp_path}/run"})))
    tree = rd.canonical(tmp_path / "s.npz", canon)
    assert tree["options_json"] == {"seed": 0, "checkpoint": "<work>/run"}
    assert tree["loss"]["__array__"] == "<f8"
    torch.save({"model_state": {"w": torch.ones(2)}, "metadata": {"environment": {"threads": 1}},
                "metrics": [{"epoch": 1, "epoch_time": 0.2}]}, tmp_path / "c.pt")
    tree = rd.canonical(tmp_path / "c.pt", canon)
    assert set(tree) == {"model_state", "metadata", "metrics"}
    assert tree["metadata"] == {} and tree["metrics"] == [{"epoch": 1}]


def test_first_difference_names_the_key_and_both_values():
    a = _canon({"x": {"eigenvalues": [1.0, 2.0], "n": 3}, "y": "same"})
    b = _canon({"x": {"eigenvalues": [1.0, 2.5], "n": 3}, "y": "same"})
    assert rd.first_difference(a, b) == (".x.eigenvalues[1]", 2.0, 2.5)
    assert rd.first_difference(a, a) is None
    assert rd.first_difference({"a": 1}, {"b": 1}) == (".a", 1, "<missing>")
    assert rd.first_difference([1, 2], [1, 2, 3]) == (" (length)", 2, 3)
    assert rd.count_differences(a, b) == 1


def test_numbers_survive_renamed_keys_but_not_changed_values():
    old = {"m-sharpness": {"ratio": 1.25, "values": [0.5, 0.25]}}
    renamed = {"m_sharpness": {"lambda_ratio": 1.25, "values": [0.5, 0.25]}, "schema": 2}
    assert rd.digest(_canon(old)) != rd.digest(_canon(renamed))
    missing = rd.numbers(old) - rd.numbers(renamed)
    assert not missing  # every old number is still there; 2 is new
    assert rd.numbers(renamed) - rd.numbers(old) == {"2": 1}
    changed = {"m_sharpness": {"lambda_ratio": 1.2500000000000002, "values": [0.5, 0.25]}}
    assert rd.numbers(old) - rd.numbers(changed) == {"1.25": 1}
    assert rd.where(old, "1.25") == [".m-sharpness.ratio"]


def test_numbers_mode_tolerates_a_removed_duplicate(tmp_path, capsys):
    path = tmp_path / "b.json"
    both = _results(1.0)
    both["hessian"]["outputs"] = {"hessian.json": {"ratio": 1.5, "lambda_ratio": 1.5, "top": [1.0, 0.5]}}
    rd.store(path, both)
    one = _results(1.0)
    one["hessian"]["outputs"] = {"hessian.json": {"lambda_ratio": 1.5, "top": [1.0, 0.5]}}
    assert rd.check(path, one, numbers_only=True) == 0
    assert "1 number(s) appear fewer times" in capsys.readouterr().out
    one["hessian"]["outputs"]["hessian.json"]["top"] = [1.0, 0.25]
    assert rd.check(path, one, numbers_only=True) == 1
    assert "1 baseline number(s) not found now, e.g. 0.5 at hessian.json.top[1]" in capsys.readouterr().out


def _results(value):
    return {"hessian": {"command": "sharpscope hessian ...", "seconds": 1.0, "skipped": {}, "dropped": {},
                        "outputs": {"hessian.json": _canon({"eigenvalues": [value, 0.5]})}}}


def test_store_then_check(tmp_path, capsys):
    path = tmp_path / "digests" / "baseline.json"
    rd.store(path, _results(1.0))
    assert rd.values_path(path).name == "baseline.values.json.gz"
    with gzip.open(rd.values_path(path), "rt") as f:
        assert json.load(f)["hessian"]["hessian.json"] == {"eigenvalues": [1.0, 0.5]}
    assert rd.check(path, _results(1.0), numbers_only=False) == 0
    assert "OK" in capsys.readouterr().out
    assert rd.check(path, _results(1.0000000000000002), numbers_only=False) == 1
    out = capsys.readouterr().out
    assert "hessian: hessian.json: 1 value(s) differ; first at .eigenvalues[0]: baseline 1.0 != now " \
           "1.0000000000000002" in out
    assert "FAILED" in out
    assert rd.check(path, _results(1.0000000000000002), numbers_only=True) == 1
    renamed = _results(1.0)
    renamed["hessian"]["outputs"] = {"hessian.json": {"lambdas": [1.0, 0.5], "version": 2}}
    assert rd.check(path, renamed, numbers_only=True) == 0
    out = capsys.readouterr().out
    assert "number(s) new" in out and "OK" in out
    assert rd.check(path, renamed, numbers_only=False) == 1


def test_selected_adds_what_a_command_needs():
    names = [c.name for c in rd.selected(["correlate", "weights"])]
    assert names == ["train", "weights", "sweep", "correlate"]
    with pytest.raises(SystemExit):
        rd.selected(["nope"])
    every = rd.COMMANDS
    assert len({c.name for c in every}) == len(every)
    verbs = {c.args[0] for c in every}
    assert verbs >= {"train", "info", "hessian", "sharpness", "gradcos", "surface", "interpolate", "weights",
                     "compare", "sweep", "correlate"}
    assert all(rd.argv(c)[3:5] == ["--threads", "1"] for c in every)
    assert all(rd.argv(c)[-1] == "--deterministic" for c in every if c.args[0] != "info")
