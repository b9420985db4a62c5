"""How much a setting that only changes float rounding moves compare's numbers, next to the
seed-to-seed spread.

    sharpscope --threads 2 compare --out runs/t2
    sharpscope --threads 1 compare --out runs/t1
    python benchmarks/rounding_vs_seeds.py runs/t2 runs/t1

Both folders must hold the same compare (same configuration and seeds) run in two
environments (here thread counts; or devices, torch versions). For every optimizer and
metric it prints, in Markdown:

- the largest |A - B| over the seeds (the same seed, so the same data, labels and initial
  weights: only the rounding differs),
- the seed-to-seed standard deviation in A (the spread the paired intervals are built on),
- their ratio,

and, for every optimizer but the baseline, the paired difference to the baseline with its
95 % interval and verdict in A and in B: the question a reader cares about is whether the
rounding changes a conclusion.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

METRICS = ("test_acc", "test_loss", "train_loss", "lambda_max", "lambda_ratio", "trace", "m_sharpness_m1",
           "m_sharpness_m64", "surrogate_gap", "gradcos")


def _load(folder: str) -> dict:
    return json.loads((Path(folder) / "results.json").read_text())


def _scalar(scalars: dict, metric: str) -> float | None:
    """A scalar of a compare's results.json; lambda_ratio was "ratio" before sharpscope's table of measures."""
    return scalars.get(metric, scalars.get("ratio") if metric == "lambda_ratio" else None)


def main(a_dir: str, b_dir: str) -> None:
    a, b = _load(a_dir), _load(b_dir)
    if a["config"] != b["config"]:
        raise SystemExit("the two folders hold different compares (their configurations differ)")
    env_a, env_b = a.get("environment", {}), b.get("environment", {})
    print(f"A: {a_dir} ({env_a.get('threads')} threads), B: {b_dir} ({env_b.get('threads')} threads); "
          f"seeds {a['config']['seeds']}\n")
    print("| optimizer | metric | max over seeds of abs(A - B) | seed SD (A) | ratio |")
    print("|---|---|---:|---:|---:|")
    for opt, ra in a["optimizers"].items():
        rb = b["optimizers"][opt]
        for metric in METRICS:
            va = [_scalar(ra["seeds"][s]["scalars"], metric) for s in ra["seeds"]]
            vb = [_scalar(rb["seeds"][s]["scalars"], metric) for s in ra["seeds"]]
            if any(v is None for v in va + vb):
                continue
            gap = max(abs(x - y) for x, y in zip(va, vb))
            sd = statistics.stdev(va)
            print(f"| {opt.upper()} | {metric} | {gap:.3g} | {sd:.3g} | {gap / sd if sd else float('nan'):.2f} |")
    print()
    print(f"| optimizer | metric | paired difference to {a['baseline'].upper()} in A [95 % CI] | in B [95 % CI] "
          "| same verdict |")
    print("|---|---|---|---|---|")
    for opt, ra in a["optimizers"].items():
        if "difference" not in ra:
            continue
        for metric in METRICS:
            da, db = ra["difference"].get(metric), b["optimizers"][opt]["difference"].get(metric)
            if not da or not db:
                continue
            cell = [f"{d['mean']:+.3g} [{d['ci_low']:+.3g}, {d['ci_high']:+.3g}] {d['verdict']}" for d in (da, db)]
            print(f"| {opt.upper()} | {metric} | {cell[0]} | {cell[1]} | {'yes' if da['verdict'] == db['verdict'] else 'NO'} |")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
