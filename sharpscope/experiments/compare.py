"""Optimizers side by side over paired seeds: train each optimizer on the same seeds, run every
analysis, summarize each metric with a 95 % confidence interval and each optimizer's paired
difference to the baseline (SGD), draw the figures, write ``report.md`` and ``results.json``.

Pairing: for seed s every optimizer gets the same training split, label flips and initial
weights, so the per-seed differences remove the variance the runs share (:mod:`sharpscope.stats`).
The scalar analyses run on every seed, the figure-only ones (density, 2-D surfaces,
interpolation) on the first. The runs go through the run engine
(:func:`~sharpscope.experiments.engine.run_tasks`) and the one summarizer
(:func:`~sharpscope.experiments.tables.summarize_rows`), so everything is resumable and a folder
holding runs with other settings is refused. Layout of ``out_dir``: ``<optimizer>/seed<s>/``
(a run, its ``analysis.json``; ``surface_2d.npz`` on the first seed), ``figures/*.png``,
``report.md``, ``results.json``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import landscape, measure_table, plots, provenance, stats
from ..checks import finite_float, int_at_least
from ..checkpoint import load_checkpoint, read_checkpoint
from ..data import DataSpec, load_dataset, loss_for_labels
from ..errors import ConfigError, NonFiniteLossError, SharpscopeError
from ..models import is_factory
from ..optim import registry
from ..train import TrainConfig, check_model
from .analyses import COMPARED, PROFILES, AnalysisSettings
from .engine import RunOutcome, RunTask, analysis_subset, run_tasks
from .files import RESULTS_SCHEMA, write_json
from .grid import RunSpec
from .runs import refuse_other_settings
from .tables import run_columns, summarize_rows
from .verdicts import CI_METHOD_TEXT, CONVERGENCE_DEFINITION, METRIC_BOUNDS, run_convergence, unconverged_warning

__all__ = ["CompareConfig", "run_compare", "run_dir", "run_scalars", "PROFILES", "KEY_METRICS"]

# The metrics the difference figure and the console summary show.
KEY_METRICS = ("test_acc", "train_loss", "lambda_max", "lambda_ratio", "trace", "surrogate_gap")
# A training loss or gradient norm this many times another optimizer's: curvature compared
# between points that are not both minima (the report says so).
NOT_A_MINIMUM_FACTOR = 10.0
# TrainConfig fields a comparison sets itself (CompareConfig's own fields, the seed, the profile's tracking)
_OWN_FIELDS = frozenset({"optimizer", "model", "model_kwargs", "data", "data_root", "label_noise", "n_train", "epochs",
                         "rho", "m", "seed", "keep_snapshots", "track", "track_every", "track_samples"})


@dataclass
class CompareConfig:
    """What to compare (training options shared by every optimizer), on which (paired) seeds,
    and how much to analyse."""

    optimizers: list[str] = field(default_factory=lambda: ["sgd", "sam"])
    model: str = "cnn"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "digits"
    data_root: str | None = None
    label_noise: float = 0.0
    rho: float = 0.05
    asam_rho: float = 0.5
    m: int | None = None
    epochs: int = 40
    n_train: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    quick: bool = False
    # any other TrainConfig field, for every run (each optimizer gets those it reads)
    train_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.optimizers or len(set(self.optimizers)) != len(self.optimizers):
            raise ConfigError(f"--optimizer must name distinct optimizers, got {self.optimizers}")
        for name in self.optimizers:
            registry.get(name)  # an unknown name: ConfigError listing the choices
        self.seeds = [int_at_least("seed", s, 0) for s in self.seeds]
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"--seeds must name distinct seeds (or a count >= 1), got {self.seeds}")
        if self.quick:
            self.epochs = min(self.epochs, 4)
            self.n_train = self.n_train or 400
        for name in ("rho", "asam_rho"):  # both, even when one optimizer is not compared
            finite_float(name, getattr(self, name), at_least=0)
        unread = [k for k in self.train_options.get("optimizer_options", {})
                  if not any(k in registry.get(o).option_names for o in self.optimizers)]
        if unread:
            raise ConfigError(f"--optimizer-opt {unread[0]}: none of {', '.join(self.optimizers)} has that option")
        for optimizer in self.optimizers:  # every training option, before the first run starts
            for seed in self.seeds:
                self.train_config(optimizer, seed)

    @property
    def settings(self) -> AnalysisSettings:
        return PROFILES["quick" if self.quick else "default"]

    @property
    def factory(self) -> str | bool:
        """``allow_factory`` for the runs' checkpoints: the model factory this comparison names."""
        return self.model if is_factory(self.model) else False

    @property
    def baseline(self) -> str:
        """The optimizer every other one is compared with: SGD when present, else the first."""
        return "sgd" if "sgd" in self.optimizers else self.optimizers[0]

    def train_config(self, optimizer: str, seed: int) -> TrainConfig:
        spec = registry.get(optimizer)
        perturbs = spec.perturbs
        rho = (self.asam_rho if optimizer == "asam" else self.rho) if perturbs else None
        own = _OWN_FIELDS & set(self.train_options)
        if own:
            raise ConfigError(f"compare sets {', '.join(sorted(own))} itself; not a train_options entry")
        extra = {k: v for k, v in self.train_options.items() if spec.uses(k)}
        if "optimizer_options" in extra:  # each optimizer its own (__post_init__: each read by one)
            extra["optimizer_options"] = {k: v for k, v in extra["optimizer_options"].items()
                                          if k in spec.option_names}
        return TrainConfig(
            **extra, optimizer=optimizer, model=self.model, model_kwargs=dict(self.model_kwargs), data=self.data,
            data_root=self.data_root, label_noise=self.label_noise, n_train=self.n_train, epochs=self.epochs,
            rho=rho, m=self.m if perturbs else None, seed=seed, keep_snapshots=False,
            track=["gradcos", "lambda_max"], track_every=self.settings.track_every,
            track_samples=self.settings.samples,
        )


