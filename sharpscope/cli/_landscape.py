"""What the landscape verbs (``surface``, ``interpolate``) share: options, custom metrics, the
printed summary, the files they claim and the figures they announce."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ..errors import ConfigError
from ._common import finite
from ._results import Claim, announce, claim, figure_files

if TYPE_CHECKING:
    from rich.console import Console

    from ..landscape import SurfaceResult
    from ._inputs import Inputs


BATCH_SIZE = typer.Option(None, "--batch-size", "-b", min=1, help="Examples per forward pass (default: the fastest, "
                          "timed).")
MEMORY = typer.Option(None, "--memory", callback=finite(above=0), help="GB (2^30 bytes) a grid point may hold besides "
                      "the model, its directions and the data: a copy of the parameters and one chunk's activations "
                      "(measured on a few examples); the chunk (--batch-size) is chosen to fit, or the command is "
                      "refused before the first point, saying what it would need.")
METRIC = typer.Option(None, "--metric", help="[NAME=]package.module:function: a custom metric fn(model, batch) -> "
                      "scalar, evaluated next to the loss (repeatable; needs --trust-factory).")


def figures(results: dict, folder: Path, stem: str, pdf: bool, console: Console, metrics: list[str],
            eigen: tuple | None = None) -> list[str]:
    """Every figure of the result(s) (:func:`sharpscope.plots.plot_result`), each file announced."""
    from .. import plots

    written = plots.plot_result(results, folder, stem, formats=("png", "pdf") if pdf else ("png",), metrics=metrics,
                                eigen=eigen)
    return announce(written, console)


def custom_metrics(specs: list[str] | None, trust: bool) -> dict:
    """``--metric [NAME=]package.module:function`` (repeatable) -> {name: fn}; imported only with --trust-factory."""
    from ..landscape.metrics import import_metric

    out: dict = {}
    for spec in specs or []:
        name, fn = import_metric(spec, allow_import=trust)
        if name in out:
            raise ConfigError(f"--metric {name} is given twice (name one of them: NAME=package.module:function)")
        out[name] = fn
    return out


def fmt(value: Any, spec: str) -> str:
    """A summary value, or n/a where the grid could not give it (None: a NaN loss, a point off the grid)."""
    return "n/a" if value is None else format(value, spec)


def print_metrics(console: Console, summary: dict) -> None:
    """The custom metrics' summary lines: at the centre, min, max (and at B)."""
    for name, m in (summary.get("metrics") or {}).items():
        at_b = f", at B {fmt(m['at_b'], '.5g')}" if "at_b" in m else ""
        console.print(f"metric {name}: centre {fmt(m['centre'], '.5g')}, min {fmt(m['min'], '.5g')}, "
                      f"max {fmt(m['max'], '.5g')}{at_b}", highlight=False)


def print_summary(console: Console, result: SurfaceResult, radii: list[float], delta: float) -> dict:
    """Print a surface's (or interpolation's) summary and return it (:meth:`SurfaceResult.summary`)."""
    s = result.summary(radii, delta)
    inc = ", ".join(f"r={r}: {v:+.4g}" if v is not None else f"r={r}: outside grid"
                    for r, v in s["loss_increase_at_radius"].items())
    edge = " (reaches the grid edge: at least)" if s["basin_reaches_grid_edge"] else ""
    lines = [f"{result.kind} surface, {result.dim}-D, {result.n_points} points over {result.n_examples} examples in "
             f"{result.wall_time:.1f}s ({result.n_points / max(result.wall_time, 1e-9):.1f} points/s)",
             f"centre loss {fmt(s['centre_loss'], '.5g')}, accuracy {fmt(s['centre_accuracy'], '.4f')}",
             f"mean loss increase at radius: {inc}",
             f"basin width (loss within +{delta} of the centre): {fmt(s['basin_width'], '.4g')}{edge}"]
    if result.dim == 3:
        lines.append(f"(the summary above is of the slice at direction 3 = {s['slice_z']:.4g})")
    if result.dim >= 2:
        t = result.topology().summary()
        lines.append(f"topology: {t['n_minima']} local minima ({t['n_minima_interior']} interior), mean saddle-minimum "
                     f"depth {fmt(t['mean_depth'], '.4g')}, max persistence {fmt(t['max_persistence'], '.4g')}")
    if "barrier" in s:
        lines.append(f"loss at B {fmt(s['loss_at_b'], '.5g')}; barrier on [0, 1]: {fmt(s['barrier'], '+.4g')}")
    for line in lines:
        console.print(line, highlight=False)
    return s


def claim_files(folder: Path, stem: str, dim: int, trajectory: bool, metrics: list[str], more: list[Path],
                plot: bool, inputs: Inputs) -> Claim:
    """Claim <folder>/<stem>.npz and .json, the files ``more``, the figures with --plot
    (:func:`sharpscope.plots.figure_names`) and a --json PATH: refused if one exists, unless --overwrite."""
    files = [folder / f"{stem}.npz", folder / f"{stem}.json", *more]
    if plot:
        from .. import plots

        files += figure_files(folder, plots.figure_names(stem, dim, trajectory, metrics), inputs.pdf)
    extra = Path(inputs.json_out) if inputs.json_out not in (None, "-") else None
    return claim([*files, extra], inputs.overwrite, "--out DIR", records=[folder / f"{stem}.json", extra])
