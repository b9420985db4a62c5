"""``sharpscope train``: SGD / SAM / ASAM / RSAM / GSAM / WSAM / LookSAM / Friendly SAM (every
optimizer of :mod:`sharpscope.optim.registry`) training to a resumable checkpoint."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from typer.models import OptionInfo

from ._app import app, deferred_help
from ._common import CHECK_LAUNCH_ENV, DETERMINISTIC, TRUST_FACTORY, apply_determinism, parse_options, parse_p

__all__ = ["train_command", "parse_options", "parse_p"]


def _registry_help(option: OptionInfo, text: Callable[[Any], str]) -> OptionInfo:
    """``option`` with a help text written from the optimizer registry when the help is shown,
    so that every registered optimizer is listed, one defined after this module was imported
    too; reading the registry imports the optimizers (torch), which a start must not pay."""

    def write() -> str:
        from ..optim import registry

        return text(registry.specs())

    return deferred_help(option, write)


def _optimizer_help(specs: Any) -> str:
    names = ", ".join(f"{s.name} ({s.summary})" if s.summary else s.name for s in specs)
    return f"One of {names}."


def _optimizer_opt_help(specs: Any) -> str:
    options = "; ".join(f"{s.name} {', '.join(s.option_names)}" for s in specs if s.option_names)
    return f"An optimizer's option KEY=VALUE, repeatable: {options} (defaults: sharpscope.optim)."


def _rho_help(specs: Any) -> str:
    sam = next((s.default_rho for s in specs if s.name == "sam"), 0.05)
    others = "".join(f"; {s.name} {s.default_rho:g}" for s in specs if s.perturbs and s.default_rho != sam)
    return f"SAM radius (default {sam:g}{others})."


@app.command("train")
def train_command(
    ctx: typer.Context,
    optimizer: str = _registry_help(typer.Option("sam", "--optimizer", "-o"), _optimizer_help),
    optimizer_opt: list[str] = _registry_help(typer.Option([], "--optimizer-opt"), _optimizer_opt_help),
    model: str = typer.Option("cnn", help="mlp, cnn, cnn1d (1-D signals: mnist1d), resnet, wrn, aliases like resnet20 / wrn16-4, "
                                          "or a factory 'package.module:function'."),
    model_opt: list[str] = typer.Option([], "--model-opt", help="Model option KEY=VALUE, repeatable "
                                                                 "(e.g. --model-opt bn=true --model-opt width=32)."),
    data: str = typer.Option("digits", help="digits, mnist1d, synthetic, npz, mnist, fashion-mnist, cifar10, cifar100."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Folder (mnist, cifar) or .npz file."),
    label_noise: float = typer.Option(0.0, "--label-noise", help="Fraction of training labels replaced "
                                                                 "by uniformly random classes, in [0, 1)."),
    n_train: Optional[int] = typer.Option(None, "--n-train", help="Train on a seeded subset of this size."),
    epochs: int = typer.Option(40, help="Number of epochs."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Mini-batch size."),
    lr: float = typer.Option(0.1, help="Peak learning rate."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    nesterov: bool = typer.Option(False, help="Nesterov momentum."),
    weight_decay: float = typer.Option(5e-4, "--weight-decay", "--wd", help="L2 weight decay."),
    schedule: str = typer.Option("cosine", help="cosine or constant."),
    warmup: float = typer.Option(0.0, help="Linear warm-up length in epochs."),
    rho: Optional[float] = _registry_help(typer.Option(None), _rho_help),
    p: str = typer.Option("2", "--p", help="Norm of the SAM neighbourhood: 2 or inf (any p > 1)."),
    eta: float = typer.Option(0.01, help="ASAM's offset in T_w = |w| + eta."),
    label_smoothing: float = typer.Option(0.0, "--label-smoothing", help="Label smoothing of the training loss "
                                          "(both SAM passes), in [0, 1)."),
    same_dropout_mask: bool = typer.Option(False, "--same-dropout-mask", help="The pass at w + e reuses the "
                                           "dropout masks of the pass at w (the official SAM code's rule)."),
    perturbation_weight_decay: bool = typer.Option(False, "--perturbation-weight-decay", help="Set e from the "
                                                   "gradient of loss + L2 term (the official SAM code's rule)."),
    m: Optional[int] = typer.Option(None, "--m", help="m-SAM: one perturbation per m examples of a batch."),
    seed: int = typer.Option(0, help="Seed of the initialisation, data split, order and label noise."),
    checkpoint_every: int = typer.Option(1, "--checkpoint-every", help="Save every N epochs (and at the end)."),
    snapshots: bool = typer.Option(True, help="Keep model snapshots per checkpoint in OUT/checkpoints/."),
    augment: Optional[bool] = typer.Option(None, help="Random crop + flip (default: on for CIFAR only)."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:N or auto."),
    second_order: bool = typer.Option(False, "--second-order", help="SAM with the full gradient "
                                      "(keeps (d e_hat/dw)^T grad L; one extra double backward per step)."),
    asam_rule: str = typer.Option("official", "--asam-rule", help="ASAM: 'official' scales only parameters named "
                                  "weight by |w| + eta, as SamsungLabs/ASAM does; 'all' scales every parameter."),
    amp: Optional[str] = typer.Option(None, "--amp", help="Mixed precision: bf16 (autocast) or fp16 (autocast and "
                                                           "a gradient scaler; inf/NaN steps are skipped)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="Image models and batches in channels-last "
                                       "memory format (faster convolutions on many CPUs and GPUs)."),
    compile_model: bool = typer.Option(False, "--compile", help="Run the training steps through torch.compile "
                                       "(tens of seconds to compile; pays on long runs)."),
    track: str = typer.Option("", help="Track during training, comma-separated: gradcos, lambda_max, "
                                       "trace, m_sharpness (written to metrics.jsonl, plotted to tracking.png)."),
    track_every: int = typer.Option(1, "--track-every", help="Track every N epochs."),
    track_samples: int = typer.Option(512, "--track-samples", help="Seeded training subset used for tracking."),
    nproc: int = typer.Option(1, "--nproc", help="Train on N processes with torch.distributed (launches "
                                                 "torchrun; gloo on CPU, NCCL on GPU)."),
    sync_perturbation: bool = typer.Option(False, "--sync-perturbation", help="Several ranks: one perturbation "
                                           "from the all-reduced gradient (SAM over the global batch) instead of "
                                           "one per rank (m-SAM with m = per-rank batch)."),
    sync_bn: bool = typer.Option(False, "--sync-bn", help="Several ranks: batch-norm statistics over the global "
                                 "batch in both passes (with --sync-perturbation: plain SAM over the global batch); "
                                 "without it each rank normalizes with its own slice."),
    out: Path = typer.Option(Path("runs/train"), "--out", help="Output folder."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out with its stored options (options "
                                "given again must equal them; a larger --epochs extends a --schedule constant run); "
                                "starts a new run if there is none."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    trust_factory: bool = TRUST_FACTORY,
    deterministic: bool = DETERMINISTIC,
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

    dist_utils.init_from_env(device)
    console = Console(stderr=True, quiet=not dist_utils.is_main())
    fields = dict(
        optimizer=optimizer, model=model, model_kwargs=parse_options(model_opt), data=data,
        data_root=data_root, label_noise=label_noise, n_train=n_train, epochs=epochs,
        batch_size=batch_size, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
        schedule=schedule, warmup_epochs=warmup, rho=rho, p=parse_p(p), eta=eta, m=m, seed=seed,
        checkpoint_every=checkpoint_every, keep_snapshots=snapshots, augment=augment, device=device,
        second_order=second_order, asam_rule=asam_rule, optimizer_options=parse_options(optimizer_opt),
        label_smoothing=label_smoothing, same_dropout_mask=same_dropout_mask,
        perturbation_weight_decay=perturbation_weight_decay, amp=amp, channels_last=channels_last,
        compile=compile_model, track=[t.strip() for t in track.split(",") if t.strip()],
        track_every=track_every, track_samples=track_samples, sync_perturbation=sync_perturbation,
        sync_bn=sync_bn,
    )
    # a resumed run's stored factory runs only when named here (--model) or trusted
    allow_factory = True if trust_factory else (model if ":" in model else False)
    if resume and (out / "checkpoint.pt").exists():
        config = _resumed_config(ctx, out, fields)
        # checked here: the resumed configuration carries the stored factory's name, which
        # train() would take as named by the caller
        from ..train import trusted_factory
        trusted_factory(config, allow_factory, None, out / "checkpoint.pt")
    else:
        config = TrainConfig(**fields)
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

        label = (config.optimizer if config else "run").upper()
        for f in plots.plot_tracking({label: result.metrics}, tracked, out / "tracking"):
            console.print(f"wrote {f}", highlight=False)
    print(f"done: test acc {final.get('test_acc', float('nan')):.4f}, "
          f"train loss {final.get('train_loss', float('nan')):.4f}, {result.wall_time:.1f}s -> {result.checkpoint}")


# TrainConfig fields whose command-line parameter has another name.
_PARAMETER_OF_FIELD = {"model_kwargs": "model_opt", "optimizer_options": "optimizer_opt", "warmup_epochs": "warmup",
                       "keep_snapshots": "snapshots", "compile": "compile_model"}


def _resumed_config(ctx: typer.Context, out: Path, fields: dict[str, Any]) -> Any:
    """``--resume`` of the run in ``out``: its stored TrainConfig, extended to ``--epochs`` where
    that is well defined; every option given on this command line that differs from the stored
    one is refused, all in one line (sharpscope.train.resume)."""
    from ..train.resume import resumed_config, stored_run_config

    flags = {param.name: param.opts[0] for param in ctx.command.params}
    given, names = {}, {}
    for field, value in fields.items():
        param = _PARAMETER_OF_FIELD.get(field, field)
        source = ctx.get_parameter_source(param)  # click's ParameterSource (typer 0.29 vendors its own click)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            given[field], names[field] = value, flags[param]
    return resumed_config(stored_run_config(out), given, names)