def run_dir(out: Path, optimizer: str, seed: int) -> Path:
    """Where the run of ``optimizer`` on ``seed`` lives."""
    return out / optimizer / f"seed{seed}"


def _tasks(config: CompareConfig, out: Path, callbacks_for: Callable[[str], list]) -> list[RunTask]:
    """Every optimizer on every seed, seed-major: the measures of
    :data:`~sharpscope.experiments.analyses.COMPARED` (the density on the first seed only), and
    lambda_max on the clean labels under label noise."""
    order = [(seed, opt) for seed in config.seeds for opt in config.optimizers]
    settings = asdict(config.settings)
    tasks = []
    for i, (seed, opt) in enumerate(order):
        cfg = config.train_config(opt, seed).to_dict()
        spec = RunSpec(i, f"{opt}_seed{seed}", {"optimizer": opt, "seed": seed}, cfg, f"{opt.upper()}, seed {seed}")
        analyses = [a for a in COMPARED if a != "density" or seed == config.seeds[0]]
        analyses += ["lambda_max_clean"] if config.label_noise > 0 else []
        tasks.append(RunTask(spec, str(run_dir(out, opt, seed)), analyses, settings, config.rho, len(order),
                             callbacks_for(opt), epoch_lines=False))
    return tasks


def _run_all(config: CompareConfig, out: Path, say: Callable[[str], None], callbacks_for: Callable[[str], list]
             ) -> tuple[dict[str, dict[int, RunOutcome]], list[str]]:
    """Every run's outcome by optimizer and seed, and the runs' notes; a diverged run or a
    failed analysis stops the comparison (NonFiniteLossError, SharpscopeError)."""
    tasks = _tasks(config, out, callbacks_for)
    outcomes = run_tasks(tasks, say=say)
    by_run: dict[str, dict[int, RunOutcome]] = {opt: {} for opt in config.optimizers}
    notes = []
    for task, outcome in zip(tasks, outcomes):
        opt, seed = task.spec.options["optimizer"], task.spec.options["seed"]
        if outcome.status == "diverged":
            raise NonFiniteLossError(f"{task.run_dir}: {' '.join(outcome.notes)}")
        missing = [a for a in task.analyses if a not in outcome.analyses]
        if missing:
            failed = [n for n in outcome.notes if n.startswith(f"{missing[0]} failed")]
            raise SharpscopeError(f"{task.run_dir}: {failed[0] if failed else missing[0] + ' gave no result'} "
                                  "(remove its analysis.json to compute it again)")
        notes += [f"{opt.upper()} seed {seed}: {n}" for n in outcome.notes]
        by_run[opt][seed] = outcome
    return by_run, notes


