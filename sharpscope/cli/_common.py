"""Glue shared by the analysis commands: checkpoint + data -> model and batches, JSON output."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import distributed as dist_utils
from ..checkpoint import Checkpoint, load_checkpoint
from ..data import DataSpec, load_dataset
from ..errors import CheckpointError, ConfigError


def load_for_analysis(path: Path, split: str, samples: int | None, batch_size: int, seed: int,
                      trust_factory: bool, device: str = "cpu") -> tuple[Checkpoint, list]:
    """The checkpoint's model (on ``device``) and a fixed list of batches of its data set
    (joins a torchrun process group first, if launched by torchrun: the analyses then split
    their work; the batches move to the model's device inside the analyses)."""
    dist_utils.init_from_env(device)
    target = dist_utils.resolve_device(device)
    ckpt = load_checkpoint(path, allow_factory=trust_factory, map_location=target)
    if not ckpt.data_spec:
        raise CheckpointError(f"{path}: records no data set; analyse it from Python with your own data")
    data = load_dataset(DataSpec.from_dict(ckpt.data_spec))
    if split not in ("train", "test"):
        raise ConfigError(f"--split must be train or test, got {split!r}")
    return ckpt, data.batches(split, samples, batch_size, seed)


def _plain(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_json(obj: dict, where: str | None) -> None:
    """Write ``obj`` to the path ``where`` ('-' for stdout); nothing when None."""
    if where is None or not dist_utils.is_main():
        return
    text = json.dumps(_plain(obj), indent=2) + "\n"
    if where == "-":
        sys.stdout.write(text)
    else:
        Path(where).parent.mkdir(parents=True, exist_ok=True)
        Path(where).write_text(text)


def progress_bar(console: Console, enabled: bool, unit: str) -> Progress:
    """A progress bar counting ``unit`` (HVPs, grid points, ...)."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn(unit), TimeElapsedColumn(), console=console, transient=True,
                    disable=not enabled or not dist_utils.is_main())


def hvp_progress(console: Console, enabled: bool) -> Progress:
    return progress_bar(console, enabled, "HVPs")


def point_progress(console: Console, enabled: bool) -> Progress:
    return progress_bar(console, enabled, "points")


def console(stderr: bool = False) -> Console:
    """A console that prints on rank 0 only."""
    return Console(stderr=stderr, quiet=not dist_utils.is_main())


# Options every analysis command shares: one definition, one help text.
SAMPLES = typer.Option(None, help="Use a seeded subset of this many examples.")
SPLIT = typer.Option("train", help="train (the labels trained on) or test.")
JSON_OUT = typer.Option(None, "--json", help="Write results as JSON to PATH (- for stdout).")
PROGRESS = typer.Option(True, help="Show a progress bar.")
TRUST_FACTORY = typer.Option(False, "--trust-factory", help="Import the custom model factory a checkpoint names.")
DEVICE = typer.Option("cpu", help="cpu, cuda, cuda:N or auto (under torchrun, cuda is each process's own GPU).")
