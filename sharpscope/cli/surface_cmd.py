"""``sharpscope surface`` and ``sharpscope interpolate``: loss landscapes of checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from ..errors import CheckpointError, ConfigError
from ._app import app
from ._common import (
    DATA, DATA_ROOT, DETERMINISTIC, apply_determinism, DEVICE, JSON_OUT, PROGRESS, SAMPLES, SPLIT,
    TRUST_FACTORY, console as rank0_console, finite, hvp_progress, load_for_analysis, numbers, point_progress,
    seed_option, write_json)
from ._results import OVERWRITE, claim, figure_files, run_folder

if TYPE_CHECKING:
    from rich.console import Console

    from ..landscape import SurfaceResult


def _grids(text: str, dim: int) -> tuple:
    """``--grid`` as (xs, ys) (ys None in 1-D), refused if it is malformed or would not fit in memory."""
    import numpy as np

    from .. import landscape as ls
    from ..checks import require_grid_memory

    parts = [p for p in text.split(",") if p.strip()]
    if dim == 1 and len(parts) != 1:
        raise ConfigError(f"--dim 1 takes one grid MIN:MAX:POINTS, got {text!r}")
    if dim == 2 and len(parts) not in (1, 2):
        raise ConfigError(f"--dim 2 takes one or two grids (x,y), got {text!r}")
    if dim == 3 and len(parts) not in (1, 3):
        raise ConfigError(f"--dim 3 takes one shared grid or three grids (x,y,z), got {text!r}")
    axes = [ls.parse_grid(part) for part in (parts * dim if dim >= 2 and len(parts) == 1 else parts)]
    require_grid_memory(int(np.prod([len(a) for a in axes])))
    if dim == 3:
        return axes[0], axes[1], axes[2]
    return axes[0], (axes[1] if dim == 2 else None)


def _figures(results: dict, folder: Path, stem: str, pdf: bool, console: Console) -> list[str]:
    from .. import plots

    formats = ("png", "pdf") if pdf else ("png",)
    first = next(iter(results.values()))
    written: list[Path] = []
    if first.dim == 1:
        written += plots.plot_curve(results, folder / stem, formats=formats)
    elif first.dim == 3:
        written += plots.plot_slices(first, folder / f"{stem}_slices", formats=formats)
    elif first.kind == "trajectory":
        written += plots.plot_trajectory(first, folder / stem, formats=formats)
        written += plots.plot_surface3d(results, folder / f"{stem}_3d", formats=formats)
    else:
        written += plots.plot_contour(results, folder / f"{stem}_contour", formats=formats)
        written += plots.plot_contour(results, folder / f"{stem}_filled", filled=True, formats=formats)
        written += plots.plot_surface3d(results, folder / f"{stem}_3d", formats=formats)
    for p in written:
        console.print(f"wrote {p}", highlight=False)
    return [str(p) for p in written]


def _metrics(specs: list[str] | None, trust: bool) -> dict:
    """``--metric [NAME=]package.module:function`` (repeatable) -> {name: fn}; imported only with --trust-factory."""
    from ..landscape.metrics import import_metric

    out: dict = {}
    for spec in specs or []:
        name, fn = import_metric(spec, allow_import=trust)
        if name in out:
            raise ConfigError(f"--metric {name} is given twice (name one of them: NAME=package.module:function)")
        out[name] = fn
    return out


def _metric_figures(results: dict, names: list[str], folder: Path, stem: str, pdf: bool, console: Console) -> list[str]:
    """One figure per custom metric: a curve (1-D) or contour plot (2-D, linear levels: a metric may be negative)."""
    from .. import plots

    formats = ("png", "pdf") if pdf else ("png",)
    first = next(iter(results.values()))
    written: list[Path] = []
    for name in names:
        if first.dim == 1:
            written += plots.plot_curve(results, folder / f"{stem}_{name}", metric=name, formats=formats)
        else:
            written += plots.plot_contour(results, folder / f"{stem}_{name}_contour", metric=name, log_levels=False,
                                          formats=formats)
    for p in written:
        console.print(f"wrote {p}", highlight=False)
    return [str(p) for p in written]


def _print_metrics(console: Console, summary: dict) -> None:
    for name, m in (summary.get("metrics") or {}).items():
        at_b = f", at B {_fmt(m['at_b'], '.5g')}" if "at_b" in m else ""
        console.print(f"metric {name}: centre {_fmt(m['centre'], '.5g')}, min {_fmt(m['min'], '.5g')}, "
                      f"max {_fmt(m['max'], '.5g')}{at_b}", highlight=False)


def _eigen_figure(result: SurfaceResult, random_result: SurfaceResult, eig: Any, folder: Path, stem: str, pdf: bool,
                  console: Console) -> list[str]:
    from .. import plots

    written = plots.plot_eigen_curve(result, random_result, eig.eigenvalues[0], eig.slopes[0], eig.loss,
                                     folder / stem, formats=("png", "pdf") if pdf else ("png",))
    for p in written:
        console.print(f"wrote {p}", highlight=False)
    return [str(p) for p in written]


def _fmt(value: Any, spec: str) -> str:
    """A summary value, or n/a where the grid could not give it (None: a NaN loss, a point off the grid)."""
    return "n/a" if value is None else format(value, spec)


def _print_summary(console: Console, result: SurfaceResult, radii: list[float], delta: float) -> dict:
    s = result.summary(radii, delta)
    console.print(f"{result.kind} surface, {result.dim}-D, {result.n_points} points over {result.n_examples} "
                  f"examples in {result.wall_time:.1f}s ({result.n_points / max(result.wall_time, 1e-9):.1f} points/s)",
                  highlight=False)
    console.print(f"centre loss {_fmt(s['centre_loss'], '.5g')}, accuracy {_fmt(s['centre_accuracy'], '.4f')}",
                  highlight=False)
    inc = ", ".join(f"r={r}: {v:+.4g}" if v is not None else f"r={r}: outside grid"
                    for r, v in s["loss_increase_at_radius"].items())
    console.print(f"mean loss increase at radius: {inc}", highlight=False)
    edge = " (reaches the grid edge: at least)" if s["basin_reaches_grid_edge"] else ""
    console.print(f"basin width (loss within +{delta} of the centre): {_fmt(s['basin_width'], '.4g')}{edge}",
                  highlight=False)
    if result.dim == 3:
        console.print(f"(the summary above is of the slice at direction 3 = {s['slice_z']:.4g})", highlight=False)
    if result.dim >= 2:
        t = result.topology().summary()
        console.print(f"topology: {t['n_minima']} local minima ({t['n_minima_interior']} interior), mean saddle-minimum "
                      f"depth {_fmt(t['mean_depth'], '.4g')}, max persistence {_fmt(t['max_persistence'], '.4g')}",
                      highlight=False)
    if "barrier" in s:
        console.print(f"loss at B {_fmt(s['loss_at_b'], '.5g')}; barrier on [0, 1]: {_fmt(s['barrier'], '+.4g')}",
                      highlight=False)
    return s


def surface_stem(dim: int, trajectory: bool, directions: str) -> str:
    """The name of a surface's files in its folder: trajectory, hessian_<dim>d or surface_<dim>d."""
    return "trajectory" if trajectory else f"hessian_{dim}d" if directions == "hessian" else f"surface_{dim}d"


