"""``sharpscope hessian``: top eigenvalues, trace, spectral density and per-layer curvature."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from ..errors import ConfigError
from ._app import app, deferred_help
from ._common import (
    AnalysisContext, console as rank0_console, data_loss, finite, is_main, objective_lines, objective_record,
    parse_params, progress_bar, refuse, seed_option, table)
from ._inputs import Inputs, analysis_inputs
from ._options import OLD_PLOT_DIR, OLD_STEPS, old_spelling
from ._results import announce, claim_analysis, save_report

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class _Overlap:
    """--overlap-with: the second checkpoint, the overlap and B's eigenvalues."""

    path: str
    label: str
    result: Any
    b: Any

    def to_dict(self) -> dict:
        return {"with": self.path, **self.result.to_dict(), "eigenvalues_b": self.b.to_dict()}


def _second(path: Path | None, ckpt: Any, obj: Any, top_k: int, selection: Any, o: _Settings,
            trust_factory: bool, context: AnalysisContext) -> tuple[Any, str]:
    """--overlap-with: B's objective on A's batches and B's label, refused unless A and B have
    the same parameters and data set; B joins ``context``."""
    if path is None:
        return None, ""

    from ..checkpoint import load_checkpoint
    from ..objective import Objective

    if top_k < 1:
        raise ConfigError("--overlap-with compares the top-k eigenspaces: give --top-k 1 or more")
    ckpt_b = load_checkpoint(path, allow_factory=trust_factory, map_location=obj.device)
    context.add(ckpt_b)
    name_a, name_b = (ckpt.data_spec or {}).get("name"), (ckpt_b.data_spec or {}).get("name")
    if name_a and name_b and name_a != name_b:
        raise ConfigError(f"--overlap-with: A was trained on {name_a} and B on {name_b}")
    shapes_a = {n: tuple(p.shape) for n, p in ckpt.model.named_parameters()}
    shapes_b = {n: tuple(p.shape) for n, p in ckpt_b.model.named_parameters()}
    if shapes_a != shapes_b:
        diff = sorted(n for n in shapes_a.keys() | shapes_b.keys() if shapes_a.get(n) != shapes_b.get(n))
        raise ConfigError(f"--overlap-with: the two checkpoints have different parameters ({diff[0]}: "
                          f"{shapes_a.get(diff[0])} vs {shapes_b.get(diff[0])}); their eigenspaces cannot be compared")
    label = (ckpt_b.config or {}).get("optimizer", "B").upper()
    label_a = (ckpt.config or {}).get("optimizer", "model").upper()
    label = f"{label} (B)" if label == label_a else label
    return Objective(ckpt_b.model, data_loss(obj.batches), obj.batches, params=selection, hvp_mode=o.hvp_mode,
                     fd_step=o.fd_step), label


_FD_STEP_HELP = ("Step t of finite-difference products along a unit vector (--hvp-mode finite-difference, or auto "
                 "when it falls back); default from ||theta|| and the float precision. Rounding errs as 1/t, "
                 "truncation as t^2: larger for random probes (--trace, --density), smaller for top eigenvectors.")


def _hvp_modes_help() -> str:
    from ..objective import HVP_MODES  # torch: only when the help is shown

    return f"One of {', '.join(HVP_MODES)}."


@app.command("hessian")
@analysis_inputs(without=("metric",),
                 seed=seed_option("Seed of the subset, of the random start vectors and of the Fisher's labels."))
