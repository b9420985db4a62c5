"""Grid points per second of ``sharpscope.landscape.surface`` against a naive loop.

    python benchmarks/bench_surface.py              # 51 x 51 grid, digits CNN and MLP

The naive loop is what loss-landscape scripts do at each grid point: copy
theta_0 + x d_1 + y d_2 into the model's parameters, then evaluate the loss and accuracy
with ``torch.no_grad`` over a ``DataLoader`` (batch 128). A second baseline feeds
pre-batched tensors instead of a DataLoader (the same copy-and-evaluate loop without the
loader's per-example collation). sharpscope evaluates the same grid points on the same
1,438 training examples. Methods alternate on row blocks of the same grid so that
machine noise hits all of them; the figure is points per second over all blocks.
``--points`` limits the run to the first rows of the 51 x 51 grid for a quick check.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from sharpscope.data import load_dataset
from sharpscope.landscape import random_direction, surface
from sharpscope.models import build_model, count_parameters, make_model_spec


def naive(model, directions, xs, ys, batches) -> np.ndarray:
    base = [p.detach().clone() for p in model.parameters()]
    d1 = [directions[0][n] for n, _ in model.named_parameters()]
    d2 = [directions[1][n] for n, _ in model.named_parameters()]
    out = np.empty((len(ys), len(xs)))
    model.eval()
    with torch.no_grad():
        for i, y in enumerate(ys):
            for j, x in enumerate(xs):
                for p, b, u, v in zip(model.parameters(), base, d1, d2):
                    p.copy_(b + float(x) * u + float(y) * v)
                total, correct, count = 0.0, 0, 0
                for xb, yb in batches:
                    o = model(xb)
                    total += F.cross_entropy(o, yb, reduction="sum").item()
                    correct += (o.argmax(1) == yb).sum().item()
                    count += xb.shape[0]
                out[i, j] = total / count
        for p, b in zip(model.parameters(), base):
            p.copy_(b)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=int, default=51)
    ap.add_argument("--rows", type=int, default=None, help="only this many rows of the grid (quick check)")
    ap.add_argument("--block", type=int, default=3, help="rows per alternation block")
    args = ap.parse_args()

    data = load_dataset("digits")
    x, y = data.x_train, data.y_train
    loader = DataLoader(TensorDataset(x, y), batch_size=128)
    tensors = [(x[i:i + 128], y[i:i + 128]) for i in range(0, len(x), 128)]
    xs = np.linspace(-1, 1, args.grid)
    ys_all = np.linspace(-1, 1, args.grid)[: args.rows or args.grid]
    print(f"{args.grid} x {len(ys_all)} grid points, {len(x)} digits, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for name, kwargs in (("cnn", {}), ("mlp", {"hidden": [128, 128]})):
        torch.manual_seed(0)
        model = build_model(make_model_spec(name, data.input_shape, data.num_classes, **kwargs))
        directions = [random_direction(model, seed=0), random_direction(model, seed=1)]
        methods = {
            "naive loop, DataLoader(128)": lambda ys: naive(model, directions, xs, ys, loader),
            "naive loop, tensors (128)": lambda ys: naive(model, directions, xs, ys, tensors),
            "sharpscope surface": lambda ys: surface(model, F.cross_entropy, tensors, directions, xs, ys).loss,
        }
        seconds = dict.fromkeys(methods, 0.0)
        values = {k: [] for k in methods}
        for k in methods:  # warm-up
            methods[k](ys_all[:1])
        for r, lo in enumerate(range(0, len(ys_all), args.block)):
            rows = ys_all[lo:lo + args.block]
            order = list(methods)[r % 3:] + list(methods)[:r % 3]
            for k in order:
                t0 = time.perf_counter()
                values[k].append(methods[k](rows))
                seconds[k] += time.perf_counter() - t0
        n = len(xs) * len(ys_all)
        ref = np.concatenate(values["naive loop, tensors (128)"])
        print(f"\n{name} ({count_parameters(model):,} parameters)")
        print(f"{'method':<30}{'points/s':>10}{'speed-up':>10}{'max |diff|':>12}")
        base = n / seconds["naive loop, DataLoader(128)"]
        for k in methods:
            pps = n / seconds[k]
            diff = np.abs(np.concatenate(values[k]) - ref).max()
            print(f"{k:<30}{pps:>10.1f}{pps / base:>9.2f}x{diff:>12.2e}")
        print(f"sharpscope / naive tensors: {seconds['naive loop, tensors (128)'] / seconds['sharpscope surface']:.2f}x")


if __name__ == "__main__":
    main()