def _claim_surface(folder: Path, dim: int, trajectory: bool, directions: str, metrics: list[str], plot: bool,
                   pdf: bool, json_out: str | None, overwrite: bool) -> Any:
    """Claim the files a surface writes (its npz and JSON, the random comparison's npz, the
    figures with --plot, a --json PATH): refused if one exists, unless --overwrite."""
    stem = surface_stem(dim, trajectory, directions)
    dim = 2 if trajectory else dim  # the PCA plane
    compare = directions == "hessian" and dim == 1
    files = [folder / f"{stem}.npz", folder / f"{stem}.json"] + ([folder / f"{stem}_random.npz"] if compare else [])
    if plot:
        if trajectory:
            figures = [stem, f"{stem}_3d"]
        elif dim == 1:
            figures = [stem]
        elif dim == 3:
            figures = [f"{stem}_slices"]
        else:
            figures = [f"{stem}_contour", f"{stem}_filled", f"{stem}_3d"]
        figures += [f"{stem}_{name}" if dim == 1 else f"{stem}_{name}_contour" for name in metrics]
        files += figure_files(folder, figures, pdf)
    extra = Path(json_out) if json_out not in (None, "-") else None
    return claim([*files, extra], overwrite, "--out DIR", records=[folder / f"{stem}.json", extra])


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
def surface_command(
    checkpoint: Optional[Path] = typer.Argument(None, help="A checkpoint file or run folder (not with --trajectory)."),
    trajectory: Optional[Path] = typer.Option(None, "--trajectory", help="A run folder: PCA plane of its per-epoch "
                                                                          "snapshots, centred on the last one."),
    path_run: Optional[Path] = typer.Option(None, "--path", help="A run folder: project its per-epoch snapshots "
                                            "(checkpoints/epoch_*.pt) onto the plane of the directions (least squares), "
                                            "report each one's residual distance and draw the path (--dim 2)."),
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
    seed: int = seed_option("Seed of the directions (direction 2 uses seed + 1) and of --samples."),
    samples: Optional[int] = SAMPLES,
    split: str = SPLIT,
    data: Optional[str] = DATA,
    data_root: Optional[str] = DATA_ROOT,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1, help="Examples per forward pass "
                                                                                 "(default: the fastest, timed)."),
    range_mode: str = typer.Option("grid", "--range", help="grid (the MIN:MAX of --grid) or auto: each direction "
                                   "spans [-t, t], t the larger of the two distances (+ and -) at which the loss first "
                                   "reaches --range-factor x the centre loss (doubling from 0.05, then 6 bisections), "
                                   "capped at --range-max with a warning; --grid then gives only the POINTS."),
    range_factor: float = typer.Option(2.0, "--range-factor", callback=finite(above=1), help="--range auto: the "
                                       "loss factor the extent reaches."),
    range_max: float = typer.Option(10.0, "--range-max", callback=finite(above=0), help="--range auto: the largest "
                                    "extent (a side that never reaches the factor is capped here, with a warning)."),
    radii: str = typer.Option("0.1,0.25,0.5,1", help="Radii at which to report the mean loss increase."),
    basin_delta: float = typer.Option(0.1, "--basin-delta", callback=finite(above=0), help="Basin = where the loss is within this of the centre."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: <run>/surface)."),
    plot: bool = typer.Option(False, "--plot", help="Write figures (1-D curve; 2-D contour, filled contour, 3-D)."),
    pdf: bool = typer.Option(False, "--pdf", help="Also write figures as PDF."),
    json_out: Optional[str] = JSON_OUT,
    overwrite: bool = OVERWRITE,
    progress: bool = PROGRESS,
    trust_factory: bool = TRUST_FACTORY,
    device: str = DEVICE,
    metric: Optional[list[str]] = typer.Option(None, "--metric", help="[NAME=]package.module:function: a custom "
                                               "metric fn(model, batch) -> scalar, evaluated next to the loss "
                                               "(repeatable; needs --trust-factory)."),
    deterministic: bool = DETERMINISTIC,
) -> None:
    """Loss surface around a checkpoint (random directions) or over a run's trajectory plane.

    Filter-normalized Gaussian directions (Li et al. 2018), the top Hessian eigenvectors with
    --directions hessian, or the PCA plane of the run's per-epoch snapshots with --trajectory.
    Resumable: rerun the same command. The result (<out>/<name>.npz, .json and figures) is
    never replaced: a second surface with the same name is refused unless --overwrite (which
    removes every file of the earlier one, stale figures included) or another --out.

    Example: sharpscope surface runs/sam --dim 2 --grid -1:1:51 --plot --json s.json
    """
    apply_determinism(deterministic)
    import warnings

    import numpy as np
    import torch.nn.functional as F

    from .. import distributed as dist_utils
    from .. import landscape as ls
    from ..landscape.directions import check_options

    console = rank0_console(stderr=True)
    if (checkpoint is None) == (trajectory is None):
        raise ConfigError("give either a CHECKPOINT or --trajectory RUN_DIR")
    if dim not in (1, 2, 3):
        raise ConfigError(f"--dim must be 1, 2 or 3, got {dim}")
    if dim == 3 and trajectory is not None:
        raise ConfigError("--trajectory spans the 2-D PCA plane: not with --dim 3")
    if range_mode not in ("grid", "auto"):
        raise ConfigError(f"--range must be grid or auto, got {range_mode!r}")
    if path_run is not None and (trajectory is not None or dim != 2):
        raise ConfigError("--path draws a run's snapshots on a 2-D surface of chosen directions: with --dim 2, "
                          "not with --trajectory (which draws its own path)")
    if directions_kind not in ("random", "hessian"):
        raise ConfigError(f"--directions must be random or hessian, got {directions_kind!r}")
    if directions_kind == "hessian" and (trajectory is not None or dir_type != "weights"):
        raise ConfigError("--directions hessian spans parameters only: not with --trajectory or --dir-type states")
    check_options(norm, ignore, dir_type)  # before loading anything
    metric_fns = _metrics(metric, trust_factory)
    radii_list = numbers(radii, float, "--radii", above=0)
    if grid is None and (trajectory is None or range_mode == "auto"):
        grid = ("-1:1:51" if dim == 1 else "-1:1:51,-1:1:51" if dim == 2 else "-1:1:21") if trajectory is None \
            else "-1:1:31,-1:1:31"
    axes = None if grid is None else _grids(grid, 2 if trajectory is not None else dim)  # before any work
    if range_mode == "auto" and axes is not None and min(len(a) for a in axes if a is not None) < 2:
        raise ConfigError(f"--range auto spreads each direction's POINTS over [-extent, extent]: it needs POINTS "
                          f">= 2, got --grid {grid}")
    zs = None
    if axes is not None and len(axes) == 3:
        zs, axes = axes[2], axes[:2]
    source = checkpoint if checkpoint is not None else trajectory / "checkpoint.pt"
    folder = out or (run_folder(source) / "surface")
    outputs = _claim_surface(folder, dim, trajectory is not None, directions_kind, list(metric_fns), plot, pdf,
                             json_out, overwrite)
    ckpt, batches, context = load_for_analysis(source, split, samples, batch_size or 4096, seed, trust_factory,
                                               device, (data, data_root))
    model = ckpt.model
    options = {"split": split, "samples": samples, "seed": seed, "checkpoint": str(ckpt.path)}
    if metric_fns:
        options["metrics"] = list(metric)
    path = explained = path_residual = None
    compare: list = []  # a random direction beside the top eigenvector (--directions hessian --dim 1)
    if trajectory is not None:
        snaps = _snapshots(trajectory)
        traj = ls.trajectory_directions(model, snaps, ignore=ignore)
        directions, explained, path, kind = traj.directions, traj.explained_variance, traj.path, "trajectory"
        path_residual = ls.project_snapshots(snaps[-1], directions, snaps).residual
        if axes is None:
            lo, hi = path.min(0), path.max(0)
            pad = 0.2 * (hi - lo) + 1e-6
            axes = _grids(",".join(f"{lo[k] - pad[k]:.6g}:{hi[k] + pad[k]:.6g}:31" for k in range(2)), 2)
        xs, ys = axes
        options.update({"trajectory": str(trajectory), "ignore": ignore, "snapshots": len(snaps)})
        stem = "trajectory"
    elif directions_kind == "hessian":
        xs, ys = axes
        with hvp_progress(console, progress) as bar:
            task = bar.add_task(f"top-{dim} Hessian eigenvectors", total=None)
            eig = ls.hessian_directions(model, F.cross_entropy, batches, k=dim, seed=seed,
                                        on_hvp=lambda n: bar.advance(task, n))
        directions, kind, stem = eig.directions, "hessian", f"hessian_{dim}d"
        options.update({"directions": "hessian", "eigenvalues": eig.eigenvalues, "slopes": eig.slopes,
                        "residuals": eig.result.residuals, "converged": eig.result.converged,
                        "n_hvp": eig.result.n_hvp})
        if dim == 1:  # the comparison: a random direction of the same (unit) norm
            options.update({"random_norm": norm, "ignore": ignore})
            compare = [ls.scale_to_norm(ls.random_direction(model, norm=norm, ignore=ignore, seed=seed), 1.0)]
    else:
        xs, ys = axes
        directions = [ls.random_direction(model, norm=norm, ignore=ignore, seed=seed, dir_type=dir_type)]
        if dim >= 2:
            d2 = ls.random_direction(model, norm=norm, ignore=ignore, seed=seed + 1, dir_type=dir_type)
            directions.append(ls.orthogonalize(d2, directions[0]) if orthogonalize else d2)
        if dim == 3:
            d3 = ls.random_direction(model, norm=norm, ignore=ignore, seed=seed + 2, dir_type=dir_type)
            directions.append(ls.orthogonalize(ls.orthogonalize(d3, directions[0]), directions[1]) if orthogonalize
                              else d3)
        kind = "random"
        options.update({"norm": norm, "ignore": ignore, "orthogonalize": orthogonalize, "dir_type": dir_type})
        stem = f"surface_{dim}d"
    if path_run is not None:
        snaps = _snapshots(path_run, minimum=1)
        centre = {**dict(model.named_buffers()), **dict(model.named_parameters())}
        proj = ls.project_snapshots(centre, directions, snaps)
        path, path_residual = proj.coords, proj.residual
        options.update({"path_run": str(path_run), "path_snapshots": len(snaps)})
    if range_mode == "auto":
        with warnings.catch_warnings():  # printed below instead
            warnings.simplefilter("ignore")
            rng = ls.auto_range(model, F.cross_entropy, batches, directions, range_factor, max_extent=range_max,
                                chunk_size=batch_size)
        for note in rng.warnings:
            console.print(f"warning: {note}", highlight=False)
        xs = np.linspace(-rng.extents[0], rng.extents[0], len(xs))
        if ys is not None:
            ys = np.linspace(-rng.extents[1], rng.extents[1], len(ys))
        if zs is not None:
            zs = np.linspace(-rng.extents[2], rng.extents[2], len(zs))
        options["range_auto"] = rng.to_dict()
        console.print("--range auto: extents " + ", ".join(f"{e:.4g}" for e in rng.extents)
                      + f" (loss reaches {range_factor:g} x the centre loss {rng.centre_loss:.5g})", highlight=False)
    n_points = len(xs) * (1 if ys is None else len(ys)) * (1 if zs is None else len(zs))
    with point_progress(console, progress) as bar:
        task = bar.add_task(f"{kind} surface", total=n_points * (1 + len(compare)))
        result = ls.surface(model, F.cross_entropy, batches, directions, xs, ys, kind=kind, options=options,
                            chunk_size=batch_size, resume_path=folder / f"{stem}.partial.npz",
                            on_point=lambda k, lv, av: bar.advance(task), zs=zs, metrics=metric_fns or None)
        random_result = None if not compare else ls.surface(
            model, F.cross_entropy, batches, compare, xs, ys, kind="random",
            options={**options, "directions": "random", "scaled_to_norm": 1.0}, chunk_size=batch_size,
            resume_path=folder / f"{stem}_random.partial.npz", on_point=lambda k, lv, av: bar.advance(task),
            metrics=metric_fns or None)
    if not dist_utils.is_main():  # the points were shared out; rank 0 writes
        return
    result.explained_variance, result.path, result.path_residual = explained, path, path_residual
    outputs.clear()
    result.save(folder / f"{stem}.npz", directions)
    (folder / f"{stem}.partial.npz").unlink(missing_ok=True)
    human = rank0_console(stderr=json_out == "-")
    summary = _print_summary(human, result, radii_list, basin_delta)
    _print_metrics(human, summary)
    if explained is not None:
        human.print(f"PCA explained variance: {explained[0]:.1%}, {explained[1]:.1%}", highlight=False)
    if path_residual is not None:
        human.print(f"path: {len(path_residual)} snapshots; distance to the plane (residual) "
                    f"min {path_residual.min():.4g}, max {path_residual.max():.4g}, last {path_residual[-1]:.4g}",
                    highlight=False)
    report = result.to_dict(radii_list, basin_delta)
    report["summary"] = summary
    report["npz"] = str(folder / f"{stem}.npz")
    if kind == "hessian":
        human.print("Hessian eigenvalues " + ", ".join(f"{v:.6g}" for v in options["eigenvalues"])
                    + f" ({options['n_hvp']} HVPs); the directions are unit eigenvectors", highlight=False)
    if random_result is not None:
        random_result.save(folder / f"{stem}_random.npz", compare)
        (folder / f"{stem}_random.partial.npz").unlink(missing_ok=True)
        human.print(f"random {norm}-normalized direction rescaled to unit norm, for comparison:", highlight=False)
        report["random"] = {**random_result.to_dict(radii_list, basin_delta),
                            "summary": _print_summary(human, random_result, radii_list, basin_delta),
                            "npz": str(folder / f"{stem}_random.npz")}
    if plot:
        label = (ckpt.config or {}).get("optimizer", "model").upper()
        if random_result is not None:
            report["figures"] = _eigen_figure(result, random_result, eig, folder, stem, pdf, console)
        else:
            report["figures"] = _figures({label: result}, folder, stem, pdf, console)
        if metric_fns:
            both = {label: result} if random_result is None else {"eigenvector": result, "random": random_result}
            report["figures"] += _metric_figures(both, list(metric_fns), folder, stem, pdf, console)
    write_json(report, json_out, context)
    write_json(report, str(folder / f"{stem}.json"), context)


