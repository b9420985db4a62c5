"""``sharpscope surface``: the loss landscape around a checkpoint or over a run's trajectory plane."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from ..errors import CheckpointError, ConfigError
from ._app import app
from ._common import (
    AnalysisContext, console as rank0_console, data_loss, finite, is_main, numbers, params_record, parse_params,
    print_notes, progress_bar, refuse, seed_option, write_json)
from ._inputs import JSON_OUT, Inputs, analysis_inputs
from ._landscape import BATCH_SIZE, MEMORY, claim_files, custom_metrics, figures, print_metrics, print_summary
from ._results import Claim, run_folder

if TYPE_CHECKING:
    from rich.console import Console


def _surface_axes(grid: str | None, dim: int, trajectory: bool, range_mode: str) -> list | None:
    """``--grid`` (or the default) as the axes [xs, ys, zs] (None where a surface has fewer
    directions), refused if malformed or too large for memory; None: a trajectory's grid, chosen
    from its path once the path is known."""
    import numpy as np

    from .. import landscape as ls
    from ..checks import require_grid_memory

    if grid is None and trajectory and range_mode != "auto":
        return None
    if grid is None:
        grid = "-1:1:31,-1:1:31" if trajectory else {1: "-1:1:51", 2: "-1:1:51,-1:1:51"}.get(dim, "-1:1:21")
    dim = 2 if trajectory else dim
    parts = [p for p in grid.split(",") if p.strip()]
    if dim == 1 and len(parts) != 1:
        raise ConfigError(f"--dim 1 takes one grid MIN:MAX:POINTS, got {grid!r}")
    if dim == 2 and len(parts) not in (1, 2):
        raise ConfigError(f"--dim 2 takes one or two grids (x,y), got {grid!r}")
    if dim == 3 and len(parts) not in (1, 3):
        raise ConfigError(f"--dim 3 takes one shared grid or three grids (x,y,z), got {grid!r}")
    axes = [ls.parse_grid(part) for part in (parts * dim if dim >= 2 and len(parts) == 1 else parts)]
    require_grid_memory(int(np.prod([len(a) for a in axes])))
    if range_mode == "auto" and min(len(a) for a in axes) < 2:
        raise ConfigError(f"--range auto spreads each direction's POINTS over [-extent, extent]: it needs POINTS "
                          f">= 2, got --grid {grid}")
    return axes + [None] * (3 - len(axes))


def _snapshots(run_dir: Path, minimum: int = 3) -> list[dict]:
    """The model states of a run's per-epoch snapshots (at least ``minimum``, all finite)."""
    from ..checkpoint import nonfinite_tensors, read_checkpoint

    files = sorted((run_dir / "checkpoints").glob("epoch_*.pt"))
    if len(files) < minimum:
        raise CheckpointError(f"{run_dir}: needs at least {minimum} snapshots in {run_dir / 'checkpoints'} "
                              "(train with snapshots on, the default)")
    states = [read_checkpoint(f)["model_state"] for f in files]
    for f, state in zip(files, states):
        if nonfinite_tensors(state):
            raise CheckpointError(f"{f}: weights hold NaN or Inf; the trajectory cannot include it")
    return states


@app.command("surface")
@analysis_inputs(without=("plot_dir",), json_out=JSON_OUT,
                 seed=seed_option("Seed of the directions (direction 2 uses seed + 1) and of --samples."))
