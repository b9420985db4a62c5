"""How far torch's float32 CPU reductions drift over long vectors, against ``sharpscope.reductions``.

    python benchmarks/bench_reductions.py --threads 1        # ~1 min, 2 GB

For Gaussian vectors of n entries (seed 0), the relative error against float64 of: torch's
``vector_norm`` (also ``Tensor.norm``), the column norms ``vector_norm(X, dim=0)`` of an (n, 2)
matrix, the dot product ``v @ v``, and sharpscope's :func:`~sharpscope.reductions.sum_of_squares`
(float32 norms of 256-entry blocks summed in float64) and
:func:`~sharpscope.reductions.large_inner`; and the seconds of the two norms at the largest n.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from sharpscope.reductions import large_inner, sum_of_squares


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", default="1000000,10000000,50000000,124439808")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    print("| n | vector_norm | column norm (dim=0) | dot | sum_of_squares | large_inner |\n|---:|---:|---:|---:|---:|---:|")
    for n in (int(x) for x in args.sizes.split(",")):
        v = torch.randn(n, generator=torch.Generator().manual_seed(0))
        exact_sq = float(v.double().square().sum())
        exact = math.sqrt(exact_sq)
        column = float(torch.linalg.vector_norm(torch.stack([v, v], dim=1), dim=0)[0])
        row = [float(torch.linalg.vector_norm(v)) / exact - 1, column / exact - 1, float(v @ v) / exact_sq - 1,
               math.sqrt(float(sum_of_squares(v))) / exact - 1, large_inner(v, v) / exact_sq - 1]
        print(f"| {n:,} | " + " | ".join(f"{e:.1e}" for e in row) + " |")
    t0 = time.perf_counter()
    torch.linalg.vector_norm(v)
    t1 = time.perf_counter()
    sum_of_squares(v)
    t2 = time.perf_counter()
    print(f"at n = {n:,}: vector_norm {t1 - t0:.3f} s, sum_of_squares {t2 - t1:.3f} s")


if __name__ == "__main__":
    main()
