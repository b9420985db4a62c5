"""The run engine of ``sweep`` and ``compare``: train (or resume, or reuse) each run (a
:class:`~sharpscope.experiments.grid.RunSpec` and a folder), then compute the analyses its
``analysis.json`` (:mod:`sharpscope.experiments.cache`) does not hold at the key asked. A run
whose loss diverged leaves ``diverged.json`` (not retrained). ``jobs > 1`` trains runs in
spawned processes (none inherits another's threads or locks); Ctrl-C saves the running runs.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import read_checkpoint
from ..errors import NonFiniteLossError, SharpscopeError
from ..io import atomic_write_bytes
from ..models import is_factory
from ..provenance import environment, recorded
from ..train import Callback, TrainState, check_model, train
from .analyses import VARIANTS, AnalysisSettings, analyse_selected, analyse_variant
from .cache import analysis_key, read_analyses, stored_under_old_name, write_analyses
from .files import read_json
from .grid import RunSpec
from .runs import refuse_other_settings
from .verdicts import run_convergence

__all__ = ["RunOutcome", "RunTask", "analysis_key", "analysis_subset", "check_models", "run_task", "run_tasks",
           "run_pool"]


@dataclass
class RunOutcome:
    """What became of one run."""

    index: int
    name: str
    status: str                      # trained, resumed, reused, diverged, interrupted
    final: dict[str, Any]            # the last epoch's metrics record
    epochs: int                      # epochs done
    train_seconds: float             # sum of the epochs' step times (survives resumes)
    analyses: dict[str, dict[str, Any]] = field(default_factory=dict)
    analysis_status: dict[str, str] = field(default_factory=dict)  # name -> computed / reused
    notes: list[str] = field(default_factory=list)   # warnings, analysis errors, the divergence
    environments: list[dict[str, Any]] = field(default_factory=list)  # what trained it (provenance.recorded)
    analysis_environments: list[dict[str, Any]] = field(default_factory=list)  # what computed its analyses
    convergence: dict[str, Any] | None = None  # verdicts.run_convergence of its epochs (None: diverged)
    metrics: list[dict[str, Any]] = field(default_factory=list)  # every epoch's record


@dataclass
class RunTask:
    """One run for :func:`run_tasks`: train ``spec`` into ``run_dir``, then the ``analyses``
    (measures or :data:`~sharpscope.experiments.analyses.VARIANTS`) at ``settings`` (an
    AnalysisSettings as a dict). ``total``: the runs of the list ("[i/total] label");
    ``epoch_lines``: a progress line per epoch."""

    spec: RunSpec
    run_dir: str
    analyses: list[str]
    settings: dict[str, Any]
    analysis_rho: float
    total: int
    callbacks: list = field(default_factory=list)
    epoch_lines: bool = True


class _Reporter(Callback):
    """Progress lines per epoch, and a stop flag the parent can raise (workers)."""

    def __init__(self, emit: Callable[[str], None], prefix: str, stop: Any = None, epoch_lines: bool = True) -> None:
        self.emit, self.prefix, self.stop, self.epoch_lines = emit, prefix, stop, epoch_lines

    def on_train_begin(self, state: TrainState) -> None:
        total = state.config.epochs
        where = (f"resuming at epoch {state.epoch + 1}/{total}" if state.epoch or state.batch_in_epoch
                 else f"training {total} epoch{'s' if total != 1 else ''}")
        self.emit(f"{self.prefix}: {where}")

    def on_step_end(self, state: TrainState) -> None:
        if self.stop is not None and self.stop.is_set():
            state.stop_requested = True

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        if self.epoch_lines:
            self.emit(f"{self.prefix}: training epoch {metrics['epoch']}/{state.config.epochs}  "
                      f"train loss {metrics['train_loss']:.4f}  test acc {metrics['test_acc']:.4f}  "
                      f"({metrics['epoch_time']:.1f}s)")


def _finished(run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint's record if the run in ``run_dir`` finished, else None."""
    ckpt = run_dir / "checkpoint.pt"
    raw = read_checkpoint(ckpt) if ckpt.exists() else {}
    return raw if (raw.get("progress") or {}).get("finished") else None


