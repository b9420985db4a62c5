"""The training loop: SGD / SAM / ASAM / RSAM to resumable checkpoints and a metrics log.

Determinism: the model is initialised from ``seed``; the order of the examples in epoch
``e`` (and the crop/flip augmentation, when on) comes from a generator seeded with
``(seed, e)``; the global torch RNG (dropout) is saved in every checkpoint. A run stopped
at any step boundary and resumed therefore produces bit-for-bit the same weights on CPU
as a run that never stopped.

Files written in ``out_dir``::

    checkpoint.pt            the latest full checkpoint (model, optimizer, RNG, metrics)
    metrics.jsonl            one JSON object per finished epoch
    checkpoints/epoch_NNNN.pt  model-only snapshots (epoch 0 = initialisation), for
                             trajectory analyses; off with keep_snapshots=False
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as dist_utils
from ..checkpoint import atomic_write_bytes, read_checkpoint, save_checkpoint
from ..data import DataSpec, Dataset, load_dataset
from ..errors import CheckpointError, ConfigError, NonFiniteLossError
from ..models import build_model, make_factory_spec, make_model_spec
from ..optim import GSAM, RSAM, SAM, WSAM, FriendlySAM, LookSAM, asam_groups, bn_modules, sam_step
from ..optim.asam import ASAM_RULES

__all__ = ["TrainConfig", "TrainResult", "Callback", "train", "learning_rate", "OPTIMIZERS", "TRACKABLE"]

# rsam: SAM with a random e (the control); gsam, wsam, looksam, fsam: SAM's successors (sharpscope.optim)
OPTIMIZERS = ("sgd", "sam", "asam", "rsam", "gsam", "wsam", "looksam", "fsam")
SCHEDULES = ("cosine", "constant")
DEFAULT_RHO = {"sgd": 0.0, "sam": 0.05, "asam": 0.5, "rsam": 0.05, "gsam": 0.05, "wsam": 0.05, "looksam": 0.05,
               "fsam": 0.05}
# The variants' own options (--optimizer-opt KEY=VALUE) and their classes; the defaults are the classes'.
VARIANTS: dict[str, tuple[type[SAM], tuple[str, ...]]] = {
    "gsam": (GSAM, ("alpha", "rho_min")),
    "wsam": (WSAM, ("gamma", "decouple")),
    "looksam": (LookSAM, ("k", "alpha")),
    "fsam": (FriendlySAM, ("sigma", "lmbda")),
}
# Optimizers whose steps run per m-SAM chunk, under a GradScaler and on several ranks.
M_SAM_OPTIMIZERS = ("sam", "asam", "rsam")
# What sharpscope.train.tracking can measure during training (here, so that validating a
# configuration does not import the analyses).
TRACKABLE = ("gradcos", "lambda_max", "trace", "m_sharpness")
SEED_RANGE = (0, 2**63 - 1)  # what torch generators take
# An epoch whose mean training loss exceeds this many times the chance-level cross-entropy
# log(classes) has diverged (a run that learns stays below about 1x; 100x means logits off
# by hundreds), even while every number is still finite.
DIVERGED_FACTOR = 100.0
# --amp: the autocast dtype of each choice (None: float32 throughout)
AMP_DTYPES: dict[str | None, torch.dtype | None] = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in every checkpoint)."""

    optimizer: str = "sam"
    model: str = "cnn"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "digits"
    data_root: str | None = None
    label_noise: float = 0.0
    n_train: int | None = None
    epochs: int = 40
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    rho: float | None = None  # None: 0.05 for SAM and RSAM, 0.5 for ASAM (Kwon et al.)
    p: float = 2.0
    eta: float = 0.01
    asam_rule: str = "official"  # which parameters ASAM scales by |w| + eta (sharpscope.optim.asam)
    optimizer_options: dict[str, Any] = field(default_factory=dict)  # a variant's options (VARIANTS)
    # in the training loss of both passes, so the metrics' train_loss is the smoothed loss; evaluation
    # (test_loss, and every analysis) uses plain cross-entropy
    label_smoothing: float = 0.0
    same_dropout_mask: bool = False  # the pass at w + e replays the dropout masks of the pass at w
    perturbation_weight_decay: bool = False  # e from g + weight_decay * w (google-research/sam)
    m: int | None = None
    seed: int = 0
    checkpoint_every: int = 1
    keep_snapshots: bool = True
    augment: bool | None = None  # None: random crop + flip for CIFAR, off otherwise
    device: str = "cpu"
    second_order: bool = False  # SAM with the full gradient of L(w + e_hat(w))
    amp: str | None = None  # mixed precision: "bf16" (autocast) or "fp16" (autocast and a GradScaler)
    channels_last: bool = False  # image models and inputs in channels-last memory format
    compile: bool = False  # the training steps run a torch.compile'd model (evaluation stays eager)
    sync_perturbation: bool = False  # several ranks: one perturbation from the global gradient
    track: list[str] = field(default_factory=list)  # names from TRACKABLE
    track_every: int = 1
    track_samples: int = 512

    def __post_init__(self) -> None:
        if self.data_root is not None:  # checkpoints must find the data from any working directory
            self.data_root = os.path.abspath(os.path.expanduser(str(self.data_root)))
        self.validate()

    @property
    def effective_rho(self) -> float:
        return DEFAULT_RHO[self.optimizer] if self.rho is None else float(self.rho)

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        checks = [
            (self.rho is None or (math.isfinite(self.rho) and self.rho >= 0), f"rho must be >= 0, got {self.rho}"),
            (0.0 <= self.label_noise < 1.0, f"label noise must be in [0, 1), got {self.label_noise}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (math.isfinite(self.lr) and self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.warmup_epochs <= self.epochs, f"warm-up must be within [0, epochs], got {self.warmup_epochs}"),
            (self.p == math.inf or self.p > 1, f"p must be > 1 or inf, got {self.p}"),
            (self.eta >= 0, f"eta must be >= 0, got {self.eta}"),
            (self.m is None or self.m >= 1, f"m must be >= 1, got {self.m}"),
            (self.m is None or self.m <= self.batch_size,
             f"m (examples per m-SAM perturbation) must be <= the batch size {self.batch_size}, got {self.m}"),
            (SEED_RANGE[0] <= self.seed <= SEED_RANGE[1], f"seed must be in [0, 2**63), got {self.seed}"),
            (self.checkpoint_every >= 1, f"checkpoint interval must be >= 1, got {self.checkpoint_every}"),
            (self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:"),
             f"device must be cpu, cuda, cuda:N or auto, got {self.device!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.m is not None and self.optimizer not in M_SAM_OPTIMIZERS:
            raise ConfigError(f"m (m-SAM) needs --optimizer sam, asam or rsam, not {self.optimizer}")
        if self.amp == "fp16" and self.optimizer in VARIANTS:
            raise ConfigError(f"--optimizer {self.optimizer} does not run under fp16's gradient scaler; use --amp bf16")
        allowed = VARIANTS.get(self.optimizer, (None, ()))[1]
        unknown_opts = sorted(set(self.optimizer_options) - set(allowed))
        if unknown_opts:
            raise ConfigError(f"--optimizer {self.optimizer} has no option {unknown_opts[0]!r}"
                              + (f"; its options: {', '.join(allowed)}" if allowed else ""))
        if not (math.isfinite(self.label_smoothing) and 0.0 <= self.label_smoothing < 1.0):
            raise ConfigError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.same_dropout_mask and self.m is not None:
            raise ConfigError("--same-dropout-mask applies to whole-batch SAM steps, not m-SAM chunks")
        if self.optimizer == "gsam" and self.p != 2:
            raise ConfigError("GSAM's gradient decomposition is Euclidean: it needs p = 2")
        if self.optimizer in VARIANTS:  # the option values, on a stand-in parameter
            try:
                _make_variant(self, [torch.zeros(1, requires_grad=True)])
            except TypeError as err:
                raise ConfigError(f"--optimizer-opt for {self.optimizer}: {err}") from None
        if self.second_order and (self.optimizer != "sam" or self.p != 2 or self.m is not None):
            raise ConfigError("--second-order needs --optimizer sam with p = 2 and no m")
        if self.asam_rule not in ASAM_RULES:
            raise ConfigError(f"--asam-rule must be one of {', '.join(ASAM_RULES)}, got {self.asam_rule!r}")
        if self.amp not in AMP_DTYPES:
            raise ConfigError(f"--amp must be bf16 or fp16, got {self.amp!r}")
        if self.amp is not None and self.second_order:
            raise ConfigError("--second-order runs in float32 only (its double backward in reduced precision would "
                              "not be the second-order gradient); drop --amp")
        unknown = sorted(set(self.track) - set(TRACKABLE))
        if unknown:
            raise ConfigError(f"cannot track {', '.join(unknown)}; choose from {', '.join(TRACKABLE)}")
        if self.track_every < 1 or self.track_samples < 1:
            raise ConfigError("track interval and track samples must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
        if d.get("optimizer") == "asam" and "asam_rule" not in d:  # saved before the official rule
            d = {**d, "asam_rule": "all"}
        return cls(**d)

    def data_spec(self) -> DataSpec:
        return DataSpec(name=self.data, root=self.data_root, seed=self.seed,
                        label_noise=self.label_noise, noise_seed=self.seed, n_train=self.n_train)


@dataclass
class TrainResult:
    """The outcome of :func:`train`."""

    out_dir: Path
    checkpoint: Path
    metrics: list[dict[str, Any]]
    interrupted: bool
    resumed_from: dict[str, int] | None
    wall_time: float

    @property
    def final(self) -> dict[str, Any]:
        return self.metrics[-1] if self.metrics else {}


class Callback:
    """Hooks into the loop; ``on_epoch_end`` may add keys to the epoch's metrics."""

    def on_train_begin(self, state: TrainState) -> None: ...

    def on_step_end(self, state: TrainState) -> None: ...

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None: ...

    def on_train_end(self, state: TrainState) -> None: ...


@dataclass
class TrainState:
    """What callbacks can see (and ``stop_requested`` they may set)."""

    config: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    data: Dataset
    out_dir: Path
    epoch: int = 0           # completed epochs
    step: int = 0            # optimizer steps taken
    batch_in_epoch: int = 0  # batches done in the running epoch
    steps_per_epoch: int = 0
    stop_requested: bool = False


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warm-up then cosine or constant.

    cosine: lr * (1 + cos(pi * t)) / 2 with t the fraction of post-warm-up steps done.
    """
    total = config.epochs * steps_per_epoch
    warm = int(round(config.warmup_epochs * steps_per_epoch))
    if step < warm:
        return config.lr * (step + 1) / warm
    if config.schedule == "constant":
        return config.lr
    t = (step - warm) / max(1, total - warm)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7919 + 17) % (2**63 - 1))


def _epoch_plan(data: Dataset, config: TrainConfig, epoch: int, augment: bool) -> dict[str, torch.Tensor]:
    """The order of examples (and augmentation draws) of one epoch, reproducible from (seed, epoch)."""
    n = data.x_train.shape[0]
    gen = _epoch_generator(config.seed, epoch)
    plan = {"order": torch.randperm(n, generator=gen)}
    if augment:
        plan["shift"] = torch.randint(-4, 5, (n, 2), generator=gen)
        plan["flip"] = torch.rand(n, generator=gen) < 0.5
    return plan


def _augment(x: torch.Tensor, shift: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Random crop with 4 pixels of zero padding and horizontal flip (He et al. 2016)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (4, 4, 4, 4))
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        dy, dx = int(shift[i, 0]) + 4, int(shift[i, 1]) + 4
        out[i] = padded[i, :, dy:dy + h, dx:dx + w]
    out[flip] = out[flip].flip(-1)
    return out


def _model_spec(config: TrainConfig, data: Dataset) -> dict:
    if ":" in config.model:
        return make_factory_spec(config.model, **config.model_kwargs)
    return make_model_spec(config.model, data.input_shape, data.num_classes, **config.model_kwargs)


def _check_fits(model: nn.Module, data: Dataset) -> None:
    """One example through the model (eval mode, no grad, RNG untouched): a model that does
    not fit the data fails here with one clear line instead of a traceback mid-training."""
    device = next(model.parameters()).device
    x = data.x_train[:1].to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = model(x)
    except RuntimeError as err:
        first = (str(err).splitlines() or ["?"])[0][:200]
        raise ConfigError(f"the model does not accept inputs of shape {tuple(data.input_shape)}: {first}") from None
    finally:
        model.train(was_training)
    if out.dim() != 2 or out.shape[1] != data.num_classes:
        raise ConfigError(f"the model outputs shape {tuple(out.shape[1:])} per example; "
                          f"{data.num_classes} class scores are needed")


def _check_diverged(record: dict[str, Any], num_classes: int, kept: str) -> None:
    """Stop a run whose epoch ended with a non-finite or exploded loss (before it is saved)."""
    chance = math.log(max(num_classes, 2))
    train_loss, test_loss = record["train_loss"], record["test_loss"]
    if math.isfinite(train_loss) and math.isfinite(test_loss) and train_loss <= DIVERGED_FACTOR * chance:
        return
    raise NonFiniteLossError(
        f"training diverged in epoch {record['epoch']} (lr {record['lr']:.4g}): mean train loss {train_loss:.4g}, "
        f"test loss {test_loss:.4g}, chance level {chance:.3g}; not saved, {kept}; try a smaller --lr or --rho")


def _stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for the named random stream ``stream`` of run ``seed`` (independent of the
    other streams drawn from ``seed``)."""
    digest = hashlib.blake2b(f"{int(seed)}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    sgd = _sgd_options(config)
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), **sgd)
    if config.optimizer == "rsam":  # its own stream: seeding with config.seed would replay the init's draws
        return RSAM(model.parameters(), torch.optim.SGD, rho=config.effective_rho, p=config.p,
                    seed=_stream_seed(config.seed, "rsam"), **sgd)
    if config.optimizer in VARIANTS:
        return _make_variant(config, model.parameters())
    params = asam_groups(model, config.eta, config.asam_rule) if config.optimizer == "asam" else model.parameters()
    return SAM(params, torch.optim.SGD, rho=config.effective_rho, p=config.p, eta=config.eta,
               perturbation_weight_decay=config.perturbation_weight_decay, **sgd)


def _sgd_options(config: TrainConfig) -> dict[str, Any]:
    return dict(lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=config.nesterov)


def _make_variant(config: TrainConfig, params: Any) -> SAM:
    """GSAM, WSAM, LookSAM or Friendly SAM around SGD, with the run's options (``p`` for all but
    GSAM, whose decomposition is Euclidean)."""
    cls = VARIANTS[config.optimizer][0]
    extra = {} if cls is GSAM else {"p": config.p}
    return cls(params, torch.optim.SGD, rho=config.effective_rho, eta=config.eta,
               perturbation_weight_decay=config.perturbation_weight_decay, **extra, **_sgd_options(config),
               **config.optimizer_options)


@torch.no_grad()
def _average_bn_stats(model: nn.Module) -> None:
    """Running statistics averaged over ranks: what single-process m-SAM stores (the mean
    of the per-chunk updates); DDP itself leaves them rank-local (broadcast_buffers=False)."""
    world = dist_utils.world_size()
    for bn in bn_modules(model):
        for name in ("running_mean", "running_var"):
            buf = getattr(bn, name, None)
            if buf is not None:
                buf.copy_(dist_utils.all_reduce_sum(buf.clone()) / world)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (eval mode) on (x, y); restores the mode."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for lo in range(0, x.shape[0], batch_size):
        out = model(x[lo:lo + batch_size])
        loss_sum += F.cross_entropy(out, y[lo:lo + batch_size], reduction="sum").item()
        correct += (out.argmax(1) == y[lo:lo + batch_size]).sum().item()
    model.train(was_training)
    n = max(1, x.shape[0])
    return loss_sum / n, correct / n


@contextmanager
def _sigint_requests_stop(state: TrainState) -> Iterator[None]:
    """First Ctrl-C asks the loop to save and stop at the next step boundary; a second one aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if state.stop_requested:
            raise KeyboardInterrupt
        state.stop_requested = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any] | None, device: torch.device) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_metrics_file(path: Path, metrics: Sequence[dict[str, Any]]) -> None:
    text = "".join(json.dumps(m) + "\n" for m in metrics).encode()
    atomic_write_bytes(path, lambda fh: fh.write(text))


def _append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


_SUMS = ("loss", "correct", "loss_clean", "correct_clean", "perturbed_loss", "count", "perturbed_count", "skipped",
         "seconds")
_LOCAL_SUMS = ("skipped", "seconds")  # the same on every rank (or this rank's own): not all-reduced


def train(
    config: TrainConfig | None = None,
    out_dir: str | os.PathLike[str] = "runs/train",
    *,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train a model as ``config`` says, checkpointing to ``out_dir``.

    ``resume=True`` continues from ``out_dir/checkpoint.pt`` with the stored
    configuration (``config`` may then be None); a finished run is returned as it is.
    Without ``resume``, an existing checkpoint in ``out_dir`` is an error, never
    overwritten. A NaN/Inf loss raises :class:`NonFiniteLossError` and leaves the last
    good checkpoint in place. Ctrl-C (or a callback setting ``state.stop_requested``)
    saves a checkpoint at the next step boundary and returns with ``interrupted=True``.
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    ckpt_path = out / "checkpoint.pt"
    raw = None
    if resume and ckpt_path.exists():
        raw = read_checkpoint(ckpt_path)
        if not raw.get("config") or raw.get("optimizer_state") is None:
            raise CheckpointError(f"{ckpt_path}: has no training state to resume from")
        config = TrainConfig.from_dict(raw["config"])
    elif ckpt_path.exists():
        raise ConfigError(f"{ckpt_path} exists; pass --resume to continue it or choose another --out")
    if config is None:
        raise ConfigError(f"nothing to resume in {out} and no configuration given")
    config.validate()
    device = dist_utils.resolve_device(config.device)
    world, rank, main = dist_utils.world_size(), dist_utils.rank(), dist_utils.is_main()
    if world > 1 and config.optimizer in VARIANTS:
        raise ConfigError(f"--optimizer {config.optimizer} runs in a single process (its update combines both "
                          "passes' gradients, which data-parallel SAM averages separately)")
    if world > 1 and (config.m is not None or config.second_order):
        raise ConfigError("with several ranks each rank already perturbs with its own gradient (m-SAM with "
                          "m = per-rank batch); --m and --second-order need a single process")
    dist_utils.barrier()  # every rank has checked the folder before rank 0 writes to it

    data_spec = config.data_spec()
    data = load_dataset(data_spec)
    augment = config.augment if config.augment is not None else config.data in ("cifar10", "cifar100")
    if augment and len(data.input_shape) != 3:
        raise ConfigError("augmentation needs image data (C, H, W)")
    torch.manual_seed(config.seed)
    model_spec = _model_spec(config, data)
    model = build_model(model_spec).to(device)
    _check_fits(model, data)
    channels_last = config.channels_last and len(data.input_shape) == 3
    if config.channels_last and not channels_last:
        raise ConfigError("--channels-last needs image data (C, H, W)")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _make_optimizer(config, model)
    autocast = AMP_DTYPES[config.amp]
    scaler = torch.amp.GradScaler(device.type) if config.amp == "fp16" else None
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    if channels_last:
        x_train = x_train.contiguous(memory_format=torch.channels_last)
    y_clean = data.y_train_clean.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    n_train = x_train.shape[0]
    steps_per_epoch = math.ceil(n_train / config.batch_size)

    state = TrainState(config, model, optimizer, data, out, steps_per_epoch=steps_per_epoch)
    metrics: list[dict[str, Any]] = []
    sums = dict.fromkeys(_SUMS, 0.0)
    resumed_from = None
    if raw is not None:
        model.load_state_dict(raw["model_state"])
        optimizer.load_state_dict(raw["optimizer_state"])
        saved_scaler = (raw.get("metadata") or {}).get("scaler_state")
        if scaler is not None and saved_scaler:
            scaler.load_state_dict(saved_scaler)
        prog = raw["progress"]
        state.epoch, state.step, state.batch_in_epoch = prog["epoch"], prog["step"], prog["batch_in_epoch"]
        metrics = list(raw.get("metrics") or [])
        if main:  # the saved sums are global (all ranks'); the other ranks restart theirs at 0
            partial = raw.get("partial") or {}
            sums.update(partial)
            sums.setdefault("perturbed_count", 0.0)
            if partial and "perturbed_count" not in partial:  # saved before AMP: every step counted
                sums["perturbed_count"] = partial.get("count", 0.0)
        _set_rng_state(raw.get("rng"), device)
        resumed_from = {"epoch": state.epoch, "step": state.step, "batch_in_epoch": state.batch_in_epoch}
        if main:
            _write_metrics_file(out / "metrics.jsonl", metrics)
        if prog.get("finished"):
            return TrainResult(out, ckpt_path, metrics, False, resumed_from, time.perf_counter() - t_start)
    elif main:
        out.mkdir(parents=True, exist_ok=True)
        _write_metrics_file(out / "metrics.jsonl", [])
        if config.keep_snapshots:
            save_checkpoint(out / "checkpoints" / "epoch_0000.pt", model, model_spec=model_spec,
                            data_spec=data_spec.to_dict(), config=config.to_dict(),
                            progress={"epoch": 0, "step": 0, "batch_in_epoch": 0, "finished": False})

    def save(finished: bool) -> None:
        # every rank takes part (the sums are all-reduced, the checks agree); rank 0 writes
        partial = dict(reduced_sums()) if state.batch_in_epoch else None
        if not all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()):
            kept = (f"the last good checkpoint {ckpt_path} is kept" if ckpt_path.exists()
                    else "no checkpoint had been written yet")
            raise NonFiniteLossError(f"weights became NaN/Inf by epoch {state.epoch}, step {state.step}; "
                                     f"not saved, {kept}; try a smaller --lr or --rho")
        if not main:
            return
        save_checkpoint(
            ckpt_path, model, model_spec=model_spec, data_spec=data_spec.to_dict(),
            optimizer_state=optimizer.state_dict(), config=config.to_dict(),
            progress={"epoch": state.epoch, "step": state.step, "batch_in_epoch": state.batch_in_epoch,
                      "finished": finished},
            rng=_rng_state(device), metrics=metrics,
            partial=partial, world_size=world, scaler_state=scaler.state_dict() if scaler is not None else None,
        )

    def reduced_sums() -> dict[str, float]:
        if world == 1:
            return sums
        reduced = [k for k in _SUMS if k not in _LOCAL_SUMS]
        t = dist_utils.all_reduce_sum(torch.tensor([sums[k] for k in reduced], dtype=torch.float64))
        out_sums = dict(zip(reduced, t.tolist()))
        out_sums.update({k: sums[k] for k in _LOCAL_SUMS})
        return out_sums

    ddp = None
    if world > 1:
        import warnings

        from torch.nn.parallel import DistributedDataParallel
        with warnings.catch_warnings():  # torch 2.13 deprecates it but advises keeping it for rank-local buffers
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
            ddp = DistributedDataParallel(model, broadcast_buffers=False,
                                          device_ids=[device.index] if device.type == "cuda" else None)

    model.train()
    stepped = torch.compile(model) if config.compile else model  # shares the parameters and buffers
    loss_fn = (functools.partial(F.cross_entropy, label_smoothing=config.label_smoothing) if config.label_smoothing
               else F.cross_entropy)  # the same loss in both passes (and so in the gradient that sets e)
    if config.track:
        from .tracking import TrackingCallback
        rho = config.effective_rho if config.optimizer != "sgd" else DEFAULT_RHO["sam"]
        callbacks = [TrackingCallback(config.track, config.track_every, config.track_samples, rho, config.seed),
                     *callbacks]
    for cb in callbacks:
        cb.on_train_begin(state)
    interrupted = False
    noisy = bool(data.noise.n_flipped)
    with _sigint_requests_stop(state):
        while state.epoch < config.epochs:
            plan = _epoch_plan(data, config, state.epoch, augment)
            order = plan["order"].to(device)
            for b in range(state.batch_in_epoch, steps_per_epoch):
                t0 = time.perf_counter()
                idx = order[b * config.batch_size:(b + 1) * config.batch_size]
                xb = x_train[idx]
                if augment:
                    cpu_idx = idx.cpu()
                    xb = _augment(xb, plan["shift"][cpu_idx].to(device), plan["flip"][cpu_idx].to(device))
                if channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                lr = learning_rate(config, state.step, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                yb = y_train[idx]
                if ddp is not None:  # this rank's consecutive slice of the global batch
                    part = torch.tensor_split(torch.arange(idx.shape[0], device=idx.device), world)[rank]
                    scale = part.shape[0] * world / idx.shape[0]
                    idx, xb, yb = idx[part], xb[part], yb[part]
                    # first pass under no_sync unless --sync-perturbation: each rank perturbs with its
                    # own gradient (m-SAM with m = per-rank batch); DDP averages the second pass, and
                    # the scale n_rank * world / n_batch makes that average size-weighted
                    result = sam_step(ddp, loss_fn, xb, yb, optimizer, loss_scale=scale,
                                      sync_first_pass=config.sync_perturbation, autocast=autocast, scaler=scaler)
                    _average_bn_stats(model)
                else:
                    result = sam_step(stepped, loss_fn, xb, yb, optimizer, m=config.m,
                                      second_order=config.second_order, autocast=autocast, scaler=scaler,
                                      same_dropout_mask=config.same_dropout_mask)
                # a step the scaler skipped (inf/NaN gradient) left the weights at w: only the loss at w
                # must be finite then (float16 overflow at w + e is what the scaler is for)
                losses = [result.loss] + ([result.perturbed_loss] if result.perturbed_loss is not None
                                          and not result.skipped else [])
                sums["skipped"] += float(result.skipped)
                if world > 1:  # every rank must take the same branch: agree on NaN and on stopping
                    flags = torch.tensor([float(not all(torch.isfinite(v) for v in losses)),
                                          float(state.stop_requested)])
                    dist_utils.all_reduce_sum(flags)
                    if flags[0] > 0:
                        losses = [torch.tensor(float("nan"))]
                    state.stop_requested = bool(flags[1] > 0)
                for value in losses:
                    if not torch.isfinite(value):
                        kept = (f"the last good checkpoint {ckpt_path} is kept" if ckpt_path.exists()
                                else "no checkpoint had been written yet")
                        raise NonFiniteLossError(
                            f"loss became {value.item()} at epoch {state.epoch + 1}, step {state.step + 1} "
                            f"(lr {lr:.4g}); stopped, {kept}; try a smaller --lr or --rho")
                with torch.no_grad():  # one host sync for all the step's metrics
                    nb = idx.shape[0]
                    outputs = result.outputs.float() if autocast is not None else result.outputs
                    pred = outputs.argmax(1)
                    loss = result.loss.double()
                    correct = (pred == y_train[idx]).sum().double()
                    if noisy:
                        loss_clean = F.cross_entropy(outputs, y_clean[idx]).double()
                        correct_clean = (pred == y_clean[idx]).sum().double()
                    else:  # clean labels are the training labels
                        loss_clean, correct_clean = loss, correct
                    perturbed = (result.perturbed_loss.double() if result.perturbed_loss is not None and
                                 not result.skipped else loss * 0)
                    values = torch.stack([loss * nb, correct, loss_clean * nb, correct_clean, perturbed * nb]).tolist()
                    for key, value in zip(_SUMS, values):
                        sums[key] += value
                    sums["count"] += nb
                    # steps with a perturbed pass (not skipped by the scaler, not LookSAM's one-pass steps)
                    sums["perturbed_count"] += 0 if result.skipped or result.perturbed_loss is None else nb
                state.step += 1
                state.batch_in_epoch = b + 1
                sums["seconds"] += time.perf_counter() - t0
                for cb in callbacks:
                    cb.on_step_end(state)
                if state.stop_requested and state.batch_in_epoch < steps_per_epoch:
                    interrupted = True
                    break
            if interrupted:
                save(finished=False)
                break
            sums = reduced_sums()
            count = max(1.0, sums["count"])
            test_loss, test_acc = evaluate(model, x_test, y_test)
            record = {
                "epoch": state.epoch + 1, "step": state.step, "lr": lr,
                "train_loss": sums["loss"] / count, "train_acc": sums["correct"] / count,
                "train_loss_clean": sums["loss_clean"] / count, "train_acc_clean": sums["correct_clean"] / count,
                "test_loss": test_loss, "test_acc": test_acc, "epoch_time": sums["seconds"],
            }
            if isinstance(optimizer, SAM):  # over the steps not skipped (all of them in float32)
                record["perturbed_loss"] = sums["perturbed_loss"] / max(1.0, sums["perturbed_count"])
            if scaler is not None:
                record["skipped_steps"] = int(sums["skipped"])
                record["loss_scale"] = float(scaler.get_scale())
            _check_diverged(record, data.num_classes, f"the last good checkpoint {ckpt_path} is kept"
                            if ckpt_path.exists() else "no checkpoint had been written yet")
            state.epoch += 1
            state.batch_in_epoch = 0
            sums = dict.fromkeys(_SUMS, 0.0)
            for cb in callbacks:
                cb.on_epoch_end(state, record)
            metrics.append(record)
            last = state.epoch == config.epochs
            if last or state.epoch % config.checkpoint_every == 0 or state.stop_requested:
                save(finished=last)
                if config.keep_snapshots and main:
                    save_checkpoint(out / "checkpoints" / f"epoch_{state.epoch:04d}.pt", model,
                                    model_spec=model_spec, data_spec=data_spec.to_dict(), config=config.to_dict(),
                                    progress={"epoch": state.epoch, "step": state.step, "batch_in_epoch": 0,
                                              "finished": last})
            if main:
                _append_metrics(out / "metrics.jsonl", record)
            if state.stop_requested and not last:
                interrupted = True
                break
    for cb in callbacks:
        cb.on_train_end(state)
    dist_utils.barrier()  # the other ranks return once rank 0 has written everything
    return TrainResult(out, ckpt_path, metrics, interrupted, resumed_from, time.perf_counter() - t_start)