def surface_command(
    checkpoint: Optional[Path] = typer.Argument(None, help="A checkpoint file or run folder (not with --trajectory)."),
    trajectory: Optional[Path] = typer.Option(None, "--trajectory", help="A run folder: PCA plane of its per-epoch "
                                                                          "snapshots, centred on the last one."),
    path_run: Optional[Path] = typer.Option(None, "--path", help="A run folder: project its per-epoch snapshots "
                                            "(checkpoints/epoch_*.pt) onto the plane of the directions (least "
                                            "squares), report each one's residual distance and draw the path "
                                            "(--dim 2)."),
    dim: int = typer.Option(2, "--dim", help="1, 2 or 3 directions (3: a 3-D grid, stored whole, plotted as slices "
                                             "at the third coordinate's min, centre and max)."),
    grid: Optional[str] = typer.Option(None, help="MIN:MAX:POINTS[,MIN:MAX:POINTS[,...]], one per direction or "
                                                  "one shared (default -1:1:51; --dim 3 -1:1:21; "
                                                  "for --trajectory, the path's range plus a margin, 31 points)."),
    directions_kind: str = typer.Option("random", "--directions", help="random (Gaussian, normalized by --norm) or "
                                        "hessian (the top --dim Hessian eigenvectors, unit norm; in 1-D next to a "
                                        "random direction rescaled to unit norm)."),
    norm: str = typer.Option("filter", help="Random direction normalization: filter, layer, weight, dfilter, dlayer, "
                                            "none (Li et al.'s options)."),
    ignore: str = typer.Option("biasbn", help="biasbn (zero on biases, norm layers and 1-D tensors) or none "
                                              "(1-D tensors take d = w, as Li et al.'s code)."),
    dir_type: str = typer.Option("weights", "--dir-type", help="weights (parameters) or states (also BN running "
                                                               "statistics, used perturbed in eval mode)."),
    orthogonalize: bool = typer.Option(False, "--orthogonalize", help="Make direction 2 orthogonal to direction 1 "
                                                                     "(and direction 3 to both)."),
    batch_size: Optional[int] = BATCH_SIZE,
    memory: Optional[float] = MEMORY,
    range_mode: str = typer.Option("grid", "--range", help="grid (the MIN:MAX of --grid) or auto: each direction "
                                   "spans [-t, t], t the larger of the two distances (+ and -) at which the loss first "
                                   "reaches --range-factor x the centre loss (doubling from 0.05, then 6 bisections), "
                                   "capped at --range-max with a warning; --grid then gives only the POINTS."),
    range_factor: float = typer.Option(2.0, "--range-factor", callback=finite(above=1), help="--range auto: the "
                                       "loss factor the extent reaches."),
    range_max: float = typer.Option(10.0, "--range-max", callback=finite(above=0), help="--range auto: the largest "
                                    "extent (a side that never reaches the factor is capped here, with a warning)."),
    radii: str = typer.Option("0.1,0.25,0.5,1", help="Radii at which to report the mean loss increase."),
    basin_delta: float = typer.Option(0.1, "--basin-delta", callback=finite(above=0),
                                      help="Basin = where the loss is within this of the centre."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: <run>/surface)."),
    plot: bool = typer.Option(False, "--plot", help="Write figures (1-D curve; 2-D contour, filled contour, 3-D)."),
    inputs: Inputs = Inputs(),
) -> None:
    """Loss surface around a checkpoint (random directions) or over a run's trajectory plane.

    Filter-normalized Gaussian directions (Li et al. 2018), the top Hessian eigenvectors with
    --directions hessian, or the PCA plane of the run's per-epoch snapshots with --trajectory.
    Resumable: rerun the same command. The result (<out>/<name>.npz, .json and figures) is
    replaced only with --overwrite.

    Example: sharpscope surface runs/sam --dim 2 --grid -1:1:51 --plot --json s.json
    """
    console = rank0_console(stderr=True)
    job = _surface_job(checkpoint, trajectory, path_run, dim, grid, range_mode, directions_kind, norm, ignore, dir_type,
                       radii, out, plot, inputs, memory)
    ckpt, batches, context = inputs.load(job.source, batch_size or 4096)
    if memory is not None:  # a point that cannot fit is refused before the directions are computed
        from ..landscape.surface import point_chunks
        point_chunks(ckpt.model, data_loss(batches), batches, memory, batch_size)
    options = {"split": inputs.split, "samples": inputs.samples, "seed": inputs.seed, "checkpoint": str(ckpt.path),
               **({"metrics": list(inputs.metric)} if job.metric_fns else {}),
               **params_record(ckpt.model, inputs.params)}
    plan = _surface_directions(ckpt.model, batches, options, trajectory, path_run, directions_kind, dim, inputs.seed,
                               norm, ignore, dir_type, orthogonalize, inputs.progress, console)
    result, random_result = _evaluate(ckpt.model, batches, plan, job, (range_mode, range_factor, range_max),
                                      options, batch_size, inputs.progress, console)
    if is_main():  # the points were shared out; rank 0 writes
        _save_surface(job, ckpt, result, random_result, plan, basin_delta, inputs.json_out, options, norm, plot,
                      inputs.pdf, context, console)


