"""``sharpscope interpolate``: loss and accuracy on the line between two checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from ._app import app
from ._common import (
    console as rank0_console, data_loss, is_main, params_record, parse_params, print_notes, progress_bar, write_json)
from ._inputs import JSON_OUT, Inputs, analysis_inputs
from ._landscape import BATCH_SIZE, MEMORY, claim_files, custom_metrics, figures, print_metrics, print_summary
from ._results import run_folder


@app.command("interpolate")
@analysis_inputs(without=("plot_dir",), json_out=JSON_OUT,
                 pdf=typer.Option(False, "--pdf", help="Also write the figure as PDF."))
def interpolate_command(
    checkpoint_a: Path = typer.Argument(..., help="Model A (alpha = 0)."),
    checkpoint_b: Path = typer.Argument(..., help="Model B (alpha = 1)."),
    grid: str = typer.Option("-0.5:1.5:41", help="alpha grid MIN:MAX:POINTS."),
    buffers: str = typer.Option("interpolate", help="BN statistics: interpolate between A and B, or keep A's."),
    batch_size: Optional[int] = BATCH_SIZE,
    memory: Optional[float] = MEMORY,
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: A's run folder /interpolate)."),
    plot: bool = typer.Option(False, "--plot", help="Write the loss / accuracy curve."),
    use_a_data: bool = typer.Option(False, "--use-a-data", help="Evaluate both models on A's data even when A and "
                                    "B were trained on different data (another seed, label noise or data set; "
                                    "refused without this option): the loss at B is then not B's training loss."),
    inputs: Inputs = Inputs(),
) -> None:
    """Loss and accuracy on the line (1 - alpha) A + alpha B between two checkpoints.

    Both are evaluated on A's data (its --split); A and B trained on different data are refused
    unless --use-a-data. The result (<out>/interpolation.npz, .json, figures) is replaced only
    with --overwrite.

    Example: sharpscope interpolate runs/sgd runs/sam --grid -0.5:1.5:41 --plot
    """
    from .. import landscape as ls
    from ..checkpoint import load_checkpoint, training_data_differences

    console = rank0_console(stderr=True)
    alphas = ls.parse_grid(grid)
    metric_fns = custom_metrics(inputs.metric, inputs.trust_factory)
    folder = out or (run_folder(checkpoint_a) / "interpolate")
    outputs = claim_files(folder, "interpolation", 1, False, list(metric_fns), [], plot, inputs)
    ckpt_a, batches, context = inputs.load(checkpoint_a, batch_size or 4096)
    ckpt_b = load_checkpoint(checkpoint_b, allow_factory=inputs.trust_factory,
                             map_location=next(ckpt_a.model.parameters()).device)
    context.add(ckpt_b)
    data_note = training_data_differences(ckpt_a, ckpt_b)  # "loss at B" would not be B's training loss
    if data_note and not use_a_data:
        raise ConfigError(f"A and B were trained on different data ({'; '.join(data_note)}); both would be "
                          f"evaluated on A's {inputs.split} data: pass --use-a-data to do so anyway")
    name_a, name_b = ((c.config or {}).get("optimizer", ab).upper() for c, ab in ((ckpt_a, "A"), (ckpt_b, "B")))
    with progress_bar(console, inputs.progress, "points") as bar:
        task = bar.add_task("interpolation", total=len(alphas))
        result = ls.interpolate(ckpt_a.model, ckpt_b.model, data_loss(batches), batches, alphas, buffers=buffers,
                                chunk_size=batch_size, name_a=name_a, name_b=name_b,
                                on_point=lambda k, lv, av: bar.advance(task), metrics=metric_fns or None,
                                params=parse_params(inputs.params), memory_gb=memory)
    if not is_main():  # the points were shared out; rank 0 writes
        return
    result.options.update({"a": str(ckpt_a.path), "b": str(ckpt_b.path), "split": inputs.split,
                           "samples": inputs.samples, "data": "A's", "data_differences": data_note,
                           **params_record(ckpt_a.model, inputs.params),
                           **({"metrics": list(inputs.metric)} if metric_fns else {})})
    print_notes(console, result.options)
    if data_note:
        console.print(f"note: both evaluated on A's {inputs.split} data; B was trained on other data "
                      f"({'; '.join(data_note)})", highlight=False)
    outputs.clear()
    result.save(folder / "interpolation.npz")
    human = rank0_console(stderr=inputs.json_out == "-")
    summary = print_summary(human, result, [0.5], 0.1)
    print_metrics(human, summary)
    report = {**result.to_dict((0.5,), 0.1), "summary": summary, "npz": str(folder / "interpolation.npz")}
    if plot:
        report["figures"] = figures({f"{name_a} -> {name_b}": result}, folder, "interpolation", inputs.pdf, console,
                                    list(metric_fns))
    write_json(report, inputs.json_out, context)
    write_json(report, str(folder / "interpolation.json"), context)
