"""The analyses an experiment runs on each trained checkpoint, and how much work they get."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from torch import nn

from .. import measure_table
from ..data import loss_for_labels
from ..objective import Objective

__all__ = ["AnalysisSettings", "PROFILES", "COMPARED", "Variant", "VARIANTS", "analysis_names",
           "analysis_settings", "analyse_selected", "analyse_variant"]


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
# What compare measures on every checkpoint (the density on the first seed only), in table order.
COMPARED = ("lambda_max", "trace", "density", "m_sharpness", "gradcos")


@dataclass(frozen=True)
class Variant:
    """A measure computed with other labels (``"clean"``: before label noise) and some settings
    overridden, under its own name and cache entry."""

    measure: str
    labels: str
    settings: Mapping[str, Any]


# lambda_max of the same examples with their clean labels (compare under label noise).
VARIANTS: dict[str, Variant] = {"lambda_max_clean": Variant("lambda_max", "clean", {"top_k": 1})}


def analysis_names() -> list[str]:
    """The measures whose settings :class:`AnalysisSettings` provides (with rho and the seed), in
    table order."""
    return measure_table.available([*(f.name for f in fields(AnalysisSettings)), "rho", "seed"])


def analysis_settings(s: AnalysisSettings, rho: float, seed: int) -> dict[str, Any]:
    """The settings the measures read: ``s`` with the analysis ``rho`` and the run's ``seed``."""
    return {**asdict(s), "rho": rho, "seed": seed}


def analyse_selected(model: nn.Module, batches: list, which: Sequence[str], s: AnalysisSettings, rho: float,
                     seed: int, say: Callable[[str], None] = lambda what: None) -> dict[str, dict[str, Any]]:
    """The measures ``which`` of ``model`` on ``batches`` at the work of ``s``: name -> result
    (with its ``wall_time``; none for m-sharpness when no m fits). The Hessian measures share
    one Objective and run first."""
    settings = analysis_settings(s, rho, seed)
    out: dict[str, dict[str, Any]] = {}
    measures = [measure_table.MEASURES[w] for w in which]
    shared = [m for m in measures if m.shares_objective]
    if shared:
        obj = Objective(model, loss_for_labels(batches[0][1]), batches)  # tokens: the token mean
        try:
            for m in shared:
                say(m.name)
                out[m.name] = m.compute(model, batches, settings, obj)
        finally:
            obj.release()
    for m in measures:
        if not m.shares_objective:
            say(m.name)
            result = m.compute(model, batches, settings, None)
            if result is not None:
                out[m.name] = result
    return out


def analyse_variant(model: nn.Module, batches: list, name: str, s: AnalysisSettings, rho: float, seed: int,
                    say: Callable[[str], None] = lambda what: None) -> dict[str, Any] | None:
    """The variant ``name`` of :data:`VARIANTS` on ``batches`` (with the variant's labels)."""
    variant = VARIANTS[name]
    say(f"{variant.measure} on the {variant.labels} labels")
    measure = measure_table.MEASURES[variant.measure]
    return measure.compute(model, batches, {**analysis_settings(s, rho, seed), **variant.settings}, None)
