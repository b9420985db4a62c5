"""What defines a training run: :class:`TrainConfig` (validated, stored in every checkpoint),
:class:`TrainResult`, the learning-rate schedule, the optimizer a configuration names, and the
names one may choose (optimizers, variants, schedules, what may be tracked, AMP dtypes)."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checks import bool_option
from ..data import DataSpec
from ..errors import ConfigError
from ..optim import GSAM, RSAM, SAM, WSAM, FriendlySAM, LookSAM, asam_groups
from ..optim.asam import ASAM_RULES

__all__ = ["TrainConfig", "TrainResult", "learning_rate", "OPTIMIZERS", "SCHEDULES", "DEFAULT_RHO", "VARIANTS",
           "M_SAM_OPTIMIZERS", "TRACKABLE", "SEED_RANGE", "DIVERGED_FACTOR", "AMP_DTYPES"]

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


def __getattr__(name: str) -> Any:
    if name == "TRACKABLE":  # what sharpscope.train.tracking can measure, read from the table of measures
        from .tracking import trackable
        return tuple(trackable())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    # several ranks: batch-norm statistics over the global batch (sharpscope.optim.sync_bn) in both
    # passes; with a perturbation it needs sync_perturbation (one perturbed model for all ranks)
    sync_bn: bool = False
    track: list[str] = field(default_factory=list)  # names from TRACKABLE
    track_every: int = 1
    track_samples: int = 512

    def __post_init__(self) -> None:
        if self.data_root is not None:  # checkpoints must find the data from any working directory
            self.data_root = os.path.abspath(os.path.expanduser(str(self.data_root)))
        self.optimizer_options = _typed_variant_options(self.optimizer, dict(self.optimizer_options))
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
        from .tracking import trackable  # the table of measures, imported when validating
        unknown = sorted(set(self.track) - set(trackable()))
        if unknown:
            raise ConfigError(f"cannot track {', '.join(unknown)}; choose from {', '.join(trackable())}")
        if self.sync_bn and self.optimizer != "sgd" and not self.sync_perturbation:
            raise ConfigError("--sync-bn needs --sync-perturbation: with one perturbation per rank, each rank's "
                              "pass at w + e_r would pool batch statistics of differently perturbed models")
        if self.sync_bn and self.optimizer == "rsam":
            raise ConfigError("--sync-bn is for sgd, sam and asam: rsam draws its random perturbation on each rank")
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


def _typed_variant_options(optimizer: str, options: dict[str, Any]) -> dict[str, Any]:
    """A variant's options with its boolean ones (annotated ``bool`` in its class) read strictly
    (:func:`sharpscope.checks.bool_option`: ``decouple=no`` is False, ``decouple=maybe`` is
    refused); the other options are checked by the class itself."""
    if optimizer not in VARIANTS:
        return options
    params = inspect.signature(VARIANTS[optimizer][0].__init__).parameters
    for name, value in options.items():
        if name in params and params[name].annotation in (bool, "bool"):
            options[name] = bool_option(f"--optimizer-opt {name} of {optimizer}", value)
    return options


def _make_variant(config: TrainConfig, params: Any) -> SAM:
    """GSAM, WSAM, LookSAM or Friendly SAM around SGD, with the run's options (``p`` for all but
    GSAM, whose decomposition is Euclidean)."""
    cls = VARIANTS[config.optimizer][0]
    extra = {} if cls is GSAM else {"p": config.p}
    return cls(params, torch.optim.SGD, rho=config.effective_rho, eta=config.eta,
               perturbation_weight_decay=config.perturbation_weight_decay, **extra, **_sgd_options(config),
               **config.optimizer_options)
