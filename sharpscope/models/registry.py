"""The built-in architectures by name and alias, their options, model specs and :func:`build_model`."""

from __future__ import annotations

import inspect
import re
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from sharpscope.errors import ModelSpecError

from ._checks import check_input_shape, check_int, check_keys, json_plain, spec_kwargs
from .cnn import build_cnn, build_cnn1d
from .factory import build_from_factory
from .hf import build_bert, build_gpt, build_vit
from .mlp import build_mlp
from .resnet import build_resnet
from .wrn import build_wrn

__all__ = ["MODEL_NAMES", "parse_model_name", "make_model_spec", "build_model", "count_parameters"]

_BUILTIN_KEYS = ("name", "kwargs", "input_shape", "num_classes")

#: Read-only registry: base model name -> builder(input_shape, num_classes, **options).
_BUILDERS: Mapping[str, Callable[..., nn.Module]] = MappingProxyType(
    {"mlp": build_mlp, "cnn": build_cnn, "resnet": build_resnet, "wrn": build_wrn, "cnn1d": build_cnn1d,
     "gpt": build_gpt, "bert": build_bert, "vit": build_vit})

MODEL_NAMES: tuple[str, ...] = (*_BUILDERS, "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "wrn16-4",
                                 "wrn16-8", "wrn28-10")

#: Alias patterns: (regex, base name, the options its groups fix).
_ALIASES = ((r"resnet-?(\d+)", "resnet", ("depth",)), (r"wrn-?(\d+)-(\d+)", "wrn", ("depth", "widen_factor")))


def _options(base: str) -> dict[str, Any]:
    """The keyword-only options of ``base``'s builder and their defaults (``inspect.Parameter.empty`` if none)."""
    params = inspect.signature(_BUILDERS[base]).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def parse_model_name(name: str) -> tuple[str, dict]:
    """(base name, options fixed by the alias): ``"resnet32" -> ("resnet", {"depth": 32})``,
    ``"wrn28-10" -> ("wrn", {"depth": 28, "widen_factor": 10})``; case and blanks ignored."""
    if not isinstance(name, str):
        raise ModelSpecError(f"model name must be a string, got {name!r}")
    key = name.strip().lower()
    if key in _BUILDERS:
        return key, {}
    for pattern, base, keys in _ALIASES:
        if match := re.fullmatch(pattern, key):
            return base, {k: int(v) for k, v in zip(keys, match.groups())}
    raise ModelSpecError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)} "
                         "(or any resnet<depth>, wrn<depth>-<widen_factor>)")


def _resolve(name: str, kwargs: Mapping[str, Any]) -> tuple[str, dict]:
    """Base name and full options (alias options merged in) after checking option names."""
    base, fixed = parse_model_name(name)
    accepted = sorted(_options(base))
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ModelSpecError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)} "
                             f"for model {name!r}; accepted: {', '.join(accepted)}")
    for key, value in fixed.items():
        if key in kwargs and kwargs[key] != value:
            raise ModelSpecError(f"model {name!r} fixes {key}={value}, but {key}={kwargs[key]!r} was given; "
                                 f"use model {base!r} to choose {key} freely")
    return base, {**kwargs, **fixed}


def make_model_spec(name: str, input_shape: Sequence[int], num_classes: int, **kwargs: Any) -> dict:
    """A built-in model as a plain-dict spec, checked by a dry build on the ``meta`` device, with every
    default filled in (a checkpoint rebuilds the same architecture if a default changes)."""
    shape = check_input_shape(input_shape)
    classes = check_int("num_classes", num_classes)
    options = json_plain(kwargs, "model options")
    base, full = _resolve(name, options)
    key = name.strip().lower()
    with torch.device("meta"):
        _BUILDERS[base](shape, classes, **full)
    defaults = {k: v for k, v in _options(base).items() if v is not inspect.Parameter.empty}
    resolved = json_plain({**defaults, **full}, "model options")
    return {"name": key, "kwargs": resolved, "input_shape": list(shape), "num_classes": classes}


def build_model(spec: Mapping[str, Any], *, allow_factory: bool | str = False) -> nn.Module:
    """A model from a spec dict, weights from torch's global RNG; a factory runs only when
    ``allow_factory`` is ``True`` or its own name, else (and for any bad spec) a :class:`ModelSpecError`."""
    if not isinstance(spec, Mapping):
        raise ModelSpecError(f"model spec must be a dict, got {type(spec).__name__}")
    if ("factory" in spec) == ("name" in spec):
        raise ModelSpecError("model spec needs exactly one of 'name' (built-in) or 'factory'")
    if "factory" in spec:
        return build_from_factory(spec, allow_factory)
    check_keys(spec, _BUILTIN_KEYS, ("name", "input_shape", "num_classes"))
    base, options = _resolve(spec["name"], spec_kwargs(spec))
    return _BUILDERS[base](spec["input_shape"], spec["num_classes"], **options)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters of ``model`` (trainable or not; shared ones counted once)."""
    return sum(p.numel() for p in model.parameters())
