"""``sharpscope sweep --jobs``: the same four runs one at a time and two at a time.

Each mode runs the whole sweep in a fresh interpreter (imports, worker start-up and the
tables included) into a fresh folder; the modes are interleaved over ``--rounds`` so that
a busy machine slows them alike; the minimum (the least disturbed round) and the median of
the wall times are printed with their ratios, and the CPU seconds (user + system of the
sweep and its workers):

- ``jobs 1``: one process, torch's default intra-op threads (one per core);
- ``jobs 2``: two spawned workers with ``max(1, cores // 2)`` threads each (the default);
- ``jobs 2, default threads``: two workers with one thread per core each, i.e. what two
  processes get when nobody sets their threads (oversubscribed).

    python benchmarks/bench_sweep_jobs.py --rounds 3 --epochs 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

CODE = """
import sys, torch
from sharpscope.experiments.sweep import SweepConfig, run_sweep
if __name__ == "__main__":
    config = SweepConfig(grid={{"optimizer": "sgd,sam"}}, seeds=2, analyses="{analyses}", profile="quick",
                         base={{"model": "{model}", "data": "digits", "epochs": {epochs}}})
    run_sweep(config, sys.argv[1], jobs={jobs}, threads={threads}, plots=[])
"""


def run(jobs: int, threads: int | None, args: argparse.Namespace) -> tuple[float, float]:
    code = CODE.format(jobs=jobs, threads=threads, epochs=args.epochs, model=args.model, analyses=args.analyses)
    with tempfile.TemporaryDirectory() as out:
        script = os.path.join(out, "bench.py")
        with open(script, "w") as fh:
            fh.write(code)
        before = os.times()
        t0 = time.perf_counter()
        subprocess.run([sys.executable, script, os.path.join(out, "sweep")], check=True)
        wall = time.perf_counter() - t0
        after = os.times()  # the workers are the sweep's children, waited for: their CPU counts
        return wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--analyses", default="none")
    args = parser.parse_args()
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    default = torch.get_num_threads()
    modes = {f"jobs 1 ({default} threads)": (1, None),
             f"jobs 2 ({max(1, cores // 2)} thread(s) each, default)": (2, None),
             f"jobs 2 ({default} threads each, oversubscribed)": (2, default)}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in modes}
    for r in range(args.rounds):
        for name, (jobs, threads) in modes.items():
            times[name].append(run(jobs, threads, args))
            print(f"round {r + 1}: {name}: {times[name][-1][0]:.1f}s wall, {times[name][-1][1]:.1f}s CPU",
                  file=sys.stderr)
    first = times[next(iter(modes))]
    best0, med0 = min(w for w, _ in first), statistics.median(w for w, _ in first)
    print(f"4 runs (sgd, sam x 2 seeds), {args.model} on digits, {args.epochs} epochs, analyses {args.analyses}; "
          f"{cores} cores, {args.rounds} interleaved rounds")
    print("| mode | min wall s | speed-up | median wall s | speed-up | median CPU s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, ts in times.items():
        best, med = min(w for w, _ in ts), statistics.median(w for w, _ in ts)
        cpu = statistics.median(c for _, c in ts)
        print(f"| {name} | {best:.1f} | {best0 / best:.2f}x | {med:.1f} | {med0 / med:.2f}x | {cpu:.1f} |")


if __name__ == "__main__":
    main()