def _different_data(ckpt_a: Any, ckpt_b: Any, use_a_data: bool, split: str) -> list[str]:
    """How A's and B's training data differ ([] if not): refused (ConfigError) unless
    ``--use-a-data``, since every point is evaluated on A's data and "loss at B" would not be
    B's training loss."""
    from ..checkpoint import training_data_differences

    diffs = training_data_differences(ckpt_a, ckpt_b)
    if diffs and not use_a_data:
        raise ConfigError(f"A and B were trained on different data ({'; '.join(diffs)}); both would be evaluated "
                          f"on A's {split} data: pass --use-a-data to do so anyway")
    return diffs


@app.command("interpolate")
def interpolate_command(
    checkpoint_a: Path = typer.Argument(..., help="Model A (alpha = 0)."),
    checkpoint_b: Path = typer.Argument(..., help="Model B (alpha = 1)."),
    grid: str = typer.Option("-0.5:1.5:41", help="alpha grid MIN:MAX:POINTS."),
    buffers: str = typer.Option("interpolate", help="BN statistics: interpolate between A and B, or keep A's."),
    samples: Optional[int] = SAMPLES,
    split: str = SPLIT,
    data: Optional[str] = DATA,
    data_root: Optional[str] = DATA_ROOT,
    seed: int = seed_option("Seed of --samples."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1, help="Examples per forward pass "
                                                                                 "(default: the fastest, timed)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: A's run folder /interpolate)."),
    plot: bool = typer.Option(False, "--plot", help="Write the loss / accuracy curve."),
    pdf: bool = typer.Option(False, "--pdf", help="Also write the figure as PDF."),
    json_out: Optional[str] = JSON_OUT,
    progress: bool = PROGRESS,
    trust_factory: bool = TRUST_FACTORY,
    device: str = DEVICE,
    metric: Optional[list[str]] = typer.Option(None, "--metric", help="[NAME=]package.module:function: a custom "
                                               "metric fn(model, batch) -> scalar, evaluated next to the loss "
                                               "(repeatable; needs --trust-factory)."),
    overwrite: bool = OVERWRITE,
    use_a_data: bool = typer.Option(False, "--use-a-data", help="Evaluate both models on A's data even when A and "
                                    "B were trained on different data (another seed, label noise or data set; "
                                    "refused without this option): the loss at B is then not B's training loss."),
    deterministic: bool = DETERMINISTIC,
) -> None:
    """Loss and accuracy on the line (1 - alpha) A + alpha B between two checkpoints.

    Both are evaluated on A's data (its --split); A and B trained on different data (their
    recorded fingerprints or data specs differ) are refused unless --use-a-data. The result
    (<out>/interpolation.npz, .json and figures) is never replaced unless --overwrite.

    Example: sharpscope interpolate runs/sgd runs/sam --grid -0.5:1.5:41 --plot
    """
    apply_determinism(deterministic)
    import torch.nn.functional as F

    from .. import distributed as dist_utils
    from .. import landscape as ls
    from ..checkpoint import load_checkpoint

    console = rank0_console(stderr=True)
    alphas = ls.parse_grid(grid)
    metric_fns = _metrics(metric, trust_factory)
    folder = out or (run_folder(checkpoint_a) / "interpolate")
    figures = (["interpolation"] + [f"interpolation_{name}" for name in metric_fns]) if plot else []
    extra = Path(json_out) if json_out not in (None, "-") else None
    outputs = claim([folder / "interpolation.npz", folder / "interpolation.json", *figure_files(folder, figures, pdf),
                     extra], overwrite, "--out DIR", records=[folder / "interpolation.json", extra])
    ckpt_a, batches, context = load_for_analysis(checkpoint_a, split, samples, batch_size or 4096, seed,
                                                 trust_factory, device, (data, data_root))
    ckpt_b = load_checkpoint(checkpoint_b, allow_factory=trust_factory, map_location=next(ckpt_a.model.parameters()).device)
    context.add(ckpt_b)
    data_note = _different_data(ckpt_a, ckpt_b, use_a_data, split)
    name_a = (ckpt_a.config or {}).get("optimizer", "A").upper()
    name_b = (ckpt_b.config or {}).get("optimizer", "B").upper()
    with point_progress(console, progress) as bar:
        task = bar.add_task("interpolation", total=len(alphas))
        result = ls.interpolate(ckpt_a.model, ckpt_b.model, F.cross_entropy, batches, alphas, buffers=buffers,
                                chunk_size=batch_size, name_a=name_a, name_b=name_b,
                                on_point=lambda k, lv, av: bar.advance(task), metrics=metric_fns or None)
    if not dist_utils.is_main():
        return
    result.options.update({"a": str(ckpt_a.path), "b": str(ckpt_b.path), "split": split, "samples": samples,
                           "data": "A's", "data_differences": data_note})
    if data_note:
        console.print(f"note: both evaluated on A's {split} data; B was trained on other data "
                      f"({'; '.join(data_note)})", highlight=False)
    if metric_fns:
        result.options["metrics"] = list(metric)
    outputs.clear()
    result.save(folder / "interpolation.npz")
    summary = _print_summary(rank0_console(stderr=json_out == "-"), result, [0.5], 0.1)
    _print_metrics(rank0_console(stderr=json_out == "-"), summary)
    report = result.to_dict((0.5,), 0.1)
    report["summary"] = summary
    report["npz"] = str(folder / "interpolation.npz")
    if plot:
        report["figures"] = _figures({f"{name_a} -> {name_b}": result}, folder, "interpolation", pdf, console)
        if metric_fns:
            report["figures"] += _metric_figures({f"{name_a} -> {name_b}": result}, list(metric_fns), folder,
                                                 "interpolation", pdf, console)
    write_json(report, json_out, context)
    write_json(report, str(folder / "interpolation.json"), context)
