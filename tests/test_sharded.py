"""Hessian eigenvalues of a model sharded with FSDP2 ``fully_shard`` (sharpscope.sharded) on 2 CPU
gloo ranks equal the one-process finite-difference result, and the exact Hessian's.

Why the tolerances: every rank evaluates the same batches, so FSDP's reduce-scatter averages two
identical gradients (g + g = 2g, halved: exact) and each product is the one-process product BIT
FOR BIT (asserted below on a vector and on the gradient). What differs is only the order in which
Lanczos adds its float64 inner products (each rank's partial sum, then the all-reduce): relative
differences of ~1e-16 in alpha, beta and the vectors, which can flip the float32 rounding of an
entry of a vector handed to a product (a change of at most u_r = 6e-8 of that entry). 1e-6 of
lambda_max (16 u_r) bounds what that can move an eigenvalue; measured: 3e-16.

Against the exact Hessian (float64 model, torch.autograd.functional.hessian), the finite
differences carry their own error, at most ``error_bound`` * ||H|| per product
(sharpscope.linalg.finite_difference, eq. 3: ~4e-11 here), which moves an eigenvalue by at most
as much (Weyl); the test allows 10x that plus Lanczos' tolerance.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from _ranks import run_on_ranks

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

DEADLINE_S = 120.0  # the ranks of each test finish in ~10 s on a loaded 2-core machine


def _mlp(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3)).to(dtype)


def _batches(dtype: torch.dtype = torch.float32) -> list:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 6, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (50,), generator=g)
    return [(x[i:i + 8], y[i:i + 8]) for i in range(0, 50, 8)]  # 7 uneven batches


def _regression() -> tuple[nn.Module, list]:
    """float64, a 1-row output layer (rank 1 holds none of its rows: an empty shard)."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = torch.randn(30, 1, generator=g, dtype=torch.float64)
    return model, [(x[:16], y[:16]), (x[16:], y[16:])]


def sharded_vs_one_process(spectra: bool = False) -> dict:
    """On each rank: the one-process finite-difference objective on a copy, then the same model
    sharded; products, gradients and eigenvalues of both (rank 0's are returned); with
    ``spectra``, Hutchinson's trace and the SLQ density instead."""
    from sharpscope import hessian as hs
    from sharpscope.objective import Objective
    from sharpscope.sharded import ShardedHessian, shard_model, sharded_density, sharded_eigenvalues, sharded_trace

    model, batches = _mlp(), _batches()
    one = Objective(copy.deepcopy(model), F.cross_entropy, batches, hvp_mode="finite-difference", distributed=False)
    h = ShardedHessian(shard_model(model), F.cross_entropy, batches)
    if spectra:
        trace, trace_1 = sharded_trace(h, n_matvecs=6, seed=2), hs.trace(one, n_matvecs=6, seed=2, method="hutchinson")
        dens, dens_1 = sharded_density(h, n_runs=2, n_steps=6, seed=1), hs.density(one, n_runs=2, n_steps=6, seed=1)
        return {"trace": (trace.trace, trace.stderr, trace.n_hvp), "trace_1": (trace_1.trace, trace_1.stderr,
                                                                              trace_1.n_hvp),
                "density": (dens.nodes, dens.weights, dens.n_hvp), "density_1": (dens_1.nodes, dens_1.weights,
                                                                                dens_1.n_hvp)}
    ref = hs.eigenvalues(one, k=3, tol=1e-6)
    v = torch.linspace(-1, 1, one.n)
    value, grad = h.value_and_grad()
    value_1, grad_1 = one.value_and_grad()
    before = [t.clone() for t in h.local]
    same_hvp = torch.equal(h.hvp(h.layout.take(v)), h.layout.take(one.hvp(v)))
    res = sharded_eigenvalues(h, k=3, tol=1e-6)
    flags = torch.tensor([float(same_hvp), float(torch.equal(grad, h.layout.take(grad_1))),
                          float(all(torch.equal(a, b) for a, b in zip(before, h.local)))])
    dist.all_reduce(flags)  # every rank's shard
    return {"eigenvalues": res.eigenvalues, "reference": ref.eigenvalues, "flags": flags.tolist(),
            "value": (value, value_1), "n": (h.n, one.n), "local_n": h.local_n, "n_hvp": (res.n_hvp, ref.n_hvp),
            "converged": res.converged, "hvp_mode": res.hvp_mode}


def sharded_float64_regression() -> dict:
    from sharpscope.sharded import ShardedHessian, shard_model, sharded_eigenvalues

    model, batches = _regression()
    h = ShardedHessian(shard_model(model), F.mse_loss, batches)
    res = sharded_eigenvalues(h, k=2, which="LA", tol=1e-10)
    low = sharded_eigenvalues(h, k=1, which="SA", tol=1e-10)
    return {"top": res.eigenvalues, "bottom": low.eigenvalues, "bound": h.error_bound, "local_n": h.local_n}


