"""Provenance (what produced a number) and --deterministic (the same bits again)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sharpscope import load_checkpoint, provenance
from sharpscope.determinism import DETERMINISTIC_THREADS, deterministic, enable_deterministic
from sharpscope.experiments.report import _environment_lines
from _callbacks import StopAt
from sharpscope.train import TrainConfig, train

TINY = dict(optimizer="sam", model="mlp", model_kwargs={"hidden": [8], "bn": True}, data="synthetic", n_train=96,
            epochs=2, batch_size=32, keep_snapshots=False)


def test_environment_records_versions_device_threads_and_mode():
    import numpy as np
    env = provenance.environment()
    assert env["torch_version"] == torch.__version__ and env["numpy_version"] == np.__version__
    assert env["device"] == "cpu" and env["device_name"] and env["cpu_capability"] == \
        torch.backends.cpu.get_cpu_capability()
    assert env["threads"] == torch.get_num_threads() and env["world_size"] == 1
    assert env["dtype"] == "float32" and env["deterministic"] is False
    assert provenance.environment(dtype=torch.float64, autocast="bf16")["dtype"] == "float64"
    root = Path(provenance.__file__).resolve().parent.parent
    if (root / ".git").exists() and shutil.which("git"):  # run from a checkout: its commit
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert env["git_commit"] == head.strip() and isinstance(env["git_dirty"], bool)


def test_differences_describe_and_recorded():
    a = provenance.environment()
    b = {**a, "threads": a["threads"] + 1, "python_version": "0.0"}  # python is recorded, not compared
    assert provenance.differences([a, None, a]) == {}
    assert provenance.differences([a, b, a]) == {"threads": [a["threads"], a["threads"] + 1]}
    text = provenance.describe(a)
    assert f"torch {torch.__version__}" in text and f"{a['threads']} thread" in text and "deterministic off" in text
    assert "not recorded" in provenance.describe(None)
    assert "threads 1 vs 2" in provenance.unlike_runs_warning({"threads": [1, 2]})
    assert provenance.recorded({"environment": a}) == [a]
    assert provenance.recorded({"environment": b, "environments": [a, b]}) == [a, b]
    assert provenance.recorded({}) == []


def test_descriptions_differ_exactly_when_records_are_unlike():
    """correlate compares its rows' descriptions, compare and sweep the records: the two must agree."""
    a = {**provenance.environment(), "git_commit": "0" * 40, "git_dirty": False}
    changed = {"sharpscope_version": "9.9", "git_commit": "1" * 40, "git_dirty": True, "torch_version": "0.0",
               "numpy_version": "0.0", "device": "cuda:0", "device_name": "GPU", "cpu_capability": "AVX2",
               "dtype": "float64", "autocast": "bf16", "threads": a["threads"] + 1, "world_size": 2,
               "deterministic": True}
    assert set(changed) == set(provenance.COMPARABLE_FIELDS)
    for field, value in changed.items():
        b = {**a, field: value}
        assert provenance.differences([a, b]) == {field: [a[field], value]}
        assert provenance.describe(a) != provenance.describe(b), field
    for field in ("python_version", "platform"):  # recorded, not compared, not described
        b = {**a, field: "other"}
        assert provenance.differences([a, b]) == {} and provenance.describe(a) == provenance.describe(b)


def test_deterministic_block_fixes_threads_and_restores():
    threads, mode = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with deterministic() as n:
        assert n == DETERMINISTIC_THREADS == torch.get_num_threads() == 1
        assert torch.are_deterministic_algorithms_enabled()
        assert provenance.environment()["deterministic"] is True and os.environ["CUBLAS_WORKSPACE_CONFIG"]
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == mode
    with deterministic(threads=2) as n:
        assert n == torch.get_num_threads() == 2
    assert torch.get_num_threads() == threads


