"""sharpscope's curvature estimates side by side with hessian-eigenthings 1.0 (alpha) and
curvlinops 3, in one process.

    pip install --no-deps "hessian-eigenthings==1.0.0a5"     # benchmark only, never a dependency
    pip install --no-deps "curvlinops-for-pytorch==3.0.1" backpack-for-pytorch einops opt-einsum \
        einconv linear_operator jaxtyping tqdm                # --no-deps: its torchvision pin would
                                                              # replace the CPU torch with a CUDA build
    python benchmarks/bench_peers_curvature.py --threads 2

curvlinops has no eigensolver of its own: its operator goes to ``scipy.sparse.linalg.eigsh``
(ARPACK, ``tol=1e-4``) through ``to_scipy()``, as its documentation does; its trace is
``hutchpp_trace`` and its density ``lanczos_approximate_spectrum`` (Papyan's smoothed
Lanczos, 10 repeats of 80 steps), whose W1 distance is taken from the gridded density.

Part 1, exact answers. A digits MLP (64-32-10, tanh, 2,410 parameters, trained a few epochs
with SGD in this process) on 1,000 training examples given as a DataLoader with batches of
128 (the last holds 104, as DataLoader(drop_last=False) gives). The exact Hessian (float64,
column by column) gives the exact eigenvalues and trace. For each tool: the top 5, lambda_min,
the trace (Hutch++, 99 products) and the spectral density (SLQ, 10 runs x 80 steps, compared
with the exact spectrum by the Wasserstein-1 distance between the quadrature measure and
the eigenvalue distribution), with products, wall time and error. hessian-eigenthings runs
with its defaults (Lanczos ``max_iter = 2k``) and with ``max_iter = 100``.

Its products are also checked against the exact H v: hessian-eigenthings averages the
per-batch products without weights (``HessianOperator._matvec_full`` divides the sum by the
number of batches), so with a smaller last batch it computes the Hessian of another loss;
the same loader with equal batches (8 x 125) separates that from its algorithms.

Part 2, speed. The 85,066-parameter digits CNN on 1,024 examples in 8 batches of 128: one
product in units of one gradient, and the top-5 eigenvalues (HVPs, wall time, worst relative
error against a float64 reference) for both tools.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import sharpscope.hessian as sh
from sharpscope.data import load_dataset
from sharpscope.models import build_model, make_model_spec
from sharpscope.objective import Objective


def _train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> torch.nn.Module:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            F.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    return model.eval()


class Counted:
    """hessian-eigenthings' operator with its products counted."""

    def __init__(self, op):
        self.op, self.n = op, 0

    def __getattr__(self, name):
        return getattr(self.op, name)

    def matvec(self, v):
        self.n += 1
        return self.op.matvec(v)


def _w1(nodes: np.ndarray, weights: np.ndarray, exact: np.ndarray) -> float:
    """Wasserstein-1 distance between sum_j w_j delta(nodes_j) (normalized) and the uniform
    measure on the exact eigenvalues: the integral of |F_a - F_b| over the line."""
    order = np.argsort(nodes)
    a_x, a_w = nodes[order], weights[order] / weights.sum()
    b_x = np.sort(exact)
    xs = np.union1d(a_x, b_x)
    fa = np.searchsorted(a_x, xs, side="right")
    fa = np.concatenate([[0.0], np.cumsum(a_w)])[fa]
    fb = np.searchsorted(b_x, xs, side="right") / len(b_x)
    return float(np.sum(np.abs(fa - fb)[:-1] * np.diff(xs)))


def _w1_grid(grid: np.ndarray, density: np.ndarray, exact: np.ndarray) -> float:
    """Wasserstein-1 distance between a density on a regular grid and the exact spectrum."""
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(grid))])
    cdf = cdf / cdf[-1]
    xs = np.union1d(grid, np.sort(exact))
    fa = np.interp(xs, grid, cdf, left=0.0, right=1.0)
    fb = np.searchsorted(np.sort(exact), xs, side="right") / len(exact)
    return float(np.sum(np.abs(fa - fb)[:-1] * np.diff(xs)))


