"""The training loop: SGD / SAM / ASAM / RSAM to resumable checkpoints and a metrics log.

The model comes from ``seed``, epoch ``e``'s order and crop/flip draws from ``(seed, e)``, and the
torch RNG is in every checkpoint: a run stopped at a step boundary and resumed ends bit for bit as
one that never stopped (CPU). ``out_dir`` gets ``checkpoint.pt`` (the latest full checkpoint),
``metrics.jsonl`` (one line per epoch) and ``checkpoints/epoch_NNNN.pt`` (model-only snapshots,
0 = the initialisation; off with ``keep_snapshots=False``).
"""

from __future__ import annotations

import functools
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as dist_utils
from .. import provenance
from ..checkpoint import check_checkpoint_data, check_data_fits, save_checkpoint
from ..data import DataSpec, Dataset, load_dataset
from ..errors import ConfigError, NonFiniteLossError
from ..models import build_model
from ..optim import SAM, StepResult, bn_modules, convert_to_global_bn, registry, sam_step
from ..optim.passes import micro_batch_count
from .callbacks import Callback, TrainState
from .config import AMP_DTYPES, TrainConfig, TrainResult, learning_rate, make_optimizer
from .epoch import LogitsOnly, check_diverged, crop_and_flip, epoch_plan, evaluate, token_eval_batch
from .launch import (check_fits, check_launch, check_model, check_ranks, model_spec_for, open_run, per_rank_bn_note,
                     trusted_factory)
from .state import append_metrics, rng_state, set_rng_state, sigint_requests_stop, write_metrics_file

__all__ = ["train", "evaluate", "check_launch", "check_ranks", "check_model", "trusted_factory"]


@torch.no_grad()
def _average_bn_stats(model: nn.Module) -> None:
    """Running statistics averaged over ranks, as single-process m-SAM stores them."""
    world = dist_utils.world_size()
    for bn in bn_modules(model):  # they track running statistics
        for buf in (bn.running_mean, bn.running_var):
            buf.copy_(dist_utils.all_reduce_sum(buf.clone()) / world)


_SUMS = ("loss", "correct", "loss_clean", "correct_clean", "perturbed_loss", "count", "perturbed_count", "skipped",
         "seconds")
_LOCAL_SUMS = ("skipped", "seconds")  # the same on every rank (or this rank's own): not all-reduced


@dataclass
class _Run:
    """What the steps of one :func:`train` call share; ``metrics``, ``sums`` (this epoch's totals)
    and ``lr`` (the last step's) change as it goes."""

    config: TrainConfig
    out: Path
    device: torch.device
    world: int
    rank: int
    main: bool
    data: Dataset
    data_spec: DataSpec
    model_spec: dict
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    augment: bool
    channels_last: bool
    x_train: torch.Tensor
    y_train: torch.Tensor
    y_clean: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    state: TrainState
    metrics: list[dict[str, Any]] = field(default_factory=list)
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_SUMS, 0.0))
    ddp: nn.Module | None = None  # the DistributedDataParallel wrapper (several ranks)
    stepped: nn.Module | None = None  # the model or its torch.compile'd wrapper
    loss_fn: Callable[..., torch.Tensor] = F.cross_entropy
    lr: float | None = None
    environments: list[dict[str, Any]] = field(default_factory=list)  # what trained it, one per change
    data_fingerprint: dict[str, Any] | None = None  # of the training split (rank 0)

    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint.pt"

    @property
    def autocast(self) -> torch.dtype | None:
        return AMP_DTYPES[self.config.amp]

    @property
    def kept(self) -> str:
        """What an error that stops the run says about the checkpoint left behind."""
        return (f"the last good checkpoint {self.ckpt_path} is kept" if self.ckpt_path.exists()
                else "no checkpoint had been written yet")