def _outcome_from(spec: RunSpec, raw: dict[str, Any], status: str) -> RunOutcome:
    metrics = list(raw.get("metrics") or [])
    return RunOutcome(spec.index, spec.name, status, dict(metrics[-1]) if metrics else {}, len(metrics),
                      float(sum(r.get("epoch_time", 0.0) for r in metrics)),
                      environments=recorded(raw.get("metadata") or {}), convergence=run_convergence(metrics),
                      metrics=metrics)


def _cached_analyses(task: RunTask, step: int) -> tuple[dict[str, Any], list[str]]:
    """The stored analyses of the run, and the names still to compute."""
    s = AnalysisSettings(**task.settings)
    seed = task.spec.config["seed"]
    stored = read_analyses(Path(task.run_dir), seed)
    todo = []
    for name in task.analyses:
        key = analysis_key(name, s, task.analysis_rho, seed, step)
        stored_under_old_name(stored, name, key)
        if not (isinstance(stored.get(name), dict) and stored[name].get("key") == key):
            todo.append(name)
    return stored, todo


def _complete(task: RunTask) -> RunOutcome | None:
    """The outcome of a run that needs no work (finished, analyses stored, or diverged), else None."""
    run_dir = Path(task.run_dir)
    marker = read_json(run_dir / "diverged.json")  # the last good checkpoint stays beside it
    if isinstance(marker, dict) and marker.get("config") == task.spec.config:
        return RunOutcome(task.spec.index, task.spec.name, "diverged", {}, 0, 0.0, notes=[marker.get("error", "")])
    raw = _finished(run_dir)
    if raw is None:
        return None
    outcome = _outcome_from(task.spec, raw, "reused")
    stored, todo = _cached_analyses(task, int(outcome.final.get("step", 0)))
    if todo:
        return None
    outcome.analysis_status = dict.fromkeys(task.analyses, "reused")
    _take_analyses(outcome, stored, task.analyses)
    return outcome


def _take_analyses(outcome: RunOutcome, stored: Mapping[str, Any], names: Sequence[str]) -> None:
    """Results, failures and warnings of the stored analyses into the outcome."""
    for name in names:
        entry = stored.get(name) or {}
        if entry.get("result") is not None:
            outcome.analyses[name] = entry["result"]
        if entry.get("error"):
            outcome.notes.append(f"{name} failed: {entry['error']}")
        outcome.notes += [f"{name}: {w}" for w in entry.get("warnings", [])]
        if entry.get("environment") and entry["environment"] not in outcome.analysis_environments:
            outcome.analysis_environments.append(entry["environment"])


def _named_factory(spec: RunSpec) -> str | bool:
    """The model factory the run's own configuration names, else False: a run folder never
    chooses what code runs."""
    model = spec.config.get("model")
    return model if is_factory(model) else False


