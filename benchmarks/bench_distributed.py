"""Wall-time scaling of Hessian-vector products and loss surfaces on 1 vs 2 ranks.

    python benchmarks/bench_distributed.py

The 85k-parameter digits CNN, its loss over 1,024 training examples in 8 batches of 128.
Measured in this one script, one configuration after another:

- 1 process with 2 intra-op threads (what a plain run does on 2 cores),
- 1 process with 1 thread,
- 2 ranks (torch.distributed, gloo, spawned with torch.multiprocessing), 1 thread each:
  the Objective gives each rank half of the batches and all-reduces the product; the
  surface gives each rank half of the grid points and all-reduces the values.

Reported: median seconds per HVP (both HVP modes) and seconds for a 21 x 21 surface, and
the 2-rank speed-up against each single-process configuration.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from sharpscope.data import load_dataset
from sharpscope.distributed import finish
from sharpscope.landscape import random_direction, surface
from sharpscope.models import build_model, make_model_spec
from sharpscope.objective import Objective


def measure(repeats: int = 7) -> dict[str, float]:
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model(make_model_spec("cnn", data.input_shape, data.num_classes))
    x, y = data.x_train[:1024], data.y_train[:1024]
    batches = [(x[i:i + 128], y[i:i + 128]) for i in range(0, 1024, 128)]
    out: dict[str, float] = {}
    for mode in ("forward-over-reverse", "reuse-graph"):
        obj = Objective(model, F.cross_entropy, batches, hvp_mode=mode)
        v = torch.randn(obj.n, generator=torch.Generator().manual_seed(0))
        obj.hvp(v)  # warm-up (and the graph, in reuse mode)
        times = []
        for _ in range(repeats):
            if dist.is_initialized():
                dist.barrier()
            t0 = time.perf_counter()
            obj.hvp(v)
            times.append(time.perf_counter() - t0)
        out[f"hvp {mode}"] = statistics.median(times)
    dirs = [random_direction(model, seed=0), random_direction(model, seed=1)]
    grid = np.linspace(-1, 1, 21)
    surface(model, F.cross_entropy, batches, dirs, grid[:2], grid[:1])  # warm-up
    if dist.is_initialized():
        dist.barrier()
    t0 = time.perf_counter()
    surface(model, F.cross_entropy, batches, dirs, grid, grid)
    out["surface 21x21"] = time.perf_counter() - t0
    return out


def _worker(rank: int, world: int, init_file: str, result_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = measure()
        if rank == 0:
            Path(result_file).write_text(json.dumps(result))
    except BaseException:
        finish(ok=False)  # leave without the barrier: the other rank may never reach it
        raise
    finish()  # barrier, then leave: no rank tears gloo down under another


def main() -> None:
    rows = {}
    for threads in (2, 1):
        torch.set_num_threads(threads)
        rows[f"1 process, {threads} threads"] = measure()
    with tempfile.TemporaryDirectory() as tmp:
        result_file = str(Path(tmp) / "result.json")
        mp.spawn(_worker, args=(2, str(Path(tmp) / "init"), result_file), nprocs=2, join=True)
        rows["2 ranks, 1 thread each"] = json.loads(Path(result_file).read_text())
    print(f"digits CNN (85,066 parameters), 1,024 examples in 8 batches, torch {torch.__version__}, "
          f"{sys.platform}, gloo")
    keys = list(next(iter(rows.values())))
    print(f"{'configuration':<28}" + "".join(f"{k:>28}" for k in keys))
    for name, r in rows.items():
        print(f"{name:<28}" + "".join(f"{r[k]:>27.3f}s" for k in keys))
    two = rows["2 ranks, 1 thread each"]
    for base in ("1 process, 2 threads", "1 process, 1 threads"):
        print(f"speed-up of 2 ranks over {base:<22}" + "".join(f"{rows[base][k] / two[k]:>27.2f}x" for k in keys))


if __name__ == "__main__":
    main()
