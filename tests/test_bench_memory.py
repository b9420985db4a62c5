"""benchmarks/bench_memory.py (issue 26.5): the peak-RSS helper reads a known allocation, and
``--quick`` runs end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
CHILD = """
import sys, torch
sys.path.insert(0, {bench!r})
from _rss import peak_rss_above
setup = torch.ones(300 * 2**20 // 4); del setup  # a set-up that peaked higher must not hide the operation
peak, _, t = peak_rss_above(lambda: torch.ones(100 * 2**20 // 4))  # 100 MiB of float32, written
print(peak / 2**20)
"""


def test_peak_rss_of_a_100_mib_tensor_reads_100_mib():
    sys.path.insert(0, str(BENCH))
    from _rss import measuring_env

    done = subprocess.run([sys.executable, "-c", CHILD.format(bench=str(BENCH))], capture_output=True, text=True,
                          timeout=120, env=measuring_env(OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.strip().splitlines()[-1]) == pytest.approx(100.0, abs=15.0)


@pytest.mark.slow
def test_quick_mode_measures_every_operation():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(BENCH.parent)}
    done = subprocess.run([sys.executable, str(BENCH / "bench_memory.py"), "--quick"], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    for op in ("grad", "hvp-forward-over-reverse", "hvp-reuse-graph", "hvp-finite-difference", "ggn",
               "lanczos-top5", "hutch++", "surface-point", "sam-step", "msam-step"):
        row = next(line for line in lines if line.split()[:1] == [op])
        assert "n/a" not in row and float(row.split()[1]) > 0, row


def test_bad_size_exits_2():
    done = subprocess.run([sys.executable, str(BENCH / "bench_memory.py"), "--sizes", "9t"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(BENCH.parent)})
    assert done.returncode == 2 and done.stderr.count("\n") == 1
