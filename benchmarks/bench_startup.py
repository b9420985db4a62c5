"""CLI start-up cost: ``sharpscope info <missing file>`` against a bare ``import torch``.

Runs both commands ``--rounds`` times, interleaved, each in a fresh interpreter, and prints
the medians of wall time and of CPU time (user + system, from the child's rusage), and the
difference: what sharpscope adds on top of torch before it can print an error. Also lists
which heavy modules the failing command imported.

    python benchmarks/bench_startup.py --rounds 9
    # against another version of the package, in the same rounds:
    mkdir -p /tmp/old && git archive <rev> sharpscope | tar -x -C /tmp/old
    python benchmarks/bench_startup.py --rounds 9 --baseline /tmp/old
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HEAVY = ("matplotlib", "scipy", "sklearn", "sharpscope.experiments", "sharpscope.train", "sharpscope.plots")

INFO = ("import sys; from sharpscope.cli import main\n"
        "try:\n    main(['info', '/nonexistent/missing.pt'])\nexcept SystemExit:\n    pass\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.__stdout__)")
TORCH = "import torch"


def run(code: str, pythonpath: str | None = None) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + sys) of a fresh ``python -c code``, and its stdout."""
    env = dict(os.environ, PYTHONPATH=pythonpath) if pythonpath else None
    before = os.times()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env,
                          cwd=tempfile.gettempdir())  # not the checkout: '' on sys.path would shadow PYTHONPATH
    wall = time.perf_counter() - t0
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu, proc.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--baseline", help="folder holding another copy of the sharpscope package")
    args = parser.parse_args()
    commands = {"import torch": (TORCH, None), "info missing.pt": (INFO, None)}
    if args.baseline:
        commands["info (baseline)"] = (INFO, args.baseline)
    rows: dict[str, list[tuple[float, float]]] = {k: [] for k in commands}
    heavy: dict[str, str] = {}
    run(TORCH)  # warm the file cache
    for _ in range(args.rounds):
        for name, (code, path) in commands.items():
            w, c, out = run(code, path)
            rows[name].append((w, c))
            heavy[name] = out
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in rows.items()}
    print(f"{'command':<18} {'wall s':>8} {'cpu s':>8} {'wall - torch':>13} {'cpu - torch':>12}"
          f"   (medians of {args.rounds})")
    for k, (w, c) in med.items():
        extra = "" if k == "import torch" else f" {w - med['import torch'][0]:13.3f} {c - med['import torch'][1]:12.3f}"
        print(f"{k:<18} {w:8.3f} {c:8.3f}{extra}")
    for k, mods in heavy.items():
        if k != "import torch":
            print(f"heavy modules imported by '{k}': {mods or 'none'}")


if __name__ == "__main__":
    main()