def _curvlinops_rows(model: torch.nn.Module, data, top5, lmin, tr, evals, rel) -> list[tuple]:
    """curvlinops 3: eigsh on its operator, hutchpp_trace, lanczos_approximate_spectrum."""
    import curvlinops
    from scipy.sparse.linalg import LinearOperator, eigsh

    params = [p for p in model.parameters() if p.requires_grad]
    rows = []

    def op():
        return curvlinops.HessianLinearOperator(model, torch.nn.CrossEntropyLoss(), params, data)

    def counted(A):
        sci = A.to_scipy()
        calls = [0]

        def mv(v):
            calls[0] += 1 if v.ndim == 1 or v.shape[1] == 1 else v.shape[1]
            return sci @ v
        return LinearOperator(sci.shape, matvec=mv, matmat=mv, dtype=sci.dtype), calls

    for what, which, k, want in (("top-5", "LA", 5, top5), ("lambda_min", "SA", 1, [lmin])):
        A, calls = counted(op())
        t0 = time.perf_counter()
        vals = eigsh(A, k=k, which=which, tol=1e-4, return_eigenvectors=False)
        vals = sorted(vals.tolist(), reverse=(which == "LA"))
        rows.append(("curvlinops (scipy eigsh)", what, calls[0], time.perf_counter() - t0, rel(vals, want)))
    torch.manual_seed(0)
    A = op()
    t0 = time.perf_counter()
    est = float(curvlinops.hutchpp_trace(A, num_matvecs=99))
    rows.append(("curvlinops", "trace (Hutch++ 99)", 99, time.perf_counter() - t0, abs(est - tr) / abs(tr)))
    torch.manual_seed(0)
    t0 = time.perf_counter()
    grid, density = curvlinops.lanczos_approximate_spectrum(op(), ncv=80, num_repeats=10)
    rows.append(("curvlinops", "density W1", "800+", time.perf_counter() - t0,  # + eigsh for the boundaries
                 _w1_grid(np.asarray(grid), np.asarray(density), evals)))
    return rows


