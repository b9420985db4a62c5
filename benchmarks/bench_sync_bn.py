"""What --sync-bn costs: data-parallel SAM steps with per-rank batch norm vs GlobalBatchNorm.

    python benchmarks/bench_sync_bn.py                         # digits CNN with BN, batch 128
    python benchmarks/bench_sync_bn.py --model resnet20 --data cifar-shaped --batch-size 64   # random 3x32x32

2 ranks (gloo, spawned with torch.multiprocessing, 1 thread each) hold the same model twice:
one with its BatchNorm layers as they are (statistics of each rank's slice), one converted
with ``convert_to_global_bn`` (statistics of the global batch: two all-reduces per BN layer
per forward, and two in the backward). Both take ``--sync-perturbation`` SAM steps
(``sam_step(sync_first_pass=True)``, what ``train --nproc 2 --sync-perturbation [--sync-bn]``
runs) on the same batches, in alternating rounds, so the ratio is measured side by side in the
same processes. Reported: median seconds per step of each, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from sharpscope import SAM, sam_step
from sharpscope.data import load_dataset
from sharpscope.distributed import finish
from sharpscope.models import build_model, count_parameters, make_model_spec
from sharpscope.optim import bn_modules, convert_to_global_bn


def _ddp(model: torch.nn.Module) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return DistributedDataParallel(model, broadcast_buffers=False)


def _worker(rank: int, init: str, args: dict, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    b = args["batch_size"]
    if args["data"] == "cifar-shaped":  # random images: the cost, not the learning, is measured
        g = torch.Generator().manual_seed(0)
        x, y, shape, classes = (torch.randn(b * args["steps"], 3, 32, 32, generator=g),
                                torch.randint(0, 10, (b * args["steps"],), generator=g), (3, 32, 32), 10)
    else:
        data = load_dataset(args["data"])
        x, y = data.x_train[: b * args["steps"]], data.y_train[: b * args["steps"]]
        shape, classes = data.input_shape, data.num_classes
    spec = make_model_spec(args["model"], shape, classes, bn=True)
    torch.manual_seed(0)
    models = {"per-rank BN": build_model(spec)}
    torch.manual_seed(0)
    models["global BN (--sync-bn)"] = convert_to_global_bn(build_model(spec))
    runs = {name: (_ddp(m), SAM(m.parameters(), torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9))
            for name, m in models.items()}
    part = torch.tensor_split(torch.arange(b), 2)[rank]
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args["rounds"] + 1):  # round 0 warms up
        for name in (list(runs) if r % 2 else list(reversed(runs))):
            ddp, opt = runs[name]
            dist.barrier()
            start = time.perf_counter()
            for s in range(args["steps"]):
                xb, yb = x[s * b:(s + 1) * b][part], y[s * b:(s + 1) * b][part]
                sam_step(ddp, F.cross_entropy, xb, yb, opt, loss_scale=len(part) * 2 / b, sync_first_pass=True)
            dist.barrier()
            if r:
                times[name].append((time.perf_counter() - start) / args["steps"])
    if rank == 0:
        result = {"parameters": count_parameters(models["per-rank BN"]), "bn_layers": len(bn_modules(models[
            "per-rank BN"])), **{name: statistics.median(t) for name, t in times.items()}}
        Path(out).write_text(json.dumps(result))
    finish()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=7)
    args = vars(ap.parse_args())
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        mp.spawn(_worker, args=(str(Path(tmp) / "init"), args, out), nprocs=2, join=True)
        result = json.loads(Path(out).read_text())
    plain, synced = result["per-rank BN"], result["global BN (--sync-bn)"]
    print(f"{args['model']} ({result['parameters']:,} parameters, {result['bn_layers']} BN layers), {args['data']}, "
          f"global batch {args['batch_size']}, 2 gloo ranks x 1 thread, SAM with --sync-perturbation; "
          f"median of {args['rounds']} rounds of {args['steps']} steps")
    print(f"  per-rank BN            {plain * 1e3:8.2f} ms/step")
    print(f"  global BN (--sync-bn)  {synced * 1e3:8.2f} ms/step   {synced / plain:.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
