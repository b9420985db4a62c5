"""The table of measures: every sharpness or curvature quantity of a trained model, declared once.

A :class:`Measure` gives the quantity its one name, how to compute it from a model, ``(x, y)``
batches and settings, the settings it reads (its cache key), its columns and its cost unit.
``train --track``, ``sweep`` / ``compare`` and ``correlate`` offer the measures whose settings
they provide, each with its own values; adding one is a :func:`register` call.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .weight_spectra import SUMMARY_METRICS, weight_spectra

__all__ = ["Measure", "MEASURES", "COST_UNITS", "SUBSET", "register", "resolve", "resolve_all",
           "available", "all_columns", "correlated_columns", "is_column"]

# What one unit of a measure's cost is (an HVP is a double backward; "none": touches no data).
COST_UNITS = ("HVP", "gradient", "forward", "none")
# The settings that pick the seeded training subset a data measure is computed on.
SUBSET = ("samples", "seed")

Compute = Callable[[Any, list, Mapping[str, Any], Any], "dict[str, Any] | None"]


@dataclass(frozen=True)
class Measure:
    """One quantity of a trained model. ``compute(model, batches, settings, objective)`` -> a JSON
    dict (None: nothing to compute), ``objective`` shared if ``shares_objective``, else None.
    ``reads``: its settings; ``columns``: its value columns (correlated, summarized);
    ``column_prefix``: a family ``prefix<m>``; ``details``: supporting column -> kind
    (``stderr``, ``error``); ``row``: result -> columns; ``headline``: what tracking writes (None:
    not trackable); ``cost``: a :data:`COST_UNITS` unit; ``aliases``: old names."""

    name: str
    compute: Compute
    reads: tuple[str, ...]
    columns: tuple[str, ...]
    row: Callable[[Mapping[str, Any]], dict[str, Any]]
    cost: str
    summary: str
    headline: Callable[[Mapping[str, Any]], float] | None = None
    column_prefix: str | None = None
    details: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    shares_objective: bool = False

    def __post_init__(self) -> None:
        if self.cost not in COST_UNITS:
            raise ConfigError(f"measure {self.name!r}: cost unit {self.cost!r} is not one of {', '.join(COST_UNITS)}")

    def columns_of(self, result: Mapping[str, Any] | None, details: Collection[str] = ()) -> dict[str, Any]:
        """The value columns of ``result`` and its details of the kinds in ``details``."""
        if result is None:
            return {}
        return {k: v for k, v in self.row(result).items() if self.details.get(k) is None or self.details[k] in details}

    def column_names(self, settings: Mapping[str, Any], details: Collection[str] = ()) -> list[str]:
        """The columns a result at ``settings`` will have (a header, before any result)."""
        if self.column_prefix is not None:
            return [f"{self.column_prefix}{m}" for m in settings["m_values"] if m <= settings["samples"]]
        shown = [d for d, kind in self.details.items() if kind in details]
        out = []
        for c in self.columns:  # each detail right after the column it qualifies (trace, trace_stderr)
            out.append(c)
            out += [d for d in shown if d.startswith(c + "_")]
        return out + [d for d in shown if d not in out]

    def key(self, settings: Mapping[str, Any], fixed: Collection[str] = ()) -> dict[str, Any]:
        """The settings this measure reads, less those a place ``fixed``: its cache key part."""
        return {k: settings[k] for k in self.reads if k not in fixed}


MEASURES: dict[str, Measure] = {}


def register(measure: Measure) -> Measure:
    """Add ``measure`` to the table; ConfigError if its name or an alias is taken."""
    taken = {n for m in MEASURES.values() for n in (m.name, *m.aliases)}
    clash = [n for n in (measure.name, *measure.aliases) if n in taken]
    if clash:
        raise ConfigError(f"measure name {clash[0]!r} is already in the table")
    MEASURES[measure.name] = measure
    return measure


def resolve(name: str, what: str = "measure") -> str:
    """The canonical name of ``name`` (an old name with a FutureWarning; an unknown one as it is)."""
    name = name.strip().lower()
    new = {a: m.name for m in MEASURES.values() for a in m.aliases}.get(name)
    if new is None:
        return name
    warnings.warn(f"{what} {name!r} is now called {new!r}; the old name works until the next release",
                  FutureWarning, stacklevel=3)
    return new


def resolve_all(names: Iterable[str], what: str = "measure") -> list[str]:
    return [resolve(n, what) for n in names]


def available(settings: Collection[str]) -> list[str]:
    """The measures, in table order, whose settings are all among ``settings``."""
    have = set(settings)
    return [m.name for m in MEASURES.values() if set(m.reads) <= have]


def all_columns() -> set[str]:
    """Every fixed column (values and details) the measures write."""
    return {c for m in MEASURES.values() for c in (*m.columns, *m.details)}


def correlated_columns() -> tuple[str, ...]:
    """The fixed value columns of every measure, in table order (prefix families aside)."""
    return tuple(c for m in MEASURES.values() for c in m.columns)


def is_column(key: str) -> bool:
    """Whether a row's ``key`` is a column some measure writes."""
    return key in all_columns() or any(m.column_prefix and key.startswith(m.column_prefix)
                                       for m in MEASURES.values())


