"""How sharpscope's cost grows with the model and the data (CIFAR-shaped inputs, 3x32x32).

For each model (the CNN, ResNet-20, ResNet-56 and WRN-16-4, 10 classes, synthetic images:
timing does not depend on the pixels) this measures, in a fresh process per model:

- gradient: one full pass of ``Objective.grad`` over n examples (batches of 256), for every n
  of ``--sizes`` (model growth at the smallest n, data growth over all n for ``--grow``);
- HVP / gradient: one Hessian-vector product against one gradient at the smallest n
  (forward-over-reverse, the mode used beyond 4,096 examples);
- Lanczos top-5: ``hessian.eigenvalues(k=5, tol=1e-3)`` at the smallest n, for the models of
  ``--lanczos`` (default the CNN; the others: its HVP count times their HVP time estimates it);
- SAM / SGD and m-SAM (m = 16) / SGD: one training step on a batch of 128 (median of 3);
- surface: loss evaluations per second over the smallest n (``landscape.evaluate_points``);
- peak memory: the measuring process's peak resident set (``ru_maxrss``), torch and the
  interpreter included (an idle process with torch imported is printed for reference).

Then the growth exponents: the least-squares slope of log(gradient time) against
log(parameters) over the models at the smallest n, and against log(examples) per model of
``--grow``. Budget: about 14.5 minutes on 2 CPU cores with the defaults (18.4 with
``--lanczos cnn,resnet20``, which adds 4 minutes of ResNet-20 Lanczos).

    python benchmarks/bench_scale.py --threads 2 --out benchmarks/results/scale.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

MODELS = ("cnn", "resnet20", "resnet56", "wrn16-4")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def _median_time(fn, repeats: int, device: str = "cpu") -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def worker(name: str, sizes: list[int], lanczos: bool, threads: int, device: str = "cpu") -> dict:
    """Every measurement of one model (runs in its own process)."""
    import resource

    import torch
    import torch.nn.functional as F

    from sharpscope import hessian
    from sharpscope.landscape.surface import evaluate_points
    from sharpscope.models import build_model
    from sharpscope.objective import Objective
    from sharpscope.optim import SAM, sam_step

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model({"name": name, "input_shape": [3, 32, 32], "num_classes": 10}).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(0)

    def data(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x = torch.randn(n, 3, 32, 32, generator=gen).to(device)
        y = torch.randint(0, 10, (n,), generator=gen).to(device)
        return [(x[i:i + 256], y[i:i + 256]) for i in range(0, n, 256)]

    out: dict = {"model": name, "parameters": n_params, "threads": threads, "device": device, "gradient_s": {}}
    for n in sizes:
        obj = Objective(model, F.cross_entropy, data(n), hvp_mode="forward-over-reverse")
        obj.grad()  # warm-up (allocator, kernels)
        out["gradient_s"][n] = _median_time(obj.grad, 1 if n > sizes[0] else 2, device)
        if n == sizes[0]:
            v = torch.randn(obj.n, generator=gen).to(device)
            obj.hvp(v)
            out["hvp_s"] = _median_time(lambda: obj.hvp(v), 2, device)
            if lanczos:
                t0 = time.perf_counter()
                res = hessian.eigenvalues(obj, k=5, tol=1e-3, seed=0)
                out["lanczos_top5_s"] = time.perf_counter() - t0
                out["lanczos_hvps"] = res.n_hvp
                out["lanczos_converged"] = bool(all(res.converged))
            params = {k: p.detach() for k, p in model.named_parameters()}
            batches = data(n)
            evaluate_points(model, F.cross_entropy, batches, lambda k: (params, None), 1, chunk_size=256)
            t = _median_time(lambda: evaluate_points(model, F.cross_entropy, batches, lambda k: (params, None), 2,
                                                     chunk_size=256), 2, device)
            out["surface_points_per_s"] = 2 / t
    x, y = data(128)[0]
    step_times = {}
    for kind, m in (("sgd", None), ("sam", None), ("msam", 16)):
        torch.manual_seed(0)
        net = build_model({"name": name, "input_shape": [3, 32, 32], "num_classes": 10}).to(device)
        opt = (torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9) if kind == "sgd"
               else SAM(net.parameters(), torch.optim.SGD, rho=0.05, lr=0.01, momentum=0.9))
        sam_step(net, F.cross_entropy, x, y, opt, m=m)  # warm-up
        step_times[kind] = _median_time(lambda: sam_step(net, F.cross_entropy, x, y, opt, m=m), 3, device)
    out["step_s"] = step_times
    out["sam_over_sgd"] = step_times["sam"] / step_times["sgd"]
    out["msam_over_sgd"] = step_times["msam"] / step_times["sgd"]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.startswith("cuda"):
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(v) for v in xs], [math.log(v) for v in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def _idle_rss(threads: int) -> float:
    code = ("import resource, torch, sharpscope.objective; torch.set_num_threads(%d); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)" % threads)
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--sizes", default="1000,4000,16000", help="examples; model growth at the first")
    parser.add_argument("--grow", default="cnn,resnet20", help="models timed at every size")
    parser.add_argument("--lanczos", default="cnn", help="models whose Lanczos top-5 is run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: available cores)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (times then synchronize the GPU)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.threads is None:
        from sharpscope.cpu import available_cores
        args.threads = available_cores()
    if args.worker:
        grow = args.worker in args.grow.split(",")
        print(json.dumps(worker(args.worker, sizes if grow else sizes[:1], args.worker in args.lanczos.split(","),
                                args.threads, args.device)))
        return
    import torch
    where = (torch.cuda.get_device_name(0) if args.device.startswith("cuda") else
             f"CPU ({os.cpu_count()} logical CPUs)")
    print(f"sharpscope bench_scale: torch {torch.__version__}, {args.threads} threads, {where}; synthetic "
          "3x32x32 inputs, batches of 256")
    results = []
    start = time.perf_counter()
    for name in args.models.split(","):
        cmd = [sys.executable, __file__, "--worker", name, "--sizes", args.sizes, "--grow", args.grow,
               "--lanczos", args.lanczos, "--threads", str(args.threads), "--device", args.device]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["gradient_s"] = {int(k): v for k, v in result["gradient_s"].items()}  # JSON made them strings
        results.append(result)
        print(f"  {name}: done ({time.perf_counter() - start:.0f} s so far)", flush=True)
    n0 = sizes[0]
    print(f"\n{'model':<10} {'params':>9} {'grad s':>8} {'HVP/grad':>9} {'Lanczos top-5':>15} {'SAM/SGD':>8} "
          f"{'mSAM/SGD':>9} {'surf pts/s':>10} {'peak RSS MB':>12}   (n = {n0})")
    for r in results:
        lz = (f"{r['lanczos_top5_s']:.1f}s/{r['lanczos_hvps']}hvp" + ("" if r["lanczos_converged"] else "*")
              if "lanczos_top5_s" in r else "-")
        print(f"{r['model']:<10} {r['parameters']:>9,} {r['gradient_s'][n0]:>8.2f} "
              f"{r['hvp_s'] / r['gradient_s'][n0]:>9.2f} {lz:>15} {r['sam_over_sgd']:>8.2f} "
              f"{r['msam_over_sgd']:>9.2f} {r['surface_points_per_s']:>10.2f} {r['peak_rss_mb']:>12.0f}"
              + (f"  GPU peak {r['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in r else ""))
    print(f"(idle process with torch imported: {_idle_rss(args.threads):.0f} MB peak RSS; * = not converged)")
    grads = [r["gradient_s"][n0] for r in results]
    if len(results) > 1:
        print(f"\ngradient time ~ parameters^{_slope([r['parameters'] for r in results], grads):.2f} "
              f"(n = {n0}, over {len(results)} models; convolutions make FLOPs, not parameters, the driver)")
    for r in results:
        if len(r["gradient_s"]) > 1:
            ns = sorted(r["gradient_s"])
            times = ", ".join(f"{n}: {r['gradient_s'][n]:.2f}s" for n in ns)
            print(f"{r['model']}: gradient time ~ examples^{_slope(ns, [r['gradient_s'][n] for n in ns]):.2f} "
                  f"({times})")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump({"threads": args.threads, "sizes": sizes, "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
