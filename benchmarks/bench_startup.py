"""CLI start-up cost: ``sharpscope --help``, ``info`` and ``info <missing file>`` against a bare
``import torch``.

Runs each command ``--rounds`` times, interleaved, each in a fresh interpreter, and prints
the medians of wall time and of CPU time (user + system, from the child's rusage), and the
difference from ``import torch``: what sharpscope adds on top of torch, or saves by not
importing it. Also lists which heavy modules (torch among them) each command imported, the
thread count the children ran with and the load average, since both move these numbers.

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

HEAVY = ("torch", "matplotlib", "scipy", "sklearn", "sharpscope.experiments", "sharpscope.train", "sharpscope.plots")


def _cli(argv: list[str]) -> str:
    """A fresh interpreter running ``sharpscope ARGV`` (its output discarded), then printing
    the heavy modules it imported."""
    return ("import contextlib, io, sys\nfrom sharpscope.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            f"    try:\n        main({argv!r})\n    except SystemExit:\n        pass\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.__stdout__)")


TORCH = "import torch"
COMMANDS = {"--help": _cli(["--help"]), "info --help": _cli(["info", "--help"]),
            "train --help": _cli(["train", "--help"]),
            "info": _cli(["info"]), "info missing.pt": _cli(["info", "/nonexistent/missing.pt"])}


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
    parser.add_argument("--only", nargs="*", choices=sorted(COMMANDS), help="time only these commands")
    args = parser.parse_args()
    chosen = {k: v for k, v in COMMANDS.items() if not args.only or k in args.only}
    commands: dict[str, tuple[str, str | None]] = {"import torch": (TORCH, None)}
    for name, code in chosen.items():
        commands[name] = (code, None)
        if args.baseline:
            commands[f"{name} (baseline)"] = (code, args.baseline)
    rows: dict[str, list[tuple[float, float]]] = {k: [] for k in commands}
    heavy: dict[str, str] = {}
    load = os.getloadavg()
    run(TORCH)  # warm the file cache
    for _ in range(args.rounds):
        for name, (code, path) in commands.items():
            w, c, out = run(code, path)
            rows[name].append((w, c))
            heavy[name] = out.splitlines()[-1] if out else ""
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in rows.items()}
    print(f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average "
          f"{load[0]:.2f} before / {os.getloadavg()[0]:.2f} after")
    print(f"{'command':<26} {'wall s':>8} {'cpu s':>8} {'wall - torch':>13} {'cpu - torch':>12}"
          f"   (medians of {args.rounds})")
    for k, (w, c) in med.items():
        extra = "" if k == "import torch" else f" {w - med['import torch'][0]:13.3f} {c - med['import torch'][1]:12.3f}"
        print(f"{k:<26} {w:8.3f} {c:8.3f}{extra}")
    for k, mods in heavy.items():
        if k != "import torch":
            print(f"heavy modules imported by '{k}': {mods or 'none'}")


if __name__ == "__main__":
    main()