def _objective(model: Any, batches: list, objective: Any) -> Any:
    if objective is not None:
        return objective
    from .objective import Objective
    return Objective(model, _loss(batches), batches)


def _loss(batches: Sequence) -> Any:
    """The loss of the batches' labels (:func:`sharpscope.data.loss_for_labels`)."""
    from .data import loss_for_labels
    return loss_for_labels(batches[0][1])


def _n_examples(batches: Sequence) -> int:
    return sum(int(b[1].shape[0]) for b in batches)


def _hessian(fn: str, drop: tuple[str, ...] = (), **keys: str) -> Compute:
    """``sharpscope.hessian.<fn>``, its options from the settings ``keys`` names, less ``drop``."""
    def compute(model: Any, batches: list, s: Mapping[str, Any], objective: Any) -> dict[str, Any]:
        from . import hessian
        d = getattr(hessian, fn)(_objective(model, batches, objective), seed=s["seed"],
                                 **{k: s[v] for k, v in keys.items()}).to_dict()
        return {k: v for k, v in d.items() if k not in drop}
    compute.__name__ = f"_{fn}"
    return compute


def _m_sharpness(model: Any, batches: list, s: Mapping[str, Any], objective: Any) -> dict[str, Any] | None:
    from . import sharpness
    n = _n_examples(batches)
    ms = [m for m in s["m_values"] if m <= n]
    if not ms:
        return None
    res = sharpness.m_sharpness(model, _loss(batches), batches, m=ms, rho=s["rho"], steps=s["m_steps"],
                                seed=s["seed"]).to_dict()
    for r in res["results"]:
        r.pop("values")  # per-subset values: large, summarized by mean and stderr
    return res


def _gradcos(model: Any, batches: list, s: Mapping[str, Any], objective: Any) -> dict[str, Any]:
    from . import sharpness
    return sharpness.sam_gradient_cosine(_objective(model, batches, objective), rho=s["rho"]).to_dict()


def _sharpness_measure(name: str, kind: str, rho: str, **options: Any) -> Compute:
    """Worst- or average-case sharpness on subsets of ``worst_m`` examples at the radius ``rho``."""
    def compute(model: Any, batches: list, s: Mapping[str, Any], objective: Any) -> dict[str, Any]:
        from . import measures
        extra = ({"steps": s["worst_steps"], "restarts": s["worst_restarts"]} if kind == "worst"
                 else {"samples": s["average_draws"]})
        r = measures.sharpness(model, _loss(batches), batches, measure=kind, m=min(s["worst_m"], _n_examples(batches)),
                               rho=s[rho], seed=s["seed"], **extra, **options).results[0]
        return {"loss_increase": r.loss_increase, "error_increase": r.error_increase}
    compute.__name__ = f"_{name}"
    return compute


