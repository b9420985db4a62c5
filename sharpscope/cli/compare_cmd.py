"""``sharpscope compare``: optimizers side by side over paired seeds, every analysis, figures
and a report with confidence intervals."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from ._app import app
from ._common import DETERMINISTIC, TRUST_NAMED_FACTORY, apply_determinism, interrupt_says, require_html, say_page
from ._options import field_values, old_spelling, training_options
from ..train_options import TRAIN_OPTIONS


def numbered_bars(console: Any, enabled: bool, total: int) -> Callable[[str], list]:
    """``callbacks_for`` of :func:`~sharpscope.experiments.compare.run_compare`: each run's
    training bar, labelled '[i/N] OPT' (it asks for the runs' callbacks in their order)."""
    from .progress import RichProgress

    count = itertools.count(1)
    return lambda opt: [RichProgress(console, enabled=enabled, label=f"[{next(count)}/{total}] {opt.upper()}")]


@app.command("compare")
@training_options("compare")
def compare_command(
    out: Path = typer.Option(Path("runs/compare"), "--out", help="Output folder (reused when rerun)."),
    rho: float = typer.Option(0.05, help="SAM radius (also the radius of m-sharpness and the gradient cosine)."),
    asam_rho: float = typer.Option(0.5, "--asam-rho", help="ASAM radius."),
    seeds: str = typer.Option("3", help="Seeds every optimizer is trained on (paired): a count N (seeds 0..N-1) "
                              "a comma-separated list, or a range A:B."),
    profile: str = typer.Option("default", "--profile", help="Work the training and the analyses get: quick (a "
                                "tiny profile for tests and CI, well under a minute) or default."),
    html: bool = typer.Option(False, "--html", help="Also write OUT/report.html: one self-contained interactive "
                              "page (plotly, embedded: opens with no network); needs the html extra."),
    progress: bool = typer.Option(True, help="Show progress."),
    trust_factory: bool = TRUST_NAMED_FACTORY,
    deterministic: bool = DETERMINISTIC,
    old_optimizers: Optional[str] = typer.Option(None, "--optimizers", hidden=True),
    old_quick: bool = typer.Option(False, "--quick", hidden=True),
    training: dict[str, Any] = None,  # type: ignore[assignment]  # the shared training options (cli._options)
) -> None:
    """Optimizers side by side over paired seeds: train, measure, summarize with 95 % CIs.

    Trains every optimizer on the same seeds (same split, label flips and initial weights per
    seed), measures each minimum (Hessian spectrum, m-sharpness, SAM gradient cosine and
    surrogate gap on every seed; density, loss surfaces and interpolation on the first) and
    reports each metric's mean, standard deviation and 95 % Student-t interval, and each
    optimizer's paired difference to the baseline with its interval and p-value, in
    OUT/report.md, OUT/results.json and OUT/figures/*.png; rerunning reuses what is done.
    Your own model: --model mynets:build (./mynets.py, function build) is imported, called once
    and checked on the data before the first run trains.
    Every training option of 'sharpscope train' applies to every run (but --seed: --seeds; --rho:
    compare's own, with --asam-rho; the tracking: the profile's); --optimizer takes a list.

    Example: sharpscope compare --out runs/compare --label-noise 0.4 --rho 0.1 --seeds 5
    """
    apply_determinism(deterministic)
    from rich.console import Console

    from ..errors import ConfigError
    from ..experiments.compare import PROFILES, CompareConfig, run_compare
    from ..experiments.sweep import parse_seeds

    console = Console(stderr=True)
    require_html(html)
    fields = field_values(training)
    optimizers = old_spelling("compare", "--optimizers", "--optimizer", old_optimizers, fields.pop("optimizer"),
                              "sgd,sam")
    profile = old_spelling("compare", "--quick", "--profile quick", "quick" if old_quick else None, profile,
                           "default")
    if profile not in PROFILES:
        raise ConfigError(f"--profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    own = {k: fields.pop(k) for k in ("model", "model_kwargs", "data", "data_root", "label_noise", "m", "epochs",
                                      "n_train")}
    config = CompareConfig(
        optimizers=[o.strip() for o in optimizers.split(",") if o.strip()], rho=rho, asam_rho=asam_rho,
        seeds=parse_seeds(seeds), quick=profile == "quick", **own,
        # only the options that differ from TrainConfig's defaults (an older comparison keeps its cache)
        train_options={k: v for k, v in fields.items() if v != TRAIN_OPTIONS[k].default},
    )
    say = (lambda msg: console.print(f"[bold]compare[/]: {msg}", highlight=False)) if progress else (lambda msg: None)
    total = len(config.optimizers) * len(config.seeds)
    say(f"{total} runs ({len(config.optimizers)} optimizers x {len(config.seeds)} seeds) of "
        f"{config.train_config(config.optimizers[0], config.seeds[0]).epochs} epochs, each then measured "
        "(finished runs and analyses in --out are reused)")
    with interrupt_says("finished runs and analyses are kept; rerun the same command to continue"):
        results = run_compare(config, out, say=say, callbacks_for=numbered_bars(console, progress, total))
    _print_summary(results, len(config.seeds))
    for warning in results["warnings"]:
        print(f"warning: {warning}")
    print(f"report: {out / 'report.md'} ({results['wall_time']:.0f}s)")
    if html:
        from ..experiments.html_report import write_compare_html

        say_page(write_compare_html(out))


def _print_summary(results: dict[str, Any], n: int) -> None:
    """One line per optimizer: each key metric's mean over the ``n`` seeds and, against the
    baseline, the paired difference with its interval and verdict."""
    from ..experiments.compare import KEY_METRICS
    from ..experiments.report import METRIC_NAMES
    from ..experiments.verdicts import qualified_verdict

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