def hessian_command(
    checkpoint: Path = typer.Argument(..., help="A checkpoint file or a run folder."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=0, help="Number of extreme eigenvalues (0: skip)."),
    which: str = typer.Option("LA", help="LA largest, SA smallest, LM largest magnitude."),
    tol: float = typer.Option(1e-4, callback=finite(above=0, below=1),
                             help="Relative Ritz-residual tolerance of Lanczos (in (0, 1))."),
    max_iter: Optional[int] = typer.Option(None, "--max-iter", min=1,
                                           help="Cap on Lanczos steps (default: 300 or 30 k, less if memory is short)."),
    trace: bool = typer.Option(False, "--trace", help="Estimate tr(H) by Hutch++."),
    trace_matvecs: int = typer.Option(99, "--trace-matvecs", min=3, help="HVPs for the trace estimate."),
    density: bool = typer.Option(False, "--density", help="Spectral density by stochastic Lanczos quadrature."),
    runs: int = typer.Option(10, min=1, help="SLQ runs (density)."),
    steps: int = typer.Option(80, "--slq-steps", min=1, help="Lanczos steps per SLQ run (density)."),
    sigma_squared: float = typer.Option(1e-5, "--sigma-squared", callback=finite(above=0), help="Kernel variance factor (density)."),
    per_layer: bool = typer.Option(False, "--per-layer", help="Top eigenvalue and trace of each layer's block."),
    by: str = typer.Option("layer", help="Per-layer grouping: layer, block (a transformer's numbered blocks) or "
                           "kind (embeddings, attention, mlp, norm, head)."),
    overlap_with: Optional[Path] = typer.Option(None, "--overlap-with", help="A second checkpoint: its top-k "
                                                "eigenvalues too, and the overlap of the two top-k eigenspaces."),
    batch_size: int = typer.Option(256, "--batch-size", "-b", min=1, help="Examples per batch (the result does not depend on it)."),
    hvp_mode: str = deferred_help(typer.Option("auto", "--hvp-mode"), _hvp_modes_help),
    fd_step: Optional[float] = typer.Option(None, "--fd-step", callback=finite(above=0), help=_FD_STEP_HELP),
    operator: str = typer.Option("hessian", "--operator",
                                 help="Curvature matrix: hessian, ggn, fisher (true Fisher) or empirical-fisher."),
    fisher_samples: Optional[str] = typer.Option(
        None, "--fisher-samples", help="Labels drawn per example for --operator fisher (seeded by --seed), or "
                                       "'exact' (sum over classes, the default: sampled labels push the top "
                                       "eigenvalues up, +13-69 % with 1 label; the trace is unbiased)."),
    plot: bool = typer.Option(False, "--plot", help="Write the density (linear and log) and eigenvalue figures."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Shard the model over N processes with torch's FSDP2 "
                              "(launches torchrun; gloo on CPU, NCCL on GPU): each holds 1/N of the parameters and "
                              "of the Lanczos vectors; top-k eigenvalues by finite differences."),
    shard: bool = typer.Option(False, "--shard", help="Shard the model over the ranks of the torchrun that "
                               "launched this command (what --nproc N does)."),
    memory: Optional[float] = typer.Option(
        None, "--memory", callback=finite(above=0),
        help="GB (2^30 bytes) the analyses may hold besides the model and a product: the Lanczos basis in "
             "float64, float32 or float16 (thick restarts if need be), SLQ's, Hutch++'s blocks; refused "
             "before the first product, saying what it would need, if even the least does not fit."),
    old_steps: Optional[int] = OLD_STEPS,
    old_plot_dir: Optional[Path] = OLD_PLOT_DIR,
    inputs: Inputs = Inputs(),
) -> None:
    """Hessian spectrum of a checkpoint's loss (eval mode, whole data set or --samples).

    Example: sharpscope hessian runs/sam --top-k 5 --trace --density --plot --json h.json

    With --overlap-with B: the overlap ||V_A^T V_B||_F^2 / k of the top-k eigenspaces of the two
    checkpoints on the same data (Gur-Ari et al. 2018), e.g. two epochs of one run. The numbers are
    saved as <run>/analyses/hessian.json (ggn.json, ... for other operators).
    """
    steps = old_spelling("hessian", "--steps", "--slq-steps", old_steps, steps, 80)
    if shard:  # sharpscope.cli.hessian_sharded: the checks, or the analysis on torchrun's ranks
        from .hessian_sharded import run_sharded
        given = {"--per-layer": per_layer, "--overlap-with": overlap_with, "--plot": plot,
                 "--fisher-samples": fisher_samples, "--memory": memory, "--fd-step": fd_step}
        spectra = {"trace": dict(n_matvecs=trace_matvecs) if trace else None, "density": dict(
            n_runs=runs, n_steps=steps, sigma_squared=sigma_squared) if density else None}
        return run_sharded(checkpoint, inputs, batch_size, dict(k=top_k, which=which, tol=tol, max_iter=max_iter,
                                                                seed=inputs.seed), given, operator, hvp_mode, spectra)
    plot_dir = old_spelling("hessian", "--plot-dir", "--out", old_plot_dir, inputs.plot_dir, None)
    mc_samples = _fisher_samples(operator, fisher_samples)
    console = rank0_console(stderr=True)
    target, folder, outputs = _claim(checkpoint, inputs, operator, plot and density, plot and top_k > 0, plot_dir)
    ckpt, batches, context = inputs.load(checkpoint, batch_size)
    settings = _Settings(top_k, which, tol, max_iter, trace, trace_matvecs, density, runs, steps, sigma_squared,
                         per_layer, by, inputs.seed, hvp_mode, overlap_with, memory, fd_step)
    obj, obj_b, label_b, report = _objectives(ckpt, batches, settings, operator, mc_samples, inputs, context)
    curv = {"operator": operator, "mc_samples": mc_samples, "memory_gb": memory}
    results = _compute(ckpt, batches, obj, obj_b, label_b, settings, curv, console, inputs.progress)
    if not is_main():  # every rank took part in the products; rank 0 reports
        return
    notes = _add_results(report, results, obj, objective_record(obj, inputs.params))
    print_results(rank0_console(stderr=inputs.json_out == "-"),
                  f"[bold]{ckpt.path}[/]: {obj.n:,} parameters, {obj.n_examples:,} {inputs.split} examples", which,
                  results, operator, notes)
    outputs.clear()
    if plot:
        report["figures"] = _figures(ckpt, results, folder, inputs.pdf, console, operator)
    save_report(report, target, console, context)