def _layout(res: Mapping[str, Any]) -> dict[str, Any]:
    """The measures' results (name -> result) in results.json's layout: the eigenvalues' result
    with lambda_max and lambda_ratio beside it, the surrogate gap beside the gradient cosine."""
    eig = res["lambda_max"]
    out: dict[str, Any] = {"eigenvalues": eig, "lambda_max": eig["eigenvalues"][0], "lambda_ratio": eig["ratio"],
                           "trace": res["trace"], "gradcos": res["gradcos"],
                           "surrogate_gap": res["gradcos"]["surrogate_gap"], "m_sharpness": res["m_sharpness"]}
    if "density" in res:
        out["density"] = res["density"]
    if res.get("lambda_max_clean") is not None:  # a variant (VARIANTS): its top eigenvalue
        out["lambda_max_clean"] = measure_table.MEASURES["lambda_max"].headline(res["lambda_max_clean"])
    return out


def _landscapes(config: CompareConfig, out: Path, runs: dict[str, dict[int, list[dict]]], batches: list, n: int,
                say: Callable[[str], None]) -> tuple[dict[str, Any], Any]:
    """2-D loss surfaces of every optimizer and the interpolation between the first two, on
    the first seed."""
    s, seed = config.settings, config.seeds[0]
    say("loss surfaces")
    models = {opt: load_checkpoint(run_dir(out, opt, seed) / "checkpoint.pt", allow_factory=config.factory).model
              for opt in config.optimizers}
    grid = np.linspace(-1.0, 1.0, s.surface_points)
    surfaces = {}
    for opt, model in models.items():
        folder = run_dir(out, opt, seed)
        saved = folder / "surface_2d.npz"
        options = {"norm": "filter", "ignore": "biasbn", "seed": seed, "n_examples": n,
                   "step": runs[opt][seed][-1]["step"]}
        if saved.exists():
            previous = landscape.SurfaceResult.load(saved)
            if previous.options == options and np.array_equal(previous.xs, grid) and np.array_equal(previous.ys, grid):
                surfaces[opt] = previous
                continue
        dirs = [landscape.random_direction(model, seed=seed), landscape.random_direction(model, seed=seed + 1)]
        surfaces[opt] = landscape.surface(model, loss_for_labels(batches[0][1]), batches, dirs, grid, grid, options=dict(options),
                                          resume_path=folder / "surface.partial.npz")
        surfaces[opt].save(saved, dirs)
        (folder / "surface.partial.npz").unlink(missing_ok=True)
    interp = None
    if len(config.optimizers) >= 2:
        a, b = config.optimizers[0], config.optimizers[1]
        say(f"interpolating {a.upper()} -> {b.upper()}")
        interp = landscape.interpolate(models[a], models[b], loss_for_labels(batches[0][1]), batches,
                                       interpolation_alphas(s.interpolation_points), name_a=a.upper(),
                                       name_b=b.upper())
        interp.save(out / "interpolation.npz")
    return surfaces, interp


def interpolation_alphas(points: int) -> np.ndarray:
    """``points`` values evenly on [-0.5, 1.5], with 0 and 1 (the minima) added: the barrier is
    read at the endpoints, not interpolated to them."""
    return np.union1d(np.linspace(-0.5, 1.5, points), [0.0, 1.0])


