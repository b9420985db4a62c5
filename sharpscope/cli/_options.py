"""The training options of ``train``, ``compare`` and ``sweep``, generated from one table
(:data:`sharpscope.train_options.TRAIN_OPTIONS`: same name and help on every verb, no torch
imported), and the notice of an option's old spelling."""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import Any, Optional

import typer
from ._app import deferred_help

from ..errors import ConfigError
from ..train_options import NOT_SWEPT, TRAIN_OPTIONS
from ._common import finite, parse_options, parse_p

__all__ = ["training_options", "generated_options", "shared_fields", "field_values", "old_spelling", "VERB_OWNED",
           "SWEEP_LIST_HELP", "COMPARE_LIST_HELP", "OLD_STEPS", "OLD_NORM", "OLD_ETA", "OLD_PLOT_DIR"]

# Old spellings the analysis verbs still take, hidden (:func:`old_spelling` reads them with a notice).
OLD_STEPS = typer.Option(None, "--steps", hidden=True, min=1)
OLD_NORM = typer.Option(None, "--norm", hidden=True)
OLD_ETA = typer.Option(None, "--eta", hidden=True, callback=finite(at_least=0))
OLD_PLOT_DIR = typer.Option(None, "--plot-dir", hidden=True)

# Training fields compare and sweep set themselves (field -> what sets it): the seed is their
# paired axis; the analysis profile sets the tracking and the snapshots.
VERB_OWNED = {"seed": "--seeds", "keep_snapshots": "off: only the final model is analysed",
              "track": "the analysis profile", "track_every": "the analysis profile",
              "track_samples": "the analysis profile"}
# compare's --rho is its own (every perturbing optimizer's but ASAM's, and the analyses' radius).
COMPARE_OWNED = {"rho": "--rho, --asam-rho (compare's own)"}
SWEEP_LIST_HELP = " Sweep: a comma-separated list of values."
COMPARE_LIST_HELP = " Compare: a comma-separated list; the first, or sgd when listed, is the baseline."

_TYPES: dict[str, Any] = {"float": float, "int": int, "str": str, "bool": bool, "int?": Optional[int],
                          "float?": Optional[float], "str?": Optional[str], "bool?": Optional[bool], "p": str,
                          "pairs": list[str], "names": str}
# the command line's default of the kinds it reads as text or a list
_DEFAULTS: dict[str, Callable[[Any], Any]] = {"p": lambda d: "2" if d == 2.0 else str(d), "pairs": lambda d: [],
                                              "names": ",".join}


def _registry_help(kind: str, suffix: str) -> Callable[[], str]:
    """The help text ``kind`` (optimizer, optimizer_opt, rho), written from the optimizer
    registry when shown: every registered optimizer is listed, and a start does not import
    the optimizers (torch)."""

    def write() -> str:
        from ..optim import registry

        specs = registry.specs()
        if kind == "optimizer":
            return f"One of {', '.join(f'{s.name} ({s.summary})' if s.summary else s.name for s in specs)}.{suffix}"
        if kind == "optimizer_opt":
            options = "; ".join(f"{s.name} {', '.join(s.option_names)}" for s in specs if s.option_names)
            return f"An optimizer's option KEY=VALUE, repeatable: {options} (defaults: sharpscope.optim).{suffix}"
        sam = next((s.default_rho for s in specs if s.name == "sam"), 0.05)
        others = "".join(f"; {s.name} {s.default_rho:g}" for s in specs if s.perturbs and s.default_rho != sam)
        return f"SAM radius (default {sam:g}{others}).{suffix}"

    return write


def shared_fields(verb: str) -> list[str]:
    """The TrainConfig fields ``verb`` (train, compare or sweep) takes as options."""
    owned = {} if verb == "train" else {**VERB_OWNED, **(COMPARE_OWNED if verb == "compare" else {})}
    return [name for name in TRAIN_OPTIONS if name not in owned]


def _parameter(verb: str, name: str) -> inspect.Parameter:
    """The option of training field ``name`` on ``verb``: a comma-separated list for sweep's grid
    axes and compare's optimizers."""
    option = TRAIN_OPTIONS[name]
    listed = (verb == "sweep" and name not in NOT_SWEPT) or (verb == "compare" and name == "optimizer")
    suffix = (SWEEP_LIST_HELP if verb == "sweep" else COMPARE_LIST_HELP) if listed else ""
    if listed:
        annotation: Any = Optional[str]
        default = "sgd,sam" if verb == "compare" else None
    else:
        annotation = _TYPES[option.kind]
        default = _DEFAULTS.get(option.kind, lambda d: d)(option.default)
    if option.registry_help is not None:
        info: Any = deferred_help(typer.Option(default, *option.flags), _registry_help(option.registry_help, suffix))
    else:
        info = typer.Option(default, *option.flags, help=option.help + suffix)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def training_options(verb: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command that takes ``training: dict``: typer sees one option per field of
    :func:`shared_fields` (``verb``) after the command's own, and the command gets their raw
    command-line values by field name in ``training`` (:func:`field_values` reads them)."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        return generated_options(command, "training", [_parameter(verb, name) for name in shared_fields(verb)],
                                 dict, first=verb == "train")

    return decorate


def generated_options(command: Callable[..., Any], bundle: str, generated: list[inspect.Parameter],
                      make: Callable[[dict[str, Any]], Any], first: bool = False) -> Callable[..., Any]:
    """``command`` as typer sees it with the options ``generated`` added after its own (before
    them if ``first``); it gets their values as one argument ``bundle``: ``make`` of the
    values by name (:func:`training_options`, :func:`sharpscope.cli._inputs.analysis_inputs`)."""
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
           else p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != bundle]
    names = {p.name for p in generated}

    @functools.wraps(command)
    def run(**kwargs: Any) -> Any:
        values = make({name: kwargs.pop(name) for name in list(kwargs) if name in names})
        return command(**kwargs, **{bundle: values})

    params = generated + own if first else own + generated
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


def field_values(training: dict[str, Any]) -> dict[str, Any]:
    """Command-line values (:func:`training_options`) -> TrainConfig field values: ``--p`` read
    as a number or inf, KEY=VALUE pairs as a dict, ``--track`` split at commas."""
    out = {}
    for name, value in training.items():
        kind = TRAIN_OPTIONS[name].kind
        if kind == "p" and isinstance(value, str):
            value = parse_p(value)
        elif kind == "pairs":
            value = parse_options(list(value))
        elif kind == "names" and isinstance(value, str):
            value = [t.strip() for t in value.split(",") if t.strip()]
        out[name] = value
    return out


def old_spelling(verb: str, old: str, new: str, old_value: Any, new_value: Any, new_default: Any) -> Any:
    """The value of an option renamed from ``old`` to ``new`` on ``verb``: the old spelling's,
    with a one-line notice on stderr, when it was given (refused beside the new one); else the
    new one's."""
    if old_value is None or old_value == []:
        return new_value
    if new_value != new_default:
        raise ConfigError(f"{old} is the old spelling of {new}; give {new} only")
    print(f"sharpscope: notice: {old} on {verb} is now {new}; the old spelling goes in the next release",
          file=sys.stderr)
    return old_value
