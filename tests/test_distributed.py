"""torch.distributed (2 CPU processes, gloo) gives the single-process answers.

Each test spawns 2 ranks with ``torch.multiprocessing``; rank 0 saves what it computed and
the parent compares with the same computation in one process.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from sharpscope import load_checkpoint
from sharpscope.distributed import finish
from sharpscope.train import Callback, TrainConfig, train

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


class StopAfter(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state) -> None:
        if state.step == self.step:
            state.stop_requested = True


def train_run(out: str, config: dict, stop_step: int | None = None) -> dict:
    callbacks = [StopAfter(stop_step)] if stop_step else []
    result = train(TrainConfig(**config), out, callbacks=callbacks)
    return {"interrupted": result.interrupted, "metrics": result.metrics}


def _worker(rank: int, world: int, init_file: str, target: str, args: tuple, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = globals()[target](*args)
        if rank == 0:
            torch.save(result, out_file)
        Path(f"{out_file}.rank{rank}.done").touch()  # this rank's work is complete
    except BaseException:
        finish(ok=False)  # leave without the barrier: the other rank may never reach it
        raise
    finish()  # barrier, then leave: no rank tears gloo down under another


def run_on_two_ranks(tmp_path, target: str, *args):
    out_file = str(tmp_path / f"{target}.result.pt")
    try:
        mp.spawn(_worker, args=(2, str(tmp_path / f"{target}.init"), target, args, out_file), nprocs=2, join=True)
    except mp.ProcessExitedException as err:
        # gloo occasionally aborts a process while tearing the group down at exit ("terminate
        # called without an active exception"). Only that is tolerated: both ranks must have
        # finished their work (their markers exist) and the death must be that SIGABRT.
        finished = all(Path(f"{out_file}.rank{r}.done").exists() for r in range(2))
        if not (finished and err.signal_name == "SIGABRT"):
            raise
        warnings.warn(f"a rank aborted while leaving the gloo group after finishing: {err}")
    return torch.load(out_file, weights_only=False)  # our own test file, written a moment ago


def _close(a, b, rel: float = 1e-5):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = np.maximum(np.abs(b), 1e-12)
    return bool(np.all(np.abs(a - b) <= rel * scale))


def test_analyses_on_two_ranks_equal_one_process(tmp_path):
    two = run_on_two_ranks(tmp_path, "analyses")
    one = analyses()
    for key in one:
        if key == "m_sharpness":
            for r2, r1 in zip(two[key], one[key]):
                assert r2.m == r1.m and _close(r2.values, r1.values), key
        else:
            assert _close(two[key], one[key]), key  # 1e-5 relative; float64 gives ~1e-15


def test_curvature_operators_on_two_ranks_equal_one_process(tmp_path):
    two = run_on_two_ranks(tmp_path, "curvature_products")
    for key, one in curvature_products().items():
        assert torch.allclose(two[key], one, rtol=0, atol=1e-12 * float(one.abs().max())), key


BASE = dict(optimizer="sam", model="mlp", model_kwargs={"hidden": [12], "bn": True}, n_train=200, epochs=2,
            batch_size=40, lr=0.1, keep_snapshots=False, seed=3)


def test_two_rank_sam_equals_single_process_msam_with_per_rank_batch(tmp_path):
    run_on_two_ranks(tmp_path, "train_run", str(tmp_path / "ddp"), BASE)
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
    run_on_two_ranks(tmp_path, "train_run", str(tmp_path / "ddp"), {**BASE, "sync_perturbation": True,
                                                                    "model_kwargs": {"hidden": [12]}})
    train(TrainConfig(**{**BASE, "model_kwargs": {"hidden": [12]}}), tmp_path / "sam")
    a = load_checkpoint(tmp_path / "ddp").model.state_dict()
    b = load_checkpoint(tmp_path / "sam").model.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k


def test_a_two_rank_run_resumes_on_one_rank(tmp_path):
    config = {**BASE, "epochs": 3}
    part = run_on_two_ranks(tmp_path, "train_run", str(tmp_path / "run"), config, 7)  # stop mid-epoch 2
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
    import subprocess
    import sys
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "sharpscope", "train", "--nproc", "2", "--model", "mlp", "--model-opt",
           "hidden=[16]", "--n-train", "200", "--epochs", "2", "--batch-size", "40", "--no-progress",
           "--no-snapshots", "--out", str(tmp_path / "run")]
    assert subprocess.run(run, env=env, timeout=300, capture_output=True).returncode == 0
    assert load_checkpoint(tmp_path / "run").metadata["world_size"] == 2
    reports = []
    for launcher in ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
                     [sys.executable]):
        out = tmp_path / f"h{len(reports)}.json"
        proc = subprocess.run([*launcher, "-m", "sharpscope", "hessian", str(tmp_path / "run"), "--top-k", "2",
                               "--samples", "100", "--no-progress", "--json", str(out)],
                              env=env, timeout=300, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        reports.append(json.loads(out.read_text()))
    assert _close(reports[0]["eigenvalues"]["eigenvalues"], reports[1]["eigenvalues"]["eigenvalues"])