def run_scalars(final: dict[str, Any], analyses: Mapping[str, Any], label_noise: bool = False) -> dict[str, float]:
    """The finite scalar metrics of one run: :func:`~sharpscope.experiments.tables.run_columns`
    of its final metrics (with the clean-label train accuracy under label noise) and its
    analyses (name -> result; the density aside), the gradient norm and lambda_max_clean."""
    keys = ("test_acc", "test_loss", "train_loss", "train_acc") + (("train_acc_clean",) if label_noise else ())
    values = run_columns(final, keys, {k: v for k, v in analyses.items() if k != "density"})
    values["gradient_norm"] = analyses["gradcos"]["gradient_norm"]
    if analyses.get("lambda_max_clean") is not None:
        values["lambda_max_clean"] = measure_table.MEASURES["lambda_max"].headline(analyses["lambda_max_clean"])
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}


def gradcos_change(runs: Mapping[int, Sequence[Mapping[str, Any]]], seeds: Sequence[int]) -> dict[str, Any] | None:
    """The tracked cosine between the first- and second-order SAM gradients at the first and
    last tracked epoch over seeds, and the paired change late - early (Foret et al., Fig. 5:
    near 1 early, lower near convergence); None when a seed has fewer than two values."""
    early, late = [], []
    epochs: tuple[int, int] | None = None
    for seed in seeds:
        tracked = [r for r in runs[seed] if isinstance(r.get("gradcos"), (int, float)) and math.isfinite(r["gradcos"])]
        if len(tracked) < 2:
            return None
        early.append(float(tracked[0]["gradcos"]))
        late.append(float(tracked[-1]["gradcos"]))
        epochs = epochs or (int(tracked[0]["epoch"]), int(tracked[-1]["epoch"]))
    assert epochs is not None
    cos = METRIC_BOUNDS["gradcos"]
    return {"early_epoch": epochs[0], "late_epoch": epochs[1], "early": stats.summarize(early, bounds=cos).to_dict(),
            "late": stats.summarize(late, bounds=cos).to_dict(),
            "change": stats.paired_difference(early, late, bounds=cos).to_dict()}


def _statistics(config: CompareConfig, scalars: dict[str, dict[int, dict[str, float]]],
                converged: Mapping[str, Mapping[int, bool]] | None = None) -> dict[str, dict]:
    """Per optimizer: each metric's summary over seeds and, but for the baseline, its paired
    difference to the baseline: :func:`~sharpscope.experiments.tables.summarize_rows` with
    ``every_seed`` over a row per run."""
    rows = [{"optimizer": opt, "seed": s, **scalars[opt][s],
             "converged": None if converged is None else bool(converged[opt][s])}
            for opt in scalars for s in config.seeds]
    metrics = sorted({m for per_seed in scalars.values() for values in per_seed.values() for m in values})
    out: dict[str, dict] = {}
    for entry in summarize_rows(rows, ["optimizer"], metrics, baseline=config.baseline, every_seed=True):
        opt, items = entry["options"]["optimizer"], entry["metrics"]
        out[opt] = {"summary": {m: item["summary"] for m, item in items.items()}}
        if opt != config.baseline:
            out[opt]["difference"] = {m: item["vs_sgd"] for m, item in items.items() if item["vs_sgd"] is not None}
    return out


def convergence(config: CompareConfig, runs: Mapping[str, Mapping[int, Sequence[Mapping[str, Any]]]]
                ) -> dict[str, Any]:
    """Every run's :func:`~sharpscope.experiments.verdicts.run_convergence`, the definition,
    the unconverged runs and the warning (None when every run converged)."""
    per_run = {opt: {seed: run_convergence(runs[opt][seed]) for seed in config.seeds} for opt in config.optimizers}
    names = [f"{opt.upper()} seed {seed}" for opt in config.optimizers for seed in config.seeds
             if not per_run[opt][seed]["converged"]]
    return {"definition": CONVERGENCE_DEFINITION, "unconverged": names,
            "warning": unconverged_warning(names, len(config.optimizers) * len(config.seeds)),
            "runs": {opt: {str(s): v for s, v in by_seed.items()} for opt, by_seed in per_run.items()}}


