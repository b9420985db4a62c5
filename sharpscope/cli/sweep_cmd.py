"""``sharpscope sweep``: train the product of option lists over seeds, analyse, tabulate, plot."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from ._app import app
from ._common import (
    DETERMINISTIC, TRUST_NAMED_FACTORY, apply_determinism, interrupt_says, print_correlations, require_html, say_page)
from ._options import field_values, training_options
from ..train_options import NOT_SWEPT, TRAIN_OPTIONS, flag_of

# The order of the grid's axes in run folder names and table columns; other options follow in TrainConfig's.
_GRID_ORDER = ("optimizer", "rho", "m", "p", "eta", "label_noise", "lr", "epochs", "batch_size", "weight_decay",
               "momentum", "schedule", "warmup_epochs", "model", "data", "n_train")


@app.command("sweep")
@training_options("sweep")
def sweep_command(
    out: Path = typer.Option(Path("runs/sweep"), "--out", help="Output folder (rerun: finished runs are reused)."),
    vary: list[str] = typer.Option([], "--vary", help="Any other training option KEY=V1,V2 (e.g. nesterov=true,false), "
                                                      "repeatable."),
    seeds: str = typer.Option("3", help="A count N (seeds 0..N-1), a list 0,5,7 or a range A:B."),
    analyses: str = typer.Option("lambda_max,gradcos,m_sharpness",
                                 help="Per run, comma-separated measures: lambda_max, trace, density, m_sharpness, "
                                      "gradcos (with the surrogate gap), weights (data-free), or none. Old names "
                                      "(eigenvalues, m-sharpness, surrogate-gap) still work."),
    profile: str = typer.Option("default", help="Work the analyses get: quick or default."),
    analysis_rho: float = typer.Option(0.05, "--analysis-rho", help="rho of m-sharpness and the gradient cosine, "
                                                                    "the same for every run."),
    analysis_m: Optional[str] = typer.Option(None, "--analysis-m", help="m values of the m-sharpness analysis, e.g. "
                                                                        "1,4,16,64,256 (default: the profile's)."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Runs at once, in separate processes with cores/jobs "
                                                     "threads each."),
    plot: list[str] = typer.Option([], "--plot", help="METRIC:OPTION figure (e.g. test_acc:rho), repeatable; "
                                                      "default: test_acc against rho and label noise."),
    correlate: bool = typer.Option(False, "--correlate", help="Also rank-correlate every measure with the "
                                                               "generalization gap over the runs (Kendall tau, "
                                                               "Spearman rho, bootstrap CIs): correlations.csv."),
    min_train_acc: float = typer.Option(0.99, "--min-train-acc", help="--correlate: correlate only runs that "
                                        "fit their training labels at least this well (0 keeps every finished run); "
                                        "the same rule as 'sharpscope correlate'."),
    html: bool = typer.Option(False, "--html", help="Also write OUT/report.html: every run against every swept "
                              "option, interactive and self-contained (the html extra)."),
    replot: bool = typer.Option(False, "--replot", help="Only redraw the figures of the finished sweep in --out."),
    pdf: bool = typer.Option(False, "--pdf", help="Also write figures as PDF."),
    progress: bool = typer.Option(True, help="Print progress lines on stderr."),
    trust_factory: bool = TRUST_NAMED_FACTORY,
    deterministic: bool = DETERMINISTIC,
    training: dict[str, Any] = None,  # type: ignore[assignment]  # the shared training options (cli._options)
) -> None:
    """Train the product of option lists over seeds, analyse every run, write one table.

    Every training option of 'sharpscope train' takes a comma-separated list of values (the grid
    is their product; --device, --data-root, --model-opt, --optimizer-opt, --checkpoint-every and
    --sync-perturbation take one value for every run; --seeds replaces --seed). Options an
    optimizer does not use collapse: SGD is trained once per setting, not once per rho.

    Writes OUT/results.csv and .json (one row per run: options, seed, every metric),
    OUT/summary.csv and .json (per setting: mean, std and 95% CI over seeds, the paired
    difference to SGD) and OUT/figures/METRIC_vs_OPTION.png. A rerun reuses finished runs and
    continues interrupted ones.

    Example: sharpscope sweep --out runs/sweep --rho 0.02,0.05,0.1 --label-noise 0,0.4 --epochs 10 --jobs 2
    """
    apply_determinism(deterministic)
    from ..experiments import sweep

    formats = ("png", "pdf") if pdf else ("png",)
    grid, base = _grid(training, vary)
    require_html(html)
    wanted = [sweep.parse_plot(p_) for p_ in plot] or None
    if replot:
        _replot(out, grid, wanted, formats, correlate, min_train_acc, html)
        return
    if "optimizer" not in grid:
        grid = {"optimizer": ["sgd", "sam"], **grid}
    config = sweep.SweepConfig(grid=grid, seeds=seeds, base=base, analyses=analyses, profile=profile,
                               analysis_rho=analysis_rho, analysis_m=analysis_m)
    say = (lambda msg: print(f"sweep: {msg}", file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    with interrupt_says("finished runs and analyses are kept; rerun the same command to continue"):
        from ..cpu import chosen_threads
        result = sweep.run_sweep(config, out, jobs=jobs, plots=wanted, formats=formats, say=say, correlate=correlate,
                                 deterministic=deterministic, threads=chosen_threads() if deterministic else None,
                                 min_train_acc=min_train_acc)
    _print_summary(result)
    if result.correlations is not None:
        left = result.correlations.left_out
        print(f"{result.correlations.n_runs} runs correlated ({left['unfinished']} unfinished and {left['underfit']} "
              f"below --min-train-acc {min_train_acc:g} left out)")
        print_correlations(result.correlations)
    for warning in result.warnings:
        print(f"warning: {warning}")
    _html(out, html)


def _grid(training: dict[str, Any], vary: list[str]) -> tuple[dict[str, list], dict[str, Any]]:
    """The grid (option -> its values: the comma lists of the training options and of --vary)
    and the options every run shares (those that take one value, where not the default)."""
    from ..errors import ConfigError
    from ..experiments import sweep

    grid: dict[str, Any] = {}
    base: dict[str, Any] = {}
    order = {key: i for i, key in enumerate(_GRID_ORDER)}  # run names and columns keep their order
    for key, value in sorted(training.items(), key=lambda kv: order.get(kv[0], len(order))):
        if key in NOT_SWEPT:  # one value for every run; the rest are the grid's comma lists
            if value != TRAIN_OPTIONS[key].default and value != []:
                base[key] = value
        elif value is not None:
            grid[key] = sweep.parse_values(key, value, flag_of(key))
    base = field_values(base)
    for pair in vary:
        key, sep, values = pair.partition("=")
        name = key.strip().replace("-", "_")
        if not sep or not name:
            raise ConfigError(f"--vary expects KEY=V1,V2, got {pair!r}")
        if name in grid:
            raise ConfigError(f"--vary {key}: that option is given twice")
        grid[name] = sweep.parse_values(name, values, f"--vary {key}")
    return grid, base


def _replot(out: Path, grid: dict, wanted: list | None, formats: tuple[str, ...], correlate: bool,
            min_train_acc: float, html: bool) -> None:
    """--replot: redraw the finished sweep's figures (no grid options)."""
    from ..errors import ConfigError
    from ..experiments import sweep

    if grid:
        raise ConfigError(f"--replot redraws the sweep in --out; it takes no grid options (got "
                          f"--{next(iter(grid)).replace('_', '-')})")
    for f in sweep.replot(out, wanted, formats, correlate=correlate, min_train_acc=min_train_acc):
        print(f"wrote {f}")
    _html(out, html)


