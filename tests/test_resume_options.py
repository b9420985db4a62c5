"""``train --resume`` with options given again: conflicts refused in one line, a larger
``--epochs`` extends a run whose schedule allows it (issue 23, item 7)."""

from __future__ import annotations

import json

import pytest
import torch

from sharpscope import ConfigError, load_checkpoint
from sharpscope.checkpoint import read_checkpoint
from sharpscope.train import TrainConfig, train
from sharpscope.train.resume import resume_conflicts, resumed_config

# BN + dropout (the RNG carries over the resume), SAM with momentum, weight decay and a
# warm-up of half an epoch, a partial last batch (300 / 64).
SMALL = dict(optimizer="sam", model="cnn", model_kwargs={"channels": [8, 8], "hidden": 16, "bn": True,
                                                           "dropout": 0.2},
             n_train=300, batch_size=64, lr=0.05, warmup_epochs=0.5, seed=1, keep_snapshots=False)
TINY = ["--model", "mlp", "--model-opt", "hidden=[16]", "--n-train", "200", "--batch-size", "50", "--no-progress"]


def _weights(path):
    return load_checkpoint(path).model.state_dict()


def _strip_times(metrics):
    return [{k: v for k, v in m.items() if k != "epoch_time"} for m in metrics]


def test_extending_a_constant_lr_run_equals_training_it_straight(tmp_path):
    """1 epoch, then resumed to 2, is bit for bit the 2-epoch run (weights, optimizer state, metrics)."""
    straight = train(TrainConfig(**SMALL, schedule="constant", epochs=2), tmp_path / "straight")
    first = train(TrainConfig(**SMALL, schedule="constant", epochs=1), tmp_path / "ext")
    assert len(first.metrics) == 1 and read_checkpoint(tmp_path / "ext" / "checkpoint.pt")["progress"]["finished"]
    extended = train(TrainConfig(**SMALL, schedule="constant", epochs=2), tmp_path / "ext", resume=True)
    assert extended.resumed_from["epoch"] == 1 and not extended.interrupted
    a, b = _weights(tmp_path / "straight" / "checkpoint.pt"), _weights(tmp_path / "ext" / "checkpoint.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _strip_times(extended.metrics) == _strip_times(straight.metrics)
    raw = read_checkpoint(tmp_path / "ext" / "checkpoint.pt")
    assert raw["config"]["epochs"] == 2 and raw["progress"] == read_checkpoint(
        tmp_path / "straight" / "checkpoint.pt")["progress"]
    assert len((tmp_path / "ext" / "metrics.jsonl").read_text().splitlines()) == 2


def test_ill_defined_extensions_and_other_options_are_refused(tmp_path):
    train(TrainConfig(**SMALL, epochs=1), tmp_path / "cos")  # cosine: lr(step) depends on the total
    before = (tmp_path / "cos" / "checkpoint.pt").read_bytes()
    with pytest.raises(ConfigError, match="cosine schedule"):
        train(TrainConfig(**SMALL, epochs=2), tmp_path / "cos", resume=True)
    with pytest.raises(ConfigError, match=r"lr 0\.1 \(the run's: 0\.05\)"):
        train(TrainConfig(**{**SMALL, "lr": 0.1}, epochs=1), tmp_path / "cos", resume=True)
    assert (tmp_path / "cos" / "checkpoint.pt").read_bytes() == before
    stored = TrainConfig(**SMALL, schedule="constant", epochs=3)
    with pytest.raises(ConfigError, match="not shortened"):
        resumed_config(stored, {"epochs": 2})
    assert resumed_config(stored, {"epochs": 5}).epochs == 5
    # the same config, tracked otherwise, resumes as it is (what compare and sweep pass)
    again = train(TrainConfig(**SMALL, epochs=1, track=["gradcos"]), tmp_path / "cos", resume=True)
    assert len(again.metrics) == 1 and (tmp_path / "cos" / "checkpoint.pt").read_bytes() == before


def test_options_are_compared_by_their_effect():
    sam = TrainConfig(optimizer="sam", rho=None, augment=None)
    assert resume_conflicts(sam, {"rho": 0.05, "augment": False, "optimizer": "sam", "epochs": 99}) == []
    assert resume_conflicts(sam, {"rho": 0.1}) == ["rho"]
    sgd = TrainConfig(optimizer="sgd")
    assert resume_conflicts(sgd, {"rho": 0.0}) == []  # SGD's radius is 0
    assert resume_conflicts(sgd, {"optimizer": "sam", "rho": 0.3}) == ["optimizer", "rho"]
    wsam = TrainConfig(optimizer="wsam")
    assert resume_conflicts(wsam, {"optimizer_options": {"decouple": True, "gamma": 0.9}}) == []  # the defaults
    assert resume_conflicts(wsam, {"optimizer_options": {"decouple": False}}) == ["optimizer_options"]


def test_cli_refuses_conflicting_options_in_one_line(tmp_path, cli):
    out = tmp_path / "run"
    assert cli(["train", *TINY, "--optimizer", "sgd", "--epochs", "1", "--out", str(out)])[0] == 0
    before = (out / "checkpoint.pt").read_bytes()
    code, stdout, err = cli(["train", "--resume", "--epochs", "5", "--optimizer", "sam", "--rho", "0.3",
                             "--out", str(out), "--no-progress"])
    assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1
    for flag in ("--optimizer sam", "--rho 0.3", "--epochs 5"):
        assert flag in err
    assert "--lr" not in err and "--model" not in err  # only what was given and differs
    assert (out / "checkpoint.pt").read_bytes() == before
    # options given again with the stored values (by their effect) are fine
    code, _, err = cli(["train", *TINY, "--optimizer", "sgd", "--rho", "0", "--epochs", "1", "--lr", "0.1",
                        "--resume", "--out", str(out)])
    assert code == 0 and "resumed" in err and (out / "checkpoint.pt").read_bytes() == before


def test_cli_extends_a_constant_lr_run(tmp_path, cli):
    common = [*TINY, "--optimizer", "sgd", "--schedule", "constant", "--no-snapshots"]
    assert cli(["train", *common, "--epochs", "2", "--out", str(tmp_path / "straight")])[0] == 0
    assert cli(["train", *common, "--epochs", "1", "--out", str(tmp_path / "ext")])[0] == 0
    code, _, err = cli(["train", "--resume", "--epochs", "2", "--out", str(tmp_path / "ext"), "--no-progress"])
    assert code == 0 and "resumed" in err
    a, b = _weights(tmp_path / "straight" / "checkpoint.pt"), _weights(tmp_path / "ext" / "checkpoint.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(x) for x in (tmp_path / "ext" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    code, _, err = cli(["train", "--resume", "--epochs", "3", "--schedule", "cosine", "--out", str(tmp_path / "ext"),
                        "--no-progress"])
    assert code == 2 and "--schedule cosine (the run's: constant)" in err
