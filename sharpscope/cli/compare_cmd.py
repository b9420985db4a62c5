"""``sharpscope compare``: SGD vs SAM (vs ASAM), every analysis, figures and a report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import app
from ._common import parse_options


@app.command("compare")
def compare_command(
    out: Path = typer.Option(Path("runs/compare"), "--out", help="Output folder (reused when rerun)."),
    optimizers: str = typer.Option("sgd,sam", help="Comma-separated: sgd, sam, asam."),
    model: str = typer.Option("cnn", help="Model name (see 'sharpscope train --help')."),
    model_opt: list[str] = typer.Option([], "--model-opt", help="Model option KEY=VALUE, repeatable."),
    data: str = typer.Option("digits", help="Data set."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Folder or file of the data set."),
    label_noise: float = typer.Option(0.0, "--label-noise", help="Fraction of noisy training labels, in [0, 1)."),
    rho: float = typer.Option(0.05, help="SAM radius (also the radius of m-sharpness and the gradient cosine)."),
    asam_rho: float = typer.Option(0.5, "--asam-rho", help="ASAM radius."),
    m: Optional[int] = typer.Option(None, "--m", help="m-SAM: one perturbation per m examples."),
    epochs: int = typer.Option(40, help="Epochs per run."),
    seed: int = typer.Option(0, help="Seed shared by every run."),
    quick: bool = typer.Option(False, "--quick", help="Tiny profile for tests and CI (well under a minute)."),
    progress: bool = typer.Option(True, help="Show progress."),
) -> None:
    """SGD vs SAM in one command: train both, run every analysis, write figures and a report.

    Trains from the same seed and data, then measures each minimum: Hessian spectrum, loss
    surfaces, interpolation, m-sharpness and the SAM gradient cosine over training. Writes
    OUT/report.md, OUT/results.json and OUT/figures/*.png; rerunning reuses what is done.

    Example: sharpscope compare --out runs/compare --label-noise 0.4 --rho 0.1
    """
    from rich.console import Console

    from ..experiments.compare import CompareConfig, run_compare
    from ..experiments.report import summary_rows
    from .progress import RichProgress

    console = Console(stderr=True)
    config = CompareConfig(
        optimizers=[o.strip() for o in optimizers.split(",") if o.strip()], model=model,
        model_kwargs=parse_options(model_opt), data=data, data_root=data_root, label_noise=label_noise, rho=rho,
        asam_rho=asam_rho, m=m, epochs=epochs, seed=seed, quick=quick,
    )
    say = (lambda msg: console.print(f"[bold]compare[/]: {msg}", highlight=False)) if progress else (lambda msg: None)
    results = run_compare(config, out, say=say, callbacks_for=lambda opt: [RichProgress(console, enabled=progress)])
    for row in summary_rows(results):
        ms = ", ".join(f"m={k}: {v:.3g}" for k, v in row["m_sharpness"].items())
        print(f"{row['optimizer']:>5}: test acc {row['test_acc']:.4f}, lambda_max {row['lambda_max']:.4g}, "
              f"lambda_max/lambda_5 {row['ratio']:.3g}, trace {row['trace']:.4g}, m-sharpness {ms}, "
              f"surrogate gap {row['surrogate_gap']:.3g}")
    print(f"report: {out / 'report.md'} ({results['wall_time']:.0f}s)")
