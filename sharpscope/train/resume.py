"""What a resumed run may change: nothing that defines it, except more epochs where the schedule
extends. Options given again are compared by their effect (``rho=None`` is the default radius,
``augment=None`` "on for CIFAR", a variant's defaults filled in, ``data_root`` absolute); all
that differ are refused in one line. More epochs extend a ``constant`` schedule (lr(step) does
not depend on the total), not ``cosine`` (t is the fraction of the *total* steps); fewer are refused.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..checkpoint import read_checkpoint
from ..errors import ConfigError
from ..optim import registry
from .config import TrainConfig

__all__ = ["EXTENDABLE_SCHEDULES", "resumed_config", "resume_conflicts", "stored_run_config"]

# Schedules whose learning rate at a step does not depend on the total number of epochs.
EXTENDABLE_SCHEDULES = ("constant",)


def stored_run_config(out_dir: str | os.PathLike[str]) -> TrainConfig | None:
    """The configuration a ``--resume`` in ``out_dir`` continues; None without a checkpoint."""
    ckpt = Path(out_dir) / "checkpoint.pt"
    if not ckpt.exists():
        return None
    return TrainConfig.from_dict(read_checkpoint(ckpt).get("config") or {})


def _effective(config: Mapping[str, Any], name: str) -> Any:
    """The value of option ``name`` of ``config`` (field -> value) by its effect (module docstring)."""
    value, spec = config.get(name), registry.lookup(config.get("optimizer", ""))
    if name == "rho":
        return (spec.default_rho if spec is not None else 0.0) if value is None else float(value)
    if name == "augment":
        return config.get("data") in ("cifar10", "cifar100") if value is None else bool(value)
    if name == "data_root" and value is not None:
        return os.path.abspath(os.path.expanduser(str(value)))
    if name == "optimizer_options":
        return {**(spec.defaults() if spec is not None else {}), **(value or {})}
    if name in ("p", "lr", "momentum", "weight_decay", "eta", "label_noise", "label_smoothing",
                "warmup_epochs") and value is not None:
        return float(value)
    return value


def resume_conflicts(stored: TrainConfig, given: Mapping[str, Any]) -> list[str]:
    """The fields of ``given`` whose effect differs from the stored one's (``epochs`` aside), in order."""
    unknown = sorted(set(given) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
    old = stored.to_dict()
    new = {**old, **given}  # what the run would be with the given options (rho's default follows optimizer)
    return [f.name for f in dataclasses.fields(TrainConfig)
            if f.name in given and f.name != "epochs" and _effective(new, f.name) != _effective(old, f.name)]


def _epochs_problem(stored: TrainConfig, epochs: int) -> str | None:
    """Why the stored run cannot be continued to ``epochs`` epochs (None: it can)."""
    if epochs == stored.epochs:
        return None
    if epochs < stored.epochs:
        return f"fewer than the run's {stored.epochs}: a run is not shortened"
    if stored.schedule not in EXTENDABLE_SCHEDULES:
        return (f"the run's {stored.schedule} schedule sets every step's learning rate from the total of "
                f"{stored.epochs} epochs, so its steps so far are not those of a {epochs}-epoch run; only a "
                f"{' or '.join(EXTENDABLE_SCHEDULES)} schedule extends")
    return None


def _show(value: Any) -> str:
    """An option's value as one types it: strings bare, everything else as Python writes it."""
    return value if isinstance(value, str) else repr(value)


def resumed_config(stored: TrainConfig, given: Mapping[str, Any], names: Mapping[str, str] | None = None
                   ) -> TrainConfig:
    """``stored``, with ``epochs`` from ``given`` (the options given again) where the run extends;
    one :class:`ConfigError` names every option whose effect differs and a refused ``epochs``
    (``names``: what to call a field, e.g. its flag)."""
    label, old = (names or {}).get, stored.to_dict()
    problems = [f"{label(f, f)} {_show(given[f])} (the run's: {_show(_effective(old, f))})"
                for f in resume_conflicts(stored, given)]
    epochs = int(given.get("epochs", stored.epochs))
    why = _epochs_problem(stored, epochs)
    if why is not None:
        problems.append(f"{label('epochs', 'epochs')} {epochs} ({why})")
    if problems:
        raise ConfigError(f"a resumed run keeps its stored options; these differ: {'; '.join(problems)}. Drop them "
                          "to continue the run as it was, or train a new run in another folder")
    return stored if epochs == stored.epochs else dataclasses.replace(stored, epochs=epochs)
