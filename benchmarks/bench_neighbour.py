"""One sharpscope job beside a neighbour: another torch process busy on the same cores.

Issue 24, item 7. The job is ``sharpscope train --optimizer sgd --epochs E`` on digits (the
default model), in a fresh interpreter. The neighbour is a plain torch process (a second
experiment, a notebook) that trains a small CNN on random 8x8 images in a loop with torch's
default threads and OpenMP's default waiting, started a second before the job and stopped
when it ends. Each wait policy is timed alone and beside the neighbour, interleaved over
``--rounds``:

- ``spin (before)``: ``--threads`` = cores and ``GOMP_SPINCOUNT=300000``, libgomp's own
  default, which sharpscope used before issue 24 (idle OpenMP threads spin ~300k times before
  they sleep, so two spinning processes on too few cores wait on each other);
- ``1 thread``: ``--threads 1`` (no OpenMP team, nothing spins);
- ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep at once);
- ``spin 10k``: ``GOMP_SPINCOUNT=10000``;
- ``default (now)``: nothing set: sharpscope's own choice (:func:`sharpscope.cpu.prepare_wait_policy`).

Prints min and median wall time of each mode and its ratio to ``spin (before)`` alone. Run it
on an otherwise idle machine; the thread count the neighbour and the job use is printed.

    python benchmarks/bench_neighbour.py --rounds 2 --epochs 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from sharpscope.cpu import WAIT_POLICY_VARIABLES, available_cores

NEIGHBOUR = """
import torch, torch.nn as nn
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, 10))
opt = torch.optim.SGD(net.parameters(), lr=0.01)
x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
print(torch.get_num_threads(), flush=True)
while True:
    opt.zero_grad(); nn.functional.cross_entropy(net(x), y).backward(); opt.step()
"""


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment without any thread or wait-policy choice, plus ``extra``."""
    drop = {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "SHARPSCOPE_THREADS", *WAIT_POLICY_VARIABLES}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


def timed_job(args: list[str], env: dict[str, str], epochs: int, neighbour: bool) -> float:
    """Wall time of one ``sharpscope train`` (beside a neighbour process when ``neighbour``)."""
    other = None
    if neighbour:
        other = subprocess.Popen([sys.executable, "-c", NEIGHBOUR], env=clean_env({}), stdout=subprocess.PIPE)
        other.stdout.readline()  # torch imported and running
        time.sleep(1.0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "sharpscope", *args, "train", "--optimizer", "sgd", "--epochs", str(epochs),
                   "--no-progress", "--no-snapshots", "--out", os.path.join(tmp, "run")]
            t0 = time.perf_counter()
            done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            wall = time.perf_counter() - t0
            if done.returncode != 0:
                raise SystemExit(f"the job failed: {done.stderr.decode()[-500:]}")
            return wall
    finally:
        if other is not None:
            other.kill()
            other.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    cores = available_cores()
    modes = {"spin (before)": ([f"--threads={cores}"], {"GOMP_SPINCOUNT": "300000"}),
             "1 thread": (["--threads=1"], {"GOMP_SPINCOUNT": "300000"}),
             "passive": ([f"--threads={cores}"], {"OMP_WAIT_POLICY": "PASSIVE"}),
             "spin 10k": ([f"--threads={cores}"], {"GOMP_SPINCOUNT": "10000"}),
             "default (now)": ([], {})}
    print(f"cores available: {cores}; neighbour: torch default threads ({cores}) and waiting; job: {args.epochs} "
          f"epochs of train --optimizer sgd on digits; {args.rounds} rounds")
    times: dict[tuple[str, bool], list[float]] = {}
    for _ in range(args.rounds):
        for mode, (flags, extra) in modes.items():
            for beside in (False, True):
                times.setdefault((mode, beside), []).append(timed_job(flags, clean_env(extra), args.epochs, beside))
    base = min(times[("spin (before)", False)])
    print(f"{'mode':<16} {'alone min/med s':>16} {'beside min/med s':>17} {'beside / alone':>15} {'alone / before':>15}")
    for mode in modes:
        a, b = times[(mode, False)], times[(mode, True)]
        print(f"{mode:<16} {min(a):>7.2f} / {statistics.median(a):<6.2f} {min(b):>8.2f} / {statistics.median(b):<6.2f} "
              f"{min(b) / min(a):>14.2f}x {min(a) / base:>14.2f}x")


if __name__ == "__main__":
    main()