def not_a_minimum_warnings(config: CompareConfig, statistics: dict[str, dict]) -> list[str]:
    """Warnings for mean training losses or gradient norms that differ by more than
    ``NOT_A_MINIMUM_FACTOR``: curvature compared between points that are not both minima."""
    notes = []
    base = statistics[config.baseline]["summary"]
    for opt, entry in statistics.items():
        if opt == config.baseline:
            continue
        for metric, what in (("train_loss", "training loss"), ("gradient_norm", "gradient norm")):
            a, b = base.get(metric, {}).get("mean"), entry["summary"].get(metric, {}).get("mean")
            if not a or not b:
                continue
            factor = max(a, b) / min(a, b)
            if factor > NOT_A_MINIMUM_FACTOR:
                clean = (" Compare lambda_max_clean (the same examples with their clean labels)."
                         if "lambda_max_clean" in entry["summary"] else "")
                notes.append(f"{opt.upper()}'s mean {what} ({b:.3g}) and {config.baseline.upper()}'s ({a:.3g}) "
                             f"differ {factor:.0f}x: at least one of them is not at a minimum of the loss its "
                             "curvature is measured on, so lambda_max, trace and m-sharpness compare different "
                             "kinds of points." + clean)
    return notes


def _figures(config: CompareConfig, runs: dict, analyses: dict, surfaces: dict, interp: Any,
             statistics: dict, figures: Path) -> list[Path]:
    seeds, first = config.seeds, config.seeds[0]

    def per_seed(get: Callable[[str, int], Any]) -> dict[str, list]:
        return {o.upper(): [get(o, s) for s in seeds] for o in config.optimizers}

    curves = per_seed(lambda o, s: runs[o][s])
    written = plots.plot_training_curves(curves, figures / "training_curves")
    written += plots.plot_density({o.upper(): analyses[o][first]["density"] for o in analyses}, figures / "density",
                                  log=True, title=f"Hessian spectral density (SLQ, seed {first})")
    written += plots.plot_eigenvalues(per_seed(lambda o, s: analyses[o][s]["eigenvalues"]), figures / "eigenvalues")
    written += plots.plot_contour({o.upper(): surfaces[o] for o in surfaces}, figures / "surfaces", filled=True)
    written += plots.plot_surface3d({o.upper(): surfaces[o] for o in surfaces}, figures / "surfaces_3d")
    if interp is not None:
        written += plots.plot_curve({f"{interp.name_a} -> {interp.name_b}": interp}, figures / "interpolation")
    written += plots.plot_m_sharpness_seeds(per_seed(lambda o, s: analyses[o][s]["m_sharpness"]),
                                            figures / "m_sharpness")
    written += plots.plot_tracking(curves, ["gradcos"], figures / "gradcos",
                                   title="cos(first-order, second-order SAM gradient) during training")
    if any("lambda_max" in r for o in runs for s in seeds for r in runs[o][s]):  # runs tracked before lack it
        written += plots.plot_tracking(curves, ["lambda_max"], figures / "edge_of_stability",
                                       title="lambda_max during training and the edge of stability")
    diffs = {o.upper(): e["difference"] for o, e in statistics.items() if "difference" in e}
    if diffs:
        written += plots.plot_paired_differences(diffs, KEY_METRICS, figures / "differences",
                                                 baseline=config.baseline.upper())
    return written


def _seed_entry(outcome: RunOutcome, scalars: dict[str, float], analyses: dict[str, Any]) -> dict[str, Any]:
    """One run in results.json: its final metrics, scalars, analyses, environment and what it tracked."""
    recs = outcome.metrics
    eos = ("epoch", "lr", "lambda_max", "edge_of_stability", "sam_edge_of_stability")
    return {"final": recs[-1], "scalars": scalars, **analyses,
            "trained_in": outcome.environments[-1] if outcome.environments else None,
            "gradcos_over_training": [{"epoch": r["epoch"], "gradcos": r["gradcos"]} for r in recs if "gradcos" in r],
            "lambda_max_over_training": [{k: r[k] for k in eos if k in r} for r in recs if "lambda_max" in r]}


