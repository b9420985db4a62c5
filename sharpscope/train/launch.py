"""What :func:`~sharpscope.train.train` refuses before it trains, checked without training: the run
folder and resumed configuration (:func:`open_run`), the model factory it may import
(:func:`trusted_factory`), several ranks (:func:`check_ranks`) and the model's fit to the data
(:func:`check_model`, :func:`check_fits`); ``train --nproc N`` runs :func:`check_launch` first."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import read_checkpoint
from ..data import Dataset, load_dataset
from ..errors import CheckpointError, ConfigError
from ..models import build_model, factory_name, is_factory, make_factory_spec, make_model_spec
from ..objective import eval_mode
from ..optim import registry
from .config import TrainConfig
from .resume import resumed_config

__all__ = ["open_run", "check_ranks", "check_launch", "trusted_factory", "check_model", "check_fits",
           "model_spec_for", "per_rank_bn_note"]


def model_spec_for(config: TrainConfig, data: Dataset) -> dict:
    """The model spec a new run builds: the named factory's, else the built-in model sized for ``data``."""
    if ":" in config.model:
        return make_factory_spec(config.model, **config.model_kwargs)
    return make_model_spec(config.model, data.input_shape, data.num_classes, **config.model_kwargs)


def check_fits(model: nn.Module, data: Dataset) -> None:
    """One example through the model (eval mode, no grad, RNG untouched): a misfit is one clear line."""
    device = next(model.parameters()).device
    x = data.x_train[:1].to(device)
    try:
        with eval_mode(model), torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = model(x)
    except RuntimeError as err:
        first = (str(err).splitlines() or ["?"])[0][:200]
        hint = f" (--data {data.spec.name} is token data: use a language model, --model gpt)" if data.is_tokens else ""
        raise ConfigError(f"the model does not accept inputs of shape {tuple(data.input_shape)}{hint}: "
                          f"{first}") from None
    logits = getattr(out, "logits", out)  # token data: next-token logits (1, T, V) over the vocabulary V
    if data.is_tokens and (not isinstance(logits, torch.Tensor) or logits.dim() != 3
                           or logits.shape[-1] != data.num_classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(out).__name__
        raise ConfigError(f"--data {data.spec.name} needs a language model giving next-token logits over its "
                          f"{data.num_classes} tokens (--model gpt); the model outputs {shape}")
    if not data.is_tokens and (out.dim() != 2 or out.shape[1] != data.num_classes):
        raise ConfigError(f"the model outputs shape {tuple(out.shape[1:])} per example; "
                          f"{data.num_classes} class scores are needed")


# Tracking does not change what is trained: a resume may give other tracking options (ignored).
_TRACKING = ("track", "track_every", "track_samples")


def open_run(config: TrainConfig | None, out: Path, resume: bool) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The configuration to run and, with ``resume``, the checkpoint it continues (a given ``config``
    must agree with the stored one: :func:`.resume.resumed_config`); never overwrites a checkpoint."""
    ckpt_path = out / "checkpoint.pt"
    raw = None
    if resume and ckpt_path.exists():
        raw = read_checkpoint(ckpt_path)
        if not raw.get("config") or raw.get("optimizer_state") is None:
            raise CheckpointError(f"{ckpt_path}: has no training state to resume from")
        stored = TrainConfig.from_dict(raw["config"])
        given = None if config is None else {k: v for k, v in config.to_dict().items() if k not in _TRACKING}
        config = stored if given is None else resumed_config(stored, given)
    elif ckpt_path.exists():
        raise ConfigError(f"{ckpt_path} exists; pass --resume to continue it or choose another --out")
    if config is None:
        raise ConfigError(f"nothing to resume in {out} and no configuration given")
    config.validate()
    return config, raw


def check_ranks(config: TrainConfig, world: int) -> None:
    """What ``config`` cannot do on ``world`` ranks (ConfigError)."""
    if world > 1 and not registry.get(config.optimizer).supports_ranks:
        raise ConfigError(f"--optimizer {config.optimizer} runs in a single process (its update combines both "
                          "passes' gradients, which data-parallel SAM averages separately)")
    if world > 1 and (config.m is not None or config.second_order):
        raise ConfigError("with several ranks each rank already perturbs with its own gradient (m-SAM with "
                          "m = per-rank batch); --m and --second-order need a single process")


def check_launch(config: TrainConfig | None, out_dir: str | os.PathLike[str], resume: bool, world: int,
                 allow_factory: bool | str = False) -> None:
    """What :func:`train` would refuse (folder, configuration, factory, ranks), without training or a
    process group: ``train --nproc N`` runs it before torchrun (one line, not N tracebacks)."""
    config, raw = open_run(config, Path(out_dir), resume)
    if raw is not None:
        trusted_factory(config, allow_factory, where=Path(out_dir) / "checkpoint.pt")
    check_ranks(config, world)


def trusted_factory(config: TrainConfig, allow_factory: bool | str, where: Path | None = None) -> bool | str:
    """``build_model``'s ``allow_factory`` for ``config``: False for a built-in model; True when
    ``allow_factory`` is; the factory's name when ``allow_factory`` names it; else ConfigError
    (``where``: the checkpoint that names it)."""
    if not is_factory(config.model):
        return False
    if allow_factory is True:
        return True
    stored = factory_name(config.model)
    given = factory_name(allow_factory) if isinstance(allow_factory, str) and allow_factory else None
    source = f"{where}: the run" if where is not None else "the run"
    if given is not None and given != stored:
        raise ConfigError(f"{source} was trained with model factory {stored}, but --model names {given}; "
                          f"give --model {stored} (or start a new run in another --out)")
    if given is None:
        raise ConfigError(f"{source} names the custom model factory {stored}, which would be imported and run "
                          f"as {stored}(**{config.model_kwargs!r}); name it with --model {stored} or pass "
                          "--trust-factory if you trust where the run came from")
    return stored


def check_model(config: TrainConfig, allow_factory: bool | str | None = None) -> None:
    """Build ``config``'s model on its data and push one example through it, writing nothing
    (``allow_factory``: by default the factory ``config`` names)."""
    config.validate()
    data = load_dataset(config.data_spec())
    allowed = trusted_factory(config, config.model if allow_factory is None else allow_factory)
    with torch.random.fork_rng(devices=[]):
        model = build_model(model_spec_for(config, data), allow_factory=allowed)
    check_fits(model, data)


def per_rank_bn_note(config: TrainConfig, world: int) -> str:
    """What a run on several ranks computes with rank-local batch norm (tests/test_sync_bn.py checks it)."""
    per_rank = (f"about {config.batch_size / world:.3g}" if config.batch_size % world
                else str(config.batch_size // world))
    if not registry.get(config.optimizer).perturbs:
        what = f"ghost batch norm: {config.optimizer.upper()} with batch statistics per slice of that size"
    elif config.sync_perturbation:
        what = ("one perturbation from the global gradient with batch statistics per slice (ghost batch norm); "
                "plain SAM over the global batch needs --sync-bn too")
    else:
        what = f"single-process m-SAM with --m {per_rank}"
    return (f"{world} ranks, batch norm without --sync-bn: each rank normalizes with the statistics of its own "
            f"{per_rank} examples of every batch; this computes {what}")
