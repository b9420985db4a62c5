"""SGD vs SAM (vs ASAM) in one call: train from the same seed and data, run every analysis,
draw the figures, write ``report.md`` and ``results.json``.

Layout of ``out_dir``::

    <optimizer>/              one training run each (checkpoint.pt, metrics.jsonl, ...)
    <optimizer>/analysis.json the analyses of its final checkpoint (reused when rerun)
    figures/*.png             training curves, spectra, surfaces, interpolation, m-sharpness,
                              gradient cosine over training
    report.md                 tables per optimizer with the figures embedded
    results.json              every number

Everything is resumable: finished training runs and analyses found in ``out_dir`` are
reused when they were made with the same settings, an interrupted run continues where it
stopped, and a folder holding runs with other settings is refused rather than overwritten.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F

from .. import landscape, plots
from ..checks import finite_float
from ..checkpoint import atomic_write_bytes, load_checkpoint, read_checkpoint
from ..data import DataSpec, load_dataset
from ..errors import ConfigError
from ..train import OPTIMIZERS, TrainConfig, train
from .analyses import PROFILES, AnalysisSettings, analyse_checkpoint

__all__ = ["CompareConfig", "run_compare", "PROFILES"]


@dataclass
class CompareConfig:
    """What to compare (training options shared by every optimizer) and how much to analyse."""

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
    seed: int = 0
    quick: bool = False

    def __post_init__(self) -> None:
        if not self.optimizers or len(set(self.optimizers)) != len(self.optimizers):
            raise ConfigError(f"--optimizers must name distinct optimizers, got {self.optimizers}")
        unknown = [o for o in self.optimizers if o not in OPTIMIZERS]
        if unknown:
            raise ConfigError(f"unknown optimizer {unknown[0]!r}; choose from {', '.join(OPTIMIZERS)}")
        if self.quick:
            self.epochs = min(self.epochs, 4)
            self.n_train = self.n_train or 400
        for name in ("rho", "asam_rho"):  # both, even when one optimizer is not compared
            finite_float(name, getattr(self, name), at_least=0)
        for optimizer in self.optimizers:  # every training option, before the first run starts
            self.train_config(optimizer)

    @property
    def settings(self) -> AnalysisSettings:
        return PROFILES["quick" if self.quick else "default"]

    def train_config(self, optimizer: str) -> TrainConfig:
        rho = {"sgd": None, "sam": self.rho, "asam": self.asam_rho}[optimizer]
        return TrainConfig(
            optimizer=optimizer, model=self.model, model_kwargs=dict(self.model_kwargs), data=self.data,
            data_root=self.data_root, label_noise=self.label_noise, n_train=self.n_train, epochs=self.epochs,
            rho=rho, m=self.m if optimizer != "sgd" else None, seed=self.seed, keep_snapshots=False,
            track=["gradcos"], track_every=self.settings.track_every, track_samples=self.settings.samples,
        )


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(_plain(obj), indent=2).encode()
    atomic_write_bytes(path, lambda fh: fh.write(text))


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    return value


def _train_one(cfg: TrainConfig, out: Path, callbacks: list) -> list[dict]:
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        # through TrainConfig: options added since the run was saved take their defaults
        stored = TrainConfig.from_dict(read_checkpoint(ckpt).get("config") or {}).to_dict()
        wanted = cfg.to_dict()
        diff = sorted(k for k in wanted if stored.get(k) != wanted[k])
        if diff:
            raise ConfigError(f"{out} holds a run with other settings ({', '.join(diff)}); "
                              "use another --out or remove it")
    result = train(cfg, out, resume=True, callbacks=callbacks)
    if result.interrupted:  # Ctrl-C: the run is saved; stop here rather than analyse half a run
        raise KeyboardInterrupt(f"{out} saved mid-run; rerun the same command to continue")
    return result.metrics


def run_compare(config: CompareConfig, out_dir: str | Path, say: Callable[[str], None] = lambda msg: None,
                callbacks_for: Callable[[str], list] = lambda opt: []) -> dict[str, Any]:
    """Train, analyse and report (module docstring). Returns the results.json content."""
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = config.settings
    figures = out / "figures"
    results: dict[str, Any] = {"config": asdict(config), "settings": asdict(s), "optimizers": {}}
    runs: dict[str, list[dict]] = {}
    for opt in config.optimizers:
        say(f"training {opt.upper()}")
        runs[opt] = _train_one(config.train_config(opt), out / opt, callbacks_for(opt))

    spec = DataSpec.from_dict(read_checkpoint(out / config.optimizers[0] / "checkpoint.pt")["data_spec"])
    data = load_dataset(spec)
    n = min(s.samples, data.x_train.shape[0])
    batches = data.batches("train", n, 4096, config.seed)
    key = json.dumps({"settings": asdict(s), "n": n, "rho": config.rho}, sort_keys=True)
    analyses: dict[str, dict] = {}
    for opt in config.optimizers:
        cache = out / opt / "analysis.json"
        if cache.exists():
            stored = json.loads(cache.read_text())
            if stored.get("key") == key and stored.get("checkpoint_step") == runs[opt][-1]["step"]:
                analyses[opt] = stored["analysis"]
                say(f"reusing the analyses of {opt.upper()}")
                continue
        rho = config.rho
        analyses[opt] = analyse_checkpoint(out / opt / "checkpoint.pt", batches, s, rho, config.seed,
                                 lambda what, o=opt: say(f"{o.upper()}: {what}"))
        _write_json(cache, {"key": key, "checkpoint_step": runs[opt][-1]["step"], "analysis": analyses[opt]})

    say("loss surfaces")
    models = {opt: load_checkpoint(out / opt / "checkpoint.pt").model for opt in config.optimizers}
    grid = np.linspace(-1.0, 1.0, s.surface_points)
    surfaces = {}
    options = {"norm": "filter", "ignore": "biasbn", "seed": config.seed, "n_examples": n,
               "step": None}
    for opt, model in models.items():
        saved = out / opt / "surface_2d.npz"
        options["step"] = runs[opt][-1]["step"]
        if saved.exists():
            previous = landscape.SurfaceResult.load(saved)
            if previous.options == options and np.array_equal(previous.xs, grid) and np.array_equal(previous.ys, grid):
                surfaces[opt] = previous
                continue
        dirs = [landscape.random_direction(model, seed=config.seed), landscape.random_direction(model, seed=config.seed + 1)]
        surfaces[opt] = landscape.surface(model, F.cross_entropy, batches, dirs, grid, grid, options=dict(options),
                                          resume_path=out / opt / "surface.partial.npz")
        surfaces[opt].save(saved, dirs)
        (out / opt / "surface.partial.npz").unlink(missing_ok=True)
    interp = None
    if len(config.optimizers) >= 2:
        a, b = config.optimizers[0], config.optimizers[1]
        say(f"interpolating {a.upper()} -> {b.upper()}")
        interp = landscape.interpolate(models[a], models[b], F.cross_entropy, batches,
                                       np.linspace(-0.5, 1.5, s.interpolation_points), name_a=a.upper(), name_b=b.upper())
        interp.save(out / "interpolation.npz")

    for opt in config.optimizers:
        final = runs[opt][-1]
        results["optimizers"][opt] = {
            "final": final, "metrics": runs[opt], **analyses[opt],
            "surface": surfaces[opt].summary(), "gradcos_over_training": [
                {"epoch": r["epoch"], "gradcos": r["gradcos"]} for r in runs[opt] if "gradcos" in r],
        }
    if interp is not None:
        results["interpolation"] = {**interp.summary(), "alphas": interp.xs.tolist(), "loss": interp.loss.tolist(),
                                    "accuracy": interp.accuracy.tolist()}

    say("figures")
    labels = {opt: opt.upper() for opt in config.optimizers}
    written: list[Path] = []
    written += plots.plot_training_curves({labels[o]: runs[o] for o in runs}, figures / "training_curves")
    written += plots.plot_density({labels[o]: analyses[o]["density"] for o in analyses}, figures / "density", log=True)
    written += plots.plot_eigenvalues({labels[o]: analyses[o]["eigenvalues"] for o in analyses}, figures / "eigenvalues")
    written += plots.plot_contour({labels[o]: surfaces[o] for o in surfaces}, figures / "surfaces", filled=True)
    written += plots.plot_surface3d({labels[o]: surfaces[o] for o in surfaces}, figures / "surfaces_3d")
    if interp is not None:
        written += plots.plot_curve({f"{interp.name_a} -> {interp.name_b}": interp}, figures / "interpolation")
    written += plots.plot_m_sharpness({labels[o]: analyses[o]["m_sharpness"] for o in analyses}, figures / "m_sharpness")
    written += plots.plot_tracking({labels[o]: runs[o] for o in runs}, ["gradcos"], figures / "gradcos",
                                   title="cos(first-order, second-order SAM gradient) during training")
    results["figures"] = [str(p.relative_to(out)) for p in written]
    results["wall_time"] = time.perf_counter() - start
    _write_json(out / "results.json", results)
    from .report import write_report
    write_report(results, out / "report.md")
    return results
