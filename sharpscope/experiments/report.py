"""The Markdown report of ``sharpscope compare`` (text only; the numbers come from results.json)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..io import atomic_write_bytes
from ..provenance import describe, unlike_runs_warning
from .verdicts import qualified_verdict

__all__ = ["write_report", "convergence_lines", "METRIC_NAMES"]

_FIGURES = [
    ("Paired differences to the baseline", "differences.png"),
    ("Training curves (each seed thin, mean and 95 % band bold)", "training_curves.png"),
    ("Top Hessian eigenvalues", "eigenvalues.png"),
    ("m-sharpness against m", "m_sharpness.png"),
    ("First- vs second-order SAM gradient during training", "gradcos.png"),
    ("lambda_max during training and the edge of stability", "edge_of_stability.png"),
    ("Hessian spectral density (SLQ, log scale; first seed)", "density.png"),
    ("Loss surfaces (filter-normalized random directions, shared colour scale; first seed)", "surfaces.png"),
    ("Loss surfaces in 3-D (first seed)", "surfaces_3d.png"),
    ("Linear interpolation between the minima (first seed)", "interpolation.png"),
]

METRIC_NAMES = {
    "test_acc": "test accuracy", "test_loss": "test loss", "train_loss": "train loss", "train_acc": "train accuracy",
    "train_acc_clean": "train accuracy (clean labels)", "lambda_max": "lambda_max",
    "lambda_max_clean": "lambda_max (clean labels)", "lambda_ratio": "lambda_max / lambda_5",
    "trace": "trace (Hutch++)",
    "surrogate_gap": "surrogate gap", "gradcos": "gradient cosine (final)", "gradient_norm": "gradient norm",
}


def _f(x: Any, fmt: str = ".4g") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def _name(metric: str) -> str:
    if metric.startswith("m_sharpness_m"):
        return f"m-sharpness (m={metric.removeprefix('m_sharpness_m')})"
    return METRIC_NAMES.get(metric, metric)


def _order(metrics: set[str]) -> list[str]:
    known = [m for m in METRIC_NAMES if m in metrics]
    msh = sorted((m for m in metrics if m.startswith("m_sharpness_m")), key=lambda m: int(m.rsplit("m", 1)[1]))
    return known + msh + sorted(metrics - set(known) - set(msh))


def summary_table(results: dict) -> list[str]:
    """Markdown rows: each metric's mean +/- std [95 % CI] per optimizer of a compare result."""
    metrics = _order(set().union(*(r["summary"] for r in results["optimizers"].values())))
    opts = list(results["optimizers"])
    lines = ["| metric | " + " | ".join(o.upper() for o in opts) + " |", "|---|" + "---|" * len(opts)]
    for m in metrics:
        cells = ["n/a" if t is None else f"{_f(t['mean'])} +/- {_f(t['std'], '.2g')} [{_f(t['ci_low'])}, "
                 f"{_f(t['ci_high'])}]" for t in (results["optimizers"][o]["summary"].get(m) for o in opts)]
        lines.append(f"| {_name(m)} | " + " | ".join(cells) + " |")
    return lines


def difference_table(results: dict) -> list[str]:
    """Markdown rows: each optimizer's paired difference to the baseline, CI, p-value and verdict."""
    base = results["baseline"].upper()
    lines = [f"| metric | optimizer | difference to {base} | 95 % CI | p (paired t) | verdict |",
             "|---|---|---:|---|---:|---|"]
    for opt, r in results["optimizers"].items():
        for m in _order(set(r.get("difference", {}))):
            d = r["difference"][m]
            lines.append(f"| {_name(m)} | {opt.upper()} | {_f(d['mean'], '+.4g')} | [{_f(d['ci_low'])}, "
                         f"{_f(d['ci_high'])}] | {_f(d['p_value'], '.3g')} | "
                         f"{qualified_verdict(d['verdict'], bool(d.get('about_unconverged_runs')))} |")
    return lines


def gradcos_lines(results: dict) -> list[str]:
    """The gradient cosine at the first and last tracked epoch and its paired change."""
    rows = [(o, r["gradcos_change"]) for o, r in results["optimizers"].items() if r.get("gradcos_change")]
    if not rows:
        return []
    lines = ["## First- vs second-order SAM gradient over training", "",
             "cos(first-order, second-order SAM gradient) at the first and last tracked epoch of every seed "
             "(Foret et al., Fig. 5: near 1 early, lower near convergence), and the paired change late - early.", "",
             "| optimizer | early (epoch) | late (epoch) | change late - early | 95 % CI | p (paired t) | verdict |",
             "|---|---|---|---:|---|---:|---|"]
    for opt, g in rows:
        e, la, d = g["early"], g["late"], g["change"]
        lines.append(f"| {opt.upper()} | {_f(e['mean'])} ({g['early_epoch']}) | {_f(la['mean'])} ({g['late_epoch']}) "
                     f"| {_f(d['mean'], '+.4g')} | [{_f(d['ci_low'])}, {_f(d['ci_high'])}] | {_f(d['p_value'], '.3g')} "
                     f"| {d['verdict']} |")
    return lines + [""]


