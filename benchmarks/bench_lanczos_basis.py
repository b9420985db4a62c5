"""Seconds a low-precision Lanczos basis costs per step at large n, on a synthetic operator.

A diagonal float32 operator with a known spectrum (top 10, 9, 8.5, 8, 7.6 and a bulk spread
evenly over [-1, 5]; Lanczos is invariant under the ordering of the diagonal, so it is not
shuffled) stands in for a Hessian: its product costs one pass over n entries, so what is left of
a step is the basis's work (appending, Gram-Schmidt, restarts). ``lanczos(..., memory_bytes=)``
plans the basis as for a model of ``n`` parameters (default: a 4 GiB budget scaled with n, as
``--memory 4`` plans it for GPT-2 small's 124,439,808). Prints one JSON line: the plan, the
steps and restarts, seconds in total and in products, the rest per step (the basis's work:
appending, Gram-Schmidt, restarts, and the small Rayleigh-Ritz problems), peak RSS (VmHWM)
and the relative errors of the top k against the known eigenvalues. Prefix
``MALLOC_MMAP_THRESHOLD_=65536`` to run it with the allocator settings of bench_memory.py.

    PYTHONPATH=. python benchmarks/bench_lanczos_basis.py --n 124439808 --threads 1
    PYTHONPATH=. python benchmarks/bench_lanczos_basis.py --n 20000000 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

GPT2_SMALL = 124_439_808
TOP = (10.0, 9.0, 8.5, 8.0, 7.6)


def peak_rss_gib() -> float:
    """VmHWM of this process in GiB (Linux /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=GPT2_SMALL, help="operator size (default: GPT-2 small's parameters)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (set before any work)")
    ap.add_argument("--memory-gb", type=float,
                    help="memory budget (default: 4 GiB * n / 124,439,808 and 32 MiB for chunks of rows)")
    ap.add_argument("--basis-dtype", default=None, choices=("float64", "float32", "bfloat16"),
                    help="the basis's dtype (default: the budget's plan)")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--tol", type=float, default=1e-2)
    ap.add_argument("--max-iter", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.n < 1000 or not 1 <= a.k <= len(TOP) or a.threads < 1:
        print("bench_lanczos_basis: need --n >= 1000, 1 <= --k <= 5 and --threads >= 1", file=sys.stderr)
        return 2
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    import torch

    torch.set_num_threads(a.threads)
    from sharpscope.linalg import SymmetricOperator
    from sharpscope.linalg.budget import plan_basis
    from sharpscope.linalg.lanczos import lanczos

    n = a.n
    # 4 GiB scaled with n, plus (below 124 M) room for the fixed-size chunk buffers of rows
    scaled = 4.0 * 2**30 * n / GPT2_SMALL + 32 * 2**20 * max(0.0, 1.0 - n / GPT2_SMALL)
    memory = a.memory_gb * 2**30 if a.memory_gb is not None else scaled
    diag = torch.cat([torch.tensor(TOP, dtype=torch.float32), torch.linspace(-1.0, 5.0, n - len(TOP))])
    spent = {"matvec": 0.0}

    def matvec(v: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = diag * v
        spent["matvec"] += time.perf_counter() - t0
        return out

    op = SymmetricOperator(matvec, n, dtype=torch.float32)
    from sharpscope.linalg.basis import Basis

    rotate, restarts = Basis.rotate, []
    Basis.rotate = lambda self, *args: restarts.append(1) or rotate(self, *args)  # count the thick restarts
    plan = plan_basis(n, a.max_iter or min(n, 300), memory, torch.float32, k=a.k,
                      dtype=None if a.basis_dtype is None else getattr(torch, a.basis_dtype), vectors=False)
    t0 = time.perf_counter()
    res = lanczos(op, k=a.k, which="LA", tol=a.tol, max_iter=a.max_iter, seed=a.seed, vectors=False,
                  memory_bytes=memory, basis_dtype=a.basis_dtype)
    total = time.perf_counter() - t0
    steps = res.n_matvecs
    errors = [abs(float(v) - t) / t for v, t in zip(res.eigenvalues, TOP)]
    print(json.dumps({
        "n": n, "threads": a.threads, "memory_gib": round(memory / 2**30, 3), "tol": a.tol,
        "basis": str(plan.dtype).removeprefix("torch."), "columns": plan.capacity,
        "plan_gib": round(plan.bytes / 2**30, 3),
        "steps": steps, "restarts": len(restarts),
        "converged": res.all_converged, "seconds": round(total, 2), "matvec_seconds": round(spent["matvec"], 2),
        "basis_seconds_per_step": round((total - spent["matvec"]) / max(1, steps), 3),
        "peak_rss_gib": round(peak_rss_gib(), 3),
        "eigenvalues": [float(v) for v in res.eigenvalues], "max_rel_error": max(errors),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
