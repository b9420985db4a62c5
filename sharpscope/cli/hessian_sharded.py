"""``sharpscope hessian --nproc N`` (and ``--shard`` under torchrun): the top eigenvalues (and,
with ``--trace``, Hutchinson's trace estimate) of a checkpoint's model sharded over N processes
with FSDP2 (:mod:`sharpscope.sharded`).

``--nproc N`` in the launching process checks the options (one line and exit code 2 for what
a sharded analysis does not do) and the output's place, then torchrun starts N ranks running
``hessian ... --shard``. Each rank loads the checkpoint and the same batches, shards the model
and takes part in every product; rank 0 prints and saves the report. A rank that waits more
than ``SHARPSCOPE_DIST_TIMEOUT`` seconds (default 600) for the others fails naming the rank(s)
that did not arrive (:func:`sharpscope.distributed.naming_stuck_ranks`), and torchrun stops
the rest.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ._common import CHECK_LAUNCH_ENV, console as rank0_console, data_loss, hvp_progress, is_main
from ._inputs import Inputs
from ._results import claim_analysis, save_report

__all__ = ["run_sharded", "check_sharded"]

# the hessian options a sharded analysis does not take, with why
_NOT_SHARDED = {
    "--density": "stochastic Lanczos quadrature is not implemented on sharded vectors",
    "--per-layer": "per-layer blocks are not implemented on a sharded model",
    "--overlap-with": "the eigenvectors stay sharded (each rank holds its rows)",
    "--plot": "no figures from a sharded analysis (the JSON holds the eigenvalues)",
    "--fisher-samples": "it applies to --operator fisher only",
}


def check_sharded(given: dict[str, Any], operator: str, hvp_mode: str, params: str, top_k: int, which: str) -> None:
    """Refuse (ConfigError) what a sharded analysis does not compute: another curvature
    operator, another HVP mode, a parameter selection, ``--top-k 0`` and the options in
    ``_NOT_SHARDED`` (``given``: option -> value, refused where truthy)."""
    if operator != "hessian":
        raise ConfigError(f"--nproc/--shard compute the Hessian's eigenvalues only, not --operator {operator} "
                          "(the GGN and Fisher products are not implemented on a sharded model)")
    if hvp_mode not in ("auto", "finite-difference"):
        raise ConfigError(f"a sharded model's products are finite differences of gradients (FSDP gives no double "
                          f"backward); --hvp-mode {hvp_mode} is not available with --nproc/--shard")
    if params != "all":
        raise ConfigError("--params is not available with --nproc/--shard: a sharded analysis takes every trainable "
                          "parameter")
    if top_k < 1:
        raise ConfigError("--nproc/--shard compute top eigenvalues: give --top-k 1 or more")
    if which not in ("LA", "SA", "LM"):
        raise ConfigError(f"--which must be LA, SA or LM, got {which!r}")
    for option, value in given.items():
        if value:
            raise ConfigError(f"{option} is not available with --nproc/--shard: {_NOT_SHARDED[option]}")


def run_sharded(checkpoint: Path, inputs: Inputs, batch_size: int, lanczos: dict[str, Any], given: dict[str, Any],
                operator: str, hvp_mode: str, trace_matvecs: int | None = None) -> None:
    """The sharded analysis (module docstring): in the launching process (``--nproc N``) only
    the checks; on torchrun's ranks the analysis. ``lanczos``: k, which, tol, max_iter, seed;
    ``trace_matvecs``: with ``--trace``, the Hutchinson probes (Hutch++ is not sharded)."""
    check_sharded(given, operator, hvp_mode, inputs.params, lanczos["k"], lanczos["which"])
    target, _, outputs = claim_analysis(checkpoint, inputs.json_out, "hessian", [], None, False, inputs.overwrite)
    if os.environ.get(CHECK_LAUNCH_ENV):  # `--nproc N` in the launching process: checked; torchrun computes
        if not Path(checkpoint).exists():
            raise ConfigError(f"{checkpoint}: no such checkpoint or run folder")
        return
    from .. import distributed as dist_utils
    from ..sharded import ShardedHessian, shard_model, sharded_eigenvalues, sharded_trace

    console = rank0_console(stderr=True)
    ckpt, batches, context = inputs.load(checkpoint, batch_size)  # joins the process group first
    if not dist_utils.is_distributed():
        raise ConfigError("--shard shards over the ranks of torchrun; to launch them, give --nproc N (N >= 2)")
    with dist_utils.naming_stuck_ranks():
        h = ShardedHessian(shard_model(ckpt.model), data_loss(batches), batches)
        with hvp_progress(console, inputs.progress) as bar:
            task = bar.add_task(f"eigenvalues ({lanczos['which']}), {dist_utils.world_size()} shards", total=None)
            h.on_hvp = lambda n: bar.advance(task, n)
            result = sharded_eigenvalues(h, **lanczos)
            if trace_matvecs:
                bar.update(task, description=f"trace (Hutchinson), {dist_utils.world_size()} shards")
            trace = sharded_trace(h, n_matvecs=trace_matvecs, seed=lanczos["seed"]) if trace_matvecs else None
    if not is_main():
        return
    report = {"checkpoint": str(ckpt.path), "split": inputs.split, "n_examples": h.n_examples, "n_params": h.n,
              "params": inputs.params, "hvp_mode": h.hvp_mode, "hvp_fallback": None, "operator": "hessian",
              "fisher_samples": None, "sharded": {"world_size": dist_utils.world_size(), "fsdp": "fully_shard",
                                                  "finite_difference_error_bound": h.error_bound},
              "eigenvalues": result.to_dict(), **({"trace": trace.to_dict()} if trace is not None else {})}
    _print(rank0_console(stderr=inputs.json_out == "-"), ckpt.path, result, inputs.split, dist_utils.world_size(),
           h.error_bound, trace)
    outputs.clear()
    save_report(report, target, console, context)


def _print(out: Any, path: Path, r: Any, split: str, world: int, bound: float, trace: Any) -> None:
    from rich.table import Table

    from ._common import folded

    out.print(f"[bold]{path}[/]: {r.n_params:,} parameters sharded over {world} processes, {r.n_examples:,} "
              f"{split} examples")
    table = Table(title=f"Hessian eigenvalues ({r.which}; {r.n_hvp} HVPs by finite differences, {r.wall_time:.1f}s)")
    for col in ("#", "eigenvalue", "residual", "converged"):
        table.add_column(col, justify="right")
    for i, (lam, res, ok) in enumerate(zip(r.eigenvalues, r.residuals, r.converged), 1):
        table.add_row(str(i), f"{lam:.6g}", f"{res:.2e}", "yes" if ok else "[red]no[/]")
    out.print(folded(table))
    if r.ratio is not None:
        out.print(f"lambda_1 / lambda_{len(r.eigenvalues)} = {r.ratio:.4g}")
    if trace is not None:
        out.print(f"trace = {trace.trace:.6g} +/- {trace.stderr:.2g} (standard error; Hutchinson, {trace.n_hvp} HVPs, "
                  f"{trace.wall_time:.1f}s; Hutch++ is not available on sharded vectors)")
    out.print(f"finite-difference products: error up to about {bound:.1e} of ||H|| ||v|| (smooth activations; ReLU "
              "kinks make it far larger)", highlight=False)
