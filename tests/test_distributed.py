"""torch.distributed (2 CPU processes, gloo) gives the single-process answers.

Each test spawns 2 ranks (tests/_ranks.py); rank 0 saves what it computed and the parent
compares with the same computation in one process.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from _ranks import run_on_ranks, run_ranks_command
from sharpscope import load_checkpoint
from _callbacks import StopAt
from sharpscope.train import TrainConfig, train

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3)).double()


def _batches():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (50,), generator=g)
    return [(x[i:i + 8], y[i:i + 8]) for i in range(0, 50, 8)]  # 7 uneven batches over 2 ranks


def analyses() -> dict:
    """HVP, top eigenvalues, a surface and m-sharpness: identical code in 1 or 2 processes."""
    import sharpscope.hessian as sh
    from sharpscope.landscape import random_direction, surface
    from sharpscope.objective import Objective
    from sharpscope.sharpness import m_sharpness
    model, batches = _model(), _batches()
    results = {}
    for mode in ("forward-over-reverse", "reuse-graph"):
        obj = Objective(model, F.cross_entropy, batches, hvp_mode=mode)
        v = torch.linspace(-1, 1, obj.n, dtype=torch.float64)
        results[f"hvp_{mode}"] = obj.hvp(v)
        results[f"loss_{mode}"] = obj.loss()
        results[f"grad_{mode}"] = obj.grad()
    results["eigenvalues"] = sh.eigenvalues(model, F.cross_entropy, batches, k=3, tol=1e-8).eigenvalues
    results["trace"] = sh.trace(model, F.cross_entropy, batches, n_matvecs=15).trace
    dirs = [random_direction(model, seed=0), random_direction(model, seed=1)]
    res = surface(model, F.cross_entropy, batches, dirs, np.linspace(-1, 1, 5), np.linspace(-1, 1, 3),
                  metrics={"sq": lambda m, b: m(b[0]).square().sum(1).mean()})
    results["surface_loss"], results["surface_acc"] = res.loss, res.accuracy
    results["surface_metric"] = res.metrics["sq"]  # custom metrics are all-reduced like the loss
    results["m_sharpness"] = m_sharpness(model, F.cross_entropy, batches, m=[2, 5], rho=0.1, steps=2,
                                         group_examples=6).results
    return results


def curvature_products() -> dict:
    """GGN, Fisher (seeded Monte Carlo and exact) and empirical-Fisher products: the Monte-Carlo
    labels are seeded per (seed, batch index), so 2 ranks draw what 1 process draws."""
    from sharpscope import curvature
    from sharpscope.objective import Objective
    obj = Objective(_model(), F.cross_entropy, _batches())
    V = torch.linspace(-1, 1, obj.n * 2, dtype=torch.float64).reshape(obj.n, 2)
    return {f"{kind}-{mc}": curvature.operator(obj, kind, mc_samples=mc, seed=3).matmat(V)
            for kind, mc in (("ggn", 1), ("empirical-fisher", 1), ("fisher", 2), ("fisher", "exact"))}



def train_run(out: str, config: dict, stop_step: int | None = None) -> dict:
    callbacks = [StopAt(stop_step)] if stop_step else []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(TrainConfig(**config), out, callbacks=callbacks)
    return {"interrupted": result.interrupted, "metrics": result.metrics,
            "warnings": [str(w.message) for w in caught if "batch norm" in str(w.message)]}


def _close(a, b, rel: float = 1e-5):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = np.maximum(np.abs(b), 1e-12)
    return bool(np.all(np.abs(a - b) <= rel * scale))


def test_analyses_on_two_ranks_equal_one_process(tmp_path):
    two = run_on_ranks(tmp_path, analyses)
    one = analyses()
    for key in one:
        if key == "m_sharpness":
            for r2, r1 in zip(two[key], one[key]):
                assert r2.m == r1.m and _close(r2.values, r1.values), key
        else:
            assert _close(two[key], one[key]), key  # 1e-5 relative; float64 gives ~1e-15


def test_curvature_operators_on_two_ranks_equal_one_process(tmp_path):
    two = run_on_ranks(tmp_path, curvature_products)
    for key, one in curvature_products().items():
        assert torch.allclose(two[key], one, rtol=0, atol=1e-12 * float(one.abs().max())), key


BASE = dict(optimizer="sam", model="mlp", model_kwargs={"hidden": [12], "bn": True}, n_train=200, epochs=2,
            batch_size=40, lr=0.1, keep_snapshots=False, seed=3)


def test_two_rank_sam_equals_single_process_msam_with_per_rank_batch(tmp_path):
    run_on_ranks(tmp_path, train_run, str(tmp_path / "ddp"), BASE)
    train(TrainConfig(**BASE, m=20), tmp_path / "msam")  # m = 40 / 2 ranks
    a = load_checkpoint(tmp_path / "ddp").model.state_dict()
    b = load_checkpoint(tmp_path / "msam").model.state_dict()
    for k in a:  # weights and the (rank-averaged) BN running statistics
        assert torch.allclose(a[k].double(), b[k].double(), rtol=1e-5, atol=1e-6), k
    plain = train(TrainConfig(**BASE), tmp_path / "sam")  # global-batch SAM differs: the test can fail
    c = load_checkpoint(tmp_path / "sam").model.state_dict()
    assert not all(torch.allclose(a[k].double(), c[k].double(), rtol=1e-5, atol=1e-6) for k in a)
    assert plain.metrics


def test_sync_perturbation_equals_global_batch_sam(tmp_path):
    run_on_ranks(tmp_path, train_run, str(tmp_path / "ddp"), {**BASE, "sync_perturbation": True,
                                                                    "model_kwargs": {"hidden": [12]}})
    train(TrainConfig(**{**BASE, "model_kwargs": {"hidden": [12]}}), tmp_path / "sam")
    a = load_checkpoint(tmp_path / "ddp").model.state_dict()
    b = load_checkpoint(tmp_path / "sam").model.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k


def _states(*dirs) -> list[dict]:
    return [load_checkpoint(d).model.state_dict() for d in dirs]


def _gap(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_sync_bn_and_sync_perturbation_equal_single_process_sam_on_a_bn_model(tmp_path):
    """The README's claim for --sync-perturbation --sync-bn, on a batch-norm model with an
    uneven last batch (205 = 5 x 40 + 5: ranks get 3 + 2). float32, 12 steps: the measured
    largest gap is 2.2e-7 (summation order; 2 float32 ulps of the largest entries); without
    --sync-bn it is 0.18, so the bound 1e-5 separates the two with room on both sides."""
    config = {**BASE, "n_train": 205, "sync_perturbation": True}
    synced = run_on_ranks(tmp_path, train_run, str(tmp_path / "synced"), {**config, "sync_bn": True})
    ghost = run_on_ranks(tmp_path, train_run, str(tmp_path / "ghost"), config)
    single = train(TrainConfig(**{**BASE, "n_train": 205}), tmp_path / "sam")
    a, g, b = _states(tmp_path / "synced", tmp_path / "ghost", tmp_path / "sam")
    assert _gap(a, b) < 1e-5, _gap(a, b)  # weights and running statistics
    assert _gap(g, b) > 1e-3, _gap(g, b)  # per-rank statistics: another computation
    for m2, m1 in zip(synced["metrics"], single.metrics):
        assert m2["train_loss"] == pytest.approx(m1["train_loss"], rel=1e-5)
        assert m2["test_acc"] == pytest.approx(m1["test_acc"], abs=1e-9)
    # the run without --sync-bn said once what it computes; the synced one said nothing
    assert len(ghost["warnings"]) == 1 and "ghost batch norm" in ghost["warnings"][0], ghost["warnings"]
    assert "--sync-bn" in ghost["warnings"][0] and synced["warnings"] == []
    env = load_checkpoint(tmp_path / "synced").metadata["environment"]
    assert env["world_size"] == 2 and env["threads"] == 1


def test_default_two_rank_bn_run_says_it_is_msam():
    from sharpscope.train.launch import per_rank_bn_note
    note = per_rank_bn_note(TrainConfig(**BASE), 2)
    assert "m-SAM with --m 20" in note and "ghost" not in note
    assert "about 13.3" in per_rank_bn_note(TrainConfig(**BASE), 3)
    assert "ghost batch norm: SGD" in per_rank_bn_note(TrainConfig(**{**BASE, "optimizer": "sgd"}), 2)


@pytest.mark.parametrize("optimizer", ["sam", "asam", "rsam"])
def test_sync_bn_without_one_perturbation_is_refused(optimizer):
    from sharpscope.errors import ConfigError
    with pytest.raises(ConfigError, match="--sync-bn"):
        TrainConfig(**{**BASE, "optimizer": optimizer, "sync_bn": True, "sync_perturbation": optimizer == "rsam"})
    TrainConfig(**{**BASE, "optimizer": "sgd", "sync_bn": True})  # no perturbation: nothing to agree on


def test_a_two_rank_run_resumes_on_one_rank(tmp_path):
    config = {**BASE, "epochs": 3}
    part = run_on_ranks(tmp_path, train_run, str(tmp_path / "run"), config, 7)  # stop mid-epoch 2
    assert part["interrupted"] and len(part["metrics"]) == 1
    resumed = train(None, tmp_path / "run", resume=True)
    assert resumed.resumed_from["step"] == 7 and [m["epoch"] for m in resumed.metrics] == [1, 2, 3]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.progress["finished"] and all(torch.isfinite(t).all() for t in ckpt.model.state_dict().values())
    assert ckpt.metadata["world_size"] == 1 and math.isfinite(resumed.metrics[-1]["test_loss"])
    assert os.path.exists(tmp_path / "run" / "checkpoint.pt")


@pytest.mark.slow
def test_cli_launches_torchrun_and_analyses_agree(tmp_path):
    """`sharpscope train --nproc 2` and `torchrun -m sharpscope hessian` end to end, as a user runs them."""
    import json
    import sys
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "sharpscope", "train", "--nproc", "2", "--model", "mlp", "--model-opt",
           "hidden=[16]", "--n-train", "200", "--epochs", "2", "--batch-size", "40", "--no-progress",
           "--no-snapshots", "--out", str(tmp_path / "run")]
    proc = run_ranks_command(run, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert load_checkpoint(tmp_path / "run").metadata["world_size"] == 2
    reports = []
    for launcher in ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
                     [sys.executable]):
        out = tmp_path / f"h{len(reports)}.json"
        proc = run_ranks_command([*launcher, "-m", "sharpscope", "hessian", str(tmp_path / "run"), "--top-k", "2",
                                  "--samples", "100", "--no-progress", "--json", str(out)], env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        reports.append(json.loads(out.read_text()))
    assert _close(reports[0]["eigenvalues"]["eigenvalues"], reports[1]["eigenvalues"]["eigenvalues"])


@pytest.mark.slow
def test_cli_sync_bn_run_equals_single_process_sam(tmp_path):
    """The issue's case through the CLI: the digits CNN with batch norm, one epoch of 8 SAM
    steps at lr 0.1, float32. Training amplifies rounding (1e-7 per operation) to ~1e-3 in 8
    steps here, so "equal" is judged against a control that differs only in rounding: the same
    single-process run on 2 threads instead of 1. Measured: --sync-bn vs 1 thread 7.94e-4, 2
    threads vs 1 thread 7.94e-4 (the same size), without --sync-bn 0.11. The bound (3x the
    control) separates the last from the first two. Bad input stops in the launching process
    with one line and exit code 2 (no torchrun tracebacks)."""
    import sys
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = ["--model", "cnn", "--model-opt", "bn=true", "--epochs", "1", "--batch-size", "64", "--n-train", "512",
            "--no-progress", "--no-snapshots"]
    runs = {"synced": ["1", "--nproc", "2", "--sync-perturbation", "--sync-bn"],
            "ghost": ["1", "--nproc", "2", "--sync-perturbation"], "single": ["1"], "single_2_threads": ["2"]}
    for out, (threads, *extra) in runs.items():
        proc = run_ranks_command([sys.executable, "-m", "sharpscope", "--threads", threads, "train", *extra, *base,
                                  "--out", str(tmp_path / out)], env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    synced, ghost, single, control = _states(*(tmp_path / name for name in runs))
    bound = 3 * _gap(control, single) + 1e-6
    assert _gap(synced, single) <= bound, (_gap(synced, single), bound)
    assert _gap(ghost, single) > 10 * bound, (_gap(ghost, single), bound)
    assert load_checkpoint(tmp_path / "synced").config["sync_bn"]
    bad = run_ranks_command([sys.executable, "-m", "sharpscope", "train", "--nproc", "2", "--sync-bn", *base, "--out",
                             str(tmp_path / "bad")], env=env, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--sync-perturbation" in bad.stderr
    assert not (tmp_path / "bad").exists()


# --- nothing multi-process can hang (issue 23.10) -----------------------------------------

def _rank1_never_arrives(seconds: float) -> None:
    """Rank 0 waits in a barrier that rank 1, asleep, never reaches."""
    import time
    if dist.get_rank() == 1:
        time.sleep(seconds)
    else:
        dist.barrier()


def _both_asleep(seconds: float) -> None:
    import time
    time.sleep(seconds)


def test_a_rank_waiting_for_a_stuck_one_fails_within_the_group_timeout(tmp_path):
    import time
    start = time.monotonic()
    with pytest.raises(Exception, match="(?s)Process 0 terminated.*(imed out|timeout)"):
        run_on_ranks(tmp_path, _rank1_never_arrives, 300.0, timeout_s=3.0)
    assert time.monotonic() - start < 60  # 3 s of waiting plus spawning two interpreters


def test_ranks_still_running_at_the_deadline_are_killed_and_named(tmp_path):
    import time
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"_both_asleep on 2 ranks: rank\(s\) \[0, 1\] still running"):
        run_on_ranks(tmp_path, _both_asleep, 300.0, deadline_s=4.0)
    assert time.monotonic() - start < 60


def test_the_process_group_timeout_comes_from_the_environment(monkeypatch):
    from datetime import timedelta

    from sharpscope import distributed as dist_utils
    from sharpscope.errors import ConfigError
    monkeypatch.delenv("SHARPSCOPE_DIST_TIMEOUT", raising=False)
    assert dist_utils.timeout_from_env() == timedelta(seconds=600)
    monkeypatch.setenv("SHARPSCOPE_DIST_TIMEOUT", "2.5")
    assert dist_utils.timeout_from_env() == timedelta(seconds=2.5)
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: seen.update(kw))
    dist_utils.init_from_env("cpu")
    assert seen == {"backend": "gloo", "timeout": timedelta(seconds=2.5)}
    for bad in ("0", "-1", "nan", "inf", "ten"):
        monkeypatch.setenv("SHARPSCOPE_DIST_TIMEOUT", bad)
        with pytest.raises(ConfigError, match="SHARPSCOPE_DIST_TIMEOUT"):
            dist_utils.init_from_env("cpu")
