"""The grid of a sweep: the options it may vary, their values as typed, its runs (options an
optimizer does not read collapse) and each run's folder name, made from its own configuration."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import typing
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any

from ..checks import int_at_least
from ..errors import ConfigError
from ..optim import registry
from ..optim.registry import PERTURBATION_OPTIONS
from ..train import TrainConfig
from ..train_options import NOT_SWEPT

__all__ = ["RunSpec", "uses_option", "sweepable_options", "option_name", "flag", "parse_values", "parse_seeds",
           "show_value", "plain_option", "run_name", "expand_grid", "PERTURBATION_OPTIONS"]

# Short names in run folders; the other options appear under their own names.
_ABBREVIATIONS = {"label_noise": "noise", "batch_size": "bs", "weight_decay": "wd", "warmup_epochs": "warmup",
                  "second_order": "so", "n_train": "ntrain", "momentum": "mom"}
_NAME_FIRST = ("rho", "m", "p", "eta", "second_order")
_MAX_NAME = 80
_BOOLS = dict.fromkeys(("true", "yes", "on", "1"), True) | dict.fromkeys(("false", "no", "off", "0"), False)


def uses_option(optimizer: str, option: str) -> bool:
    """Whether runs with ``optimizer`` read ``option`` (else it collapses in the grid):
    :meth:`sharpscope.optim.registry.OptimizerSpec.uses`."""
    return registry.get(optimizer).uses(option)


def _scalar_type(tp: Any) -> tuple[type, bool] | None:
    """(str | int | float | bool, optional?) for a scalar field annotation, else None."""
    if tp in (str, int, float, bool):
        return tp, False
    args = typing.get_args(tp)
    if len(args) == 2 and type(None) in args:
        base = next(a for a in args if a is not type(None))
        if base in (str, int, float, bool):
            return base, True
    return None


def sweepable_options() -> dict[str, tuple[type, bool]]:
    """TrainConfig's scalar fields a sweep may vary (not those fixed for a sweep, such as the
    device): name -> (type, None allowed)."""
    hints = typing.get_type_hints(TrainConfig)
    kinds = {f.name: _scalar_type(hints[f.name]) for f in fields(TrainConfig) if f.name not in NOT_SWEPT}
    return {name: kind for name, kind in kinds.items() if kind is not None}


def option_name(option: str) -> str:
    return option.strip().replace("-", "_")


def flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _parse_one(option: str, text: str, kind: type, optional: bool, what: str) -> Any:
    low = text.lower()
    if optional and low in ("none", "null", "default"):
        return None
    try:
        if kind is bool:
            return _BOOLS[low]
        if kind is int:
            return int(text)
        if kind is float:
            value = math.inf if low in ("inf", "infinity") else float(text)
            if math.isnan(value) or (value == -math.inf):
                raise ValueError
            return value
    except (ValueError, KeyError):
        names = {bool: "true/false", int: "integers", float: "numbers"}
        extra = " or none" if optional else ""
        raise ConfigError(f"{what} takes comma-separated {names[kind]}{extra}, got {text!r}") from None
    return text


def parse_values(option: str, text: str | Sequence[Any], what: str | None = None) -> list[Any]:
    """The values of one grid option: ``"0.05,0.1"`` (or a list) -> ``[0.05, 0.1]``, typed as the
    TrainConfig field (``inf``, ``none`` accepted); ConfigError for unknown options, empty lists,
    unparsable or duplicate values (ranges are checked by :func:`expand_grid`)."""
    name = option_name(option)
    what = what or flag(name)
    options = sweepable_options()
    if name not in options:
        raise ConfigError(f"cannot sweep {what}; sweepable options: {', '.join(flag(o) for o in options)}")
    kind, optional = options[name]
    items = [t.strip() for t in text.split(",")] if isinstance(text, str) else list(text)
    items = [t for t in items if not (isinstance(t, str) and not t)]
    if not items:
        raise ConfigError(f"{what} is empty")
    values = [_parse_one(name, t, kind, optional, what) if isinstance(t, str) and kind is not str else t
              for t in items]
    for v in values:  # values given as Python objects
        ok = (v is None and optional) or (isinstance(v, bool) if kind is bool else
                                          isinstance(v, kind) and not isinstance(v, bool) if kind in (int, str) else
                                          isinstance(v, (int, float)) and not isinstance(v, bool))
        if not ok:
            raise ConfigError(f"{what} takes {kind.__name__} values{' or None' if optional else ''}, got {v!r}")
    if kind is float:
        values = [None if v is None else float(v) for v in values]
    for i, v in enumerate(values):
        if v in values[:i]:
            raise ConfigError(f"{what} lists {show_value(v)} twice")
    return values


def parse_seeds(text: str | int | Sequence[int]) -> list[int]:
    """``"3"`` or 3 -> seeds 0, 1, 2; ``"0,5,7"`` -> those seeds; ``"10:13"`` -> 10, 11, 12."""
    if isinstance(text, int) and not isinstance(text, bool):
        return list(range(int_at_least("--seeds (a count)", text, 1)))
    if not isinstance(text, str):
        seeds = list(text)
    else:
        raw = text.strip()
        try:
            if ":" in raw:
                lo, _, hi = raw.partition(":")
                seeds = list(range(int(lo), int(hi)))
                if not seeds:
                    raise ConfigError(f"--seeds {raw!r} is an empty range")
            elif "," in raw:
                seeds = [int(t) for t in raw.split(",") if t.strip()]
            else:
                return list(range(int_at_least("--seeds (a count)", int(raw), 1)))
        except ValueError:
            raise ConfigError(f"--seeds takes a count N (seeds 0..N-1), a comma list or A:B, got {text!r}") from None
    if not seeds:
        raise ConfigError("--seeds is empty")
    for s in seeds:
        int_at_least("a seed", s, 0)
        if s > 2**63 - 1:
            raise ConfigError(f"seeds must be in [0, 2**63), got {s}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds lists a seed twice: {seeds}")
    return seeds


def show_value(value: Any) -> str:
    """A value as people write it (and as rows and folder names hold it)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value == math.inf:
            return "inf"
        short = format(value, "g")
        return short if float(short) == value else repr(value)
    return "none" if value is None else str(value)


