"""2-D loss surface and m-sharpness of a custom CNN.

Trains a small custom CNN on scikit-learn's digits with SAM (the one-call ``ss.sam_step``),
then:

- draws two filter-normalized Gaussian directions (Li et al. 2018; biases and BatchNorm
  parameters get zero) with ``sharpscope.landscape.random_directions``;
- evaluates the training loss and accuracy on an 11 x 9 grid, non-square on purpose:
  ``result.loss[i, j]`` is the value at ``(xs[j], ys[i])``, shape ``(len(ys), len(xs))``;
- prints ``result.summary()`` (centre loss, loss increase at each radius, basin width),
  saves the grid and directions to ``OUT/surface.npz`` and draws a filled contour plot into
  ``OUT/surface.png`` with ``sharpscope.plots.plot_contour``;
- measures m-sharpness, max_{||e|| <= rho} L_m(w + e) - L_m(w) averaged over disjoint
  subsets of m examples, for m = 4 and 16 (``sharpscope.sharpness.m_sharpness``).

Run:  python examples/loss_surface.py [--epochs 8] [--out DIR]
(about 6 s on 2 idle CPU cores; without --out the files go to a new temporary folder)
"""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import sharpscope as ss
import sharpscope.landscape as ls
import sharpscope.plots as sp
import sharpscope.sharpness as shp


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),  # 8x8 -> 4x4
        )
        self.classifier = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a new temp folder)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="sharpscope-surface-"))
    out.mkdir(parents=True, exist_ok=True)

    # scikit-learn's bundled digits (no download), scaled to [0, 1], seeded 80/20 split.
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    train_set, _ = random_split(TensorDataset(x, y), [len(y) - len(y) // 5, len(y) // 5],
                                generator=torch.Generator().manual_seed(0))
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(1))

    torch.manual_seed(0)
    model = SmallCNN()
    opt = ss.SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9)
    for epoch in range(args.epochs):
        model.train()
        for xb, yb in train_loader:
            ss.sam_step(model, F.cross_entropy, xb, yb, opt)  # both SAM passes + the BN policy

    batches = DataLoader(train_set, batch_size=512)  # every analysis below runs in eval mode
    d1, d2 = ls.random_directions(model, 2, seed=1, norm="filter", ignore="biasbn")  # seeds 1 and 2
    xs, ys = np.linspace(-1, 1, 11), np.linspace(-0.8, 0.8, 9)
    result = ls.surface(model, F.cross_entropy, batches, [d1, d2], xs=xs, ys=ys)
    assert result.loss.shape == (len(ys), len(xs))
    print(f"surface: {result.n_points} points x {result.n_examples} examples in {result.wall_time:.2f} s")
    print(json.dumps(result.summary(), indent=2))
    result.save(out / "surface.npz", [d1, d2])  # read back with ls.SurfaceResult.load
    files = sp.plot_contour({"model": result}, out / "surface", filled=True)
    print("figure:", *files)

    sharp = shp.m_sharpness(model, F.cross_entropy, batches, m=[4, 16], rho=0.05, steps=3)
    for r in sharp.results:
        print(f"m-sharpness m={r.m:3d} rho={r.rho}: {r.mean:.4f} +/- {r.stderr:.4f} ({r.n_subsets} subsets)")
    print(f"({sharp.n_gradients} per-subset gradients, {sharp.wall_time:.2f} s)")
    print(f"outputs in {out}")


if __name__ == "__main__":
    main()
