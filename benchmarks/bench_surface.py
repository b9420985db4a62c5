"""Grid points per second of ``sharpscope.landscape.surface`` against a naive loop and peers.

    python benchmarks/bench_surface.py              # 51 x 51 grid, digits CNN and MLP
    python benchmarks/bench_surface.py --peers --grid 21 --examples 512 --models cnn --threads 1

The naive loop is what loss-landscape scripts do at each grid point: copy
theta_0 + x d_1 + y d_2 into the model's parameters, then evaluate the loss and accuracy
with ``torch.no_grad`` over a ``DataLoader`` (batch 128). A second baseline feeds
pre-batched tensors instead of a DataLoader (the same copy-and-evaluate loop without the
loader's per-example collation). sharpscope evaluates the same grid points on the same
training examples (all 1,438 digits unless ``--examples``). Methods alternate on row blocks
of the same grid so that machine noise hits all of them; the figure is points per second
over all blocks. ``--rows`` limits the run to the first rows of the grid for a quick check.

``--peers`` adds two published packages, side by side in the same run and table:

* ``loss-landscape-3d`` 0.1.3 (``LossLandscapeCalculator.calculate``), fed sharpscope's own
  two directions as state dicts, on the same grid and pre-batched tensors: its values are
  compared with sharpscope's grid point for point.
* ``landscaper`` 1.3.1 (``landscaper.compute.compute_loss_landscape``, ``dim=2``). Its API
  takes directions but always rescales each tensor to norm sqrt(numel) and then the whole
  direction to a step length, and evaluates only a whole centred ``steps x steps`` grid. It is
  fed sharpscope's two directions; sharpscope is then evaluated (untimed) along the
  directions landscaper actually used (recomputed the same way) at the same integer steps, and
  that grid is the reference for its value difference. landscaper adds random noise at its
  maximum, so that one point is left out of the difference (its noise is printed apart).
  landscaper's package ``__init__`` imports its topology stack (nglpy, topopy, gudhi, ...);
  only ``landscaper.compute`` (torch, numpy, tqdm) is loaded, through a bare package stub.

Because landscaper evaluates whole grids only, with ``--peers`` the alternation unit is the
whole grid: ``--rounds`` rounds, each method once per round, the order rotated every round.
The loss passed to the peers is the same mean cross-entropy over the same batches; the
peers compute loss only, while sharpscope and the naive loops also compute accuracy.

The peers are NOT in any extra of ``pyproject.toml``: landscaper's dependencies (topopy)
pin numpy < 2. Install them by hand without their dependencies:

    pip install --no-deps loss-landscape-3d==0.1.3 landscaper==1.3.1

``--threads N`` calls ``torch.set_num_threads(N)``; the thread count is printed either way.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import sys
import time
import types

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from sharpscope.data import load_dataset
from sharpscope.landscape import random_direction, surface
from sharpscope.models import build_model, count_parameters, make_model_spec

PEERS_INSTALL = "pip install --no-deps loss-landscape-3d==0.1.3 landscaper==1.3.1"


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


_PEERS: tuple = ()


def load_peers():
    """(loss_landscape_3d, landscaper.compute), or exit 2 with one line if one is missing."""
    global _PEERS
    if _PEERS:
        return _PEERS
    missing = [name for name in ("loss_landscape_3d", "landscaper") if importlib.util.find_spec(name) is None]
    if missing:
        print(f"--peers: {', '.join(missing)} not installed; run: {PEERS_INSTALL}", file=sys.stderr)
        raise SystemExit(2)
    import loss_landscape_3d

    if "landscaper" not in sys.modules:  # skip its __init__ (topology stack); compute.py needs torch/numpy/tqdm
        spec = importlib.util.find_spec("landscaper")
        stub = types.ModuleType("landscaper")
        stub.__path__ = list(spec.submodule_search_locations)
        sys.modules["landscaper"] = stub
    try:
        from landscaper import compute
    except ImportError as e:
        print(f"--peers: landscaper.compute does not import ({e}); run: {PEERS_INSTALL}", file=sys.stderr)
        raise SystemExit(2) from None
    _PEERS = (loss_landscape_3d, compute)
    return _PEERS


def landscaper_directions(model, directions, steps: int, distance: float) -> list[dict]:
    """The directions landscaper's compute_loss_landscape actually steps along (its
    normalize_direction, then scale_direction to model_norm * distance / (steps / 2)),
    recomputed with the same float32 operations, keyed by parameter name."""
    names = [n for n, _ in model.named_parameters()]
    start = [p.data for p in model.parameters()]
    model_norm = torch.sqrt(sum((p ** 2).sum() for p in start))
    out = []
    for d in directions:
        t = [d[n].clone() for n in names]
        for v, p in zip(t, start):
            v.mul_(torch.sqrt(torch.tensor(p.numel(), dtype=torch.float32)) / (v.norm() + 1e-10))
        dn = torch.sqrt(sum((v ** 2).sum() for v in t))
        for v in t:
            v.mul_(((model_norm * distance) / (steps / 2)) / dn)
        out.append(dict(zip(names, t)))
    return out


def run_peers(model, directions, xs, tensors, loader, rounds: int, distance: float) -> None:
    ll3d, lcompute = load_peers()
    names = [n for n, _ in model.named_parameters()]
    steps = len(xs)
    center_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    calc = ll3d.LossLandscapeCalculator(model, tensors, F.cross_entropy, device="cpu")
    dirs_lists = [[d[n] for n in names] for d in directions]

    def scalar_fn(m, batches):
        total, count = 0.0, 0
        for xb, yb in batches:
            total += F.cross_entropy(m(xb), yb, reduction="sum").item()
            count += xb.shape[0]
        return total / count

    def landscaper():
        model.eval()  # compute_loss_landscape does not set eval mode itself
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
            grid, _ = lcompute.compute_loss_landscape(model, tensors, dirs_lists, scalar_fn, steps=steps,
                                                      distance=distance, dim=2, device="cpu")
        return grid.T  # grid[i, j]: i along the first direction; transpose to [y, x]

    methods = {
        "naive loop, DataLoader(128)": lambda: naive(model, directions, xs, xs, loader),
        "naive loop, tensors (128)": lambda: naive(model, directions, xs, xs, tensors),
        "sharpscope surface": lambda: surface(model, F.cross_entropy, tensors, directions, xs, xs).loss,
        "loss-landscape-3d 0.1.3": lambda: calc.calculate(xs, xs, directions[0], directions[1], center_state).T,
        "landscaper 1.3.1": landscaper,
    }
    seconds = dict.fromkeys(methods, 0.0)
    values = {}
    np.random.seed(0)  # landscaper's noise at the maximum
    for k in methods:  # warm-up (landscaper only does whole grids: its warm-up is a 3 x 3 one)
        if k == "landscaper 1.3.1":
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                lcompute.compute_loss_landscape(model, tensors, dirs_lists, scalar_fn, steps=3, distance=distance,
                                                dim=2, device="cpu")
        elif k == "loss-landscape-3d 0.1.3":
            calc.calculate(xs[:1], xs[:1], directions[0], directions[1], center_state)
        elif k == "sharpscope surface":
            surface(model, F.cross_entropy, tensors, directions, xs, xs[:1])
        else:
            naive(model, directions, xs, xs[:1], tensors)
    for r in range(rounds):
        order = list(methods)[r % len(methods):] + list(methods)[:r % len(methods)]
        for k in order:
            t0 = time.perf_counter()
            values[k] = methods[k]()
            seconds[k] += time.perf_counter() - t0

    # landscaper's reference: sharpscope along landscaper's own directions, at its integer steps
    eff = landscaper_directions(model, directions, steps, distance)
    ks = np.arange(steps, dtype=np.float64) - steps // 2
    lref = surface(model, F.cross_entropy, tensors, eff, ks, ks).loss
    noisy = np.unravel_index(np.argmax(lref), lref.shape)
    keep = np.ones_like(lref, dtype=bool)
    keep[noisy] = False
    ref = values["sharpscope surface"]
    n = steps * steps * rounds
    base = n / seconds["naive loop, DataLoader(128)"]
    ss = n / seconds["sharpscope surface"]
    print(f"{'method':<30}{'points/s':>10}{'vs naive DL':>12}{'vs sharpscope':>15}{'max |diff|':>12}  directions")
    for k in methods:
        pps = n / seconds[k]
        if k == "landscaper 1.3.1":
            diff, how = np.abs(values[k] - lref)[keep].max(), "sharpscope's, renormalized by landscaper *"
        else:
            diff, how = np.abs(values[k] - ref).max(), "sharpscope's (same grid)"
        print(f"{k:<30}{pps:>10.1f}{pps / base:>11.2f}x{pps / ss:>14.2f}x{diff:>12.2e}  {how}")
    print(f"* max |diff| against sharpscope evaluated along landscaper's directions at its {steps} x {steps} "
          f"integer steps (distance={distance}), leaving out the maximum, where landscaper added noise of "
          f"{values['landscaper 1.3.1'][noisy] - lref[noisy]:+.2e}")
    print(f"landscaper's step sizes: {[round(float(np.sqrt(sum(float((v ** 2).sum()) for v in d.values()))), 4) for d in eff]} "
          f"(sharpscope's grid step: {(xs[1] - xs[0]) * np.sqrt(sum(float((v ** 2).sum()) for v in directions[0].values())):.4f} along d1)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=int, default=51)
    ap.add_argument("--rows", type=int, default=None, help="only this many rows of the grid (quick check)")
    ap.add_argument("--block", type=int, default=3, help="rows per alternation block")
    ap.add_argument("--examples", type=int, default=None, help="only the first N training digits")
    ap.add_argument("--models", default="cnn,mlp", help="comma-separated: cnn, mlp")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N) first")
    ap.add_argument("--peers", action="store_true",
                    help=f"add loss-landscape-3d and landscaper (whole-grid rounds; {PEERS_INSTALL})")
    ap.add_argument("--rounds", type=int, default=3, help="with --peers: whole-grid rounds per method")
    ap.add_argument("--distance", type=float, default=1.0,
                    help="with --peers: landscaper's distance (half-extent as a fraction of the model norm)")
    args = ap.parse_args()
    if args.peers:
        load_peers()  # fail fast, before any work
        if args.grid % 2 == 0:
            ap.error("--peers needs an odd --grid (landscaper's grid is centred on the model)")
    if args.threads:
        torch.set_num_threads(args.threads)

    data = load_dataset("digits")
    x, y = data.x_train[: args.examples], data.y_train[: args.examples]
    loader = DataLoader(TensorDataset(x, y), batch_size=128)
    tensors = [(x[i:i + 128], y[i:i + 128]) for i in range(0, len(x), 128)]
    xs = np.linspace(-1, 1, args.grid)
    ys_all = np.linspace(-1, 1, args.grid)[: args.rows or args.grid]
    print(f"{args.grid} x {args.grid if args.peers else len(ys_all)} grid points, {len(x)} digits, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, kwargs in (("cnn", {}), ("mlp", {"hidden": [128, 128]})):
        if name not in args.models.split(","):
            continue
        torch.manual_seed(0)
        model = build_model(make_model_spec(name, data.input_shape, data.num_classes, **kwargs))
        directions = [random_direction(model, seed=0), random_direction(model, seed=1)]
        if args.peers:
            print(f"\n{name} ({count_parameters(model):,} parameters), {args.rounds} rounds of whole grids")
            run_peers(model, directions, xs, tensors, loader, args.rounds, args.distance)
            continue
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