def train(
    config: TrainConfig | None = None,
    out_dir: str | os.PathLike[str] = "runs/train",
    *,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    allow_factory: bool | str = False,
) -> TrainResult:
    """Train a model as ``config`` says, checkpointing to ``out_dir``.

    ``resume=True`` continues ``out_dir/checkpoint.pt`` with its stored configuration (a given
    ``config`` must agree with it: :mod:`.resume`); a finished run is returned, or extended. A
    resumed run's model factory runs only when ``allow_factory`` is True or names it
    (:func:`trusted_factory`), else :class:`ConfigError` before any import. Without ``resume`` an
    existing checkpoint is an error. A NaN/Inf loss raises :class:`NonFiniteLossError`, keeping
    the last good checkpoint. Ctrl-C (or ``state.stop_requested``) saves at the next step
    boundary and returns with ``interrupted=True``.
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    config, raw = open_run(config, out, resume)
    # a fresh run builds the caller's own configuration; a resume, the stored one, only as allowed
    allowed = trusted_factory(config, allow_factory if raw is not None else config.model,
                              where=out / "checkpoint.pt")
    run = _set_up(config, out, allowed, raw)
    resumed_from = None
    if raw is not None:
        resumed_from = _resume(run, raw)
        if raw["progress"].get("finished") and run.state.epoch >= config.epochs:  # else: extended
            return TrainResult(out, run.ckpt_path, run.metrics, False, resumed_from, time.perf_counter() - t_start)
    elif run.main:  # the folder, an empty metrics file, the snapshot of the initialisation
        out.mkdir(parents=True, exist_ok=True)
        write_metrics_file(out / "metrics.jsonl", [])
        if config.keep_snapshots:
            _save_snapshot(run, finished=False)
    _prepare_model(run)
    if config.track:  # the tracking callback first
        from .tracking import TrackingCallback
        rho = config.effective_rho if registry.get(config.optimizer).perturbs else registry.get("sam").default_rho
        callbacks = [TrackingCallback(config.track, config.track_every, config.track_samples, rho, config.seed),
                     *callbacks]
    for cb in callbacks:
        cb.on_train_begin(run.state)
    with sigint_requests_stop(run.state):
        interrupted = _run_epochs(run, callbacks)
    for cb in callbacks:
        cb.on_train_end(run.state)
    dist_utils.barrier()  # the other ranks return once rank 0 has written everything
    return TrainResult(out, run.ckpt_path, run.metrics, interrupted, resumed_from, time.perf_counter() - t_start)


def _set_up(config: TrainConfig, out: Path, allow_factory: bool | str, raw: dict[str, Any] | None = None) -> _Run:
    """Device, data, model (from the seed, or ``raw``'s stored spec) and optimizer, checked against
    each other (resuming: DataMismatchError / DataChangedWarning for changed data)."""
    device = dist_utils.resolve_device(config.device)
    world, rank, main = dist_utils.world_size(), dist_utils.rank(), dist_utils.is_main()
    check_ranks(config, world)
    dist_utils.barrier()  # every rank has checked the folder before rank 0 writes to it

    data_spec = config.data_spec()
    data = load_dataset(data_spec)
    augment = config.augment if config.augment is not None else config.data in ("cifar10", "cifar100")
    if augment and len(data.input_shape) != 3:
        raise ConfigError("augmentation needs image data (C, H, W)")
    torch.manual_seed(config.seed)
    model_spec = model_spec_for(config, data) if raw is None else raw["model_spec"]
    model = build_model(model_spec, allow_factory=allow_factory).to(device)
    if raw is None:
        check_fits(model, data)
    elif main:
        check_checkpoint_data(model, raw.get("data_fingerprint"), data, out / "checkpoint.pt")
    else:
        check_data_fits(model, data)
    if world > 1 and config.sync_bn:  # the same parameters and buffers: the state_dict is unchanged
        model = convert_to_global_bn(model)
    elif world > 1 and main and bn_modules(model):
        warnings.warn(per_rank_bn_note(config, world), stacklevel=3)
    channels_last = config.channels_last and len(data.input_shape) == 3
    if config.channels_last and not channels_last:
        raise ConfigError("--channels-last needs image data (C, H, W)")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config, model)
    scaler = torch.amp.GradScaler(device.type) if config.amp == "fp16" else None
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    if channels_last:
        x_train = x_train.contiguous(memory_format=torch.channels_last)
    y_clean = data.y_train_clean.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    steps_per_epoch = math.ceil(x_train.shape[0] / config.batch_size)
    state = TrainState(config, model, optimizer, data, out, steps_per_epoch=steps_per_epoch)
    return _Run(config, out, device, world, rank, main, data, data_spec, model_spec, model, optimizer, scaler,
                augment, channels_last, x_train, y_train, y_clean, x_test, y_test, state,
                data_fingerprint=data.fingerprint() if main else None)


def _resume(run: _Run, raw: dict[str, Any]) -> dict[str, int]:
    """Restore the run from the checkpoint ``raw``; returns where it resumes."""
    state = run.state
    run.model.load_state_dict(raw["model_state"])
    run.optimizer.load_state_dict(raw["optimizer_state"])
    saved_scaler = (raw.get("metadata") or {}).get("scaler_state")
    if run.scaler is not None and saved_scaler:
        run.scaler.load_state_dict(saved_scaler)
    prog = raw["progress"]
    state.epoch, state.step, state.batch_in_epoch = prog["epoch"], prog["step"], prog["batch_in_epoch"]
    run.metrics = list(raw.get("metrics") or [])
    if run.main:  # the saved sums are global (all ranks'); the other ranks restart theirs at 0
        partial = raw.get("partial") or {}  # without perturbed_count (saved before AMP): every step counted
        run.sums.update({"perturbed_count": partial.get("count", 0.0), **partial})
    set_rng_state(raw.get("rng"), run.device)
    run.environments = provenance.recorded(raw.get("metadata") or {})
    if run.main:
        write_metrics_file(run.out / "metrics.jsonl", run.metrics)
    return {"epoch": state.epoch, "step": state.step, "batch_in_epoch": state.batch_in_epoch}


def _prepare_model(run: _Run) -> None:
    """The DDP wrapper (several ranks), train mode, the compiled model and the steps' loss."""
    net = LogitsOnly(run.model) if run.data.is_tokens else run.model
    if run.world > 1:
        from torch.nn.parallel import DistributedDataParallel
        with warnings.catch_warnings():  # torch 2.13 deprecates it but advises keeping it for rank-local buffers
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
            run.ddp = DistributedDataParallel(net, broadcast_buffers=False,
                                              device_ids=[run.device.index] if run.device.type == "cuda" else None)
    run.model.train()
    run.stepped = torch.compile(net) if run.config.compile else net  # shares parameters and buffers
    if run.data.is_tokens:
        run.loss_fn = run.data.loss_fn
    elif run.config.label_smoothing:  # the same loss in both passes (and so in the gradient that sets e)
        run.loss_fn = functools.partial(F.cross_entropy, label_smoothing=run.config.label_smoothing)


def _run_epochs(run: _Run, callbacks: Sequence[Callback]) -> bool:
    """The remaining epochs; True when the run stopped early (on request) and saved."""
    while run.state.epoch < run.config.epochs:
        if _run_steps(run, callbacks):
            _save(run, finished=False)
            return True
        record = _epoch_record(run)
        if _end_epoch(run, record, callbacks):
            return True
    return False


def _run_steps(run: _Run, callbacks: Sequence[Callback]) -> bool:
    """The remaining steps of the running epoch; True when a stop was requested before its end."""
    config, state = run.config, run.state
    plan = epoch_plan(run.data, config, state.epoch, run.augment)
    order = plan["order"].to(run.device)
    for b in range(state.batch_in_epoch, state.steps_per_epoch):
        t0 = time.perf_counter()
        idx = order[b * config.batch_size:(b + 1) * config.batch_size]
        xb = run.x_train[idx]
        if run.augment:
            cpu_idx = idx.cpu()
            xb = crop_and_flip(xb, plan["shift"][cpu_idx].to(run.device), plan["flip"][cpu_idx].to(run.device))
        if run.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        run.lr = learning_rate(config, state.step, state.steps_per_epoch)
        for group in run.optimizer.param_groups:
            group["lr"] = run.lr
        result, idx = _step(run, idx, xb, run.y_train[idx])
        run.sums["skipped"] += float(result.skipped)
        _check_step(run, result)
        _add_step_sums(run, result, idx)
        state.step += 1
        state.batch_in_epoch = b + 1
        run.sums["seconds"] += time.perf_counter() - t0
        for cb in callbacks:
            cb.on_step_end(state)
        if state.stop_requested and state.batch_in_epoch < state.steps_per_epoch:
            return True
    return False


def _step(run: _Run, idx: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> tuple[StepResult, torch.Tensor]:
    """One optimizer step on the batch (several ranks: on this rank's part, whose indices are returned)."""
    config = run.config
    if run.ddp is None:
        return sam_step(run.stepped, run.loss_fn, xb, yb, run.optimizer, m=config.m, second_order=config.second_order,
                        autocast=run.autocast, scaler=run.scaler, same_dropout_mask=config.same_dropout_mask,
                        accumulate=micro_batch_count(config.grad_accum, idx.shape[0])), idx
    part = torch.tensor_split(torch.arange(idx.shape[0], device=idx.device), run.world)[run.rank]
    scale = part.shape[0] * run.world / idx.shape[0]
    idx, xb, yb = idx[part], xb[part], yb[part]
    # unless --sync-perturbation each rank perturbs with its own gradient (m-SAM with m = per-rank
    # batch); DDP averages the second pass, size-weighted by the scale n_rank * world / n_batch
    result = sam_step(run.ddp, run.loss_fn, xb, yb, run.optimizer, loss_scale=scale,
                      sync_first_pass=config.sync_perturbation, autocast=run.autocast, scaler=run.scaler,
                      accumulate=micro_batch_count(config.grad_accum, idx.shape[0]))
    if not config.sync_bn:  # with --sync-bn every rank already holds the global statistics
        _average_bn_stats(run.model)
    return result, idx


def _check_step(run: _Run, result: StepResult) -> None:
    """Stop on a non-finite loss; with several ranks, the ranks agree on that and on stopping."""
    state = run.state
    # a step the scaler skipped (inf/NaN gradient) left the weights at w: only the loss at w
    # must be finite then (float16 overflow at w + e is what the scaler is for)
    losses = [result.loss] + ([result.perturbed_loss] if result.perturbed_loss is not None
                              and not result.skipped else [])
    if run.world > 1:  # every rank must take the same branch: agree on NaN and on stopping
        flags = torch.tensor([float(not all(torch.isfinite(v) for v in losses)),
                              float(state.stop_requested)])
        dist_utils.all_reduce_sum(flags)
        if flags[0] > 0:
            losses = [torch.tensor(float("nan"))]
        state.stop_requested = bool(flags[1] > 0)
    for value in losses:
        if not torch.isfinite(value):
            raise NonFiniteLossError(
                f"loss became {value.item()} at epoch {state.epoch + 1}, step {state.step + 1} "
                f"(lr {run.lr:.4g}); stopped, {run.kept}; try a smaller --lr or --rho")


@torch.no_grad()
def _add_step_sums(run: _Run, result: StepResult, idx: torch.Tensor) -> None:
    """The step's losses and accuracies (noisy and clean labels) added to the epoch's sums with one
    host sync; token data counts tokens."""
    labels = run.y_train[idx]
    sums, nb = run.sums, labels.numel()
    outputs = result.outputs.float() if run.autocast is not None else result.outputs
    pred = outputs.argmax(-1)
    loss = result.loss.double()
    correct = (pred == labels).sum().double()
    if run.data.noise.n_flipped:
        loss_clean = F.cross_entropy(outputs, run.y_clean[idx]).double()
        correct_clean = (pred == run.y_clean[idx]).sum().double()
    else:  # clean labels are the training labels
        loss_clean, correct_clean = loss, correct
    counted = result.perturbed_loss is not None and not result.skipped  # not LookSAM's one-pass steps
    perturbed = result.perturbed_loss.double() if counted else loss * 0
    values = torch.stack([loss * nb, correct, loss_clean * nb, correct_clean, perturbed * nb]).tolist()
    for key, value in zip(_SUMS, values):
        sums[key] += value
    sums["count"] += nb
    sums["perturbed_count"] += nb if counted else 0


def _epoch_record(run: _Run) -> dict[str, Any]:
    """The finished epoch's line of metrics.jsonl: its means over all ranks and the test metrics."""
    run.sums = sums = _reduced_sums(run)
    count = max(1.0, sums["count"])
    sizes = ({"batch_size": token_eval_batch(run.config.batch_size, run.x_test.shape[-1], run.data.num_classes)}
             if run.data.is_tokens else {})
    test_loss, test_acc = evaluate(run.model, run.x_test, run.y_test, **sizes)
    record = {
        "epoch": run.state.epoch + 1, "step": run.state.step, "lr": run.lr,
        "train_loss": sums["loss"] / count, "train_acc": sums["correct"] / count,
        "train_loss_clean": sums["loss_clean"] / count, "train_acc_clean": sums["correct_clean"] / count,
        "test_loss": test_loss, "test_acc": test_acc, "epoch_time": sums["seconds"],
    }
    if run.data.is_tokens:  # loss and accuracy per token; perplexity exp(token-mean loss)
        record["test_ppl"] = math.exp(min(test_loss, 700.0))
    if isinstance(run.optimizer, SAM):  # over the steps not skipped (all of them in float32)
        record["perturbed_loss"] = sums["perturbed_loss"] / max(1.0, sums["perturbed_count"])
    if run.scaler is not None:
        record["skipped_steps"] = int(sums["skipped"])
        record["loss_scale"] = float(run.scaler.get_scale())
    return record


def _end_epoch(run: _Run, record: dict[str, Any], callbacks: Sequence[Callback]) -> bool:
    """Check, count, record and (when due) checkpoint the finished epoch; True when a stop was
    requested before the last epoch."""
    config, state = run.config, run.state
    check_diverged(record, run.data.num_classes, run.kept)
    state.epoch += 1
    state.batch_in_epoch = 0
    run.sums = dict.fromkeys(_SUMS, 0.0)
    for cb in callbacks:
        cb.on_epoch_end(state, record)
    run.metrics.append(record)
    last = state.epoch == config.epochs
    if last or state.epoch % config.checkpoint_every == 0 or state.stop_requested:
        _save(run, finished=last)
        if config.keep_snapshots and run.main:
            _save_snapshot(run, finished=last)
    if run.main:
        append_metrics(run.out / "metrics.jsonl", record)
    return state.stop_requested and not last


def _save(run: _Run, finished: bool) -> None:
    """The full checkpoint (refused for non-finite weights); every rank takes part, rank 0 writes."""
    state = run.state
    partial = dict(_reduced_sums(run)) if state.batch_in_epoch else None
    if not all(torch.isfinite(t).all() for t in run.model.state_dict().values() if t.is_floating_point()):
        raise NonFiniteLossError(f"weights became NaN/Inf by epoch {state.epoch}, step {state.step}; "
                                 f"not saved, {run.kept}; try a smaller --lr or --rho")
    if not run.main:
        return
    here = provenance.of_model(run.model, autocast=run.config.amp)
    if not run.environments or provenance.differences([run.environments[-1], here]):
        run.environments.append(here)  # a resume on another machine, thread count, torch...
    save_checkpoint(run.ckpt_path, run.model, **_identity(run, state.batch_in_epoch, finished),
                    optimizer_state=run.optimizer.state_dict(), rng=rng_state(run.device), metrics=run.metrics,
                    partial=partial, world_size=run.world, environment=here, environments=run.environments,
                    scaler_state=run.scaler.state_dict() if run.scaler is not None else None)


def _save_snapshot(run: _Run, finished: bool) -> None:
    """The model-only snapshot ``checkpoints/epoch_NNNN.pt`` (0: the initialisation)."""
    save_checkpoint(run.out / "checkpoints" / f"epoch_{run.state.epoch:04d}.pt", run.model,
                    **_identity(run, 0, finished))


def _identity(run: _Run, batch_in_epoch: int, finished: bool) -> dict[str, Any]:
    """What every checkpoint of the run records: its specs, data fingerprint, configuration, progress."""
    state = run.state
    return dict(model_spec=run.model_spec, data_spec=run.data_spec.to_dict(), data_fingerprint=run.data_fingerprint,
                config=run.config.to_dict(), progress={"epoch": state.epoch, "step": state.step,
                                                        "batch_in_epoch": batch_in_epoch, "finished": finished})


def _reduced_sums(run: _Run) -> dict[str, float]:
    """The epoch's sums over all ranks (timing and skip counts: this rank's)."""
    if run.world == 1:
        return run.sums
    reduced = [k for k in _SUMS if k not in _LOCAL_SUMS]
    t = dist_utils.all_reduce_sum(torch.tensor([run.sums[k] for k in reduced], dtype=torch.float64))
    out_sums = dict(zip(reduced, t.tolist()))
    out_sums.update({k: run.sums[k] for k in _LOCAL_SUMS})
    return out_sums
