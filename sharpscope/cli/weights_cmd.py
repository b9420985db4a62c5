"""``sharpscope weights``: data-free weight-spectrum measures of a checkpoint (after weightwatcher)."""

from __future__ import annotations

from pathlib import Path

import typer

from ._app import app
from ._common import console as rank0_console, params_record, parse_params, print_notes, table
from ._inputs import Inputs, analysis_inputs
from ._results import claim, json_target, save_report


@app.command("weights")
@analysis_inputs("params", "json_out", "overwrite", "trust_factory", "deterministic")
def weights_command(
    checkpoint: Path = typer.Argument(..., help="A checkpoint file or a run folder."),
    inputs: Inputs = Inputs(),
) -> None:
    """Per layer: the power-law exponent alpha of the eigenvalues of W^T W (KS-chosen xmin),
    alpha-weighted, log Frobenius and spectral norms, stable rank; and their means. No data.
    Saved as <run>/analyses/weights.json.

    Example: sharpscope weights runs/sam --json -
    """
    from ..checkpoint import load_checkpoint
    from ..weight_spectra import weight_spectra

    target = json_target(inputs.json_out, checkpoint, "weights")
    outputs = claim([target], inputs.overwrite, "--json PATH", records=[target])
    ckpt = load_checkpoint(checkpoint, allow_factory=inputs.trust_factory)
    res = weight_spectra(ckpt.model, None if inputs.params == "all" else parse_params(inputs.params))
    chosen = params_record(ckpt.model, inputs.params)
    out = rank0_console(stderr=inputs.json_out == "-")
    print_notes(out, chosen)
    out.print(table(f"Weight spectra of {ckpt.path} ({len(res.layers)} layers)",
                    ("layer", "shape", "evals", "alpha", "alpha_weighted", "log_norm", "log_spectral_norm",
                     "stable_rank"),
                    ((layer.name, "x".join(map(str, layer.shape)), str(layer.n_evals),
                      *(f"{v:.3f}" for v in (layer.alpha, layer.alpha_weighted, layer.log_norm,
                                             layer.log_spectral_norm, layer.stable_rank))) for layer in res.layers),
                    left=2))
    out.print("mean over layers: " + ", ".join(f"{k} {v:.4g}" for k, v in res.summary.items()), highlight=False)
    if res.skipped:
        out.print(f"skipped (fewer than 8 eigenvalues): {', '.join(res.skipped)}", highlight=False)
    outputs.clear()
    save_report({"checkpoint": str(ckpt.path), **chosen, **res.to_dict()}, target, rank0_console(stderr=True))