def check_models(specs: Sequence[RunSpec]) -> None:
    """:func:`sharpscope.train.check_model` once per distinct model and data of the runs."""
    seen = set()
    for spec in specs:
        c = spec.config
        key = json.dumps([c.get("model"), c.get("model_kwargs"), c.get("data"), c.get("data_root")],
                         sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            check_model(spec.train_config())


def _train(task: RunTask, emit: Callable[[str], None], prefix: str, stop: Any) -> RunOutcome:
    """Train, resume or reuse the run: its outcome (``diverged.json`` written when it diverged)."""
    spec, run_dir = task.spec, Path(task.run_dir)
    raw = _finished(run_dir)
    if raw is not None:
        emit(f"{prefix}: training reused (finished before)")
        return _outcome_from(spec, raw, "reused")
    resuming = (run_dir / "checkpoint.pt").exists()
    callbacks = [_Reporter(emit, prefix, stop, task.epoch_lines), *task.callbacks]
    try:
        result = train(spec.train_config(), run_dir, resume=True, callbacks=callbacks,
                       allow_factory=_named_factory(spec))
    except NonFiniteLossError as err:
        marker = json.dumps({"config": spec.config, "error": str(err)}, indent=2).encode()  # p = inf kept
        atomic_write_bytes(run_dir / "diverged.json", lambda fh: fh.write(marker))
        emit(f"{prefix}: diverged: {err}")
        return RunOutcome(spec.index, spec.name, "diverged", {}, 0, 0.0, notes=[str(err)])
    if result.interrupted:
        emit(f"{prefix}: stopped; saved at epoch {len(result.metrics)} (rerun to continue)")
        return RunOutcome(spec.index, spec.name, "interrupted", {}, len(result.metrics), 0.0)
    return _outcome_from(spec, read_checkpoint(run_dir / "checkpoint.pt"), "resumed" if resuming else "trained")


def analysis_subset(data: Any, samples: int, seed: int, labels: str = "trained") -> tuple[list, int]:
    """The first ``samples`` training examples (all when fewer) in the order ``seed`` draws, in
    batches of 4096, with the labels trained on (``"clean"``: before label noise); and their number."""
    import dataclasses

    n = min(samples, int(data.x_train.shape[0]))
    if labels == "clean":
        data = dataclasses.replace(data, y_train=data.y_train_clean)
    return data.batches("train", n, 4096, seed), n


def _analyse(task: RunTask, outcome: RunOutcome, stored: dict[str, Any], todo: list[str],
             emit: Callable[[str], None], prefix: str, stop: Any) -> bool:
    """Compute the analyses ``todo``, each stored in ``analysis.json`` as soon as it is done
    (with its error or warnings); False when stopped."""
    from ..checkpoint import checkpoint_data, load_checkpoint

    s = AnalysisSettings(**task.settings)
    seed, step = task.spec.config["seed"], int(outcome.final.get("step", 0))
    ckpt = load_checkpoint(Path(task.run_dir) / "checkpoint.pt", allow_factory=_named_factory(task.spec))
    data = checkpoint_data(ckpt)
    batches = analysis_subset(data, s.samples, seed)[0]
    say = lambda what: emit(f"{prefix}: {what}")  # noqa: E731
    for name in todo:
        if stop is not None and stop.is_set():
            return False
        entry: dict[str, Any] = {"key": analysis_key(name, s, task.analysis_rho, seed, step)}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                if name in VARIANTS:
                    clean = analysis_subset(data, s.samples, seed, VARIANTS[name].labels)[0]
                    entry["result"] = analyse_variant(ckpt.model, clean, name, s, task.analysis_rho, seed, say)
                else:
                    entry["result"] = analyse_selected(ckpt.model, batches, [name], s, task.analysis_rho, seed,
                                                       say).get(name)
            except SharpscopeError as err:  # e.g. a zero gradient: stored and noted, the other runs go on
                entry["error"] = " ".join(str(err).split())
                emit(f"{prefix}: {name} failed: {entry['error']}")
        entry["warnings"] = [" ".join(str(w.message).split()) for w in caught]
        entry["environment"] = environment()  # what computed it (a rerun reuses the entry)
        for w in entry["warnings"]:
            emit(f"{prefix}: warning: {name}: {w}")
        stored[name] = entry
        outcome.analysis_status[name] = "computed"
        write_analyses(Path(task.run_dir), stored)
    return True


def run_task(task: RunTask, emit: Callable[[str], None], stop: Any = None) -> RunOutcome:
    """Train (or resume, or reuse) one run, then compute the analyses not yet stored; ``stop``
    (an Event) asks it to save and return an "interrupted" outcome."""
    spec, run_dir = task.spec, Path(task.run_dir)
    prefix = f"[{spec.index + 1}/{task.total}] {spec.label}"
    if stop is not None and stop.is_set():  # queued before the stop: do not start
        return RunOutcome(spec.index, spec.name, "interrupted", {}, 0, 0.0)
    refuse_other_settings(run_dir, spec.config)
    done = _complete(task)
    if done is not None:
        emit(f"{prefix}: reused ({done.status if done.status == 'diverged' else 'finished before'})")
        return done
    outcome = _train(task, emit, prefix, stop)
    if outcome.status in ("diverged", "interrupted"):
        return outcome
    stored, todo = _cached_analyses(task, int(outcome.final.get("step", 0)))
    if todo and not _analyse(task, outcome, stored, todo, emit, prefix, stop):
        return RunOutcome(spec.index, spec.name, "interrupted", {}, outcome.epochs, 0.0)
    for name in task.analyses:
        outcome.analysis_status.setdefault(name, "reused")
    _take_analyses(outcome, stored, task.analyses)
    emit(f"{prefix}: done, test acc {outcome.final.get('test_acc', math.nan):.4f}")
    return outcome


def run_tasks(tasks: Sequence[RunTask], *, jobs: int = 1, say: Callable[[str], None] = lambda msg: None,
              on_done: Callable[[RunSpec, RunOutcome], None] | None = None, threads: int | None = None,
              deterministic: bool = False) -> list[RunOutcome]:
    """THE loop over runs (``sweep`` and ``compare``): every task's outcome, in order. Runs that
    need no work are read here; the others run here (``jobs=1``) or on ``jobs`` spawned workers
    (:func:`run_pool`); ``on_done(spec, outcome)`` is called here as each completes. A run
    stopped by Ctrl-C is saved and KeyboardInterrupt raised; the same call again continues it."""
    outcomes: dict[int, RunOutcome] = {}

    def record(task: RunTask, outcome: RunOutcome) -> None:
        if outcome.status == "interrupted":
            raise KeyboardInterrupt(f"{task.run_dir} saved mid-run; rerun the same command to continue")
        outcomes[task.spec.index] = outcome
        if on_done is not None:
            on_done(task.spec, outcome)

    pending = []
    for task in tasks:  # what needs no work is read here, in order
        done = _complete(task)
        if done is None:
            pending.append(task)
            continue
        say(f"[{task.spec.index + 1}/{task.total}] {task.spec.label}: reused"
            f"{' (diverged before)' if done.status == 'diverged' else ''}")
        record(task, done)
    if pending:
        say(f"{len(pending)} of {len(tasks)} runs to train or analyse"
            + (f", {min(jobs, len(pending))} at a time" if jobs > 1 else ""))
    if jobs == 1 or len(pending) <= 1:
        for task in pending:
            record(task, run_task(task, say))
    else:
        run_pool(pending, jobs, say, record, threads, deterministic)
    return [outcomes[task.spec.index] for task in tasks]


# Worker processes (jobs > 1): set up once per process by the pool's initializer.
_WORKER: dict[str, Any] = {}


def _init_worker(threads: int, queue: Any, stop: Any, deterministic: bool = False) -> None:
    from ..cpu import set_threads

    if deterministic:
        from ..determinism import enable_deterministic
        enable_deterministic(threads)
    set_threads(threads)
    # Ctrl-C reaches every process of the group: the parent decides, the workers save and return.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER.update(queue=queue, stop=stop)


def _worker_run(task: RunTask) -> RunOutcome:
    queue = _WORKER["queue"]
    return run_task(task, lambda msg: queue.put(msg), _WORKER["stop"])


def run_pool(pending: list[RunTask], jobs: int, say: Callable[[str], None],
              record: Callable[[RunTask, RunOutcome], None], threads: int | None = None,
              deterministic: bool = False) -> None:
    """Run ``pending`` on ``jobs`` spawned workers; progress lines come back through a queue."""
    import multiprocessing
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = multiprocessing.get_context("spawn")
    messages = ctx.Queue()
    stop = ctx.Event()
    from ..cpu import worker_threads

    threads = worker_threads(jobs, threads, deterministic)
    say(f"{min(jobs, len(pending))} worker processes, {threads} thread{'s' if threads > 1 else ''} each")

    def drain() -> None:
        while True:
            try:
                say(messages.get_nowait())
            except queue_mod.Empty:
                return

    pool = ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=ctx, initializer=_init_worker,
                               initargs=(threads, messages, stop, deterministic))
    # Workers start (on submit) with SIGINT ignored: a Ctrl-C while they import torch would kill them.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        futures = {pool.submit(_worker_run, task): task for task in pending}
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    waiting = set(futures)
    try:
        while waiting:
            done, waiting = wait(waiting, timeout=0.2, return_when=FIRST_COMPLETED)
            drain()
            for fut in sorted(done, key=lambda f: futures[f].spec.index):
                record(futures[fut], fut.result())
    except KeyboardInterrupt as err:
        _stop_pool(pool, stop, waiting, drain)
        raise KeyboardInterrupt(str(err) or "the running runs are saved; rerun the same command to continue") \
            from None
    except BaseException:
        _stop_pool(pool, stop, waiting, drain)
        raise
    pool.shutdown(wait=True)
    drain()


def _stop_pool(pool: Any, stop: Any, waiting: set, drain: Callable[[], None]) -> None:
    """Ask the running runs to save, drop the queued ones, wait; a second Ctrl-C ends them at once."""
    stop.set()
    for fut in waiting:
        fut.cancel()
    try:
        pool.shutdown(wait=True, cancel_futures=True)
    except KeyboardInterrupt:
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()
        raise KeyboardInterrupt("stopped at once; rerun the same command to continue from the last "
                                "checkpoints") from None
    finally:
        drain()
