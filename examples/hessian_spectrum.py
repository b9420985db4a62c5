"""Hessian spectrum of a custom model: top eigenvalues, trace and spectral density.

Trains a small custom MLP on scikit-learn's digits with plain SGD, then measures the
Hessian of the mean training loss without ever forming it (only Hessian-vector products):

- ``sharpscope.hessian.eigenvalues``: top-5 eigenvalues by Lanczos, each with its Ritz
  residual and a converged flag, and lambda_1 / lambda_5 (the ratio Foret et al. report);
- ``sharpscope.hessian.trace``: Hutch++ estimate of tr(H) with a standard error;
- ``sharpscope.hessian.density``: the spectral density by stochastic Lanczos quadrature,
  drawn with ``sharpscope.plots.plot_density`` (log scale) into ``OUT/density.png``.

Run:  python examples/hessian_spectrum.py [--epochs 20] [--out DIR]
(about 6 s on 2 idle CPU cores; without --out the figure goes to a new temporary folder)
"""

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import sharpscope.hessian as sh
import sharpscope.plots as sp


class MLP(nn.Module):
    """64 -> 64 -> 32 -> 10 with smooth (tanh) activations: about 6.6k parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 32), nn.Tanh())
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(x))


def digits_split(seed: int = 0):
    """scikit-learn's bundled digits (no download) scaled to [0, 1], seeded 80/20 split."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    n_test = len(y) // 5
    return random_split(TensorDataset(x, y), [len(y) - n_test, n_test], generator=torch.Generator().manual_seed(seed))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a new temp folder)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="sharpscope-hessian-"))

    torch.manual_seed(0)
    train_set, test_set = digits_split()
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(1))
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for epoch in range(args.epochs):  # a short plain-SGD run
        for x, y in train_loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    with torch.no_grad():
        x_test, y_test = next(iter(DataLoader(test_set, batch_size=len(test_set))))
        print(f"trained {args.epochs} epochs: test accuracy {(model(x_test).argmax(1) == y_test).float().mean():.4f}")

    # The Hessian is that of the mean loss over everything the iterable yields (eval mode);
    # the batching changes the cost, not the answer. No shuffling needed.
    batches = DataLoader(train_set, batch_size=512)

    top = sh.eigenvalues(model, F.cross_entropy, batches, k=5, which="LA", tol=1e-4)
    print(f"top-{len(top.eigenvalues)} eigenvalues ({top.n_params} parameters, {top.n_examples} examples):")
    for i, (lam, res, ok) in enumerate(zip(top.eigenvalues, top.residuals, top.converged), 1):
        print(f"  lambda_{i} = {lam:10.4f}   residual {res:.1e}   converged {ok}")
    print(f"  lambda_1 / lambda_5 = {top.ratio:.2f}   ({top.n_hvp} HVPs, {top.wall_time:.2f} s)")

    tr = sh.trace(model, F.cross_entropy, batches, n_matvecs=99)  # Hutch++
    print(f"trace = {tr.trace:.3f} +/- {tr.stderr:.3f}   ({tr.n_hvp} HVPs, {tr.wall_time:.2f} s)")

    dens = sh.density(model, F.cross_entropy, batches, n_runs=4, n_steps=40)
    print(f"density: {dens.n_runs} SLQ runs x {dens.n_steps} steps, grid [{dens.grid[0]:.2f}, {dens.grid[-1]:.2f}], "
          f"trace from SLQ {dens.trace_estimate:.3f}   ({dens.n_hvp} HVPs, {dens.wall_time:.2f} s)")

    files = sp.plot_density({"SGD": dens}, out / "density", log=True)  # writes density.png
    print("figure:", *files)
    print(f"outputs in {out}")


if __name__ == "__main__":
    main()
