"""sharpscope's Hessian engine side by side with PyHessian 0.1, in one process.

    python benchmarks/bench_hessian.py            # digits CNN (85k parameters), 1,024 examples

Setting: the 85,066-parameter digits CNN trained for a few epochs with SGD (in this
process, seeded), its loss on 1,024 training examples. Two data modes:

- single batch: the 1,024 examples as one batch (PyHessian ``data=``);
- multi-batch: 8 batches of 128 (PyHessian ``dataloader=``; sharpscope averages over
  batches weighted by size in both of its HVP modes).

Printed, per mode:
1. the cost of one HVP in units of one gradient (``loss.backward()`` on the same data),
   for sharpscope's two HVP modes and PyHessian's product;
2. top-5 eigenvalues: HVPs used, wall time and the worst relative error against a tight
   reference (Lanczos in float64 on a float64 copy of the model, residual tolerance 1e-10),
   sharpscope (``eigenvalues(k=5, tol=1e-4)``) vs PyHessian (``eigenvalues(top_n=5,
   tol=1e-3)``, its documented defaults apart from top_n), medians over ``--repeats`` seeds.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

import sharpscope.hessian as sh
from sharpscope import linalg
from sharpscope.data import load_dataset
from sharpscope.models import build_model, count_parameters, make_model_spec
from sharpscope.objective import Objective


def trained_cnn(epochs: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model(make_model_spec("cnn", data.input_shape, data.num_classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(data.x_train.shape[0], generator=g)
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
    model.eval()
    return model, data.x_train[:1024], data.y_train[:1024]


def median_time(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gradient_time(model, batches) -> float:
    def run():
        model.zero_grad()
        for x, y in batches:
            (F.cross_entropy(model(x), y) * (x.shape[0] / 1024)).backward()
    return median_time(run)


def reference_eigenvalues(model, batches, k: int) -> list[float]:
    model64 = copy.deepcopy(model).double()
    batches64 = [(x.double(), y) for x, y in batches]
    obj = Objective(model64, F.cross_entropy, batches64, hvp_mode="forward-over-reverse")
    res = linalg.lanczos(obj.operator(), k=k, which="LA", tol=1e-10, max_iter=300, seed=123)
    assert bool(res.converged.all()), "reference did not converge"
    return [float(v) for v in res.eigenvalues]


def rel_error(values, reference) -> float:
    values = sorted(values, reverse=True)
    return max(abs(a - b) / abs(b) for a, b in zip(values, reference))


def pyhessian_module():
    """The module pyhessian.hessian (the package's __init__ shadows it with the class)."""
    import importlib
    return importlib.import_module("pyhessian.hessian")


def pyhessian_run(model, batches, single: bool, seed: int):
    ph = pyhessian_module()
    counter = {"hvp": 0}
    original_hvp = ph.hessian_vector_product
    original_loader = ph.hessian.dataloader_hv_product

    def counted_hvp(*args, **kwargs):
        counter["hvp"] += 1
        return original_hvp(*args, **kwargs)

    def counted_loader(self, v):
        counter["hvp"] += 1
        return original_loader(self, v)

    ph.hessian_vector_product = counted_hvp
    ph.hessian.dataloader_hv_product = counted_loader
    try:
        m = copy.deepcopy(model)
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        if single:
            engine = ph.hessian(m, F.cross_entropy, data=batches[0], cuda=False)
        else:
            engine = ph.hessian(m, F.cross_entropy, dataloader=batches, cuda=False)
        values, _ = engine.eigenvalues(top_n=5, tol=1e-3, maxIter=100)
        wall = time.perf_counter() - t0
    finally:
        ph.hessian_vector_product = original_hvp
        ph.hessian.dataloader_hv_product = original_loader
    return values, counter["hvp"], wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5, help="SGD epochs before measuring")
    ap.add_argument("--repeats", type=int, default=3, help="seeds per method")
    ap.add_argument("--tol", type=float, default=1e-4, help="sharpscope's relative residual tolerance")
    args = ap.parse_args()

    model, x, y = trained_cnn(args.epochs)
    print(f"digits CNN, {count_parameters(model):,} parameters, {x.shape[0]} examples, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.repeats} seeds per method")
    for label, batches in (("single batch (1 x 1024)", [(x, y)]),
                           ("multi-batch (8 x 128)", [(x[i:i + 128], y[i:i + 128]) for i in range(0, 1024, 128)])):
        single = len(batches) == 1
        print(f"\n== {label} ==")
        t_grad = gradient_time(model, batches)
        v = torch.randn(count_parameters(model))
        rows = [("gradient (loss.backward)", t_grad)]
        for mode in ("forward-over-reverse", "reuse-graph"):
            obj = Objective(model, F.cross_entropy, batches, hvp_mode=mode)
            obj.hvp(v)  # builds the graph once in reuse mode
            rows.append((f"sharpscope HVP, {mode}", median_time(lambda: obj.hvp(v))))
        ph = pyhessian_module()
        m = copy.deepcopy(model)
        engine = ph.hessian(m, F.cross_entropy, data=batches[0], cuda=False) if single else \
            ph.hessian(m, F.cross_entropy, dataloader=batches, cuda=False)
        pv = [torch.randn_like(p) for p in engine.params]
        if single:
            rows.append(("PyHessian HVP", median_time(lambda: ph.hessian_vector_product(engine.gradsH, engine.params, pv))))
        else:
            rows.append(("PyHessian HVP", median_time(lambda: engine.dataloader_hv_product(pv))))
        print(f"{'product':<36}{'ms':>9}{'/ gradient':>12}")
        for name, t in rows:
            print(f"{name:<36}{1e3 * t:>9.1f}{t / t_grad:>11.2f}x")

        reference = reference_eigenvalues(model, batches, 5)
        ours, theirs = [], []
        for seed in range(args.repeats):
            res = sh.eigenvalues(model, F.cross_entropy, batches, k=5, tol=args.tol, seed=seed)
            ours.append((rel_error(res.eigenvalues, reference), res.n_hvp, res.wall_time, all(res.converged)))
            values, n_hvp, wall = pyhessian_run(model, batches, single, seed)
            theirs.append((rel_error(values, reference), n_hvp, wall, True))
        print(f"reference top-5 (float64): {', '.join(f'{r:.6g}' for r in reference)}")
        print(f"{'top-5 eigenvalues':<26}{'HVPs':>7}{'seconds':>10}{'max rel. error':>16}")
        med = {}
        for name, runs in (("sharpscope", ours), ("PyHessian", theirs)):
            err = statistics.median(r[0] for r in runs)
            hvp = statistics.median(r[1] for r in runs)
            wall = statistics.median(r[2] for r in runs)
            med[name] = (err, hvp, wall)
            print(f"{name:<26}{hvp:>7.0f}{wall:>10.2f}{err:>16.2e}")
        (e1, h1, w1), (e2, h2, w2) = med["sharpscope"], med["PyHessian"]
        print(f"sharpscope / PyHessian: HVPs {h1 / h2:.2f}x, wall time {w1 / w2:.2f}x, "
              f"error {e1 / e2:.1e}x (PyHessian is {e2 / max(e1, 1e-300):.0f}x less accurate)")


if __name__ == "__main__":
    main()