def test_deterministic_takes_the_users_thread_count(monkeypatch):
    monkeypatch.setenv("SHARPSCOPE_THREADS", "2")
    with deterministic() as n:
        assert n == 2
    monkeypatch.delenv("SHARPSCOPE_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # torchrun sets it: not a choice, ignored
    with deterministic() as n:
        assert n == 1
    from sharpscope.errors import ConfigError
    with pytest.raises(ConfigError):
        enable_deterministic(0)



def test_a_resume_in_another_environment_is_kept_in_the_history(tmp_path):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        first = train(TrainConfig(**TINY), tmp_path / "run", callbacks=[StopAt(2)])
        assert first.interrupted
        assert len(load_checkpoint(tmp_path / "run").metadata["environments"]) == 1
        torch.set_num_threads(2)
        train(None, tmp_path / "run", resume=True)
    finally:
        torch.set_num_threads(threads)
    meta = load_checkpoint(tmp_path / "run").metadata
    assert [e["threads"] for e in meta["environments"]] == [1, 2] and meta["environment"]["threads"] == 2
    assert provenance.differences(provenance.recorded(meta)) == {"threads": [1, 2]}


def test_the_report_says_what_trained_and_warns_when_runs_differ():
    env = provenance.environment()
    results = {"environment": env, "environment_differences": {},
               "optimizers": {"sgd": {"seeds": {"0": {"trained_in": env}}}}}
    text = "\n".join(_environment_lines(results))
    assert "## Environment" in text and "(every run)" in text and "not all alike" not in text
    results["environment_differences"] = {"threads": [1, 2]}
    assert "not all alike" in "\n".join(_environment_lines(results))
    assert _environment_lines({"optimizers": {}}) == []  # results written before provenance


def test_analysis_json_records_both_environments(tmp_path, cli):
    train(TrainConfig(**TINY), tmp_path / "run")
    code, out, err = cli(["hessian", str(tmp_path / "run"), "--top-k", "1", "--samples", "64", "--no-progress",
                          "--json", "-"])
    assert code == 0, err
    report = json.loads(out)
    assert report["environment"]["device"] == "cpu" and report["trained_in"]["world_size"] == 1
    code, out, err = cli(["interpolate", str(tmp_path / "run"), str(tmp_path / "run"), "--grid", "0:1:2", "--samples",
                          "64", "--no-progress", "--json", "-"])
    assert code in (0, None), err
    assert [e["world_size"] for e in json.loads(out)["trained_in"]] == [1, 1]  # A's and B's records
    code, out, _ = cli(["info", "--json", "-"])
    assert code == 0 and json.loads(out)["torch_version"] == torch.__version__
    code, out, _ = cli(["info", str(tmp_path / "run")])
    assert code == 0 and "written by" in out and "deterministic off" in out  # rich wraps the long line


def _train_cli(out: Path, global_opts: list[str], train_opts: list[str], threads_env: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("SHARPSCOPE_THREADS", "OMP_NUM_THREADS")}
    args = [sys.executable, "-m", "sharpscope", *global_opts, "train", *train_opts, "--model", "cnn", "--model-opt",
            "bn=true", "--n-train", "300", "--epochs", "1", "--no-progress", "--no-snapshots", "--out", str(out)]
    proc = subprocess.run(args, env={**env, **threads_env}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = load_checkpoint(out)
    return {"state": ckpt.model.state_dict(), "env": ckpt.metadata["environment"],
            "metrics": [{k: v for k, v in r.items() if k != "epoch_time"} for r in ckpt.metrics]}


@pytest.mark.slow
def test_deterministic_runs_give_the_same_bits_whatever_the_default_threads(tmp_path):
    """Two --deterministic runs whose default thread counts differ (2 from OMP_NUM_THREADS, and
    this machine's default) give identical weights and metrics. Without the flag the thread
    count follows the environment and the bits differ (1.2e-7 measured on this run, 1 vs 2
    threads), which is what the flag fixes: the comparison here can fail."""
    a = _train_cli(tmp_path / "a", [], ["--deterministic"], {"OMP_NUM_THREADS": "2"})
    b = _train_cli(tmp_path / "b", [], ["--deterministic"], {})
    assert a["env"]["deterministic"] and a["env"]["threads"] == b["env"]["threads"] == 1
    assert a["metrics"] == b["metrics"]
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    c = _train_cli(tmp_path / "c", ["--threads", "2"], [], {})  # not deterministic: 2 threads
    assert c["env"]["threads"] == 2 and not c["env"]["deterministic"]
    assert not all(torch.equal(a["state"][k], c["state"][k]) for k in a["state"])