def plain_option(value: Any) -> Any:
    """An option value as JSON and CSV hold it: inf as the string 'inf' (p = inf)."""
    return "inf" if isinstance(value, float) and value == math.inf else value


@dataclass
class RunSpec:
    """One run of the grid."""

    index: int                 # 0-based position in the order runs are started
    name: str                  # folder under OUT/runs
    options: dict[str, Any]    # every grid option as used (None where it does not apply), and the seed
    config: dict[str, Any]     # TrainConfig.to_dict()
    label: str                 # "sam rho=0.05 m=16 seed=0": the options that vary, for progress lines

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(dict(self.config))


def run_name(cfg: TrainConfig) -> str:
    """Folder name from the run's own configuration (never the grid around it): the optimizer,
    its rho, every sweepable option it reads that is not the default, the seed; hashed when too
    long or unfit for a file name."""
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    sweepable = list(sweepable_options())
    order = [o for o in _NAME_FIRST if o in sweepable] + [o for o in sweepable if o not in _NAME_FIRST]
    parts = [cfg.optimizer]
    for option in order:
        if option == "optimizer" or not uses_option(cfg.optimizer, option):
            continue
        value = getattr(cfg, option)
        if value == defaults.get(option) and option != "rho":
            continue
        short = _ABBREVIATIONS.get(option, option)
        if isinstance(value, bool):
            parts.append(short if value else f"no{short}")
        else:
            parts.append(f"{short}{show_value(value)}")
    parts.append(f"seed{cfg.seed}")
    name = "_".join(parts)
    safe = re.sub(r"[^A-Za-z0-9._+-]", "-", name)
    if safe != name or len(safe) > _MAX_NAME:
        safe = f"{safe[:_MAX_NAME - 11]}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"
    return safe


def expand_grid(config: Any) -> list[RunSpec]:
    """The runs of a :class:`~sharpscope.experiments.sweep.SweepConfig`, seeds outermost, options
    an optimizer does not read collapsed, duplicates removed; an invalid combination is refused
    here, naming the run."""
    keys = list(config.grid)
    varying = [k for k in keys if len(config.grid[k]) > 1]
    runs: list[RunSpec] = []
    seen: dict[str, RunSpec] = {}
    for seed in config.seeds:
        for combo in itertools.product(*(config.grid[k] for k in keys)):
            chosen = dict(zip(keys, combo))
            optimizer = chosen["optimizer"]
            kwargs = {**config.base, **{k: v for k, v in chosen.items() if uses_option(optimizer, k)}, "seed": seed}
            for option in PERTURBATION_OPTIONS:  # what an optimizer ignores takes the default
                if not uses_option(optimizer, option):
                    kwargs.pop(option, None)
            label = " ".join([optimizer] + [f"{k}={show_value(chosen[k])}" for k in varying
                                            if k != "optimizer" and uses_option(optimizer, k)] + [f"seed={seed}"])
            try:
                cfg = TrainConfig(**kwargs)
                if registry.get(optimizer).perturbs:
                    cfg.rho = cfg.effective_rho  # the same run whether rho was listed or left to its default
            except (ConfigError, TypeError) as err:
                raise ConfigError(f"run '{label}': {err}") from None
            d = cfg.to_dict()
            key = json.dumps(d, sort_keys=True, default=str)
            if key in seen:
                continue
            options = {k: (plain_option(d[k]) if uses_option(optimizer, k) else None) for k in keys}
            options["seed"] = seed
            spec = RunSpec(len(runs), run_name(cfg), options, d, label)
            seen[key] = spec
            runs.append(spec)
    names = [r.name for r in runs]
    if len(set(names)) != len(names):  # two configurations the name does not tell apart
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"two runs of this grid would share the folder {dup!r}; "
                          "vary a sweepable option instead of a fixed one")
    return runs