@dataclass
class _SurfaceJob:
    """What a surface's options decide before anything loads: the checkpoint it is taken
    around, the custom metrics, the radii, the grid axes (None: the trajectory's own), where
    its files go (``folder``/``stem``), the claim on them and the --memory budget (GB, or None)."""

    source: Path
    metric_fns: dict
    radii: list[float]
    axes: list | None
    folder: Path
    stem: str
    outputs: Claim
    memory_gb: float | None = None


def _surface_job(checkpoint: Path | None, trajectory: Path | None, path_run: Path | None, dim: int, grid: str | None,
                 range_mode: str, directions_kind: str, norm: str, ignore: str, dir_type: str, radii: str,
                 out: Path | None, plot: bool, inputs: Inputs, memory: float | None = None) -> _SurfaceJob:
    """Refuse options that do not go together, before loading anything, and claim the files: the
    npz and JSON (named trajectory, hessian_<dim>d or surface_<dim>d), the random comparison's
    npz, the figures with --plot."""
    from ..landscape.directions import check_options

    refuse(((checkpoint is None) == (trajectory is None), "give either a CHECKPOINT or --trajectory RUN_DIR"),
           (dim not in (1, 2, 3), f"--dim must be 1, 2 or 3, got {dim}"),
           (dim == 3 and trajectory is not None, "--trajectory spans the 2-D PCA plane: not with --dim 3"),
           (range_mode not in ("grid", "auto"), f"--range must be grid or auto, got {range_mode!r}"),
           (path_run is not None and (trajectory is not None or dim != 2), "--path draws a run's snapshots on a 2-D "
            "surface of chosen directions: with --dim 2, not with --trajectory (which draws its own path)"),
           (directions_kind not in ("random", "hessian"),
            f"--directions must be random or hessian, got {directions_kind!r}"),
           (directions_kind == "hessian" and (trajectory is not None or dir_type != "weights"),
            "--directions hessian spans parameters only: not with --trajectory or --dir-type states"))
    check_options(norm, ignore, dir_type)
    metric_fns = custom_metrics(inputs.metric, inputs.trust_factory)
    radii_list = numbers(radii, float, "--radii", above=0)
    axes = _surface_axes(grid, dim, trajectory is not None, range_mode)  # before any work
    source = checkpoint if checkpoint is not None else trajectory / "checkpoint.pt"
    folder = out or (run_folder(source) / "surface")
    stem = "trajectory" if trajectory else f"hessian_{dim}d" if directions_kind == "hessian" else f"surface_{dim}d"
    compare = [folder / f"{stem}_random.npz"] if directions_kind == "hessian" and dim == 1 else []
    outputs = claim_files(folder, stem, 2 if trajectory else dim, trajectory is not None, list(metric_fns), compare,
                          plot, inputs)
    return _SurfaceJob(source, metric_fns, radii_list, axes, folder, stem, outputs, memory)