def test_sharded_eigenvalues_on_two_ranks_equal_one_process(tmp_path):
    out = run_on_ranks(tmp_path, sharded_vs_one_process, deadline_s=DEADLINE_S)
    assert out["flags"] == [2.0, 2.0, 2.0]  # products and gradients bit for bit, weights restored, on both ranks
    assert out["value"][0] == out["value"][1]
    assert out["n"][0] == out["n"][1] == 103 and 0 < out["local_n"] < 103
    assert all(out["converged"]) and out["hvp_mode"] == "finite-difference"
    lam, ref = torch.tensor(out["eigenvalues"]), torch.tensor(out["reference"])
    assert torch.allclose(lam, ref, rtol=0, atol=1e-6 * float(ref.abs().max())), (lam, ref)


@pytest.mark.slow  # ~20 s on a loaded 2-core machine
def test_sharded_trace_and_density_on_two_ranks_equal_one_process(tmp_path):
    out = run_on_ranks(tmp_path, sharded_vs_one_process, True, deadline_s=DEADLINE_S)
    # Hutchinson: the same probes, each quadratic form summed over the ranks (float64 rounding)
    assert out["trace"][2] == out["trace_1"][2] == 6
    assert torch.allclose(torch.tensor(out["trace"][:2]), torch.tensor(out["trace_1"][:2]), rtol=1e-9, atol=0)
    # SLQ: the same Rademacher starts; nodes to 1e-6 of lambda_max as the eigenvalues, weights alike
    assert out["density"][2] == out["density_1"][2] == 12
    nodes, nodes_1 = torch.tensor(out["density"][0]), torch.tensor(out["density_1"][0])
    assert torch.allclose(nodes, nodes_1, rtol=0, atol=1e-6 * float(nodes_1.abs().max()))
    assert torch.allclose(torch.tensor(out["density"][1]), torch.tensor(out["density_1"][1]), rtol=0, atol=1e-6)


def test_sharded_eigenvalues_equal_the_exact_hessian(tmp_path):
    out = run_on_ranks(tmp_path, sharded_float64_regression, deadline_s=DEADLINE_S)
    model, batches = _regression()
    params = dict(model.named_parameters())
    names = list(params)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    w = [len(b[0]) / len(x) for b in batches]

    def loss(*flat: torch.Tensor) -> torch.Tensor:
        state = dict(zip(names, flat))
        return sum(wi * F.mse_loss(torch.func.functional_call(model, state, (xb,)), yb)
                   for wi, (xb, yb) in zip(w, batches))

    blocks = torch.autograd.functional.hessian(loss, tuple(p.detach() for p in params.values()))
    sizes = [p.numel() for p in params.values()]
    H = torch.cat([torch.cat([blocks[i][j].reshape(sizes[i], sizes[j]) for j in range(len(sizes))], 1)
                   for i in range(len(sizes))])
    exact = torch.linalg.eigvalsh(H)
    scale = float(exact.abs().max())
    tol = 10 * out["bound"] * scale + 1e-9 * scale
    assert out["local_n"] == 21  # rank 0: 3 of 5 rows of the first layer (3 x 4 + 3), 1 of 1 of the last (5 + 1)
    assert abs(out["top"][0] - float(exact[-1])) <= tol and abs(out["top"][1] - float(exact[-2])) <= tol
    assert abs(out["bottom"][0] - float(exact[0])) <= tol, (out, exact[:3])


def refuse_unsharded_and_different_batches() -> list[str]:
    from sharpscope.errors import ConfigError
    from sharpscope.sharded import ShardedHessian, shard_model

    messages = []
    try:
        ShardedHessian(_mlp(), F.cross_entropy, _batches())
    except ConfigError as err:
        messages.append(str(err))
    batches = _batches()
    if dist.get_rank() == 1:
        batches = batches[::-1]
    try:
        ShardedHessian(shard_model(_mlp()), F.cross_entropy, batches)
    except ConfigError as err:
        messages.append(str(err))
    return messages


