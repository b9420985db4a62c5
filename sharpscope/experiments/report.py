"""The Markdown report of ``sharpscope compare`` (text only; the numbers come from results.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write_bytes

__all__ = ["write_report", "summary_rows"]

_FIGURES = [
    ("Training curves", "training_curves.png"),
    ("Hessian spectral density (SLQ, log scale)", "density.png"),
    ("Top Hessian eigenvalues", "eigenvalues.png"),
    ("Loss surfaces (filter-normalized random directions, shared colour scale)", "surfaces.png"),
    ("Loss surfaces in 3-D", "surfaces_3d.png"),
    ("Linear interpolation between the minima", "interpolation.png"),
    ("m-sharpness against m", "m_sharpness.png"),
    ("First- vs second-order SAM gradient during training", "gradcos.png"),
]


def _f(x: Any, fmt: str = ".4g") -> str:
    return "n/a" if x is None else format(x, fmt)


def summary_rows(results: dict) -> list[dict[str, Any]]:
    """One row per optimizer with the headline numbers."""
    rows = []
    for opt, r in results["optimizers"].items():
        m_rows = r["m_sharpness"]["results"]
        rows.append({
            "optimizer": opt.upper(), "test_acc": r["final"]["test_acc"], "train_loss": r["final"]["train_loss"],
            "lambda_max": r["lambda_max"], "ratio": r["ratio"], "trace": r["trace"]["trace"],
            "trace_stderr": r["trace"]["stderr"], "m_sharpness": {x["m"]: x["mean"] for x in m_rows},
            "surrogate_gap": r["surrogate_gap"],
        })
    return rows


def write_report(results: dict, path: str | Path) -> Path:
    """Write ``report.md`` next to the figures folder."""
    cfg, s = results["config"], results["settings"]
    rows = summary_rows(results)
    ms = sorted({m for row in rows for m in row["m_sharpness"]})
    lines = [
        "# SGD vs SAM: sharpscope compare", "",
        f"{cfg['model']} on {cfg['data']}, {cfg['epochs']} epochs, seed {cfg['seed']}, rho {cfg['rho']}"
        + (f", label noise {cfg['label_noise']}" if cfg["label_noise"] else "")
        + (f", m-SAM m = {cfg['m']}" if cfg["m"] else "") + (" (quick profile)" if cfg["quick"] else "") + ".",
        f"Analyses on a seeded subset of {s['samples']} training examples (the labels trained on); "
        f"m-sharpness and gradient cosine at rho = {cfg['rho']} for every optimizer.", "",
        "| optimizer | test acc. | train loss | lambda_max | lambda_max / lambda_5 | trace | "
        + " | ".join(f"m-sharpness (m={m})" for m in ms) + " | surrogate gap |",
        "|---|" + "---:|" * (6 + len(ms)),
    ]
    for row in rows:
        lines.append(
            f"| {row['optimizer']} | {row['test_acc']:.4f} | {row['train_loss']:.3g} | {_f(row['lambda_max'])} | "
            f"{_f(row['ratio'])} | {_f(row['trace'])} +/- {_f(row['trace_stderr'], '.2g')} | "
            + " | ".join(_f(row["m_sharpness"].get(m)) for m in ms) + f" | {_f(row['surrogate_gap'])} |")
    lines.append("")
    for opt, r in results["optimizers"].items():
        eig = r["eigenvalues"]
        lines += [f"## {opt.upper()}", "",
                  f"- top-{len(eig['eigenvalues'])} Hessian eigenvalues: "
                  + ", ".join(_f(v) for v in eig["eigenvalues"])
                  + f" ({eig['n_hvp']} HVPs, all converged: {all(eig['converged'])})",
                  f"- trace {_f(r['trace']['trace'])} +/- {_f(r['trace']['stderr'], '.2g')} (Hutch++, "
                  f"{r['trace']['n_hvp']} HVPs); SLQ density implies {_f(r['density']['trace_estimate'])}",
                  f"- loss surface: centre {_f(r['surface']['centre_loss'])}, mean increase at radius 0.5: "
                  f"{_f(r['surface']['loss_increase_at_radius'].get('0.5'))}, basin width "
                  f"{_f(r['surface']['basin_width'])}",
                  f"- gradient cosine at the end: {_f(r['gradcos']['cosine'], '.5f')}", ""]
    if "interpolation" in results:
        it = results["interpolation"]
        lines += ["## Interpolation", "",
                  f"Loss at the first minimum {_f(it['centre_loss'])}, at the second {_f(it.get('loss_at_b'))}, "
                  f"barrier on the segment {_f(it.get('barrier'))}.", ""]
    lines += ["## Figures", ""]
    available = {Path(f).name for f in results.get("figures", [])}
    for caption, name in _FIGURES:
        if name in available:
            lines += [f"### {caption}", "", f"![{caption}](figures/{name})", ""]
    lines.append(f"Total time: {results['wall_time']:.0f} s.")
    text = "\n".join(lines) + "\n"
    return atomic_write_bytes(path, lambda fh: fh.write(text.encode()))
