"""Custom model factories (``package.module:function``): names, specs, importing them, and the rule
that a spec read from a checkpoint never chooses what code runs."""

from __future__ import annotations

import importlib
import re
from typing import Any, Mapping

from torch import nn

from sharpscope.errors import ModelSpecError

from ._checks import check_keys, json_plain, one_line, spec_kwargs

__all__ = ["parse_factory", "is_factory", "factory_name", "make_factory_spec", "import_callable",
           "check_factory_allowed", "build_from_factory"]

_FACTORY_KEYS = ("factory", "kwargs")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def parse_factory(factory: Any, what: str = "model factory", error: type[Exception] = ModelSpecError
                  ) -> tuple[str, str]:
    """``(module, attribute)`` of a ``'package.module:function'`` spec; ``error`` when it is not one."""
    parts = [part.strip() for part in factory.split(":")] if isinstance(factory, str) else []
    if len(parts) != 2 or not all(_DOTTED.fullmatch(part) for part in parts):
        raise error(f"{what} must look like 'package.module:function', got {factory!r}")
    return parts[0], parts[1]


def is_factory(model: Any) -> bool:
    """Whether a model name (``--model``, ``TrainConfig.model``) names a custom factory."""
    return isinstance(model, str) and ":" in model


def factory_name(factory: str) -> str:
    """The canonical ``module:function`` form of a factory name (:class:`ModelSpecError` if none)."""
    module, attr = parse_factory(factory)
    return f"{module}:{attr}"


def make_factory_spec(factory: str, **kwargs: Any) -> dict:
    """``{"factory": factory, "kwargs": kwargs}``, the form and JSON-plain kwargs checked; nothing imported."""
    return {"factory": factory_name(factory), "kwargs": json_plain(kwargs, "factory kwargs")}


def import_callable(module_name: str, attr: str, what: str, error: type[Exception] = ModelSpecError) -> Any:
    """``module_name:attr`` imported (always: callers decide first whether that is allowed) and
    checked to be callable; every failure one ``error`` naming ``what``."""
    path = f"{module_name}:{attr}"
    _current_folder_on_path()
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(f"cannot import module {module_name!r} of {what} {path}: {one_line(exc)}") from exc
    except Exception as exc:  # the module's own code failed while importing
        raise error(f"importing module {module_name!r} of {what} {path} failed: {one_line(exc)}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise error(f"module {module_name!r} has no attribute {attr!r} ({what} {path})") from exc
    if not callable(obj):
        raise error(f"{what} {path} is a {type(obj).__name__}, not a callable")
    return obj


def _current_folder_on_path() -> None:
    """Put the current folder first on ``sys.path``, as ``python -m`` does (``--model mynets:build``
    finds ``./mynets.py`` from the console script too)."""
    import os
    import sys

    here = os.getcwd()
    if not any(entry in ("", ".") or os.path.abspath(entry) == here for entry in sys.path):
        sys.path.insert(0, here)


def _refuse_factory(factory: str, kwargs: dict, allow_factory: bool | str) -> None:
    """ModelSpecError unless ``allow_factory`` lets ``factory`` run (module docstring)."""
    if allow_factory is True:
        return
    shown = repr(kwargs)
    call = f"{factory}(**{shown if len(shown) <= 200 else shown[:197] + '...'})"
    if isinstance(allow_factory, str) and allow_factory:
        named = factory_name(allow_factory)
        if named == factory:
            return
        raise ModelSpecError(f"model uses custom factory {factory}, not the {named} that was named; name {factory} "
                             f"(--model {factory}) or pass allow_factory=True / --trust-factory to run {call}")
    raise ModelSpecError(f"model uses custom factory {factory}; a checkpoint never chooses what code runs: pass "
                         f"--trust-factory (allow_factory=True), or --model {factory} where the command takes it, "
                         f"to import it and run {call}")


def check_factory_allowed(spec: Mapping[str, Any], allow_factory: bool | str) -> None:
    """The refusal :func:`build_model` would raise for ``spec`` under ``allow_factory``, without
    importing anything; nothing for a built-in spec or an allowed factory."""
    if isinstance(spec, Mapping) and "factory" in spec:
        _refuse_factory(factory_name(spec["factory"]), spec_kwargs(spec), allow_factory)


def build_from_factory(spec: Mapping[str, Any], allow_factory: bool | str) -> nn.Module:
    check_keys(spec, _FACTORY_KEYS, ("factory",))
    module_name, attr = parse_factory(spec["factory"])
    factory = f"{module_name}:{attr}"
    kwargs = spec_kwargs(spec)
    _refuse_factory(factory, kwargs, allow_factory)
    obj = import_callable(module_name, attr, "model factory", ModelSpecError)
    try:
        model = obj(**kwargs)
    except ModelSpecError:
        raise
    except Exception as exc:
        raise ModelSpecError(f"model factory {factory} raised {one_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"model factory {factory} returned {type(model).__name__}, not a torch.nn.Module")
    return model