def _claim(checkpoint: Path, inputs: Inputs, operator: str, density_figures: bool, eigenvalue_figure: bool,
           plot_dir: Path | None) -> tuple[Path | None, Path, Any]:
    """Claim the report (hessian.json; ggn.json, ... for other operators) and the figures drawn."""
    stem = operator.replace("-", "_")
    figures = ([f"{stem}_density", f"{stem}_density_log"] if density_figures else []) + (
        [f"{stem}_eigenvalues"] if eigenvalue_figure else [])
    return claim_analysis(checkpoint, inputs.json_out, stem, figures, plot_dir, inputs.pdf, inputs.overwrite)


@dataclass
class _Settings:
    """What ``hessian`` computes (its options)."""

    top_k: int
    which: str
    tol: float
    max_iter: int | None
    trace: bool
    trace_matvecs: int
    density: bool
    runs: int
    steps: int
    sigma_squared: float
    per_layer: bool
    by: str
    seed: int
    hvp_mode: str
    overlap_with: Path | None
    memory: float | None = None
    fd_step: float | None = None


def _objectives(ckpt: Any, batches: list, o: _Settings, operator: str, mc_samples: int | str,
                inputs: Inputs, context: AnalysisContext) -> tuple[Any, Any, str, dict]:
    """The objective over ``--params``, B's (or None) and its label, and the report's first
    fields; refuses, before the first product, what cannot be computed: a trace or density
    whose arrays do not fit, an unknown grouping, an operator the loss or model does not fit."""
    from ..checks import GIB, require_lanczos_memory, require_trace_memory
    from ..linalg.budget import plan_basis
    from ..objective import Objective, parameter_groups

    selection = parse_params(inputs.params)
    obj = Objective(ckpt.model, data_loss(batches), batches, params=selection, hvp_mode=o.hvp_mode, fd_step=o.fd_step)
    budget = None if o.memory is None else o.memory * GIB  # --memory: within it, or refused now
    if o.trace:
        require_trace_memory(obj.n, o.trace_matvecs, budget)
    if o.density and budget is not None:
        plan_basis(obj.n, o.steps, budget, obj.dtype, what=f"an SLQ run of {min(o.steps, obj.n):,} steps")
    elif o.density:
        require_lanczos_memory(obj.n, o.steps, o.runs)
    if o.per_layer:
        parameter_groups(ckpt.model, by=o.by)
    obj_b, label_b = _second(o.overlap_with, ckpt, obj, o.top_k, selection, o, inputs.trust_factory, context)
    report: dict = {"checkpoint": str(ckpt.path), "split": inputs.split, "n_examples": obj.n_examples,
                    "n_params": obj.n, "params": inputs.params, "hvp_mode": obj.hvp_mode, "operator": operator,
                    "fisher_samples": mc_samples if operator == "fisher" else None}
    if operator != "hessian":
        from .. import curvature

        curvature.operator(obj, operator, mc_samples=mc_samples, seed=o.seed)
    return obj, obj_b, label_b, report


def _add_results(report: dict, results: dict, obj: Any, notes: dict) -> list[str]:
    """Add the results, the HVP mode as it ran (and why "auto" fell back, and the step of a
    finite-difference product), the density's trace note and the objective's notes not already
    there to ``report``; returns the notes' lines."""
    report["hvp_mode"], report["hvp_fallback"] = obj.hvp_mode, obj.hvp_fallback
    if obj.hvp_mode == "finite-difference":  # the step the products took (--fd-step, or the default rule's)
        report["fd_step"] = obj.finite_difference_step()
    report.update({k: v for k, v in notes.items() if k not in report})
    report.update({k: v.to_dict() for k, v in results.items()})
    if "density" in report:
        report["density"]["trace_note"] = _trace_note("trace" in results, results["density"].n_runs)
    return objective_lines(notes)


