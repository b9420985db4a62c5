"""The command line: a tiny training run, `info`, and every bad input as one line + exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


TINY = ["--model", "mlp", "--model-opt", "hidden=[16]", "--n-train", "200", "--epochs", "2",
        "--batch-size", "50", "--no-progress"]


def test_train_then_info(tmp_path, cli):
    out = tmp_path / "run"
    code, stdout, _ = cli(["train", *TINY, "--out", str(out)])
    assert code == 0, stdout
    assert "done: test acc" in stdout
    assert (out / "checkpoint.pt").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) == 2
    code, stdout, _ = cli(["info", str(out), "--json", "-"])
    assert code == 0
    summary = json.loads(stdout)
    assert summary["model_spec"]["name"] == "mlp" and summary["progress"]["finished"]
    assert summary["parameters"] == 64 * 16 + 16 + 16 * 10 + 10
    code, stdout, _ = cli(["info", str(out / "checkpoint.pt")])
    assert code == 0 and "model_spec" in stdout


def test_resume_via_cli(tmp_path, cli):
    out = tmp_path / "run"
    code, _, err = cli(["train", *TINY, "--resume", "--out", str(tmp_path / "fresh")])
    assert code == 0 and "resumed" not in err  # nothing to resume: starts a new run
    assert cli(["train", *TINY, "--out", str(out)])[0] == 0
    code, _, err = cli(["train", *TINY, "--out", str(out)])
    assert code == 2 and "--resume" in err
    code, stdout, err = cli(["train", "--resume", "--out", str(out), "--no-progress"])
    assert code == 0 and "resumed" in err


@pytest.mark.parametrize("args,fragment", [
    (["train", "--model", "nosuchnet"], "nosuchnet"),
    (["train", "--data", "imagenet"], "imagenet"),
    (["train", "--rho", "-0.1"], "rho"),
    (["train", "--label-noise", "1.0"], "label noise"),
    (["train", "--label-noise", "-0.2"], "label noise"),
    (["train", "--data", "mnist", "--data-root", "/nonexistent/mnist"], "/nonexistent/mnist"),
    (["train", "--data", "cifar10"], "cifar10"),
    (["train", "--epochs", "many"], "--epochs"),
    (["train", "--optimizer", "adam"], "adam"),
    (["train", "--p", "one"], "--p"),
    (["train", "--model-opt", "depth"], "KEY=VALUE"),
    (["train", "--model", "cnn", "--model-opt", "width=3"], "width"),
    (["train", "--model", "nopkg.nomodule:fn"], "nopkg"),
    (["train", "--no-such-flag"], "no-such-flag"),
    (["info", "/nonexistent.pt"], "no such checkpoint"),
    (["frobnicate"], "frobnicate"),
])
def test_bad_input_is_one_line_and_exit_2(args, fragment, cli, tmp_path):
    code, _, err = cli([*args, "--out", str(tmp_path / "o")] if args[0] == "train" else args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sharpscope: error:") and fragment in lines[0]
    assert "Traceback" not in err


def test_unreadable_checkpoint_via_info(tmp_path, cli):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x04garbage")
    code, _, err = cli(["info", str(bad)])
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_help_lists_the_options(cli):
    code, stdout, _ = cli(["train", "--help"])
    assert code == 0
    for option in ("--optimizer", "--rho", "--label-noise", "--m", "--resume", "--epochs", "--seed", "--out"):
        assert option in stdout


def test_console_script_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sharpscope", "train", "--rho", "-1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["sharpscope: error: rho must be >= 0, got -1.0"]


def test_a_custom_model_that_does_not_fit_the_data(tmp_path, monkeypatch, cli):
    (tmp_path / "wrong_nets.py").write_text(
        "import torch\n"
        "def flat(n_in=10):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n_in, 10))\n"
        "def three(n_in=64):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n_in, 3))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, _, err = cli(["train", "--model", "wrong_nets:flat", "--out", str(tmp_path / "a"), "--no-progress"])
    assert code == 2 and "does not accept inputs of shape (1, 8, 8)" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(["train", "--model", "wrong_nets:three", "--out", str(tmp_path / "b"), "--no-progress"])
    assert code == 2 and "10 class scores" in err
