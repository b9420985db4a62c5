"""CLI start-up cost: ``sharpscope info <missing file>`` against a bare ``import torch``.

Runs both commands ``--rounds`` times, interleaved, each in a fresh interpreter, and prints
the medians of wall time and of CPU time (user + system, from the child's rusage), and the
difference: what sharpscope adds on top of torch before it can print an error. Also lists
which heavy modules the failing command imported.

    python benchmarks/bench_startup.py --rounds 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HEAVY = ("matplotlib", "scipy", "sklearn", "sharpscope.compare", "sharpscope.train", "sharpscope.plots")

INFO = ("import sys; from sharpscope.cli import main\n"
        "try:\n    main(['info', '/nonexistent/missing.pt'])\nexcept SystemExit:\n    pass\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.__stdout__)")
TORCH = "import torch"


def run(code: str) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + sys) of a fresh ``python -c code``, and its stdout."""
    before = os.times()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu, proc.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    rows: dict[str, list[tuple[float, float]]] = {"import torch": [], "info missing.pt": []}
    heavy = ""
    run(TORCH)  # warm the file cache
    for _ in range(args.rounds):
        w, c, _ = run(TORCH)
        rows["import torch"].append((w, c))
        w, c, heavy = run(INFO)
        rows["info missing.pt"].append((w, c))
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in rows.items()}
    print(f"{'command':<18} {'wall s':>8} {'cpu s':>8}   (medians of {args.rounds})")
    for k, (w, c) in med.items():
        print(f"{k:<18} {w:8.3f} {c:8.3f}")
    dw = med["info missing.pt"][0] - med["import torch"][0]
    dc = med["info missing.pt"][1] - med["import torch"][1]
    print(f"{'difference':<18} {dw:8.3f} {dc:8.3f}")
    print(f"heavy modules imported by 'info missing.pt': {heavy or 'none'}")


if __name__ == "__main__":
    main()
