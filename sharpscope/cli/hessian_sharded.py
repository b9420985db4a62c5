"""``sharpscope hessian --nproc N`` (and ``--shard`` under torchrun): the top eigenvalues (with
``--trace`` Hutchinson's trace estimate, with ``--density`` the SLQ density) of a checkpoint's
model sharded over N processes with FSDP2 (:mod:`sharpscope.sharded`).

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
from ._common import CHECK_LAUNCH_ENV, console as rank0_console, data_loss, is_main, progress_bar
from ._inputs import Inputs
from ._results import claim_analysis, save_report

__all__ = ["run_sharded", "check_sharded"]

# the hessian options a sharded analysis does not take, with why
_NOT_SHARDED = {
    "--per-layer": "per-layer blocks are not implemented on a sharded model",
    "--overlap-with": "the eigenvectors stay sharded (each rank holds its rows)",
    "--plot": "no figures from a sharded analysis (the JSON holds the eigenvalues)",
    "--fisher-samples": "it applies to --operator fisher only",
    "--memory": "the sharded Lanczos basis is float64 and its shards are 1/N of the one-process basis",
    "--fd-step": "the sharded product takes its step from the default rule",
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
                operator: str, hvp_mode: str, spectra: dict[str, dict | None] | None = None) -> None:
    """The sharded analysis (module docstring): in the launching process (``--nproc N``) only
    the checks; on torchrun's ranks the analysis. ``lanczos``: k, which, tol, max_iter, seed;
    ``spectra``: the arguments of :func:`~sharpscope.sharded.sharded_trace` under "trace" (with
    ``--trace``: Hutchinson, Hutch++ is not sharded) and of
    :func:`~sharpscope.sharded.sharded_density` under "density" (with ``--density``), else None."""
    check_sharded(given, operator, hvp_mode, inputs.params, lanczos["k"], lanczos["which"])
    target, _, outputs = claim_analysis(checkpoint, inputs.json_out, "hessian", [], None, False, inputs.overwrite)
    if os.environ.get(CHECK_LAUNCH_ENV):  # `--nproc N` in the launching process: checked; torchrun computes
        if not Path(checkpoint).exists():
            raise ConfigError(f"{checkpoint}: no such checkpoint or run folder")
        return
    from .. import distributed as dist_utils
    from ..sharded import ShardedHessian, shard_model

    console = rank0_console(stderr=True)
    ckpt, batches, context = inputs.load(checkpoint, batch_size)  # joins the process group first
    if not dist_utils.is_distributed():
        raise ConfigError("--shard shards over the ranks of torchrun; to launch them, give --nproc N (N >= 2)")
    with dist_utils.naming_stuck_ranks():
        h = ShardedHessian(shard_model(ckpt.model), data_loss(batches), batches)
        results = _compute(h, lanczos, spectra or {}, console, inputs.progress, dist_utils.world_size())
    if not is_main():
        return
    report = {"checkpoint": str(ckpt.path), "split": inputs.split, "n_examples": h.n_examples, "n_params": h.n,
              "params": inputs.params, "hvp_mode": h.hvp_mode, "hvp_fallback": None, "operator": "hessian",
              "fisher_samples": None, "sharded": {"world_size": dist_utils.world_size(), "fsdp": "fully_shard",
                                                  "finite_difference_error_bound": h.error_bound},
              **{name: r.to_dict() for name, r in results.items()}}
    _print(rank0_console(stderr=inputs.json_out == "-"), ckpt.path, results, inputs.split, dist_utils.world_size(),
           h.error_bound)
    outputs.clear()
    save_report(report, target, console, context)


def _compute(h: Any, lanczos: dict[str, Any], spectra: dict[str, dict | None], console: Any, progress: bool,
             world: int) -> dict[str, Any]:
    """The eigenvalues, then the trace and the density where asked, under one progress bar."""
    from ..sharded import sharded_density, sharded_eigenvalues, sharded_trace

    results: dict[str, Any] = {}
    with progress_bar(console, progress, "HVPs") as bar:
        task = bar.add_task(f"eigenvalues ({lanczos['which']}), {world} shards", total=None)
        h.on_hvp = lambda n: bar.advance(task, n)
        results["eigenvalues"] = sharded_eigenvalues(h, **lanczos)
        for name, fn, what in (("trace", sharded_trace, "trace (Hutchinson)"),
                               ("density", sharded_density, "density (SLQ)")):
            if spectra.get(name) is not None:
                bar.update(task, description=f"{what}, {world} shards")
                results[name] = fn(h, seed=lanczos["seed"], **spectra[name])  # type: ignore[operator]
    return results


def _print(out: Any, path: Path, results: dict[str, Any], split: str, world: int, bound: float) -> None:
    """hessian's printout (:func:`~sharpscope.cli.hessian_cmd.print_results`) with the sharding said."""
    from .hessian_cmd import print_results

    r = results["eigenvalues"]
    header = (f"[bold]{path}[/]: {r.n_params:,} parameters sharded over {world} processes, "
              f"{r.n_examples:,} {split} examples")
    notes = [f"products by finite differences: error up to about {bound:.1e} of ||H|| ||v|| (smooth activations; "
             "ReLU kinks make it far larger)"]
    if "trace" in results:
        notes.append("the trace is Hutchinson's: Hutch++ is not available on sharded vectors")
    print_results(out, header, r.which, results, notes=notes, trace_note=False)