def part1(x: torch.Tensor, y: torch.Tensor) -> None:
    import hessian_eigenthings as he

    torch.manual_seed(0)
    spec = make_model_spec("mlp", (1, 8, 8), 10, hidden=[32], activation="tanh")
    model = _train(build_model(spec), x[:1000], y[:1000], epochs=5)
    x, y = x[:1000], y[:1000]
    loader = DataLoader(TensorDataset(x, y), batch_size=128)
    equal = DataLoader(TensorDataset(x, y), batch_size=125)
    m64 = copy.deepcopy(model).double()
    exact_obj = Objective(m64, F.cross_entropy, [(x.double(), y)])
    eye = torch.eye(exact_obj.n, dtype=torch.float64)
    H = torch.stack([exact_obj.hvp(eye[:, i]) for i in range(exact_obj.n)], 1)
    H = (H + H.T) / 2
    evals = torch.linalg.eigvalsh(H).numpy()
    top5, lmin, tr = evals[::-1][:5], evals[0], float(evals.sum())
    print(f"Part 1: digits MLP, {exact_obj.n:,} parameters, 1,000 examples in batches of 128 (last 104); "
          f"exact top-5 {np.round(top5, 4).tolist()}, lambda_min {lmin:.4g}, trace {tr:.4g}")

    def he_op(data):
        return Counted(he.HessianOperator(model, data, he.supervised_loss(F.cross_entropy)))

    v = torch.randn(exact_obj.n, generator=torch.Generator().manual_seed(0))
    hv = (H @ v.double()).float()
    for name, data in (("batches of 128 (last 104)", loader), ("equal batches of 125", equal)):
        err = float((he_op(data).matvec(v) - hv).norm() / hv.norm())
        ours = float((Objective(model, F.cross_entropy, data).hvp(v) - hv).norm() / hv.norm())
        print(f"  one product, relative error against H v, {name}: hessian-eigenthings {err:.2e}, "
              f"sharpscope {ours:.2e}")

    rows = []

    def rel(a, b):
        return float(np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.abs(np.asarray(b))))

    for label, data in (("hessian-eigenthings (its defaults)", None), ("hessian-eigenthings max_iter=100", 100)):
        op = he_op(equal)
        t0 = time.perf_counter()
        res = he.lanczos(op, k=5, which="LA", seed=0, **({"max_iter": data} if data else {}))
        rows.append((label, "top-5", op.n, time.perf_counter() - t0, rel(sorted(res.eigenvalues.tolist(),
                                                                              reverse=True), top5)))
        op = he_op(equal)
        t0 = time.perf_counter()
        res = he.lanczos(op, k=1, which="SA", seed=0, **({"max_iter": data} if data else {}))
        rows.append((label, "lambda_min", op.n, time.perf_counter() - t0, rel([float(res.eigenvalues[0])], [lmin])))
    op = he_op(equal)
    t0 = time.perf_counter()
    res = he.trace(op, num_matvecs=99, seed=0)
    rows.append(("hessian-eigenthings", "trace (Hutch++ 99)", op.n, time.perf_counter() - t0,
                 abs(res.estimate - tr) / abs(tr)))
    op = he_op(equal)
    t0 = time.perf_counter()
    res = he.spectral_density(op, num_runs=10, lanczos_steps=80, seed=0)
    rows.append(("hessian-eigenthings", "density W1", op.n, time.perf_counter() - t0,
                 _w1(res.raw_eigenvalues.reshape(-1).numpy(), res.raw_weights.reshape(-1).numpy(), evals)))

    obj = Objective(model, F.cross_entropy, loader)
    for what, fn in (("top-5", lambda: sh.eigenvalues(obj, k=5, tol=1e-4, seed=0)),
                     ("lambda_min", lambda: sh.eigenvalues(obj, k=1, which="SA", tol=1e-4, seed=0)),
                     ("trace (Hutch++ 99)", lambda: sh.trace(obj, n_matvecs=99, seed=0)),
                     ("density W1", lambda: sh.density(obj, n_runs=10, n_steps=80, seed=0))):
        before = obj.n_hvp
        t0 = time.perf_counter()
        res = fn()
        wall = time.perf_counter() - t0
        if what == "top-5":
            err = rel(res.eigenvalues, top5)
        elif what == "lambda_min":
            err = rel([res.eigenvalues[0]], [lmin])
        elif what.startswith("trace"):
            err = abs(res.trace - tr) / abs(tr)
        else:
            err = _w1(np.asarray(res.nodes).reshape(-1), np.asarray(res.weights).reshape(-1), evals)
        rows.append(("sharpscope", what, obj.n_hvp - before, wall, err))
    try:
        rows += _curvlinops_rows(model, loader, top5, lmin, tr, evals, rel)
    except ImportError as err:
        print(f"  (curvlinops not installed: {err})")
    print(f"  {'tool':<36}{'quantity':<20}{'HVPs':>6}{'wall s':>8}{'error':>11}")
    for r in rows:
        print(f"  {r[0]:<36}{r[1]:<20}{str(r[2]):>6}{r[3]:>8.2f}{r[4]:>11.2e}")
    print("  errors: worst relative error (eigenvalues), relative error (trace), W1 distance to the exact "
          "spectrum (density; the spectrum spans "
          f"{evals[0]:.3g} .. {evals[-1]:.3g})")


