"""The analyses an experiment runs on each trained checkpoint, and how much work they get."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn.functional as F

from .. import hessian, sharpness
from ..checkpoint import load_checkpoint
from ..objective import Objective

__all__ = ["AnalysisSettings", "PROFILES", "analyse_checkpoint"]


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


def analyse_checkpoint(ckpt_path: Path, batches: list, s: AnalysisSettings, rho: float, seed: int,
                       say: Callable[[str], None] = lambda what: None, density: bool = True,
                       clean_batches: list | None = None) -> dict[str, Any]:
    """Every analysis of a checkpoint's final weights on ``batches`` (cross-entropy, one
    Objective for all of them): top eigenvalues, trace, the SAM gradient cosine and
    surrogate gap at ``rho``, m-sharpness for ``s.m_values``, the spectral density unless
    ``density`` is False, and, given ``clean_batches`` (the same examples with their clean
    labels, under label noise), lambda_max on the clean labels."""
    model = load_checkpoint(ckpt_path).model
    loss = F.cross_entropy
    obj = Objective(model, loss, batches)
    say("top eigenvalues")
    eig = hessian.eigenvalues(obj, k=s.top_k, tol=s.eig_tol, seed=seed)
    say("trace")
    tr = hessian.trace(obj, n_matvecs=s.trace_matvecs, seed=seed)
    out: dict[str, Any] = {"eigenvalues": eig.to_dict(), "lambda_max": eig.eigenvalues[0], "ratio": eig.ratio,
                           "trace": tr.to_dict()}
    if density:
        say("spectral density")
        out["density"] = hessian.density(obj, n_runs=s.density_runs, n_steps=s.density_steps, seed=seed).to_dict()
    say("gradient cosine")
    cos = sharpness.sam_gradient_cosine(obj, rho=rho)  # also gives the surrogate gap
    obj.release()
    out.update(gradcos=cos.to_dict(), surrogate_gap=cos.surrogate_gap)
    say("m-sharpness")
    msh = sharpness.m_sharpness(model, loss, batches, m=[m for m in s.m_values if m <= s.samples], rho=rho,
                                steps=s.m_steps, seed=seed).to_dict()
    for r in msh["results"]:
        r.pop("values")
    out["m_sharpness"] = msh
    if clean_batches is not None:
        say("lambda_max on the clean labels")
        out["lambda_max_clean"] = hessian.eigenvalues(model, loss, clean_batches, k=1, tol=s.eig_tol,
                                                      seed=seed).eigenvalues[0]
    return out