def _first_seed_lines(results: dict) -> list[str]:
    lines = []
    for opt, r in results["optimizers"].items():
        surf, topo = r["surface"], r["surface"].get("topology")
        minima = (f", {topo['n_minima']} local minima, mean saddle-minimum depth {_f(topo['mean_depth'])}"
                  if topo else "")
        lines.append(f"- {opt.upper()} (seed {surf['seed']}): loss surface centre {_f(surf['centre_loss'])}, mean "
                     f"increase at radius 0.5: {_f(surf['loss_increase_at_radius'].get('0.5'))}, basin width "
                     f"{_f(surf['basin_width'])}{minima}")
    if "interpolation" in results:
        it = results["interpolation"]
        lines.append(f"- interpolation (seed {it['seed']}): loss at the first minimum {_f(it['centre_loss'])}, at the "
                     f"second {_f(it.get('loss_at_b'))}, barrier on the segment {_f(it.get('barrier'))}")
    return lines


def _environment_lines(results: dict) -> list[str]:
    """What trained the runs and what analysed them (none recorded: nothing)."""
    if "environment" not in results:
        return []
    envs = [e.get("trained_in") for r in results["optimizers"].values() for e in r["seeds"].values()]
    analysed = [e.get("analysed_in") for r in results["optimizers"].values() for e in r["seeds"].values()]
    unlike = results.get("environment_differences") or {}
    unlike_analyses = results.get("analysis_environment_differences") or {}
    if unlike_analyses:
        lines = ["## Environment", "", f"- analysed with: not all alike ({unlike_runs_warning(unlike_analyses)})"]
    else:
        lines = ["## Environment", "", "- analysed with: "
                 + describe(next((e for e in analysed if e), None) or results["environment"])]
    if unlike:
        lines.append(f"- trained with: not all alike ({unlike_runs_warning(unlike)}); each run's record is in "
                     "results.json (`trained_in`)")
    else:
        lines.append(f"- trained with: {describe(next((e for e in envs if e), None))}"
                     + (" (every run)" if all(envs) else " (the runs that recorded it)"))
    lines += ["- Results differ across thread counts, devices, CPU instruction sets and torch versions by float "
              "rounding; docs/reproducibility.md measures how much against the seed-to-seed spread.", ""]
    return lines


def convergence_lines(results: dict) -> list[str]:
    """What "converged" means and which runs had not (none judged: nothing)."""
    conv = results.get("convergence")
    if not conv:
        return []
    total = sum(len(by_seed) for by_seed in conv["runs"].values())
    if not conv["unconverged"]:
        return [f"Convergence: all {total} runs converged ({conv['definition']}).", ""]
    return [f"**Convergence: {len(conv['unconverged'])} of {total} runs have not converged** "
            f"({', '.join(conv['unconverged'])}); {conv['definition']}. Verdicts marked \"(unconverged runs)\" "
            "compare points on the way to a minimum, not minima.", ""]


def write_report(results: dict, path: str | Path) -> Path:
    """Write ``report.md`` next to the figures folder."""
    cfg, s = results["config"], results["settings"]
    seeds = cfg["seeds"]
    names = " vs ".join(o.upper() for o in results["optimizers"])
    lines = [
        f"# {names}: sharpscope compare", "",
        f"{cfg['model']} on {cfg['data']}, {cfg['epochs']} epochs, rho {cfg['rho']}"
        + (f", label noise {cfg['label_noise']}" if cfg["label_noise"] else "")
        + (f", m-SAM m = {cfg['m']}" if cfg["m"] else "") + (" (quick profile)" if cfg["quick"] else "")
        + f"; {len(seeds)} paired seeds ({', '.join(map(str, seeds))}): every optimizer is trained on the same "
        "split, label flips and initial weights per seed.",
        f"Analyses on a seeded subset of {s['samples']} training examples (the labels trained on); m-sharpness "
        f"and gradient cosine at rho = {cfg['rho']} for every optimizer.", "",
        f"Each cell: mean +/- standard deviation over seeds [95 % confidence interval, {results['ci_method']}]. "
        "A difference is reported as higher or lower only when its paired interval excludes zero; otherwise "
        "as no difference at this scale.", "",
    ] + convergence_lines(results)
    if results.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {w}" for w in results["warnings"]] + [""]
    lines += ["## Metrics over seeds", ""] + summary_table(results) + [""]
    if any(r.get("difference") for r in results["optimizers"].values()):
        lines += [f"## Paired differences to {results['baseline'].upper()}", ""] + difference_table(results) + [""]
    lines += gradcos_lines(results)
    lines += ["## Landscapes (first seed)", ""] + _first_seed_lines(results) + [""]
    lines += ["## Figures", ""]
    available = {Path(f).name for f in results.get("figures", [])}
    for caption, name in _FIGURES:
        if name in available:
            lines += [f"### {caption}", "", f"![{caption}](figures/{name})", ""]
    lines += _environment_lines(results)
    lines.append(f"Total time: {results['wall_time']:.0f} s.")
    text = "\n".join(lines) + "\n"
    return atomic_write_bytes(path, lambda fh: fh.write(text.encode()))
