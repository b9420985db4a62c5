"""``sharpscope info``: what a checkpoint holds and what wrote it, or this machine's environment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ._app import TorchOnDemandCommand, app, global_threads


def summarize(raw: dict, path: Path) -> dict:
    """A JSON-able summary of a raw checkpoint dict (as :func:`~sharpscope.checkpoint.read_checkpoint`
    returns it: its fields have been type-checked)."""
    from ..checkpoint import nonfinite_tensors

    n_params = sum(t.numel() for k, t in raw["model_state"].items()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    return {
        "path": str(path), "bytes": path.stat().st_size if path.is_file() else None,
        "format_version": raw.get("format_version"), "sharpscope_version": raw.get("sharpscope_version"),
        "torch_version": raw.get("torch_version"), "model_spec": raw["model_spec"], "parameters": n_params,
        "nonfinite_tensors": nonfinite_tensors(raw["model_state"]),
        "data_spec": raw.get("data_spec"), "data_fingerprint": raw.get("data_fingerprint"),
        "config": raw.get("config"), "progress": raw.get("progress"),
        "has_optimizer_state": raw.get("optimizer_state") is not None,
        "last_metrics": (raw.get("metrics") or [None])[-1], "metadata": raw.get("metadata") or {},
        "environment": (raw.get("metadata") or {}).get("environment"),
    }


def _jsonable(value: object) -> object:
    """Tensors (allowed in metadata) appear as their shape and dtype."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"tensor{list(shape)} {dtype}"
    return repr(value)


def _dumps(value: object, indent: int | None = None) -> str:
    return json.dumps(value, indent=indent, default=_jsonable)


@app.command("info", cls=TorchOnDemandCommand)
def info_command(
    ctx: typer.Context,
    checkpoint: Optional[Path] = typer.Argument(None, help="A checkpoint file or a run folder (none: this "
                                                            "machine's environment)."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write the summary as JSON to PATH (- for stdout)."),
) -> None:
    """Print what a checkpoint holds and the environment that wrote it (versions, device,
    dtype, threads, ranks, deterministic mode; loaded safely with weights_only=True); without a
    checkpoint, this machine's environment (what a result computed here would record)."""
    from rich.console import Console
    from rich.table import Table

    from ..cpu import configure_threads
    from ..provenance import environment, planned_environment
    from ._common import folded

    if checkpoint is None:  # without torch where every field can be read off without it (tests/test_startup.py)
        summary = planned_environment(global_threads(ctx))
        if summary is None:
            configure_threads(global_threads(ctx))
            summary = environment()
        title, rows = "this machine", [(key, str(value)) for key, value in summary.items()]
    else:
        from ..checkpoint import read_checkpoint

        configure_threads(global_threads(ctx))
        raw = read_checkpoint(checkpoint)
        path = checkpoint / "checkpoint.pt" if checkpoint.is_dir() else checkpoint
        summary = summarize(raw, path)
        title, rows = str(path), _rows(summary)
    if json_out == "-":
        print(_dumps(summary, indent=2))
        return
    if json_out:
        Path(json_out).write_text(_dumps(summary, indent=2) + "\n")
    table = Table(title=title, show_header=False)
    for row in rows:
        table.add_row(*row)
    Console().print(folded(table))


def _rows(summary: dict) -> list[tuple[str, str]]:
    """The table of a checkpoint's :func:`summarize`."""
    from ..provenance import describe

    rows = [(key, str(summary[key])) for key in ("format_version", "sharpscope_version", "torch_version",
                                                  "parameters", "bytes", "has_optimizer_state")]
    rows.append(("written by", describe(summary["environment"])))
    if summary["nonfinite_tensors"]:
        rows.append(("[red]NaN/Inf in[/]", ", ".join(summary["nonfinite_tensors"])))
    for key in ("model_spec", "data_spec", "progress", "last_metrics"):
        rows.append((key, _dumps(summary[key])))
        fp = summary["data_fingerprint"]
        if key == "data_spec" and fp:
            rows.append(("training split", f"{fp.get('n_examples')} examples of shape "
                         f"{tuple(fp.get('input_shape') or [])}, {fp.get('num_classes')} classes; SHA-256 inputs "
                         f"{str(fp.get('inputs_sha256'))[:12]}, labels {str(fp.get('labels_sha256'))[:12]}"))
    rows.append(("metadata", _dumps({k: v for k, v in summary["metadata"].items() if k != "environment"})))
    if summary["config"]:
        rows.append(("config", _dumps(summary["config"])))
    return rows
