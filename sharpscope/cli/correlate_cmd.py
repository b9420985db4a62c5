"""``sharpscope correlate``: which sharpness measure tracks the generalization gap of a set of runs."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import typer

from ._app import app
from ._common import finite, interrupt_says, numbers, print_correlations, require_html, seed_option
from ._inputs import Inputs, analysis_inputs


@app.command("correlate")
@analysis_inputs("seed", "trust_factory", "deterministic",
                 seed=seed_option("Seed of the subset, the measures and the bootstrap."))
def correlate_command(
    runs: list[Path] = typer.Argument(..., help="Run folders (holding checkpoint.pt), or folders holding runs "
                                      "(a sweep's or compare's --out)."),
    out: Path = typer.Option(..., "--out", help="Output folder for correlations.json/.csv, granulated.csv, "
                             "rows.csv and figures/."),
    measures: str = typer.Option("lambda_max,trace,m_sharpness,gradcos,worst,worst_adaptive,average",
                                 help="Comma-separated: lambda_max, trace, m_sharpness, gradcos, worst, "
                                      "worst_adaptive, average, average_adaptive, weights (data-free)."),
    samples: int = typer.Option(512, min=1, help="Seeded training subset every measure uses."),
    rho: float = typer.Option(0.05, callback=finite(at_least=0), help="Radius of m-sharpness, gradcos and worst "
                              "(p = 2)."),
    adaptive_rho: float = typer.Option(0.002, "--adaptive-rho", callback=finite(at_least=0),
                                       help="Radius of worst_adaptive (p = inf) and average_adaptive."),
    average_rho: float = typer.Option(0.01, "--average-rho", callback=finite(at_least=0),
                                      help="Noise scale of average and average_adaptive."),
    m: str = typer.Option("16,128", "--m", help="m values of m_sharpness."),
    worst_m: int = typer.Option(128, "--worst-m", min=1, help="Examples per subset of the worst/average measures."),
    min_train_acc: float = typer.Option(0.99, "--min-train-acc", help="Correlate only runs that fit their "
                                        "training labels at least this well (Jiang et al. train to about 99 %; "
                                        "a run stuck at chance has no gap to explain), read from each checkpoint "
                                        "before measuring; the runs below it are not measured. 0 keeps every "
                                        "finished run. The same rule as 'sweep --correlate --min-train-acc'."),
    resamples: int = typer.Option(2000, min=100, help="Bootstrap resamples of every interval."),
    html: bool = typer.Option(False, "--html", help="Also write OUT/correlations.html: the tables and one "
                              "interactive scatter per measure (a run's options on hover), self-contained."),
    progress: bool = typer.Option(True, help="Say which run and measure is computed."),
    inputs: Inputs = Inputs(),
) -> None:
    """Measure every run (cached per run: a rerun computes only what is new) and rank-correlate
    each measure with the generalization gap (test - train error and loss) over the runs that
    fit their training labels (--min-train-acc): Kendall's tau and Spearman's rho with
    bootstrap 95 % intervals, and Jiang et al.'s granulated tau per varying training option.

    Example: sharpscope correlate runs/sweep --out runs/correlate --measures lambda_max,worst_adaptive
    """
    from ..experiments.correlate import report_correlations, rows_environment, select_runs
    from ..experiments.files import write_csv
    from ..experiments.measure_runs import MeasureSettings, find_runs, measure_runs, varying_config_options
    from ..provenance import unlike_runs_warning

    require_html(html)
    names = [n.strip() for n in measures.split(",") if n.strip()]
    settings = MeasureSettings(samples=samples, seed=inputs.seed, rho=rho,
                               m_values=numbers(m, int, "--m", at_least=1),
                               worst_m=worst_m, adaptive_rho=adaptive_rho, average_rho=average_rho)
    found = find_runs(runs)
    say = (lambda msg: print(f"correlate: {msg}", file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    say(f"{len(found)} runs")
    with interrupt_says("measured runs are kept (measures.json in each run); rerun the same command to continue"):
        rows = measure_runs(found, names, settings, say, min_train_acc=min_train_acc, need=3,
                            allow_factory=inputs.trust_factory)
    kept, left_out = select_runs(rows, min_train_acc)
    hyper = varying_config_options(kept)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "rows.csv", list(dict.fromkeys(k for r in rows for k in r)), rows)
    table, files = report_correlations(rows, out, resamples=resamples, seed=inputs.seed, hyperparameters=hyper,
                                       min_train_acc=min_train_acc)
    print(f"{table.n_runs} runs correlated ({left_out['unfinished']} unfinished and {left_out['underfit']} below "
          f"--min-train-acc {min_train_acc:g} left out); hyperparameters varying: {', '.join(hyper) or 'none'}")
    print_correlations(table)
    unlike = rows_environment(kept)["environment_differences"]
    if unlike:
        print(f"warning: {unlike_runs_warning(unlike)}")
    if html:  # OUT/correlations.html, headed by the command line that made it
        from ..experiments.html_report import write_correlate_html

        files.append(write_correlate_html(out, rows, table, "sharpscope " + " ".join(sys.argv[1:]),
                                          {"measures": names, **asdict(settings), "min_train_acc": min_train_acc},
                                          recorded=rows_environment(kept)))
    for f in files:
        say(f"wrote {f}")
