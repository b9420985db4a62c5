"""``sharpscope sharpness`` (m-sharpness) and ``sharpscope gradcos`` (first- vs second-order SAM gradient)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import ConfigError
from ._app import app
from ._common import (
    console as rank0_console, data_loss, finite, is_main, numbers, objective_record, params_record, parse_p,
    parse_params, print_notes, progress_bar, refuse, seed_option, table)
from ._inputs import Inputs, analysis_inputs
from ._options import OLD_ETA, OLD_NORM, OLD_PLOT_DIR, OLD_STEPS, old_spelling
from ._results import announce, claim, claim_analysis, json_target, save_report


@app.command("sharpness")
@analysis_inputs(without=("metric",), seed=seed_option("Seed of the subsets and of --samples."))
def sharpness_command(
    checkpoint: Path = typer.Argument(..., help="A checkpoint file or a run folder."),
    m: str = typer.Option("1,4,16,64", "--m", "--subset-sizes", help="Subset sizes, comma-separated "
                          "(under torchrun use --subset-sizes: torchrun's own parser claims --m)."),
    rho: str = typer.Option("0.05", help="Radius (or several, comma-separated)."),
    measure: str = typer.Option("m-sharpness", "--measure", help="m-sharpness (the SAM paper's: fixed-step "
                                "ascent from e = 0), worst (worst case by APGD-style ascent, Andriushchenko et "
                                "al. 2023) or average (mean over random perturbations)."),
    steps: Optional[int] = typer.Option(None, "--ascent-steps", min=1, help="Ascent steps (default 5 for m-sharpness, "
                                        "20 for worst; 1 = SAM's first-order maximizer under m-sharpness)."),
    p: str = typer.Option("2", "--p", help="The norm of the neighbourhood: 2 or inf (train's --p)."),
    adaptive: bool = typer.Option(False, "--adaptive", help="worst / average: scale-invariant neighbourhood "
                                  "||e / (|w| + eta)||_p <= rho."),
    eta: float = typer.Option(0.0, "--adaptive-eta", callback=finite(at_least=0), help="--adaptive: the offset in |w| "
                              "+ eta (default 0, as the reference; train's --eta, ASAM's offset, defaults to 0.01)."),
    draws: int = typer.Option(100, min=1, help="average: random perturbations per subset."),
    random_start: bool = typer.Option(False, "--random-start", help="worst: start the ascent at a random "
                                      "point of the boundary (default e = 0)."),
    restarts: Optional[int] = typer.Option(None, "--restarts", min=1, help="worst: ascents per subset (default 4), "
                                           "from e = 0 and from seeded random points of the boundary; the best is "
                                           "kept, a spread over 1 % warns (1 = the reference's single ascent)."),
    max_subsets: Optional[int] = typer.Option(None, "--max-subsets", min=1, help="Cap on subsets per m (seeded)."),
    gap: bool = typer.Option(True, help="Also report the surrogate gap L(w + e_hat) - L(w) for each rho."),
    plot: bool = typer.Option(False, "--plot", help="Write m-sharpness against m (and against rho)."),
    old_steps: Optional[int] = OLD_STEPS,
    old_norm: Optional[str] = OLD_NORM,
    old_eta: Optional[float] = OLD_ETA,
    old_plot_dir: Optional[Path] = OLD_PLOT_DIR,
    inputs: Inputs = Inputs(),
) -> None:
    """m-sharpness of a checkpoint (Foret et al. 2021, Sec. 4.1), with the surrogate gap; or
    worst-case / average-case sharpness, plain or adaptive (Andriushchenko et al. 2023).

    The mean over disjoint subsets of m examples of max_{||e|| <= rho} L_b(w + e) - L_b(w)
    (m-sharpness: fixed-step projected ascent; worst: APGD-style ascent, also the error
    increase), or of E_e L_b(w + e) - L_b(w) under random e (average). Saved as
    <run>/analyses/m_sharpness.json (sharpness_worst.json, sharpness_average.json).

    Example: sharpscope sharpness runs/sam --m 1,4,16,64 --rho 0.05 --ascent-steps 5 --plot
    Example: sharpscope sharpness runs/sam --measure worst --adaptive --p inf --m 128 --rho 0.002
    """
    steps = old_spelling("sharpness", "--steps", "--ascent-steps", old_steps, steps, None)
    p = old_spelling("sharpness", "--norm", "--p", old_norm, p, "2")
    eta = old_spelling("sharpness", "--eta", "--adaptive-eta", old_eta, eta, 0.0)
    plot_dir = old_spelling("sharpness", "--plot-dir", "--out", old_plot_dir, inputs.plot_dir, None)
    console = rank0_console(stderr=True)
    ms, rhos, p_value = _check_options(measure, adaptive, random_start, restarts, m, rho, p)
    m_sharpness = measure == "m-sharpness"
    figures = (["m_sharpness"] + (["m_sharpness_rho"] if len(rhos) > 1 else [])) if plot and m_sharpness else []
    target, figure_folder, outputs = claim_analysis(checkpoint, inputs.json_out,
                                                    "m_sharpness" if m_sharpness else f"sharpness_{measure}",
                                                    figures, plot_dir, inputs.pdf, inputs.overwrite)
    ckpt, batches, context = inputs.load(checkpoint, 4096)
    if m_sharpness:
        done = _m_sharpness(ckpt, batches, ms, rhos, 5 if steps is None else steps, p, p_value, max_subsets, gap,
                            console, inputs)
    else:
        options: dict[str, Any] = dict(m=ms, rho=rhos, p=p_value, adaptive=adaptive, eta=eta, seed=inputs.seed,
                                       max_subsets=max_subsets, params=parse_params(inputs.params))
        done = _measure(measure, ckpt, batches, options, steps, random_start, restarts, draws, console, inputs)
    if done is None:  # the subsets were shared out; rank 0 reports
        return
    report, result = done
    outputs.clear()
    if figures:  # m-sharpness against m (and against rho)
        from .. import plots

        label = (ckpt.config or {}).get("optimizer", "model").upper()
        report["figures"] = announce([path for stem in figures for path in plots.plot_m_sharpness(
            {label: result}, figure_folder / stem, against="rho" if stem.endswith("_rho") else "m",
            formats=("png", "pdf") if inputs.pdf else ("png",))], console)
    save_report(report, target, console, context)


def _check_options(measure: str, adaptive: bool, random_start: bool, restarts: int | None, m: str, rho: str,
                   p: str) -> tuple[list[int], list[float], float]:
    """Refuse options that do not fit ``--measure`` (before loading); the m values, the radii and p."""
    refuse((measure not in ("m-sharpness", "worst", "average"),
            f"--measure must be m-sharpness, worst or average, got {measure!r}"),
           (measure == "m-sharpness" and (adaptive or random_start),
            "--adaptive and --random-start apply to --measure worst or average"),
           (measure != "worst" and restarts is not None, "--restarts applies to --measure worst"))
    ms = numbers(m, int, "--m", at_least=1)
    rhos = numbers(rho, float, "--rho", at_least=0)
    p_value = parse_p(p)
    if p_value not in (2.0, math.inf):  # refused before loading (the library says the same)
        raise ConfigError(f"--p must be 2 or inf (m-sharpness supports p = 2 and p = inf), got {p!r}")
    return ms, rhos, p_value


def _subset_run(label: str, batches: list, ms: list[int], rhos: list[float], max_subsets: int | None, console: Any,
                progress: bool, compute: Callable[[Callable[[int], None]], Any]) -> Any:
    """``compute(callback)`` under a bar of the subsets measured (refused if an m exceeds the
    examples analysed)."""
    n = sum(x.shape[0] for x, _ in batches)
    if max(ms) > n:
        raise ConfigError(f"--m {max(ms)} is larger than the {n} examples analysed")
    with progress_bar(console, progress, "subsets") as bar:
        task = bar.add_task(label, total=sum(min(n // size, max_subsets or n) for size in ms) * len(rhos))
        return compute(lambda k: bar.advance(task, k))


def _report(ckpt: Any, inputs: Inputs, result: Any, per_subset: tuple[str, ...]) -> tuple[dict, Any]:
    """The JSON report (the ``per_subset`` values left out) and the console for the table, on
    which the parameters line is printed."""
    chosen = params_record(ckpt.model, inputs.params)
    report = {"checkpoint": str(ckpt.path), "split": inputs.split, **chosen, **result.to_dict()}
    for r in report["results"]:
        for key in per_subset:
            r.pop(key)
    out = rank0_console(stderr=inputs.json_out == "-")  # keep stdout clean for --json -
    print_notes(out, chosen)
    return report, out


def _m_sharpness(ckpt: Any, batches: list, ms: list[int], rhos: list[float], steps: int, p: str, p_value: float,
                 max_subsets: int | None, gap: bool, console: Any, inputs: Inputs) -> tuple[dict, Any] | None:
    """m-sharpness (and the surrogate gaps), its table printed; the report and the result, or
    None off rank 0."""
    from .. import sharpness as sh

    selection = parse_params(inputs.params)
    result = _subset_run("m-sharpness", batches, ms, rhos, max_subsets, console, inputs.progress, lambda callback: (
        sh.m_sharpness(ckpt.model, data_loss(batches), batches, m=ms, rho=rhos, steps=steps, p=p_value,
                       seed=inputs.seed, max_subsets=max_subsets, callback=callback, params=selection)))
    gaps = {str(r): v for r, v in sh.surrogate_gaps(ckpt.model, data_loss(batches), batches, rhos=rhos,
                                                    p=p_value, params=selection).items()} if gap else None
    if not is_main():
        return None
    report, out = _report(ckpt, inputs, result, ("values",))
    out.print(table(f"m-sharpness ({steps} ascent steps, p = {p}; {result.n_examples} {inputs.split} examples, "
                    f"{result.wall_time:.1f}s)", ("m", "rho", "m-sharpness", "+/- (s.e.)", "subsets"),
                    ((str(r.m), f"{r.rho:g}", f"{r.mean:.5g}", f"{r.stderr:.2g}", str(r.n_subsets))
                     for r in result.results)))
    if gaps is not None:
        report["surrogate_gap"] = gaps
        out.print("surrogate gap L(w + e_hat) - L(w): " + ", ".join(f"rho={r}: {v:.5g}" for r, v in gaps.items()),
                  highlight=False)
    return report, result


def _se(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def _measure(measure: str, ckpt: Any, batches: list, options: dict[str, Any], steps: int | None,
             random_start: bool, restarts: int | None, draws: int, console: Any,
             inputs: Inputs) -> tuple[dict, Any] | None:
    """``--measure worst|average`` with ``options``, its table printed; the report and the
    result, or None off rank 0."""
    from .. import measures

    if measure == "worst":
        options.update(steps=20 if steps is None else steps, random_start=random_start,
                       restarts=measures.DEFAULT_RESTARTS if restarts is None else restarts)
    else:
        options.update(samples=draws)
    result = _subset_run(f"{measure}-case sharpness", batches, options["m"], options["rho"], options["max_subsets"],
                         console, inputs.progress, lambda callback: measures.sharpness(
                             ckpt.model, data_loss(batches), batches, measure=measure, callback=callback, **options))
    if not is_main():
        return None
    report, out = _report(ckpt, inputs, result, ("values", "error_values", "restart_values"))
    how = (f"{result.steps} ascent steps x {result.restarts} restarts" if measure == "worst"
           else f"{result.steps} draws per subset")
    kind = ("adaptive " if options["adaptive"] else "") + f"{measure}-case"
    cost = (f"{result.n_gradients} gradients" if measure == "worst" else f"{result.n_forwards} forward passes")
    out.print(table(f"{kind} sharpness ({how}, p = {'inf' if options['p'] == float('inf') else 2}; "
                    f"{result.n_examples} {inputs.split} examples; {cost}, {result.wall_time:.1f}s)",
                    ("m", "rho", "loss increase", "+/- (s.e.)", "error increase", "+/- (s.e.)", "subsets"),
                    ((str(r.m), f"{r.rho:g}", f"{r.loss_increase:.5g}", _se(r.loss_stderr), f"{r.error_increase:.4g}",
                      _se(r.error_stderr), str(r.n_subsets)) for r in result.results)))
    for note in dict.fromkeys(r.stderr_note for r in result.results if r.stderr_note):
        out.print(f"s.e.: {note}", highlight=False)
    if measure == "average":
        out.print("Monte Carlo s.e. of the loss increase (the draws alone): " + ", ".join(
            f"m={r.m} rho={r.rho:g}: {_se(r.loss_mc_stderr)}" for r in result.results), highlight=False)
    else:
        out.print(f"spread between the {result.restarts} restarts, (max - min) / max: " + ", ".join(
            f"m={r.m} rho={r.rho:g}: {100 * (r.restart_spread or 0.0):.2g} %" for r in result.results), highlight=False)
    return report, result


@app.command("gradcos")
@analysis_inputs(without=("plot_dir", "pdf", "progress", "metric"))
def gradcos_command(
    checkpoint: Path = typer.Argument(..., help="A checkpoint file or a run folder."),
    rho: float = typer.Option(0.05, callback=finite(at_least=0), help="SAM radius."),
    batch_size: int = typer.Option(256, "--batch-size", "-b", min=1,
                                   help="Examples per batch (the result does not depend on it)."),
    inputs: Inputs = Inputs(),
) -> None:
    """Cosine between the first-order (SAM) and the full second-order SAM gradient.

    SAM's gradient is grad L(w + e_hat); the full gradient of L(w + e_hat(w)) also keeps
    (d e_hat / dw)^T grad L, at the cost of one Hessian-vector product (p = 2). Saved as
    <run>/analyses/gradcos.json.

    Example: sharpscope gradcos runs/sam --rho 0.05 --json -
    """
    from .. import sharpness as sh
    from ..objective import Objective

    target = json_target(inputs.json_out, checkpoint, "gradcos")
    outputs = claim([target], inputs.overwrite, "--json PATH", records=[target])
    ckpt, batches, context = inputs.load(checkpoint, batch_size)
    obj = Objective(ckpt.model, data_loss(batches), batches, params=parse_params(inputs.params))
    res = sh.sam_gradient_cosine(obj, rho=rho)
    notes = objective_record(obj, inputs.params)
    out = rank0_console(stderr=inputs.json_out == "-")
    print_notes(out, notes)
    out.print(f"rho {rho:g}: cos(SAM gradient, full gradient) = {res.cosine:.6f}", highlight=False)
    out.print(f"||grad L(w)|| = {res.gradient_norm:.4g}, ||SAM gradient|| = {res.sam_gradient_norm:.4g}, "
              f"||second-order term|| = {res.second_order_norm:.4g}, surrogate gap {res.surrogate_gap:.4g} "
              f"({res.wall_time:.1f}s)", highlight=False)
    if res.gradient_norm == 0:
        raise ConfigError("the gradient is exactly zero here (a minimum, a saddle or a zero-initialised model): "
                          "SAM's e_hat and the cosine are undefined")
    if not math.isfinite(res.cosine):
        raise ConfigError("the cosine is not finite")
    outputs.clear()
    save_report({"checkpoint": str(ckpt.path), "split": inputs.split, **notes, **res.to_dict()}, target,
                rank0_console(stderr=True), context)