def _surface_directions(model: Any, batches: Any, options: dict, trajectory: Path | None, path_run: Path | None,
                        directions_kind: str, dim: int, seed: int, norm: str, ignore: str, dir_type: str,
                        orthogonalize: bool, progress: bool, console: Console) -> dict:
    """The surface's ``directions`` and ``kind``, the random ``compare`` direction beside a 1-D
    Hessian one, a trajectory's ``explained`` variance and default ``axes``, a projected path
    and its ``residual``; what they were made of is recorded in ``options``."""
    from .. import landscape as ls

    plan: dict[str, Any] = {"compare": [], "explained": None, "path": None, "residual": None}
    print_notes(console, options)
    selection = parse_params(options.get("params", "all"))  # directions over these parameters only
    if trajectory is not None and selection != "all":
        raise ConfigError("--params applies to random and hessian directions, not to a --trajectory plane")
    if trajectory is not None:
        snaps = _snapshots(trajectory)
        traj = ls.trajectory_directions(model, snaps, ignore=ignore)
        plan.update(directions=traj.directions, explained=traj.explained_variance, path=traj.path, kind="trajectory",
                    residual=ls.project_snapshots(snaps[-1], traj.directions, snaps).residual,
                    axes=[*ls.trajectory_grid(traj.path), None])
        options.update({"trajectory": str(trajectory), "ignore": ignore, "snapshots": len(snaps)})
    elif directions_kind == "hessian":
        with progress_bar(console, progress, "HVPs") as bar:
            task = bar.add_task(f"top-{dim} Hessian eigenvectors", total=None)
            eig = ls.hessian_directions(model, data_loss(batches), batches, k=dim, seed=seed, params=selection,
                                        on_hvp=lambda n: bar.advance(task, n))
        plan.update(directions=eig.directions, kind="hessian", eig=eig)
        options.update({"directions": "hessian", "eigenvalues": eig.eigenvalues, "slopes": eig.slopes,
                        "residuals": eig.result.residuals, "converged": eig.result.converged,
                        "n_hvp": eig.result.n_hvp})
        if dim == 1:  # the comparison: a random direction of the same (unit) norm
            options.update({"random_norm": norm, "ignore": ignore})
            plan["compare"] = [ls.scale_to_norm(ls.random_direction(model, norm=norm, ignore=ignore, seed=seed,
                                                                    params=selection), 1.0)]
    else:
        plan.update(directions=ls.random_directions(model, dim, seed=seed, orthogonal=orthogonalize, norm=norm,
                                                    ignore=ignore, dir_type=dir_type, params=selection), kind="random")
        options.update({"norm": norm, "ignore": ignore, "orthogonalize": orthogonalize, "dir_type": dir_type})
    if path_run is not None:
        snaps = _snapshots(path_run, minimum=1)
        centre = {**dict(model.named_buffers()), **dict(model.named_parameters())}
        proj = ls.project_snapshots(centre, plan["directions"], snaps)
        plan.update(path=proj.coords, residual=proj.residual)
        options.update({"path_run": str(path_run), "path_snapshots": len(snaps)})
    return plan


