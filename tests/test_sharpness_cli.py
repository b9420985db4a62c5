"""`sharpscope sharpness`, `sharpscope gradcos` and `train --track/--second-order` end to end."""

from __future__ import annotations

import json

import pytest

from sharpscope.train import TrainConfig, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(optimizer="sam", model="mlp", model_kwargs={"hidden": [16]}, n_train=200, epochs=2,
                      batch_size=50, keep_snapshots=False), out)
    return out


def test_sharpness_json_is_clean_stdout(run, tmp_path, cli):
    code, out, err = cli(["sharpness", str(run), "--m", "1,4,16", "--rho", "0.01,0.05", "--steps", "2",
                              "--samples", "64", "--plot", "--plot-dir", str(tmp_path), "--json", "-",
                              "--no-progress"])
    assert code == 0, err
    report = json.loads(out)  # nothing but JSON on stdout
    assert [(r["m"], r["rho"]) for r in report["results"]] == [(1, 0.01), (1, 0.05), (4, 0.01), (4, 0.05),
                                                                (16, 0.01), (16, 0.05)]
    assert set(report["surrogate_gap"]) == {"0.01", "0.05"} and report["steps"] == 2
    assert "m-sharpness" in err
    assert (tmp_path / "m_sharpness.png").is_file() and (tmp_path / "m_sharpness_rho.png").is_file()


def test_gradcos(run, cli):
    code, out, err = cli(["gradcos", str(run), "--rho", "0.05", "--samples", "100", "--json", "-"])
    assert code == 0, err
    report = json.loads(out)
    assert -1 <= report["cosine"] <= 1 and report["n_hvp"] == 1 and report["rho"] == 0.05


@pytest.mark.parametrize("args,fragment", [
    (["sharpness", "--m", "a,b"], "--m"), (["sharpness", "--rho", "-1"], "rho"), (["sharpness", "--p", "3"], "p = 2"),
    (["sharpness", "--steps", "0"], "steps"), (["gradcos", "--rho", "-0.5"], "rho"),
])
def test_bad_input(run, cli, args, fragment):
    code, _, err = cli([args[0], str(run), "--samples", "50", *args[1:]] + (["--no-progress"] if args[0] == "sharpness" else []))
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err


def test_train_with_tracking_writes_metrics_and_figure(tmp_path, cli):
    out = tmp_path / "tracked"
    code, _, err = cli(["train", "--model", "mlp", "--model-opt", "hidden=[16]", "--n-train", "150",
                            "--epochs", "2", "--batch-size", "50", "--track", "gradcos,lambda_max",
                            "--track-samples", "64", "--second-order", "--no-snapshots", "--no-progress",
                            "--out", str(out)])
    assert code == 0, err
    records = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("gradcos" in r and "lambda_max" in r for r in records)
    assert (out / "tracking.png").is_file()
    code, _, err = cli(["train", "--track", "bogus", "--out", str(tmp_path / "x")])
    assert code == 2 and "cannot track" in err