def part2(x: torch.Tensor, y: torch.Tensor, repeats: int) -> None:
    import hessian_eigenthings as he

    torch.manual_seed(0)
    spec = make_model_spec("cnn", (1, 8, 8), 10)
    model = _train(build_model(spec), x, y, epochs=3)
    xs, ys = x[:1024], y[:1024]
    batches = [(xs[i:i + 128], ys[i:i + 128]) for i in range(0, 1024, 128)]
    ref = sh.eigenvalues(copy.deepcopy(model).double(), F.cross_entropy, [(b.double(), t) for b, t in batches], k=5,
                         tol=1e-10, seed=0).eigenvalues
    obj = Objective(model, F.cross_entropy, batches)  # the default (auto) mode: reuse-graph at 1,024 examples
    op = he.HessianOperator(model, batches, he.supervised_loss(F.cross_entropy))
    v = torch.randn(obj.n)

    def grad_pass():
        model.zero_grad()
        for b, t in batches:
            (F.cross_entropy(model(b), t) * len(t) / 1024).backward()

    def timed(fn, r=5):
        fn()
        t0 = time.perf_counter()
        for _ in range(r):
            fn()
        return (time.perf_counter() - t0) / r

    g = timed(grad_pass)
    print(f"\nPart 2: digits CNN, {obj.n:,} parameters, 1,024 examples in 8 batches of 128")
    print(f"  one product / one gradient: sharpscope {timed(lambda: obj.hvp(v)) / g:.2f}x, "
          f"hessian-eigenthings {timed(lambda: op.matvec(v)) / g:.2f}x")
    results = {"sharpscope": [], "hessian-eigenthings": [], "hessian-eigenthings max_iter=100": [],
               "curvlinops (scipy eigsh)": []}
    try:
        import curvlinops
        from scipy.sparse.linalg import LinearOperator, eigsh
        cl_op = curvlinops.HessianLinearOperator(model, torch.nn.CrossEntropyLoss(),
                                                 [p for p in model.parameters()], batches).to_scipy()
    except ImportError:
        cl_op = None
        del results["curvlinops (scipy eigsh)"]
    for seed in range(repeats):
        before = obj.n_hvp
        t0 = time.perf_counter()
        res = sh.eigenvalues(obj, k=5, tol=1e-4, seed=seed)
        results["sharpscope"].append((obj.n_hvp - before, time.perf_counter() - t0,
                                      max(abs(a - b) / abs(b) for a, b in zip(res.eigenvalues, ref))))
        for label, extra in (("hessian-eigenthings", {}), ("hessian-eigenthings max_iter=100", {"max_iter": 100})):
            cop = Counted(op)
            t0 = time.perf_counter()
            r = he.lanczos(cop, k=5, which="LA", seed=seed, **extra)
            vals = sorted(r.eigenvalues.tolist(), reverse=True)
            results[label].append((cop.n, time.perf_counter() - t0,
                                   max(abs(a - b) / abs(b) for a, b in zip(vals, ref))))
        if cl_op is not None:
            calls = [0]

            def mv(v, calls=calls):
                calls[0] += 1
                return cl_op @ v
            t0 = time.perf_counter()
            vals = sorted(eigsh(LinearOperator(cl_op.shape, matvec=mv, dtype=cl_op.dtype), k=5, which="LA", tol=1e-4,
                                v0=np.random.default_rng(seed).standard_normal(cl_op.shape[0]),
                                return_eigenvectors=False).tolist(), reverse=True)
            results["curvlinops (scipy eigsh)"].append((calls[0], time.perf_counter() - t0,
                                                        max(abs(a - b) / abs(b) for a, b in zip(vals, ref))))
    print(f"  top-5 eigenvalues, medians over {repeats} seeds (reference: float64 Lanczos to 1e-10)")
    print(f"  {'tool':<36}{'HVPs':>6}{'wall s':>8}{'error':>11}")
    for label, rs in results.items():
        print(f"  {label:<36}{statistics.median(r[0] for r in rs):>6.0f}{statistics.median(r[1] for r in rs):>8.2f}"
              f"{statistics.median(r[2] for r in rs):>11.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import hessian_eigenthings as he
    data = load_dataset("digits")
    x, y = data.x_train, data.y_train
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, hessian-eigenthings {he.__version__}")
    part1(x, y)
    part2(x, y, args.repeats)


if __name__ == "__main__":
    main()