def _evaluate(model: Any, batches: Any, plan: dict, job: _SurfaceJob, auto: tuple[str, float, float], options: dict,
              batch_size: int | None, progress: bool, console: Console) -> tuple:
    """The surface along the plan's directions, and the random comparison's (or None), over the
    grid of --grid (or the trajectory's); with ``auto`` = (--range auto, factor, largest
    extent), its POINTS spread over each direction's extent (:func:`sharpscope.landscape.auto_grid`,
    recorded in ``options``)."""
    from .. import landscape as ls

    range_mode, factor, max_extent = auto
    axes = job.axes if job.axes is not None else plan["axes"]
    if range_mode == "auto":
        rng, axes = ls.auto_grid(model, data_loss(batches), batches, plan["directions"], axes, factor,
                                 max_extent=max_extent, chunk_size=batch_size, memory_gb=job.memory_gb)
        for note in rng.warnings:
            console.print(f"warning: {note}", highlight=False)
        options["range_auto"] = rng.to_dict()
        console.print("--range auto: extents " + ", ".join(f"{e:.4g}" for e in rng.extents)
                      + f" (loss reaches {factor:g} x the centre loss {rng.centre_loss:.5g})", highlight=False)
    xs, ys, zs = axes
    compare, metrics, partial = plan["compare"], job.metric_fns or None, job.folder / f"{job.stem}.partial.npz"
    n_points = len(xs) * (1 if ys is None else len(ys)) * (1 if zs is None else len(zs))
    with progress_bar(console, progress, "points") as bar:
        task = bar.add_task(f"{plan['kind']} surface", total=n_points * (1 + len(compare)))
        result = ls.surface(model, data_loss(batches), batches, plan["directions"], xs, ys, kind=plan["kind"],
                            options=options, chunk_size=batch_size, resume_path=partial,
                            on_point=lambda *point: bar.advance(task), zs=zs, metrics=metrics, memory_gb=job.memory_gb)
        random_result = None if not compare else ls.surface(
            model, data_loss(batches), batches, compare, xs, ys, kind="random",
            options={**options, "directions": "random", "scaled_to_norm": 1.0}, chunk_size=batch_size,
            resume_path=job.folder / f"{job.stem}_random.partial.npz", on_point=lambda *point: bar.advance(task),
            metrics=metrics, memory_gb=job.memory_gb)
    result = dataclasses.replace(result, explained_variance=plan["explained"], path=plan["path"],
                                 path_residual=plan["residual"])
    return result, random_result


def _save_surface(job: _SurfaceJob, ckpt: Any, result: Any, random_result: Any, plan: dict, delta: float,
                  json_out: str | None, options: dict, norm: str, plot: bool, pdf: bool, context: AnalysisContext,
                  console: Console) -> None:
    """Replace an earlier result (--overwrite), save the surface(s) (npz), print their
    summaries, draw the figures (--plot) and write the JSON (<out>/<name>.json and --json)."""
    folder, stem, radii = job.folder, job.stem, job.radii
    job.outputs.clear()
    result.save(folder / f"{stem}.npz", plan["directions"])
    (folder / f"{stem}.partial.npz").unlink(missing_ok=True)
    human = rank0_console(stderr=json_out == "-")
    summary = print_summary(human, result, radii, delta)
    print_metrics(human, summary)
    explained, residual = plan["explained"], plan["residual"]
    if explained is not None:
        human.print(f"PCA explained variance: {explained[0]:.1%}, {explained[1]:.1%}", highlight=False)
    if residual is not None:
        human.print(f"path: {len(residual)} snapshots; distance to the plane (residual) "
                    f"min {residual.min():.4g}, max {residual.max():.4g}, last {residual[-1]:.4g}", highlight=False)
    report = {**result.to_dict(radii, delta), "summary": summary, "npz": str(folder / f"{stem}.npz")}
    if plan["kind"] == "hessian":
        human.print("Hessian eigenvalues " + ", ".join(f"{v:.6g}" for v in options["eigenvalues"])
                    + f" ({options['n_hvp']} HVPs); the directions are unit eigenvectors", highlight=False)
    if random_result is not None:
        random_result.save(folder / f"{stem}_random.npz", plan["compare"])
        (folder / f"{stem}_random.partial.npz").unlink(missing_ok=True)
        human.print(f"random {norm}-normalized direction rescaled to unit norm, for comparison:", highlight=False)
        report["random"] = {**random_result.to_dict(radii, delta),
                            "summary": print_summary(human, random_result, radii, delta),
                            "npz": str(folder / f"{stem}_random.npz")}
    if plot:
        label = (ckpt.config or {}).get("optimizer", "model").upper()
        eig = plan.get("eig")
        eigen = None if random_result is None else (random_result, eig.eigenvalues[0], eig.slopes[0], eig.loss)
        report["figures"] = figures({label: result}, folder, stem, pdf, console, list(job.metric_fns), eigen)
    write_json(report, json_out, context)
    write_json(report, str(folder / f"{stem}.json"), context)
