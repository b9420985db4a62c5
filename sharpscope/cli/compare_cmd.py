"""``sharpscope compare``: optimizers side by side over paired seeds, every analysis, figures
and a report with confidence intervals."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from ._app import app
from ._common import DETERMINISTIC, TRUST_NAMED_FACTORY, apply_determinism, interrupt_says, parse_options


def numbered_bars(console: Any, enabled: bool, total: int) -> Callable[[str], list]:
    """``callbacks_for`` of :func:`~sharpscope.experiments.compare.run_compare`: each run's
    training bar, labelled '[i/N] OPT' (it asks for the runs' callbacks in their order)."""
    from .progress import RichProgress

    count = itertools.count(1)
    return lambda opt: [RichProgress(console, enabled=enabled, label=f"[{next(count)}/{total}] {opt.upper()}")]


@app.command("compare")
def compare_command(
    out: Path = typer.Option(Path("runs/compare"), "--out", help="Output folder (reused when rerun)."),
    optimizers: str = typer.Option("sgd,sam", help="Comma-separated optimizers (see 'sharpscope train --help'); "
                                   "the first, or sgd when listed, is the baseline of the paired differences."),
    model: str = typer.Option("cnn", help="Model name (see 'sharpscope train --help')."),
    model_opt: list[str] = typer.Option([], "--model-opt", help="Model option KEY=VALUE, repeatable."),
    data: str = typer.Option("digits", help="Data set."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Folder or file of the data set."),
    label_noise: float = typer.Option(0.0, "--label-noise", help="Fraction of noisy training labels, in [0, 1)."),
    rho: float = typer.Option(0.05, help="SAM radius (also the radius of m-sharpness and the gradient cosine)."),
    asam_rho: float = typer.Option(0.5, "--asam-rho", help="ASAM radius."),
    m: Optional[int] = typer.Option(None, "--m", help="m-SAM: one perturbation per m examples."),
    epochs: int = typer.Option(40, help="Epochs per run."),
    seeds: str = typer.Option("3", help="Seeds every optimizer is trained on (paired): a count N (seeds 0..N-1) "
                              "a comma-separated list, or a range A:B."),
    quick: bool = typer.Option(False, "--quick", help="Tiny profile for tests and CI (well under a minute)."),
    html: bool = typer.Option(False, "--html", help="Also write OUT/report.html: one self-contained interactive "
                              "page (plotly, embedded: opens with no network); needs the html extra."),
    progress: bool = typer.Option(True, help="Show progress."),
    trust_factory: bool = TRUST_NAMED_FACTORY,
    deterministic: bool = DETERMINISTIC,
) -> None:
    """Optimizers side by side over paired seeds: train, measure, summarize with 95 % CIs.

    Trains every optimizer on the same seeds (same split, label flips and initial weights per
    seed), measures each minimum (Hessian spectrum, m-sharpness, SAM gradient cosine and
    surrogate gap on every seed; density, loss surfaces and interpolation on the first) and
    reports each metric's mean, standard deviation and 95 % Student-t interval, and each
    optimizer's paired difference to the baseline with its interval and p-value. Writes
    OUT/report.md, OUT/results.json and OUT/figures/*.png; rerunning reuses what is done.
    Your own model: --model mynets:build (./mynets.py, function build) is imported, called once
    and checked on the data before the first run trains.

    Example: sharpscope compare --out runs/compare --label-noise 0.4 --rho 0.1 --seeds 5
    """
    apply_determinism(deterministic)
    from rich.console import Console

    from ..experiments.compare import KEY_METRICS, CompareConfig, run_compare
    from ..experiments.report import METRIC_NAMES
    from ..experiments.sweep import parse_seeds
    from ..experiments.verdicts import qualified_verdict

    console = Console(stderr=True)
    if html:  # refuse before hours of training, not after
        from ..plots_html import require_plotly

        require_plotly()
    config = CompareConfig(
        optimizers=[o.strip() for o in optimizers.split(",") if o.strip()], model=model,
        model_kwargs=parse_options(model_opt), data=data, data_root=data_root, label_noise=label_noise, rho=rho,
        asam_rho=asam_rho, m=m, epochs=epochs, seeds=parse_seeds(seeds), quick=quick,
    )
    say = (lambda msg: console.print(f"[bold]compare[/]: {msg}", highlight=False)) if progress else (lambda msg: None)
    total = len(config.optimizers) * len(config.seeds)
    say(f"{total} runs ({len(config.optimizers)} optimizers x {len(config.seeds)} seeds) of "
        f"{config.train_config(config.optimizers[0], config.seeds[0]).epochs} epochs, each then measured "
        "(finished runs and analyses in --out are reused)")
    with interrupt_says("finished runs and analyses are kept; rerun the same command to continue"):
        results = run_compare(config, out, say=say, callbacks_for=numbered_bars(console, progress, total))
    n = len(config.seeds)
    for opt, r in results["optimizers"].items():
        parts = []
        for metric in KEY_METRICS:
            t, d = r["summary"].get(metric), r.get("difference", {}).get(metric)
            if t is None:
                continue
            text = f"{METRIC_NAMES.get(metric, metric)} {t['mean']:.4g}"
            if d is not None:
                text += (f" ({d['mean']:+.3g} [{d['ci_low']:.3g}, {d['ci_high']:.3g}]: "
                         f"{qualified_verdict(d['verdict'], bool(d.get('about_unconverged_runs')))})")
            parts.append(text)
        print(f"{opt.upper():>5} (mean of {n}): " + ", ".join(parts))
    for warning in results["warnings"]:
        print(f"warning: {warning}")
    print(f"report: {out / 'report.md'} ({results['wall_time']:.0f}s)")
    if html:
        from ..experiments.html_report import write_compare_html

        page = write_compare_html(out)
        print(f"interactive report: {page} ({page.stat().st_size / 2**20:.1f} MiB)")
