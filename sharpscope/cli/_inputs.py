"""The inputs the analysis verbs share (which data, which seed and device, where results go),
declared once as the fields of :class:`Inputs` and generated for each verb by
:func:`analysis_inputs`, as :func:`sharpscope.cli._options.training_options` generates the
training options.

A verb's signature holds only its own options and an ``inputs: Inputs`` parameter; the
decorator adds one typer option per shared input the verb takes (same name and help on every
verb, after the verb's own, in the order of the fields), applies ``--deterministic`` before
the command runs and hands it the values as one :class:`Inputs`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, get_type_hints

from ._common import (DATA, DATA_ROOT, DETERMINISTIC, DEVICE, FIGURE_DIR, PDF, PROGRESS, SAMPLES, SPLIT,
                      TRUST_FACTORY, apply_determinism, load_for_analysis, seed_option)
from ._landscape import METRIC
from ._options import generated_options
from ._results import JSON_SAVED, OVERWRITE

if TYPE_CHECKING:
    from ..checkpoint import Checkpoint
    from ._common import AnalysisContext

__all__ = ["INPUTS", "Inputs", "analysis_inputs"]


def _shared(option: Any) -> Any:
    """A field of :class:`Inputs`: the typer option's default, and the option in its metadata."""
    return field(default=option.default, metadata={"option": option})


@dataclass(frozen=True)
class Inputs:
    """The shared inputs, in the order a verb's help lists them, each with its typer option (a
    verb may give its own, e.g. the seed's help: :func:`analysis_inputs`); a field the verb
    does not take keeps its default here."""

    samples: Optional[int] = _shared(SAMPLES)
    split: str = _shared(SPLIT)
    data: Optional[str] = _shared(DATA)
    data_root: Optional[str] = _shared(DATA_ROOT)
    seed: int = _shared(seed_option("Seed of --samples."))
    plot_dir: Optional[Path] = _shared(FIGURE_DIR)
    pdf: bool = _shared(PDF)
    json_out: Optional[str] = _shared(JSON_SAVED)
    overwrite: bool = _shared(OVERWRITE)
    progress: bool = _shared(PROGRESS)
    trust_factory: bool = _shared(TRUST_FACTORY)
    device: str = _shared(DEVICE)
    metric: Optional[list[str]] = _shared(METRIC)
    deterministic: bool = _shared(DETERMINISTIC)

    def load(self, checkpoint: Path, batch_size: int) -> tuple[Checkpoint, list, AnalysisContext]:
        """:func:`sharpscope.cli._common.load_for_analysis` of ``checkpoint`` with these inputs."""
        return load_for_analysis(checkpoint, self.split, self.samples, batch_size, self.seed, self.trust_factory,
                                 self.device, (self.data, self.data_root))


# name -> (annotation, typer option) of every shared input, in the order of Inputs' fields.
INPUTS: dict[str, tuple[Any, Any]] = {f.name: (get_type_hints(Inputs)[f.name], f.metadata["option"])
                                      for f in fields(Inputs)}


def analysis_inputs(*names: str, without: tuple[str, ...] = (),
                    **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command that takes ``inputs: Inputs``: typer sees one option per field named in
    ``names`` (none named: every field but those ``without``), in the fields' order after the
    command's own options; a keyword in ``options`` replaces that field's option (e.g. ``seed``
    with the verb's own help). ``--deterministic`` is applied first; the command gets the values."""
    names = names or tuple(name for name in INPUTS if name not in without)
    unknown = [n for n in (*names, *without, *options) if n not in INPUTS]
    if unknown or not set(options) <= set(names):
        raise ValueError(f"unknown or undeclared shared inputs: {unknown or sorted(set(options) - set(names))}")

    def inputs(values: dict[str, Any]) -> Inputs:
        made = Inputs(**values)
        apply_determinism(made.deterministic)
        return made

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        generated = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=INPUTS[name][0],
                                       default=options.get(name, INPUTS[name][1])) for name in INPUTS if name in names]
        return generated_options(command, "inputs", generated, inputs)

    return decorate