def _compute(ckpt: Any, batches: list, obj: Any, obj_b: Any, label_b: str, o: _Settings, curv: dict,
             console: Console, progress: bool) -> dict:
    """Run the analyses under one progress bar, announcing their products and, once timed, how
    long they take (:class:`~sharpscope.cli.progress.ProductPlan`)."""
    from .. import hessian as hs  # (scipy, via linalg) once the checkpoint has loaded
    from ..linalg.lanczos import default_max_iter
    from ..objective import parameter_groups
    from .progress import ProductPlan

    unit = "HVPs" if curv["operator"] == "hessian" else "products"
    chosen = set(obj.names)  # --params keeps the groups to its selection
    groups = sum(any(n in chosen for n in v) for v in parameter_groups(ckpt.model, by=o.by).values()) \
        if o.per_layer else 0
    note = (f"then the per-{o.by} summary of {groups} blocks" if groups else
            "Lanczos stops once the eigenvalues converge" if o.top_k > 0 else "")
    cap = o.max_iter if o.max_iter is not None else default_max_iter(obj.n, max(o.top_k, 1),
                                                                      budgeted=o.memory is not None)
    parts = {f"eigenvalues ({o.which})": (cap, False)} if o.top_k > 0 else {}  # (products, exact) or a step cap
    if obj_b is not None:
        parts[f"eigenvalues of B ({o.which})"] = (cap, False)
    if o.trace:
        parts["trace (Hutch++)"] = (o.trace_matvecs, True)
    if o.density:
        parts[f"density (SLQ, {o.runs} runs x {min(o.steps, obj.n)} steps)"] = (o.runs * min(o.steps, obj.n), True)
    plan = ProductPlan(lambda msg: console.print(msg, highlight=False), unit, parts, note)
    results: dict = {}
    with progress_bar(console, progress, "HVPs") as bar:
        def run(target: Any, description: str, analysis: Callable[..., Any], **kwargs: Any) -> Any:
            total, exact = plan.parts[description]
            task = bar.add_task(description, total=total, cap=not exact)

            def advance(n: int) -> None:
                bar.advance(task, n)
                plan.done(n)
            target.on_hvp = advance
            result = analysis(target, seed=o.seed, **kwargs, **curv)
            if not exact:  # a capped task that stopped early: drop its bar
                bar.update(task, visible=False)
            return result

        eig = {"k": o.top_k, "which": o.which, "tol": o.tol, "max_iter": o.max_iter,
               "return_vectors": obj_b is not None}
        if o.top_k > 0:
            results["eigenvalues"] = run(obj, f"eigenvalues ({o.which})", hs.eigenvalues, **eig)
        if obj_b is not None:
            eig_b = run(obj_b, f"eigenvalues of B ({o.which})", hs.eigenvalues, **eig)
            obj_b.release()
            results["overlap"] = _Overlap(str(o.overlap_with), label_b,
                                          hs.eigenspace_overlap(results["eigenvalues"], eig_b), eig_b)
        if o.trace:
            results["trace"] = run(obj, "trace (Hutch++)", hs.trace, n_matvecs=o.trace_matvecs)
        if o.density:
            results["density"] = run(obj, next(k for k in plan.parts if k.startswith("density")), hs.density,
                                     n_runs=o.runs, n_steps=o.steps, sigma_squared=o.sigma_squared)
        obj.release()
        if o.per_layer:
            task = bar.add_task(f"per {o.by}", total=groups)
            results["per_layer"] = hs.layer_summary(ckpt.model, data_loss(batches), batches, by=o.by, seed=o.seed,
                                                    hvp_mode=o.hvp_mode, fd_step=o.fd_step,
                                                    callback=lambda name: bar.advance(task),
                                                    params=obj.names, **curv)
    return results


def _fisher_samples(operator: str, value: str | None) -> int | str:
    """``--fisher-samples`` as an int >= 1 or 'exact' (the default); refused with an unknown
    ``--operator`` or an operator other than fisher."""
    from ..curvature import OPERATORS

    text = "exact" if value is None else value.strip()
    refuse((operator not in OPERATORS, f"--operator must be one of {', '.join(OPERATORS)}, got {operator!r}"),
           (value is not None and operator != "fisher",
            f"--fisher-samples applies to --operator fisher only, not {operator}"),
           (text != "exact" and not (text.isascii() and text.isdigit() and int(text) >= 1),
            f"--fisher-samples must be an integer >= 1 or 'exact', got {value!r}"))
    return 1 if operator != "fisher" else text if text == "exact" else int(text)