def run_compare(config: CompareConfig, out_dir: str | Path, say: Callable[[str], None] = lambda msg: None,
                callbacks_for: Callable[[str], list] = lambda opt: []) -> dict[str, Any]:
    """Train, analyse, summarize and report (module docstring). Returns the results.json content."""
    start = time.perf_counter()
    out = Path(out_dir)
    for seed in config.seeds:  # before a folder is made or a step is taken: the folders, the model
        for opt in config.optimizers:
            refuse_other_settings(run_dir(out, opt, seed), config.train_config(opt, seed).to_dict())
    check_model(config.train_config(config.optimizers[0], config.seeds[0]))
    out.mkdir(parents=True, exist_ok=True)
    outcomes, notes = _run_all(config, out, say, callbacks_for)
    runs = {opt: {s: o.metrics for s, o in by_seed.items()} for opt, by_seed in outcomes.items()}
    analyses = {opt: {s: {**_layout(o.analyses),
                          "analysed_in": o.analysis_environments[0] if o.analysis_environments else None}
                      for s, o in by_seed.items()} for opt, by_seed in outcomes.items()}
    raw = read_checkpoint(run_dir(out, config.optimizers[0], config.seeds[0]) / "checkpoint.pt")  # the first seed's
    batches, n = analysis_subset(load_dataset(DataSpec.from_dict(raw["data_spec"])), config.settings.samples,
                                 config.seeds[0])  # subset: the surfaces and the interpolation use it
    surfaces, interp = _landscapes(config, out, runs, batches, n, say)
    scalars = {opt: {s: run_scalars(o.metrics[-1], o.analyses, config.label_noise > 0) for s, o in by_seed.items()}
               for opt, by_seed in outcomes.items()}
    converged = convergence(config, runs)
    statistics = _statistics(config, scalars, {opt: {s: converged["runs"][opt][str(s)]["converged"]
                                                     for s in config.seeds} for opt in config.optimizers})
    first = config.seeds[0]
    every = [o for by_seed in outcomes.values() for o in by_seed.values()]
    unlike = provenance.differences([e for o in every for e in o.environments])
    unlike_analyses = provenance.differences([e for o in every for e in o.analysis_environments])
    results: dict[str, Any] = {"schema": RESULTS_SCHEMA, "config": asdict(config), "settings": asdict(config.settings),
                               "baseline": config.baseline, "ci_method": CI_METHOD_TEXT, "convergence": converged,
                               "environment": provenance.environment(), "environment_differences": unlike,
                               "analysis_environment_differences": unlike_analyses, "optimizers": {}}
    for opt in config.optimizers:
        results["optimizers"][opt] = {
            **statistics[opt],
            "seeds": {str(s): _seed_entry(outcomes[opt][s], scalars[opt][s], analyses[opt][s]) for s in config.seeds},
            "surface": {"seed": first, **surfaces[opt].summary(), "topology": surfaces[opt].topology().summary()},
            "gradcos_change": gradcos_change(runs[opt], config.seeds),
        }
    if interp is not None:
        results["interpolation"] = {"seed": first, **interp.summary(), "alphas": interp.xs.tolist(),
                                    "loss": interp.loss.tolist(), "accuracy": interp.accuracy.tolist()}
    results["warnings"] = ([converged["warning"]] if converged["warning"] else []) + \
        not_a_minimum_warnings(config, statistics) + notes
    if unlike:
        results["warnings"].append(provenance.unlike_runs_warning(unlike))
    if unlike_analyses:
        results["warnings"].append("analyses: " + provenance.unlike_runs_warning(unlike_analyses))
    say("figures")
    written = _figures(config, runs, analyses, surfaces, interp, statistics, out / "figures")
    results["figures"] = [str(p.relative_to(out)) for p in written]
    results["wall_time"] = time.perf_counter() - start
    write_json(out / "results.json", results)
    from .report import write_report
    write_report(results, out / "report.md")
    return results
