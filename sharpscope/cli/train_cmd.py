"""``sharpscope train``: SGD / SAM / ASAM / RSAM / GSAM / WSAM / LookSAM / Friendly SAM (every
optimizer of :mod:`sharpscope.optim.registry`) training to a resumable checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from ._app import app
from ._common import CHECK_LAUNCH_ENV, DETERMINISTIC, TRUST_FACTORY, apply_determinism
from ._options import field_values, training_options

@app.command("train")
@training_options("train")
def train_command(
    ctx: typer.Context,
    nproc: int = typer.Option(1, "--nproc", help="Train on N processes with torch.distributed (launches "
                                                 "torchrun; gloo on CPU, NCCL on GPU)."),
    out: Path = typer.Option(Path("runs/train"), "--out", help="Output folder."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out with its stored options (options "
                                "given again must equal them; a larger --epochs extends a --schedule constant run); "
                                "starts a new run if there is none."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    trust_factory: bool = TRUST_FACTORY,
    deterministic: bool = DETERMINISTIC,
    training: dict[str, Any] = None,  # type: ignore[assignment]  # every TrainConfig field (cli._options)
) -> None:
    """Train a model with SGD, SAM or a SAM variant; writes OUT/checkpoint.pt and OUT/metrics.jsonl.

    A run resumed with --resume whose stored model is a factory runs it only when --model names
    that factory again or --trust-factory is given.

    Example: sharpscope train --optimizer sam --rho 0.05 --epochs 40 --out runs/sam
    """
    apply_determinism(deterministic)
    from rich.console import Console

    from .. import distributed as dist_utils
    from ..train import TrainConfig, train
    from ..train.tracking import trackable
    from .progress import RichProgress

    fields = field_values(training)
    dist_utils.init_from_env(fields["device"])
    console = Console(stderr=True, quiet=not dist_utils.is_main())
    model = fields["model"]  # a resumed run's stored factory runs only when named here (--model) or trusted
    allow_factory = True if trust_factory else (model if ":" in model else False)
    config = _resumed_config(ctx, out, fields) if resume and (out / "checkpoint.pt").exists() else TrainConfig(**fields)
    launching = os.environ.get(CHECK_LAUNCH_ENV)
    if launching:  # `--nproc N` in the launching process: check, then torchrun trains
        from ..train import check_launch
        check_launch(config, out, resume, int(launching), allow_factory)
        return
    result = train(config, out, resume=resume, allow_factory=allow_factory,
                   callbacks=[RichProgress(console, enabled=progress and dist_utils.is_main())])
    if not dist_utils.is_main():
        return
    if result.resumed_from is not None:
        console.print(f"resumed {out} at epoch {result.resumed_from['epoch']}"
                      f" (batch {result.resumed_from['batch_in_epoch']})", highlight=False)
    if result.interrupted:
        console.print(f"interrupted: saved {result.checkpoint}; continue with "
                      f"'sharpscope train --resume --out {out}'", highlight=False)
        raise typer.Exit(130)
    final = result.final
    tracked = [k for k in trackable() if any(k in rec for rec in result.metrics)]
    if tracked:
        from .. import plots
        from ._results import announce

        announce(plots.plot_tracking({config.optimizer.upper(): result.metrics}, tracked, out / "tracking"), console)
    per_token = (f"test loss {final['test_loss']:.4f} per token, perplexity {final['test_ppl']:.2f}, next-token "
                 if "test_ppl" in final else "")
    print(f"done: {per_token}test acc {final.get('test_acc', float('nan')):.4f}, "
          f"train loss {final.get('train_loss', float('nan')):.4f}, {result.wall_time:.1f}s -> {result.checkpoint}")


def _resumed_config(ctx: typer.Context, out: Path, fields: dict[str, Any]) -> Any:
    """``--resume`` of the run in ``out``: its stored TrainConfig, extended to ``--epochs`` where
    that is well defined; every option given on this command line that differs from the stored
    one is refused, all in one line (sharpscope.train.resume)."""
    from ..train.resume import resumed_config, stored_run_config

    flags = {param.name: param.opts[0] for param in ctx.command.params}
    given = {field: value for field, value in fields.items()  # click's ParameterSource, by name (typer vendors click)
             if getattr(ctx.get_parameter_source(field), "name", None) in ("COMMANDLINE", "ENVIRONMENT")}
    return resumed_config(stored_run_config(out), given, {field: flags[field] for field in given})
