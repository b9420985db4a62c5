"""The scripts in examples/ run end to end as real subprocesses and write what they promise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT = 120  # seconds per script; each takes ~5-10 s on 2 idle cores


def run_example(name: str, out: Path, *extra: str) -> str:
    # The example models are tiny: one thread is as fast as two, and it keeps a run from
    # slowing down ~100x when another process holds a core (OpenMP threads spin-waiting).
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=out.parent)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_sam_training_loop(tmp_path):
    out = tmp_path / "sam"
    stdout = run_example("sam_training_loop.py", out, "--epochs", "3")
    assert len(re.findall(r"^epoch +\d+ +train loss", stdout, re.M)) == 3
    acc = float(re.search(r"final test accuracy ([0-9.]+)", stdout).group(1))
    assert acc > 0.9, stdout
    assert (out / "model.pt").is_file()


def test_hessian_spectrum(tmp_path):
    out = tmp_path / "hessian"
    stdout = run_example("hessian_spectrum.py", out, "--epochs", "5")
    eigs = [float(v) for v in re.findall(r"lambda_\d = +(-?[0-9.]+) +residual", stdout)]
    assert len(eigs) == 5 and eigs == sorted(eigs, reverse=True) and eigs[0] > 0, stdout
    assert re.search(r"trace = [0-9.]+ \+/- [0-9.]+", stdout), stdout
    assert (out / "density.png").stat().st_size > 0


def test_loss_surface(tmp_path):
    from sharpscope.landscape import SurfaceResult
    out = tmp_path / "surface"
    stdout = run_example("loss_surface.py", out, "--epochs", "2")
    assert (out / "surface.png").stat().st_size > 0
    result = SurfaceResult.load(out / "surface.npz")
    assert result.loss.shape == (9, 11) and np.isfinite(result.loss).all()
    centre, edge = result.loss[4, 5], np.concatenate([result.loss[[0, -1], :].ravel(), result.loss[:, [0, -1]].ravel()])
    assert centre < edge.min()  # the trained model (x = y = 0) sits below the whole grid boundary
    assert '"centre_loss"' in stdout and '"basin_width"' in stdout  # result.summary() was printed
    assert len(re.findall(r"m-sharpness m= *(4|16) rho=0.05: [0-9.]+ \+/- [0-9.]+", stdout)) == 2, stdout