def _html(out: Path, wanted: bool) -> None:
    if wanted:
        from ..experiments.html_report import write_sweep_html

        say_page(write_sweep_html(out))


def _print_summary(result: Any) -> None:
    """Per setting: test accuracy (and lambda_max) over seeds, and the paired difference to SGD
    (marked when it compares runs that had not converged)."""
    from ..experiments.verdicts import qualified_verdict

    options = [o for o in result.options if o != "seed"]
    varying = [o for o in options if len({repr(e["options"].get(o)) for e in result.summary}) > 1]
    for entry in result.summary:
        opts = entry["options"]
        shown = [f"{o}={opts[o]:g}" if isinstance(opts[o], float) else f"{o}={opts[o]}"
                 for o in varying if o != "optimizer" and opts.get(o) is not None]
        name = " ".join([str(opts.get("optimizer")), *shown])
        parts = []
        for metric in ("test_acc", "lambda_max"):
            item = entry["metrics"].get(metric)
            if not item or not item["summary"]:
                continue
            s = item["summary"]
            text = f"{metric} {s['mean']:.4g}" + (f" [{s['ci_low']:.4g}, {s['ci_high']:.4g}]" if s["n"] > 1 else "")
            d = item.get("vs_sgd")
            if d:
                verdict = qualified_verdict(d["verdict"], bool(d.get("about_unconverged_runs")))
                text += f" (vs SGD {d['mean']:+.3g}: {verdict})"
            parts.append(text)
        print(f"{name} (n={len(entry['seeds'])}): " + "; ".join(parts))
    out = result.out_dir
    print(f"tables: {out / 'results.csv'}, {out / 'summary.csv'}; figures: "
          + (", ".join(str(f) for f in result.figures) or "none"))