def _increase(name: str, kind: str, rho: str, reads: tuple[str, ...], summary: str, cost: str,
              **options: Any) -> Measure:
    return Measure(name, _sharpness_measure(name, kind, rho, **options), (*SUBSET, rho, *reads), (name,),
                   lambda r: {name: r["loss_increase"], f"{name}_error": r["error_increase"]}, cost, summary,
                   details={f"{name}_error": "error"})


for _m in (
    Measure("lambda_max", _hessian("eigenvalues", k="top_k", tol="eig_tol"), (*SUBSET, "top_k", "eig_tol"),
            ("lambda_max", "lambda_ratio"),
            lambda r: {"lambda_max": r["eigenvalues"][0], "lambda_ratio": r.get("ratio")}, "HVP",
            "the top Hessian eigenvalues (Lanczos): lambda_max and lambda_1 / lambda_k",
            headline=lambda r: r["eigenvalues"][0], aliases=("eigenvalues", "eigs", "hessian"), shares_objective=True),
    Measure("trace", _hessian("trace", n_matvecs="trace_matvecs"), (*SUBSET, "trace_matvecs"), ("trace",),
            lambda r: {"trace": r["trace"], "trace_stderr": r["stderr"]}, "HVP", "the Hessian trace (Hutch++)",
            headline=lambda r: r["trace"], details={"trace_stderr": "stderr"}, shares_objective=True),
    Measure("density", _hessian("density", ("nodes", "weights"), n_runs="density_runs", n_steps="density_steps"),
            (*SUBSET, "density_runs", "density_steps"), ("density_trace",),
            lambda r: {"density_trace": r.get("trace_estimate")}, "HVP",
            "the Hessian spectral density (stochastic Lanczos quadrature) and the trace it implies",
            shares_objective=True),
    Measure("m_sharpness", _m_sharpness, (*SUBSET, "rho", "m_values", "m_steps"), (),
            lambda r: {f"m_sharpness_m{x['m']}": x["mean"] for x in r["results"]}, "gradient",
            "the SAM paper's m-sharpness at each m (fixed-step ascent), the mean over subsets",
            headline=lambda r: r["results"][0]["mean"], column_prefix="m_sharpness_m",
            aliases=("m-sharpness", "msharpness")),
    Measure("gradcos", _gradcos, (*SUBSET, "rho"), ("gradcos", "surrogate_gap"),
            lambda r: {"gradcos": r["cosine"], "surrogate_gap": r["surrogate_gap"]}, "HVP",
            "cosine between SAM's first- and second-order gradients, and the surrogate gap, at rho",
            headline=lambda r: r["cosine"], aliases=("surrogate-gap",), shares_objective=True),
    _increase("worst", "worst", "rho", ("worst_m", "worst_steps", "worst_restarts"),
              "worst-case sharpness, APGD-style ascent, p = 2", "gradient"),
    _increase("worst_adaptive", "worst", "adaptive_rho", ("worst_m", "worst_steps", "worst_restarts"),
              "adaptive worst-case sharpness, p = inf", "gradient", p=math.inf, adaptive=True),
    _increase("average", "average", "average_rho", ("worst_m", "average_draws"),
              "average-case sharpness, p = 2", "forward"),
    _increase("average_adaptive", "average", "average_rho", ("worst_m", "average_draws"),
              "adaptive average-case sharpness", "forward", adaptive=True),
    Measure("weights", lambda model, batches, s, objective: dict(weight_spectra(model).summary),  # data-free
            (), tuple(f"ww_{k}" for k in SUMMARY_METRICS),
            lambda r: {f"ww_{k}": v for k, v in r.items()}, "none",
            "data-free weight-spectrum measures, means over layers (after weightwatcher)"),
):
    register(_m)
del _m
