"""The table of measures: every sharpness or curvature quantity sharpscope computes of a trained
model, declared once.

A :class:`Measure` names the quantity (its one canonical name, used on the command line, in
JSON, CSV and figures), says how to compute it from a model, a list of ``(x, y)`` batches
(cross-entropy, the mean over the examples) and a mapping of settings, which settings it reads
(so a cache key holds exactly those: changing another setting reuses the result), which
columns it writes into a table row, and its cost unit. The places that measure read this
table and nothing else:

- training diagnostics (``train --track``, :mod:`sharpscope.train.tracking`): the measures with
  a headline value whose settings tracking provides;
- the analyses of ``sweep`` and ``compare`` (:mod:`sharpscope.experiments.analyses`): the
  measures whose settings :class:`~sharpscope.experiments.analyses.AnalysisSettings` (with
  the analysis rho and the run's seed) provides;
- ``correlate`` (:mod:`sharpscope.experiments.measure_runs`): those whose settings
  :class:`~sharpscope.experiments.measure_runs.MeasureSettings` provides.

Each place passes its own values (tracking: Lanczos tolerance 1e-3 and 30 Hutch++ products;
correlate: the top 5 eigenvalues), so the numbers each place computes are its own; what is
shared is the declaration. Settings a place fixes (passes as constants) are not part of its
cache keys. Adding a measure is one :func:`register` call (or one entry in :data:`MEASURES`
below); every place then offers it where its settings are provided.

The maths lives in :mod:`sharpscope.hessian`, :mod:`sharpscope.sharpness`,
:mod:`sharpscope.measures` and :mod:`sharpscope.weight_spectra`, imported when a measure is
computed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .weight_spectra import SUMMARY_METRICS

__all__ = ["Measure", "MEASURES", "COST_UNITS", "SUBSET", "register", "resolve", "resolve_all",
           "available", "all_columns", "correlated_columns", "is_column"]

# What one unit of a measure's cost is: a Hessian-vector product (a double backward), a
# gradient (one backward), a forward pass, or nothing that touches data.
COST_UNITS = ("HVP", "gradient", "forward", "none")
# The settings that pick the seeded training subset a data measure is computed on.
SUBSET = ("samples", "seed")

Compute = Callable[[Any, list, Mapping[str, Any], Any], "dict[str, Any] | None"]


@dataclass(frozen=True)
class Measure:
    """One quantity of a trained model.

    ``compute(model, batches, settings, objective)`` returns the result as a JSON-friendly dict
    (None when the settings leave nothing to compute, e.g. every m larger than the subset);
    ``objective`` is a shared :class:`~sharpscope.objective.Objective` on the same model and
    batches (one double-backward graph for several Hessian measures) or None (the measure
    builds its own). ``reads``: the settings ``compute`` reads, the subset's included.
    ``columns``: the value columns it writes into a row (the ones correlated with the
    generalization gap and summarized); ``column_prefix``: a family of value columns named
    ``prefix<m>`` whose members depend on the settings (m-sharpness). ``details``: supporting
    columns (not correlated), column -> kind (``stderr``, ``error``); each place says which
    kinds it writes. ``headline``: the one number tracking writes under the measure's name (None:
    not trackable). ``row``: the result's columns. ``cost``: its unit of work (:data:`COST_UNITS`).
    ``summary``: one line saying what it is. ``aliases``: old names, accepted with a one-line
    notice. ``shares_objective``: it runs on the shared double-backward graph."""

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
        """The row columns of ``result``: the value columns and the details of the kinds in
        ``details``, in the order :attr:`row` gives them; nothing for no result."""
        if result is None:
            return {}
        return {k: v for k, v in self.row(result).items() if self.details.get(k) is None or self.details[k] in details}

    def column_names(self, settings: Mapping[str, Any], details: Collection[str] = ()) -> list[str]:
        """The columns a result at ``settings`` will have (for a table's header, before any
        result): the prefix family at the m values that fit in the subset."""
        if self.column_prefix is not None:
            return [f"{self.column_prefix}{m}" for m in settings["m_values"] if m <= settings["samples"]]
        shown = [d for d, kind in self.details.items() if kind in details]
        out = []
        for c in self.columns:  # each detail right after the column it qualifies (trace, trace_stderr)
            out.append(c)
            out += [d for d in shown if d.startswith(c + "_")]
        return out + [d for d in shown if d not in out]

    def key(self, settings: Mapping[str, Any], fixed: Collection[str] = ()) -> dict[str, Any]:
        """The settings this measure reads, less those a place ``fixed`` (constants of that
        place): the part of a cache key that depends on the settings."""
        return {k: settings[k] for k in self.reads if k not in fixed}


MEASURES: dict[str, Measure] = {}


def register(measure: Measure) -> Measure:
    """Add ``measure`` to the table (after the others); ConfigError if its name or an alias is
    taken."""
    taken = {n for m in MEASURES.values() for n in (m.name, *m.aliases)}
    clash = [n for n in (measure.name, *measure.aliases) if n in taken]
    if clash:
        raise ConfigError(f"measure name {clash[0]!r} is already in the table")
    MEASURES[measure.name] = measure
    return measure


def _old_names() -> dict[str, str]:
    return {a: m.name for m in MEASURES.values() for a in m.aliases}


def resolve(name: str, what: str = "measure") -> str:
    """The canonical name of ``name`` (stripped, lower case); an old name is accepted with a
    one-line notice (a FutureWarning); an unknown name is returned as it is (the place refuses
    it with its own list)."""
    name = name.strip().lower()
    new = _old_names().get(name)
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


# ---------------------------------------------------------------------------------------
# The measures
# ---------------------------------------------------------------------------------------
def _objective(model: Any, batches: list, objective: Any) -> Any:
    if objective is not None:
        return objective
    from .objective import Objective
    return Objective(model, _loss(batches), batches)


def _loss(batches: Sequence) -> Any:
    """The loss of the batches' labels: cross-entropy, or the token-mean loss for token labels
    (:func:`sharpscope.data.loss_for_labels`)."""
    from .data import loss_for_labels
    return loss_for_labels(batches[0][1])


def _n_examples(batches: Sequence) -> int:
    return sum(int(b[1].shape[0]) for b in batches)


def _lambda_max(model: Any, batches: list, s: Mapping[str, Any], objective: Any) -> dict[str, Any]:
    from . import hessian
    return hessian.eigenvalues(_objective(model, batches, objective), k=s["top_k"], tol=s["eig_tol"],
                               seed=s["seed"]).to_dict()


def _trace(model: Any, batches: list, s: Mapping[str, Any], objective: Any) -> dict[str, Any]:
    from . import hessian
    return hessian.trace(_objective(model, batches, objective), n_matvecs=s["trace_matvecs"], seed=s["seed"]).to_dict()


def _density(model: Any, batches: list, s: Mapping[str, Any], objective: Any) -> dict[str, Any]:
    from . import hessian
    d = hessian.density(_objective(model, batches, objective), n_runs=s["density_runs"], n_steps=s["density_steps"],
                        seed=s["seed"]).to_dict()
    for bulky in ("nodes", "weights"):  # the quadrature: figures only, large
        d.pop(bulky)
    return d


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
    """Worst- or average-case sharpness (:func:`sharpscope.measures.sharpness`) on subsets of
    ``worst_m`` examples at the radius setting ``rho``: loss and error increase."""
    def compute(model: Any, batches: list, s: Mapping[str, Any], objective: Any) -> dict[str, Any]:
        from . import measures
        extra = ({"steps": s["worst_steps"], "restarts": s["worst_restarts"]} if kind == "worst"
                 else {"samples": s["average_draws"]})
        r = measures.sharpness(model, _loss(batches), batches, measure=kind, m=min(s["worst_m"], _n_examples(batches)),
                               rho=s[rho], seed=s["seed"], **extra, **options).results[0]
        return {"loss_increase": r.loss_increase, "error_increase": r.error_increase}
    compute.__name__ = f"_{name}"
    return compute


def _weights(model: Any, batches: list, s: Mapping[str, Any], objective: Any) -> dict[str, Any]:
    from .weight_spectra import weight_spectra  # data-free: the batches are not used
    return dict(weight_spectra(model).summary)


def _increase_row(name: str) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    return lambda r: {name: r["loss_increase"], f"{name}_error": r["error_increase"]}


def _increase(name: str, kind: str, rho: str, reads: tuple[str, ...], summary: str, cost: str,
              **options: Any) -> Measure:
    return Measure(name, _sharpness_measure(name, kind, rho, **options), (*SUBSET, rho, *reads), (name,),
                   _increase_row(name), cost, summary, details={f"{name}_error": "error"})


for _m in (
    Measure("lambda_max", _lambda_max, (*SUBSET, "top_k", "eig_tol"), ("lambda_max", "lambda_ratio"),
            lambda r: {"lambda_max": r["eigenvalues"][0], "lambda_ratio": r.get("ratio")}, "HVP",
            "the top Hessian eigenvalues (Lanczos): lambda_max and lambda_1 / lambda_k",
            headline=lambda r: r["eigenvalues"][0], aliases=("eigenvalues", "eigs", "hessian"), shares_objective=True),
    Measure("trace", _trace, (*SUBSET, "trace_matvecs"), ("trace",),
            lambda r: {"trace": r["trace"], "trace_stderr": r["stderr"]}, "HVP", "the Hessian trace (Hutch++)",
            headline=lambda r: r["trace"], details={"trace_stderr": "stderr"}, shares_objective=True),
    Measure("density", _density, (*SUBSET, "density_runs", "density_steps"), ("density_trace",),
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
    Measure("weights", _weights, (), tuple(f"ww_{k}" for k in SUMMARY_METRICS),
            lambda r: {f"ww_{k}": v for k, v in r.items()}, "none",
            "data-free weight-spectrum measures, means over layers (after weightwatcher)"),
):
    register(_m)
del _m