def _trace_note(hutch: bool, runs: int) -> str:
    """Which trace to trust, printed under the density's implied trace (and kept in the JSON)."""
    trust = "the trace to trust is Hutch++'s above" if hutch else "for the trace, trust --trace (Hutch++)"
    return f"{trust}; SLQ's implied trace is a by-product of {runs} probe vectors"


def print_results(out: Console, header: str, which: str, results: dict, operator: str = "hessian",
                  notes: Sequence[str] = (), trace_note: bool = True) -> None:
    """``header``, the results as tables and lines, then ``notes`` (parameters chosen, the attention
    kernel, ...); ``trace_note``: say under the density which trace to trust (Hutch++'s)."""
    from ..curvature import title

    name, unit = title(operator), "HVPs" if operator == "hessian" else "products"
    out.print(header + ("" if operator == "hessian" else f"; operator: {name}"))
    if "eigenvalues" in results:
        r = results["eigenvalues"]
        out.print(table(f"{name} eigenvalues ({which}; {r.n_hvp} {unit}, {r.wall_time:.1f}s)",
                        ("#", "eigenvalue", "residual", "converged"),
                        ((str(i), f"{lam:.6g}", f"{res:.2e}", "yes" if ok else "[red]no[/]")
                         for i, (lam, res, ok) in enumerate(zip(r.eigenvalues, r.residuals, r.converged), 1))))
        if r.ratio is not None:
            out.print(f"lambda_1 / lambda_{len(r.eigenvalues)} = {r.ratio:.4g}")
    if "trace" in results:
        t = results["trace"]
        out.print(f"trace = {t.trace:.6g} +/- {t.stderr:.2g} (standard error; {t.method}, {t.n_hvp} {unit}, "
                  f"{t.wall_time:.1f}s)")
    if "density" in results:
        d = results["density"]
        se = (f"+/- {d.trace_stderr:.2g} (standard error over {d.n_runs} runs)" if d.trace_stderr is not None
              else "(standard error n/a with 1 run)")
        out.print(f"density: {d.n_runs} runs x {d.n_steps} steps, support [{min(map(min, d.nodes)):.4g}, "
                  f"{max(map(max, d.nodes)):.4g}], kernel sigma {d.sigma:.3g}, implied trace "
                  f"{d.trace_estimate:.6g} {se} ({d.n_hvp} {unit}, {d.wall_time:.1f}s)")
        if trace_note:
            out.print(_trace_note("trace" in results, d.n_runs), highlight=False)
    if "overlap" in results:
        o = results["overlap"]
        out.print(f"B = {o.path}: eigenvalues {', '.join(f'{v:.6g}' for v in o.b.eigenvalues)} "
                  f"({o.b.n_hvp} {unit}{'' if all(o.b.converged) else '; some unconverged'})", highlight=False)
        out.print(f"top-{o.result.k} eigenspace overlap ||V_A^T V_B||_F^2 / k = {o.result.overlap:.4f} "
                  "(1: same space, 0: orthogonal)", highlight=False)
    if "per_layer" in results:
        s = results["per_layer"]
        out.print(table(f"Per {s.by} ({s.n_hvp} {unit}, {s.wall_time:.1f}s)",
                        (s.by, "params", "lambda_max", "trace", "+/-"),
                        ((row.name, f"{row.n_params:,}", f"{row.lambda_max:.5g}" + ("" if row.converged else "*"),
                          f"{row.trace:.5g}", f"{row.trace_stderr:.2g}") for row in s.rows), left=1))
    for line in notes:
        out.print(line, highlight=False)


def _figures(ckpt: Any, results: dict, folder: Path, pdf: bool, console: Console, operator: str) -> list[str]:
    from .. import plots
    from ..curvature import title

    formats = ("png", "pdf") if pdf else ("png",)
    label = ckpt.config.get("optimizer", "model").upper() if ckpt.config else "model"
    stem, name = operator.replace("-", "_"), title(operator)
    titles = {} if operator == "hessian" else {"density": f"{name} spectral density (SLQ)",
                                               "eigenvalues": f"Top {name} eigenvalues"}
    written = []
    if "density" in results:
        for suffix, log in (("", False), ("_log", True)):
            written += plots.plot_density({label: results["density"]}, folder / f"{stem}_density{suffix}", log=log,
                                          formats=formats, title=titles.get("density"))
    if "eigenvalues" in results:
        both = {label: results["eigenvalues"]}
        if "overlap" in results:
            both[results["overlap"].label] = results["overlap"].b
        written += plots.plot_eigenvalues(both, folder / f"{stem}_eigenvalues", formats=formats,
                                          title=titles.get("eigenvalues"))
    return announce(written, console)
