"""Training time and test accuracy of the defaults: the table in BENCHMARKS.md,
"Training time and accuracy of the defaults".

``TrainConfig(optimizer=NAME, seed=S)`` with every other setting at its default (digits, the
CNN, 40 epochs, batch 64, lr 0.1 cosine, momentum 0.9, weight decay 5e-4, rho 0.05 for SAM),
seeds 0-4, run one after another in this process into a temporary folder (no snapshots).
Prints a Markdown table: the final test accuracy of each seed, their mean, and the range of
wall times per run (``TrainResult.wall_time``), with the thread count it ran with.

    python benchmarks/bench_defaults.py                    # SAM and SGD, seeds 0-4 (~2 min alone on 2 cores)
    python benchmarks/bench_defaults.py --optimizers sam --seeds 2
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from sharpscope.train import TrainConfig, train


def run(optimizer: str, seed: int, root: Path) -> tuple[float, float]:
    """(final test accuracy, wall seconds) of one run with the defaults."""
    result = train(TrainConfig(optimizer=optimizer, seed=seed, keep_snapshots=False), root / f"{optimizer}-{seed}")
    return float(result.metrics[-1]["test_acc"]), float(result.wall_time)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", default="sam,sgd", help="comma-separated (default sam,sgd)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.optimizers.split(","):
            results = [run(name, s, Path(tmp)) for s in range(args.seeds)]
            for s, (acc, wall) in enumerate(results):
                print(f"{name} seed {s}: test accuracy {100 * acc:.2f} %, {wall:.1f} s", flush=True)
            accs = [100 * a for a, _ in results]
            walls = [w for _, w in results]
            rows.append(f"| {name.upper()} | {', '.join(f'{a:.2f}' for a in accs)} % | {sum(accs) / len(accs):.2f} % "
                        f"| {min(walls):.1f}-{max(walls):.1f} s |")
    print(f"\n{torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print(f"| optimizer | test accuracy, seeds 0-{args.seeds - 1} | mean | wall time per run |")
    print("|---|---|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