def sharded_gpt_vs_one_process() -> dict:
    """A GPT-2-style model (SDPA attention, GELU, layer norms, embeddings) with each block its own
    FSDP unit: products bit for bit and eigenvalues equal to one process (float32)."""
    from _tiny_gpt import TinyGPT, token_batches, token_loss
    from sharpscope import hessian as hs
    from sharpscope.objective import Objective
    from sharpscope.sharded import ShardedHessian, shard_model, sharded_eigenvalues

    model, batches = TinyGPT(), token_batches()
    one = Objective(copy.deepcopy(model), token_loss, batches, hvp_mode="finite-difference", distributed=False)
    ref = hs.eigenvalues(one, k=2, tol=1e-5)
    h = ShardedHessian(shard_model(model, units=list(model.transformer["h"])), token_loss, batches)
    v = torch.linspace(-1, 1, one.n)
    same = torch.tensor([float(torch.equal(h.hvp(h.layout.take(v)), h.layout.take(one.hvp(v))))])
    dist.all_reduce(same)
    res = sharded_eigenvalues(h, k=2, tol=1e-5)
    return {"eigenvalues": res.eigenvalues, "reference": ref.eigenvalues, "same": float(same), "n": h.n}


@pytest.mark.slow  # ~15 s on a loaded 2-core machine
def test_a_sharded_gpt_equals_one_process(tmp_path):
    out = run_on_ranks(tmp_path, sharded_gpt_vs_one_process, deadline_s=DEADLINE_S)
    assert out["same"] == 2.0  # every product bit for bit on both ranks
    lam, ref = torch.tensor(out["eigenvalues"]), torch.tensor(out["reference"])
    assert torch.allclose(lam, ref, rtol=0, atol=1e-6 * float(ref.abs().max())), (lam, ref)


def test_an_unsharded_model_and_different_batches_are_refused(tmp_path):
    messages = run_on_ranks(tmp_path, refuse_unsharded_and_different_batches, deadline_s=DEADLINE_S)
    assert len(messages) == 2
    assert "not sharded" in messages[0] and "fully_shard" in messages[0]
    assert "different batches" in messages[1]


def one_rank_stuck(stuck: int) -> None:
    """Rank ``stuck`` sleeps past the 3 s group timeout before the analysis' first collective."""
    import os
    import time

    from sharpscope.distributed import naming_stuck_ranks
    from sharpscope.sharded import ShardedHessian, shard_model

    os.environ["SHARPSCOPE_DIST_TIMEOUT"] = "3"
    model = shard_model(_mlp())
    with naming_stuck_ranks():
        if dist.get_rank() == stuck:
            time.sleep(30)
        ShardedHessian(model, F.cross_entropy, _batches())


@pytest.mark.slow  # ~20 s: two interpreters, a 3 s timeout and a 3 s monitored barrier
@pytest.mark.parametrize("stuck", [1, 0])
def test_a_stuck_rank_is_named_by_the_one_that_waited(tmp_path, stuck):
    import time
    start = time.monotonic()
    other = 1 - stuck
    with pytest.raises(Exception, match=rf"rank {other} waited more than 3 s .*: rank\(s\) \[{stuck}\] did not arrive"):
        run_on_ranks(tmp_path, one_rank_stuck, stuck, timeout_s=3.0, deadline_s=DEADLINE_S)
    assert time.monotonic() - start < 60


