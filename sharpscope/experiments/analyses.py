"""The analyses an experiment runs on each trained checkpoint, and how much work they get."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import nn

from .. import hessian, sharpness
from ..checkpoint import load_checkpoint
from ..objective import Objective

__all__ = ["AnalysisSettings", "PROFILES", "ANALYSES", "analyse_selected", "analyse_checkpoint"]

# The analyses an experiment can run on a checkpoint, in the order they run.
ANALYSES = ("eigenvalues", "trace", "density", "m-sharpness", "gradcos")


@dataclass
class AnalysisSettings:
    """How much work each analysis gets."""

    samples: int = 512          # seeded training subset the analyses use
    top_k: int = 5
    eig_tol: float = 1e-4
    trace_matvecs: int = 99
    density_runs: int = 6
    density_steps: int = 70
    m_values: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    m_steps: int = 5
    surface_points: int = 31    # per axis, on [-1, 1]
    interpolation_points: int = 41  # on [-0.5, 1.5]
    track_every: int = 2


PROFILES = {
    "default": AnalysisSettings(),
    "quick": AnalysisSettings(samples=128, top_k=5, eig_tol=1e-3, trace_matvecs=12, density_runs=2, density_steps=20,
                              m_values=[4, 16], m_steps=2, surface_points=7, interpolation_points=11, track_every=1),
}


def analyse_selected(model: nn.Module, batches: list, which: Sequence[str], s: AnalysisSettings, rho: float,
                     seed: int, say: Callable[[str], None] = lambda what: None) -> dict[str, dict[str, Any]]:
    """The analyses named in ``which`` (from :data:`ANALYSES`) of ``model`` on ``batches``
    (cross-entropy; the Hessian analyses share one Objective), at the work of ``s``: name ->
    result dict (each with its ``wall_time``). ``gradcos`` also holds the surrogate gap at
    ``rho``; m-sharpness uses the m values of ``s`` that fit in the examples (per-subset
    values dropped); the density drops its quadrature nodes and weights."""
    loss = F.cross_entropy
    out: dict[str, dict[str, Any]] = {}
    hessian_ones = [w for w in which if w in ("eigenvalues", "trace", "density", "gradcos")]
    if hessian_ones:
        obj = Objective(model, loss, batches)
        try:
            for name in hessian_ones:
                say(name)
                if name == "eigenvalues":
                    out[name] = hessian.eigenvalues(obj, k=s.top_k, tol=s.eig_tol, seed=seed).to_dict()
                elif name == "trace":
                    out[name] = hessian.trace(obj, n_matvecs=s.trace_matvecs, seed=seed).to_dict()
                elif name == "density":
                    d = hessian.density(obj, n_runs=s.density_runs, n_steps=s.density_steps, seed=seed).to_dict()
                    for bulky in ("nodes", "weights"):
                        d.pop(bulky)
                    out[name] = d
                else:
                    out[name] = sharpness.sam_gradient_cosine(obj, rho=rho).to_dict()
        finally:
            obj.release()
    if "m-sharpness" in which:
        say("m-sharpness")
        n = sum(int(b[1].shape[0]) for b in batches)
        ms = [m for m in s.m_values if m <= n]
        if ms:
            res = sharpness.m_sharpness(model, loss, batches, m=ms, rho=rho, steps=s.m_steps, seed=seed).to_dict()
            for r in res["results"]:
                r.pop("values")
            out["m-sharpness"] = res
    return out


def analyse_checkpoint(ckpt_path: Path, batches: list, s: AnalysisSettings, rho: float, seed: int,
                       say: Callable[[str], None] = lambda what: None, density: bool = True,
                       clean_batches: list | None = None, allow_factory: bool | str = False) -> dict[str, Any]:
    """Every analysis of a checkpoint's final weights on ``batches`` (:func:`analyse_selected`
    with all of :data:`ANALYSES`, the density only when ``density``), in compare's layout,
    and, given ``clean_batches`` (the same examples with their clean labels, under label
    noise), lambda_max on the clean labels. ``allow_factory``: as for
    :func:`~sharpscope.checkpoint.load_checkpoint`."""
    model = load_checkpoint(ckpt_path, allow_factory=allow_factory).model
    which = [a for a in ANALYSES if density or a != "density"]
    res = analyse_selected(model, batches, which, s, rho, seed, say)
    eig = res["eigenvalues"]
    values = eig["eigenvalues"]
    out: dict[str, Any] = {"eigenvalues": eig, "lambda_max": values[0], "ratio": eig["ratio"], "trace": res["trace"],
                           "gradcos": res["gradcos"], "surrogate_gap": res["gradcos"]["surrogate_gap"],
                           "m_sharpness": res["m-sharpness"]}
    if density:
        out["density"] = res["density"]
    if clean_batches is not None:
        say("lambda_max on the clean labels")
        out["lambda_max_clean"] = hessian.eigenvalues(model, F.cross_entropy, clean_batches, k=1, tol=s.eig_tol,
                                                      seed=seed).eigenvalues[0]
    return out
