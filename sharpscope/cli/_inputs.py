"""The inputs the analysis verbs share (data, seed, device, where results go), declared once
as the fields of :class:`Inputs`; :func:`analysis_inputs` generates them as options after a
verb's own, applies ``--deterministic`` and hands the verb one :class:`Inputs`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, get_type_hints

import typer

from ._common import DETERMINISTIC, PARAMS, TRUST_FACTORY, apply_determinism, load_for_analysis, seed_option
from ._landscape import METRIC
from ._options import generated_options

if TYPE_CHECKING:
    from ..checkpoint import Checkpoint
    from ._common import AnalysisContext

__all__ = ["INPUTS", "Inputs", "analysis_inputs", "JSON_OUT"]

# --json of the verbs that write their result into a folder of their own (surface, interpolate).
JSON_OUT = typer.Option(None, "--json", help="Write results as JSON to PATH (- for stdout).")


def _shared(option: Any) -> Any:
    """A field of :class:`Inputs`: the option's default, and the option in its metadata."""
    return field(default=option.default, metadata={"option": option})


@dataclass(frozen=True)
class Inputs:
    """The shared inputs in the order of a verb's help, each with its typer option; a field the
    verb does not take keeps its default."""

    samples: Optional[int] = _shared(typer.Option(None, help="Use a seeded subset of this many examples."))
    split: str = _shared(typer.Option("train", help="train (the labels trained on) or test."))
    data: Optional[str] = _shared(typer.Option(
        None, "--data", help="Data set to analyse on instead of the one the checkpoint records (needed when it "
        "records none): digits, mnist1d, synthetic, npz, mnist, fashion-mnist, cifar10, cifar100."))
    data_root: Optional[str] = _shared(typer.Option(
        None, "--data-root", help="Folder or .npz file of --data; alone, it replaces the root of the recorded data "
        "set (e.g. files that moved)."))
    seed: int = _shared(seed_option("Seed of --samples."))
    params: str = _shared(PARAMS)
    plot_dir: Optional[Path] = _shared(typer.Option(None, "--out", help="Folder for figures (default: next to the "
                                                                         "checkpoint)."))
    pdf: bool = _shared(typer.Option(False, "--pdf", help="Also write figures as PDF."))
    json_out: Optional[str] = _shared(typer.Option(None, "--json", help="Save the JSON to PATH instead of "
                                                   "<run>/analyses/ (- for stdout only, nothing saved)."))
    overwrite: bool = _shared(typer.Option(False, "--overwrite", help="Replace an earlier result at the same place "
                                           "(its JSON, data and figures, stale ones included) instead of refusing."))
    progress: bool = _shared(typer.Option(True, help="Show a progress bar."))
    trust_factory: bool = _shared(TRUST_FACTORY)
    device: str = _shared(typer.Option("cpu", help="cpu, cuda, cuda:N or auto (under torchrun, cuda is each "
                                                   "process's own GPU)."))
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
    """Decorate a command that takes ``inputs: Inputs`` with the options of the fields ``names``
    (default: all but ``without``); a keyword in ``options`` replaces that field's option (e.g.
    ``seed`` with the verb's own help)."""
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
