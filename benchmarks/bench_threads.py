"""Two sharpscope processes on the same cores: torch's default threads against --threads.

Each process trains the digits CNN with SAM for ``--epochs`` epochs (``sharpscope train``,
a fresh interpreter, imports included). Modes, interleaved over ``--rounds``:

- ``alone``: one process with the default thread count (one per available core);
- ``two, default threads``: two processes at once, each with one thread per core (what two
  processes get when nobody sets their threads: 2 x cores threads on the cores);
- ``two, --threads cores/2``: two processes at once with half the cores each.

Prints the wall time of the slower of the two processes and its ratio to ``alone``, and the
cores seen (affinity mask and CFS quota, :func:`sharpscope.cpu.available_cores`). Run it on
an otherwise idle machine: outside load distorts every mode.

    python benchmarks/bench_threads.py --rounds 3 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from sharpscope.cpu import available_cores


def run_together(n: int, threads: int | None, epochs: int) -> float:
    """Wall time until the last of ``n`` concurrent ``sharpscope train`` processes ends."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "SHARPSCOPE_THREADS")}
        cmd = [sys.executable, "-m", "sharpscope"] + (["--threads", str(threads)] if threads else []) + [
            "train", "--optimizer", "sam", "--epochs", str(epochs), "--no-progress", "--no-snapshots"]
        t0 = time.perf_counter()
        procs = [subprocess.Popen(cmd + ["--out", os.path.join(tmp, f"run{i}")], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE) for i in range(n)]
        for p in procs:
            _, err = p.communicate()
            if p.returncode != 0:
                raise SystemExit(f"a run failed: {err.decode()[-500:]}")
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    cores = available_cores()
    import torch
    print(f"cores available: {cores} (os.cpu_count {os.cpu_count()}); torch default threads "
          f"{torch.get_num_threads()}; {args.rounds} rounds, {args.epochs} epochs of SAM on the digits CNN")
    modes = {"alone": (1, None), "two, default threads": (2, cores),
             f"two, --threads {max(1, cores // 2)}": (2, max(1, cores // 2))}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode, (n, threads) in modes.items():
            times[mode].append(run_together(n, threads, args.epochs))
    alone = min(times["alone"])
    print(f"{'mode':<26} {'min wall s':>10} {'median s':>9} {'min / alone':>12}")
    for mode, ts in times.items():
        print(f"{mode:<26} {min(ts):>10.2f} {statistics.median(ts):>9.2f} {min(ts) / alone:>11.2f}x")
    print("two processes do twice the work: 2.00x of alone is perfect sharing of the cores")


if __name__ == "__main__":
    main()
