"""What defines a training run: :class:`TrainConfig` (validated, stored in every checkpoint),
:class:`TrainResult`, the learning-rate schedule and the names one may choose; ``OPTIMIZERS``,
``DEFAULT_RHO``, ``VARIANTS`` and ``M_SAM_OPTIMIZERS`` are views of :mod:`sharpscope.optim.registry`."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checks import bool_option
from ..data import TOKEN_DATASETS, DataSpec
from ..errors import ConfigError
from ..optim import registry
from ..optim.asam import ASAM_RULES
from ..train_options import config_field

# (also OPTIMIZERS, DEFAULT_RHO, VARIANTS, M_SAM_OPTIMIZERS: registry views, module __getattr__)
__all__ = ["TrainConfig", "TrainResult", "learning_rate", "SCHEDULES", "TRACKABLE", "SEED_RANGE", "DIVERGED_FACTOR",
           "AMP_DTYPES"]

SCHEDULES = ("cosine", "constant")
SEED_RANGE = (0, 2**63 - 1)  # what torch generators take
# An epoch whose mean training loss exceeds this many times log(classes) (chance) has diverged.
DIVERGED_FACTOR = 100.0
# --amp: the autocast dtype of each choice (None: float32 throughout)
AMP_DTYPES: dict[str | None, torch.dtype | None] = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainConfig:
    """Everything that defines a training run; each field's default, flag and help are in
    :data:`sharpscope.train_options.TRAIN_OPTIONS`."""

    optimizer: str = config_field("optimizer")
    model: str = config_field("model")
    model_kwargs: dict[str, Any] = config_field("model_kwargs")
    data: str = config_field("data")
    data_root: str | None = config_field("data_root")
    label_noise: float = config_field("label_noise")
    n_train: int | None = config_field("n_train")
    block_size: int = config_field("block_size")
    epochs: int = config_field("epochs")
    batch_size: int = config_field("batch_size")
    grad_accum: int = config_field("grad_accum")
    lr: float = config_field("lr")
    momentum: float = config_field("momentum")
    nesterov: bool = config_field("nesterov")
    weight_decay: float = config_field("weight_decay")
    base_optimizer: str = config_field("base_optimizer")
    beta2: float = config_field("beta2")
    adam_eps: float = config_field("adam_eps")
    schedule: str = config_field("schedule")
    warmup_epochs: float = config_field("warmup_epochs")
    rho: float | None = config_field("rho")  # None: the optimizer's default_rho
    p: float = config_field("p")
    eta: float = config_field("eta")
    asam_rule: str = config_field("asam_rule")
    optimizer_options: dict[str, Any] = config_field("optimizer_options")
    label_smoothing: float = config_field("label_smoothing")  # training loss only (train_loss is smoothed)
    same_dropout_mask: bool = config_field("same_dropout_mask")
    perturbation_weight_decay: bool = config_field("perturbation_weight_decay")
    m: int | None = config_field("m")
    seed: int = config_field("seed")
    checkpoint_every: int = config_field("checkpoint_every")
    keep_snapshots: bool = config_field("keep_snapshots")
    augment: bool | None = config_field("augment")  # None: random crop + flip for CIFAR, off otherwise
    device: str = config_field("device")
    second_order: bool = config_field("second_order")
    amp: str | None = config_field("amp")  # "bf16" (autocast) or "fp16" (autocast and a GradScaler)
    channels_last: bool = config_field("channels_last")
    compile: bool = config_field("compile")  # the training steps only (evaluation stays eager)
    sync_perturbation: bool = config_field("sync_perturbation")
    sync_bn: bool = config_field("sync_bn")
    track: list[str] = config_field("track")
    track_every: int = config_field("track_every")
    track_samples: int = config_field("track_samples")

    def __post_init__(self) -> None:
        if self.data_root is not None:  # checkpoints must find the data from any working directory
            self.data_root = os.path.abspath(os.path.expanduser(str(self.data_root)))
        # its bool options read strictly (decouple=no is False, decouple=maybe refused); the class checks the rest
        spec, options = registry.lookup(self.optimizer), dict(self.optimizer_options)
        for option in spec.options if spec is not None else ():
            if option.name in options and option.is_bool:
                options[option.name] = bool_option(f"--optimizer-opt {option.name} of {self.optimizer}",
                                                   options[option.name])
        self.optimizer_options = options
        self.validate()

    @property
    def effective_rho(self) -> float:
        return registry.get(self.optimizer).default_rho if self.rho is None else float(self.rho)

    def validate(self) -> None:
        spec = registry.get(self.optimizer)  # an unknown name: ConfigError listing the choices
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        for ok, message in self._rules(spec):
            if not ok:
                raise ConfigError(message)
        if self.m is not None and not spec.supports_m:
            raise ConfigError(f"m (m-SAM) needs --optimizer {_one_of('supports_m')}, not {self.optimizer}")
        if self.amp == "fp16" and not spec.supports_scaler:
            raise ConfigError(f"--optimizer {self.optimizer} does not run under fp16's gradient scaler; use --amp bf16")
        allowed = spec.option_names
        unknown_opts = sorted(set(self.optimizer_options) - set(allowed))
        if unknown_opts:
            raise ConfigError(f"--optimizer {self.optimizer} has no option {unknown_opts[0]!r}"
                              + (f"; its options: {', '.join(allowed)}" if allowed else ""))
        if spec.options:  # the option values, on a stand-in parameter (no random draw)
            try:
                spec.cls.from_config(self, nn.ParameterList([nn.Parameter(torch.zeros(1))]))
            except TypeError as err:
                raise ConfigError(f"--optimizer-opt for {self.optimizer}: {err}") from None
        if self.second_order and (not spec.supports_second_order or self.p != 2 or self.m is not None):
            raise ConfigError(f"--second-order needs --optimizer {_one_of('supports_second_order')} with p = 2 "
                              "and no m")
        from .tracking import trackable  # the table of measures, imported when validating
        unknown = sorted(set(self.track) - set(trackable()))
        if unknown:
            raise ConfigError(f"cannot track {', '.join(unknown)}; choose from {', '.join(trackable())}")
        if self.sync_bn and spec.perturbs and not self.sync_perturbation:
            raise ConfigError("--sync-bn needs --sync-perturbation: with one perturbation per rank, each rank's "
                              "pass at w + e_r would pool batch statistics of differently perturbed models")
        spec.cls.check_config(self)  # the optimizer class's own rules (e.g. GSAM: p = 2)

    def _rules(self, spec: registry.OptimizerSpec) -> list[tuple[bool, str]]:
        """(holds, what to say when it does not) for each of :meth:`validate`'s simple rules."""
        micro = -(-self.batch_size // max(1, self.grad_accum))  # examples per micro-batch
        return [
            (self.rho is None or (math.isfinite(self.rho) and self.rho >= 0), f"rho must be >= 0, got {self.rho}"),
            (0.0 <= self.label_noise < 1.0, f"label noise must be in [0, 1), got {self.label_noise}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"--grad-accum must be >= 1 micro-batch, got {self.grad_accum}"),
            (self.grad_accum <= self.batch_size, f"--grad-accum {self.grad_accum} cannot split a batch of "
             f"{self.batch_size} examples (at most one micro-batch per example)"),
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
            (math.isfinite(self.label_smoothing) and 0.0 <= self.label_smoothing < 1.0,
             f"label smoothing must be in [0, 1), got {self.label_smoothing}"),
            (not (self.same_dropout_mask and self.m is not None),
             "--same-dropout-mask applies to whole-batch SAM steps, not m-SAM chunks"),
            (self.asam_rule in ASAM_RULES,
             f"--asam-rule must be one of {', '.join(ASAM_RULES)}, got {self.asam_rule!r}"),
            (self.amp in AMP_DTYPES, f"--amp must be bf16 or fp16, got {self.amp!r}"),
            (self.amp is None or not self.second_order, "--second-order runs in float32 only (its double backward in "
             "reduced precision would not be the second-order gradient); drop --amp"),
            (self.track_every >= 1 and self.track_samples >= 1, "track interval and track samples must be >= 1"),
            (self.grad_accum == 1 or self.m is None or not micro < self.m < self.batch_size,
             f"--m {self.m} is larger than the micro-batches of --grad-accum {self.grad_accum} ({micro} examples): "
             f"m-SAM holds one chunk of m examples at a time, so use --m <= {micro}"),
            (self.base_optimizer in registry.BASE_OPTIMIZERS, f"--base-optimizer must be one of "
             f"{', '.join(registry.BASE_OPTIMIZERS)}, got {self.base_optimizer!r}"),
            (math.isfinite(self.beta2) and 0.0 <= self.beta2 < 1.0, f"--beta2 must be in [0, 1), got {self.beta2}"),
            (math.isfinite(self.adam_eps) and self.adam_eps > 0, f"--adam-eps must be > 0, got {self.adam_eps}"),
            (spec.perturbs or self.base_optimizer in ("sgd", self.optimizer),
             f"--base-optimizer {self.base_optimizer} is what SAM and its variants wrap; --optimizer "
             f"{self.optimizer} wraps none (AdamW alone: --optimizer adamw)"),
            (not (self.nesterov and (self.optimizer == "adamw" or spec.perturbs and self.base_optimizer == "adamw")),
             "--nesterov is SGD's; AdamW has no Nesterov momentum"),
            (self.block_size >= 1, f"--block-size must be >= 1 token, got {self.block_size}"),
            (not (self.data in TOKEN_DATASETS and self.label_noise),
             f"--label-noise replaces class labels; --data {self.data} has next tokens, not labels"),
            (not (self.data in TOKEN_DATASETS and self.label_smoothing),
             f"--label-smoothing is not implemented for the token loss of --data {self.data}"),
        ]

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
        return DataSpec(name=self.data, root=self.data_root, seed=self.seed, label_noise=self.label_noise,
                        noise_seed=self.seed, n_train=self.n_train, block_size=self.block_size)


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
    """Learning rate at optimizer step ``step`` (0-based): linear warm-up, then constant or cosine
    lr (1 + cos(pi t)) / 2 with t the fraction of post-warm-up steps done."""
    total = config.epochs * steps_per_epoch
    warm = int(round(config.warmup_epochs * steps_per_epoch))
    if step < warm:
        return config.lr * (step + 1) / warm
    if config.schedule == "constant":
        return config.lr
    t = (step - warm) / max(1, total - warm)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer ``config`` names, over ``model``'s parameters (its registry class builds it)."""
    return registry.get(config.optimizer).cls.from_config(config, model)


def _one_of(capability: str) -> str:
    """The registered optimizers with ``capability``, as prose: "sam, asam or rsam"."""
    named = [s.name for s in registry.specs() if getattr(s, capability)]
    return named[0] if len(named) == 1 else f"{', '.join(named[:-1])} or {named[-1]}"


# Views of the registry (each read builds them afresh).
_VIEWS = {
    "OPTIMIZERS": lambda: registry.names(),
    "DEFAULT_RHO": lambda: {s.name: s.default_rho for s in registry.specs()},
    "VARIANTS": lambda: {s.name: (s.cls, s.option_names) for s in registry.specs() if s.options},
    "M_SAM_OPTIMIZERS": lambda: tuple(s.name for s in registry.specs() if s.supports_m),
}


def _trackable() -> tuple[str, ...]:
    """What :mod:`.tracking` can measure (imported when asked: not the analyses at import)."""
    from .tracking import trackable
    return tuple(trackable())


_VIEWS["TRACKABLE"] = _trackable


def __getattr__(name: str) -> Any:
    if name in _VIEWS:
        return _VIEWS[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