# --- sharpscope hessian --nproc N ----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tanh MLP trained one epoch on 64 synthetic examples (finite differences want smooth
    activations; with ReLU the sharded and one-process products would still agree bit for bit)."""
    from sharpscope.train import TrainConfig, train

    out = tmp_path_factory.mktemp("sharded_run") / "run"
    train(TrainConfig(data="synthetic", model="mlp", model_kwargs={"hidden": [8], "activation": "tanh"}, n_train=64,
                      epochs=1, batch_size=32, keep_snapshots=False), out)
    return out


@pytest.mark.parametrize("extra,fragment", [
    (["--operator", "ggn"], "--operator ggn"),
    (["--per-layer"], "--per-layer"), (["--plot"], "--plot"), (["--params", "last"], "--params"),
    (["--hvp-mode", "reuse-graph"], "--hvp-mode reuse-graph"), (["--top-k", "0"], "--top-k"),
    (["--which", "XX"], "--which"), (["--overlap-with", "{run}"], "--overlap-with")])
def test_hessian_nproc_refuses_what_it_does_not_compute_in_one_line(tiny_run, cli, extra, fragment):
    import time
    start = time.perf_counter()
    code, _, err = cli(["hessian", str(tiny_run), "--nproc", "2", *[a.format(run=tiny_run) for a in extra]])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("sharpscope: error: "), err
    assert fragment in lines[0] and ("--nproc/--shard" in lines[0] or fragment == "--which")
    assert time.perf_counter() - start < 10  # refused in the launching process: no torchrun


def test_hessian_nproc_launches_ranks_that_shard():
    from sharpscope.cli import _launch_plan

    assert _launch_plan(["--threads", "1", "hessian", "run", "--nproc", "2", "-k", "3"]) == (
        2, ["--threads", "1", "hessian", "run", "-k", "3", "--shard"])
    assert _launch_plan(["hessian", "run", "--nproc=4"]) == (4, ["hessian", "run", "--shard"])
    assert _launch_plan(["hessian", "run", "--nproc", "1"]) == (1, ["hessian", "run"])  # one process: no sharding
    assert _launch_plan(["hessian", "run"]) == (1, ["hessian", "run"])


def test_shard_outside_torchrun_is_refused(tiny_run, cli, tmp_path):
    code, _, err = cli(["hessian", str(tiny_run), "--shard", "--samples", "16", "--no-progress", "--json",
                        str(tmp_path / "h.json")])
    assert code == 2 and "--nproc N" in err and err.count("\n") == 1, err


@pytest.mark.slow  # ~20 s: torchrun and two interpreters, then one more process
def test_hessian_nproc_2_equals_one_process_finite_differences(tiny_run, tmp_path):
    """`sharpscope hessian --nproc 2` as a user runs it: the same eigenvalues as one process with
    --hvp-mode finite-difference, to float64 rounding (module docstring)."""
    import json
    import os
    import sys

    from _ranks import run_ranks_command

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["-m", "sharpscope", "hessian", str(tiny_run), "--top-k", "3", "--tol", "1e-6", "--no-progress"]
    reports = {}
    for name, extra in (("sharded", ["--nproc", "2", "--trace", "--trace-matvecs", "6", "--density", "--runs", "1",
                                     "--slq-steps", "5"]),
                        ("one", ["--hvp-mode", "finite-difference"])):
        out = tmp_path / f"{name}.json"
        proc = run_ranks_command([sys.executable, *common, *extra, "--json", str(out)], env=env, timeout=DEADLINE_S)
        assert proc.returncode == 0, proc.stderr[-2000:]
        reports[name] = json.loads(out.read_text())
    sharded, one = reports["sharded"], reports["one"]
    assert sharded["sharded"]["world_size"] == 2 and sharded["hvp_mode"] == one["hvp_mode"] == "finite-difference"
    assert sharded["n_params"] == one["n_params"] and sharded["n_examples"] == one["n_examples"]
    lam, ref = torch.tensor(sharded["eigenvalues"]["eigenvalues"]), torch.tensor(one["eigenvalues"]["eigenvalues"])
    assert all(sharded["eigenvalues"]["converged"])
    assert torch.allclose(lam, ref, rtol=0, atol=1e-6 * float(ref.abs().max())), (lam, ref)
    assert sharded["trace"]["method"] == "hutchinson" and sharded["trace"]["n_hvp"] == 6
    assert sharded["density"]["n_runs"] == 1 and sharded["density"]["n_hvp"] == 5


# --- the GPU path (marked cuda: skipped without a GPU) ---------------------------------------

def sharded_on_gpus() -> dict:
    """float64 on each rank's GPU: the sharded eigenvalues and the one-process ones on the same GPU."""
    from sharpscope import hessian as hs
    from sharpscope.objective import Objective
    from sharpscope.sharded import ShardedHessian, shard_model, sharded_eigenvalues

    device = torch.device("cuda", torch.cuda.current_device())
    model = _mlp(torch.float64).to(device)
    batches = [(x.to(device), y.to(device)) for x, y in _batches(torch.float64)]
    ref = hs.eigenvalues(Objective(copy.deepcopy(model), F.cross_entropy, batches, hvp_mode="finite-difference",
                                   distributed=False), k=3, tol=1e-8)
    h = ShardedHessian(shard_model(model), F.cross_entropy, batches)
    res = sharded_eigenvalues(h, k=3, tol=1e-8)
    return {"eigenvalues": res.eigenvalues, "reference": ref.eigenvalues, "device": str(h.local[0].device),
            "local_n": h.local_n, "n": h.n, "world": dist.get_world_size(), "backend": dist.get_backend()}


@pytest.mark.cuda
def test_sharded_eigenvalues_on_gpus_equal_one_process(tmp_path):
    """NCCL on min(2, GPUs) ranks, one GPU each (one GPU: a world of one, FSDP and the layout on
    CUDA all the same). float64, because GPU kernels may sum in another order on each call
    (atomics): differences of ~1e-16 relative in a gradient, divided by the finite difference's
    step (~1e-5 in float64), move a product by ~1e-11; 1e-8 of lambda_max leaves room."""
    world = min(2, torch.cuda.device_count())
    out = run_on_ranks(tmp_path, sharded_on_gpus, world=world, backend="nccl", deadline_s=300.0)
    assert out["backend"] == "nccl" and out["world"] == world and out["device"].startswith("cuda")
    assert (out["local_n"] < out["n"]) == (world > 1)
    lam, ref = torch.tensor(out["eigenvalues"]), torch.tensor(out["reference"])
    assert torch.allclose(lam, ref, rtol=0, atol=1e-8 * float(ref.abs().max())), (lam, ref)
