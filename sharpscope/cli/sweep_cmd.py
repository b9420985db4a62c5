"""``sharpscope sweep``: train the product of option lists over seeds, analyse, tabulate, plot."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from ._app import app
from ._common import (DETERMINISTIC, TRUST_NAMED_FACTORY, apply_determinism, interrupt_says, parse_options,
                      print_correlations)



@app.command("sweep")
def sweep_command(
    out: Path = typer.Option(Path("runs/sweep"), "--out", help="Output folder (rerun: finished runs are reused)."),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", "-o", help="Optimizers, e.g. sgd,sam (default)."),
    rho: Optional[str] = typer.Option(None, help="SAM radii, e.g. 0.02,0.05,0.1 (SGD runs ignore them)."),
    m: Optional[str] = typer.Option(None, "--m", help="m-SAM sizes, e.g. 4,16,64 ('none': plain SAM)."),
    p: Optional[str] = typer.Option(None, "--p", help="SAM neighbourhood norms, e.g. 2,inf."),
    eta: Optional[str] = typer.Option(None, help="ASAM offsets."),
    label_noise: Optional[str] = typer.Option(None, "--label-noise", help="Noisy-label fractions, e.g. 0,0.2,0.4."),
    lr: Optional[str] = typer.Option(None, help="Peak learning rates."),
    epochs: Optional[str] = typer.Option(None, help="Epochs per run (default 40)."),
    batch_size: Optional[str] = typer.Option(None, "--batch-size", "-b", help="Mini-batch sizes."),
    weight_decay: Optional[str] = typer.Option(None, "--weight-decay", "--wd", help="Weight decays."),
    momentum: Optional[str] = typer.Option(None, help="SGD momenta."),
    schedule: Optional[str] = typer.Option(None, help="Schedules: cosine, constant."),
    warmup: Optional[str] = typer.Option(None, help="Warm-up lengths in epochs."),
    model: Optional[str] = typer.Option(None, help="Models (see 'sharpscope train --help')."),
    data: Optional[str] = typer.Option(None, help="Data sets (see 'sharpscope train --help')."),
    n_train: Optional[str] = typer.Option(None, "--n-train", help="Training subset sizes."),
    vary: list[str] = typer.Option([], "--vary", help="Any other training option KEY=V1,V2 (e.g. nesterov=true,false), "
                                                      "repeatable."),
    seeds: str = typer.Option("3", help="A count N (seeds 0..N-1), a list 0,5,7 or a range A:B."),
    model_opt: list[str] = typer.Option([], "--model-opt", help="Model option KEY=VALUE for every run, repeatable."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Folder or file of the data set."),
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
) -> None:
    """Train the product of option lists over seeds, analyse every run, write one table.

    Options an optimizer does not use collapse: SGD is trained once per setting, not once per rho.

    OUT/results.csv and .json: one row per run (its options, seed and every metric).

    OUT/summary.csv and .json: per setting, mean, std and 95% CI over seeds, and the paired difference to SGD.

    OUT/figures/METRIC_vs_OPTION.png (--plot). A rerun reuses finished runs and continues interrupted ones.

    Example: sharpscope sweep --out runs/sweep --rho 0.02,0.05,0.1 --label-noise 0,0.4 --epochs 10 --jobs 2
    """
    apply_determinism(deterministic)
    from ..errors import ConfigError
    from ..experiments import sweep

    formats = ("png", "pdf") if pdf else ("png",)
    given = {"optimizer": optimizer, "rho": rho, "m": m, "p": p, "eta": eta, "label_noise": label_noise, "lr": lr,
             "epochs": epochs, "batch_size": batch_size, "weight_decay": weight_decay, "momentum": momentum,
             "schedule": schedule, "warmup_epochs": warmup, "model": model, "data": data, "n_train": n_train}
    flags = {"warmup_epochs": "--warmup"}
    grid: dict[str, Any] = {}
    for key, text in given.items():
        if text is not None:
            grid[key] = sweep.parse_values(key, text, flags.get(key, "--" + key.replace("_", "-")))
    for pair in vary:
        key, sep, values = pair.partition("=")
        name = key.strip().replace("-", "_")
        if not sep or not name:
            raise ConfigError(f"--vary expects KEY=V1,V2, got {pair!r}")
        if name in grid:
            raise ConfigError(f"--vary {key}: that option is given twice")
        grid[name] = sweep.parse_values(name, values, f"--vary {key}")
    if html:  # refuse before training, not after
        from ..plots.html import require_plotly

        require_plotly()
    wanted = [sweep.parse_plot(p_) for p_ in plot] or None
    if replot:
        if grid:
            raise ConfigError(f"--replot redraws the sweep in --out; it takes no grid options (got "
                              f"--{next(iter(grid)).replace('_', '-')})")
        for f in sweep.replot(out, wanted, formats, correlate=correlate, min_train_acc=min_train_acc):
            print(f"wrote {f}")
        _html(out, html)
        return
    if "optimizer" not in grid:
        grid = {"optimizer": ["sgd", "sam"], **grid}
    base: dict[str, Any] = {}
    if model_opt:
        base["model_kwargs"] = parse_options(model_opt)
    if data_root is not None:
        base["data_root"] = data_root
    config = sweep.SweepConfig(grid=grid, seeds=seeds, base=base, analyses=analyses, profile=profile,
                               analysis_rho=analysis_rho, analysis_m=analysis_m)

    def say(msg: str) -> None:
        print(f"sweep: {msg}", file=sys.stderr, flush=True)

    with interrupt_says("finished runs and analyses are kept; rerun the same command to continue"):
        from ..cpu import chosen_threads
        result = sweep.run_sweep(config, out, jobs=jobs, plots=wanted, formats=formats,
                                 say=say if progress else (lambda msg: None), correlate=correlate,
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


def _html(out: Path, wanted: bool) -> None:
    if wanted:
        from ..experiments.html_report import write_sweep_html

        page = write_sweep_html(out)
        print(f"interactive report: {page} ({page.stat().st_size / 2**20:.1f} MiB)")


def _print_summary(result: Any) -> None:
    """Per setting: test accuracy (and lambda_max) over seeds, and the paired difference to SGD
    (marked when it compares runs that had not converged)."""
    from ..experiments.verdicts import qualified_verdict

    options = [o for o in result.options if o != "seed"]
    varying = [o for o in options if len({repr(e["options"].get(o)) for e in result.summary}) > 1]
    for entry in result.summary:
        opts = entry["options"]
        name = " ".join([str(opts.get("optimizer"))] + [f"{o}={_show(opts[o])}" for o in varying
                                                         if o != "optimizer" and opts.get(o) is not None])
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


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
