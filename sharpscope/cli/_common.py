"""Glue shared by the commands: checkpoint + data -> model and batches, JSON output, progress
bars, tables and the option checks. Only cheap modules are imported here (this runs for every
verb, even ``--help``); anything heavier loads when a command runs."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ..checks import float_problem
from ..errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from ..checkpoint import Checkpoint

SEED_MAX = 2**63 - 1  # torch generators take seeds in [0, 2**63)
# Set while `sharpscope train --nproc N` checks its input in the launching process (check, don't train).
CHECK_LAUNCH_ENV = "SHARPSCOPE_CHECK_LAUNCH"


def is_main() -> bool:
    """Rank 0 of a torchrun process group, or a single process; True without importing torch
    while torch.distributed is not loaded (no process group can exist), so ``--help`` starts fast."""
    if "torch.distributed" not in sys.modules:
        return True
    from .. import distributed

    return distributed.is_main()


@dataclass
class AnalysisContext:
    """The provenance :func:`write_json` adds to an analysis's JSON: the device and dtype it ran
    in, and the environment each analysed checkpoint recorded when trained."""

    device: Any = None
    dtype: Any = None
    trained_in: list[dict | None] = field(default_factory=list)

    def add(self, ckpt: Checkpoint) -> None:
        """Record another analysed checkpoint (interpolate's B, ``--overlap-with``)."""
        self.trained_in.append(ckpt.metadata.get("environment"))

    def provenance(self) -> dict[str, Any]:
        """``environment`` (this process) and ``trained_in`` (one recorded environment, or the list)."""
        from ..provenance import environment

        trained = self.trained_in
        return {"environment": environment(self.device, self.dtype),
                "trained_in": trained[0] if len(trained) == 1 else trained}


def load_for_analysis(path: Path, split: str, samples: int | None, batch_size: int, seed: int,
                      trust_factory: bool, device: str = "cpu",
                      data_override: tuple[str | None, str | None] = (None, None)
                      ) -> tuple[Checkpoint, list, AnalysisContext]:
    """The checkpoint's model on ``device`` (joining a torchrun process group first, if any),
    fixed batches of its data set or of ``data_override`` = (``--data``, ``--data-root``),
    checked against the model and the recorded fingerprint
    (:func:`sharpscope.checkpoint.checkpoint_data`), and the :class:`AnalysisContext`."""
    from .. import distributed as dist_utils
    from ..checkpoint import checkpoint_data, load_checkpoint
    from ..data import analysis_data_spec

    if split not in ("train", "test"):
        raise ConfigError(f"--split must be train or test, got {split!r}")
    dist_utils.init_from_env(device)
    target = dist_utils.resolve_device(device)
    ckpt = load_checkpoint(path, allow_factory=trust_factory, map_location=target)
    first = next(iter(ckpt.model.parameters()), None)
    context = AnalysisContext(device=target, dtype=first.dtype if first is not None else None)
    context.add(ckpt)
    data = checkpoint_data(ckpt, analysis_data_spec(ckpt.data_spec, *data_override, where=str(path)))
    return ckpt, data.batches(split, samples, batch_size, seed), context


def data_loss(batches: list) -> Callable[[Any, Any], Any]:
    """The loss for the batches' labels (:func:`sharpscope.data.loss_for_labels`): cross-entropy,
    token-mean for token data."""
    from ..data import loss_for_labels

    return loss_for_labels(batches[0][1])


def write_json(obj: dict, where: str | None, context: AnalysisContext | None = None) -> None:
    """Write ``obj`` (on rank 0) to the path ``where`` ('-': stdout; None: nothing), with
    ``environment`` and, given ``context``, ``trained_in`` (:meth:`AnalysisContext.provenance`)."""
    if where is None or not is_main():
        return
    from ..experiments.files import json_safe  # JSON has no NaN/Inf: written as null
    from ..provenance import environment

    if "environment" not in obj:
        obj = {**obj, **(context.provenance() if context is not None else {"environment": environment(None, None)})}
    text = json.dumps(json_safe(obj), indent=2) + "\n"
    if where == "-":
        sys.stdout.write(text)
    else:
        Path(where).parent.mkdir(parents=True, exist_ok=True)
        Path(where).write_text(text)


def progress_bar(console: Console, enabled: bool, unit: str) -> Progress:
    """A bar counting ``unit`` (HVPs, points, ...) with the time elapsed and left
    (:class:`~sharpscope.cli.progress.RemainingColumn`), on rank 0 only."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .progress import RemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn(unit), TimeElapsedColumn(), RemainingColumn(), console=console, transient=True,
                    disable=not enabled or not is_main())


def console(stderr: bool = False) -> Console:
    """A console that prints on rank 0 only."""
    from rich.console import Console

    return Console(stderr=stderr, quiet=not is_main())


def folded(table: Table) -> Table:
    """``table`` with every column folding what does not fit onto more lines (rich's default cuts it)."""
    for column in table.columns:
        column.overflow = "fold"
    return table


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]], left: int = 0) -> Table:
    """A :func:`folded` table, its first ``left`` columns left-aligned, the others right-aligned."""
    from rich.table import Table

    out = Table(title=title)
    for i, column in enumerate(columns):
        out.add_column(column, justify="left" if i < left else "right")
    for row in rows:
        out.add_row(*row)
    return folded(out)


def refuse(*checks: tuple[bool, str]) -> None:
    """A ConfigError with the message of the first (failed, message) check that failed."""
    for failed, message in checks:
        if failed:
            raise ConfigError(message)


def finite(*, above: float | None = None, at_least: float | None = None, below: float | None = None
           ) -> Callable[[Any], Any]:
    """A typer callback refusing NaN, infinities and values out of range (None passes)."""
    def check(value: Any) -> Any:
        expected = None if value is None else float_problem(value, above=above, at_least=at_least, below=below)
        if expected is not None:
            raise typer.BadParameter(f"must be {expected}, got {value!r}")
        return value
    return check


def numbers(text: str, kind: type, what: str, *, at_least: float | None = None, above: float | None = None
            ) -> list:
    """Comma-separated numbers (``"1,4,16"``), each finite and in range, or a ConfigError."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated {kind.__name__}s, got {text!r}") from None
    if not values:
        raise ConfigError(f"{what} is empty")
    for v in values:
        expected = float_problem(v, above=above, at_least=at_least)
        if expected is not None:
            raise ConfigError(f"{what} must be comma-separated {'integers' if kind is int else 'numbers'}, each "
                              f"{expected.removeprefix('a finite number ')}, got {text!r}")
    return values


def parse_options(pairs: list[str]) -> dict:
    """``["depth=32", "bn=false"]`` -> ``{"depth": 32, "bn": False}`` (values read as JSON, else strings)."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--model-opt expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value.replace("'", '"')) if value.lower() not in ("true", "false") \
                else value.lower() == "true"
        except json.JSONDecodeError:
            out[key] = value
    return out


def parse_p(text: str) -> float:
    """``--p``: a number, or inf / infinity (the range is checked where p is used)."""
    if text.lower() in ("inf", "infinity"):
        return math.inf
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--p must be a number > 1 or 'inf', got {text!r}") from None


def seed_option(help_text: str) -> Any:
    return typer.Option(0, min=0, max=SEED_MAX, help=help_text)


# Options train, compare and sweep share with the analysis verbs (whose own are cli._inputs.Inputs').
TRUST_FACTORY = typer.Option(False, "--trust-factory", help="Import and run the custom model factory a checkpoint "
                             "or run folder names, with its stored keyword arguments (only for files you trust).")
# compare and sweep build only runs they make from their own --model: that factory is trusted.
TRUST_NAMED_FACTORY = typer.Option(False, "--trust-factory", help="Implied: the factory named by --model is "
                                   "trusted for the runs this command makes (kept so the flag works on every verb).")
DETERMINISTIC = typer.Option(False, "--deterministic", help="Deterministic algorithms and a fixed thread count "
                             "(sharpscope --threads N, else 1): the same command on the same machine and "
                             "software gives the same bits (docs/reproducibility.md).")


def apply_determinism(on: bool) -> None:
    """``--deterministic``: :func:`sharpscope.determinism.enable_deterministic` for this process."""
    if on:
        from ..determinism import enable_deterministic
        enable_deterministic()


@contextlib.contextmanager
def interrupt_says(default: str) -> Iterator[None]:
    """Ctrl-C inside the block: one line saying what was kept (the interrupt's message, or
    ``default``) and exit code 130 (typer would exit 130 silently)."""
    try:
        yield
    except KeyboardInterrupt as err:
        why = " ".join(str(err).split()) or default
        print(f"sharpscope: interrupted: {why}", file=sys.stderr)
        raise typer.Exit(130) from None


def require_html(wanted: bool) -> None:
    """``--html``: refused now, before any training or measuring, without the html extra."""
    if wanted:
        from ..plots.html import require_plotly

        require_plotly()


def say_page(page: Path) -> None:
    """Say where an interactive HTML report was written, and its size."""
    print(f"interactive report: {page} ({page.stat().st_size / 2**20:.1f} MiB)")


def print_correlations(table: Any) -> None:
    """Kendall's tau of each measure with the error gap, the m-sharpness comparisons and the
    granulated coefficients (one line each)."""
    for e in (e for e in table.entries if e["gap"] == "gap_error"):
        k = e["kendall"]
        print(f"{e['measure']} vs error gap: " + (
            f"tau {k['estimate']:+.3f} [{k['ci_low']:+.3f}, {k['ci_high']:+.3f}] (n={e['n']}, p={k['p_value']:.2g})"
            if math.isfinite(k["estimate"]) else f"tau undefined (n={e['n']})"))
    for c in table.m_comparisons:
        if c["gap"] == "gap_error":
            d = c["kendall_difference"]
            print(f"tau(m={c['m']}) - tau(m={c['against_m']}) vs error gap: {d['estimate']:+.3f} "
                  f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] ({d['verdict']})")
    for g in table.granulated:
        if g["gap"] == "gap_error" and g["Psi"] is not None:
            parts = ", ".join(f"{t} {v:+.2f} ({g['groups'][t]} groups)" for t, v in g["psi"].items() if v is not None)
            print(f"{g['measure']} vs error gap: granulated Psi {g['Psi']:+.3f} ({parts})")
    for why in table.skipped:
        print(f"not correlated: {why}")


# --params: which parameters an analysis works over, declared once for every analysis verb
PARAMS = typer.Option("all", "--params", help="Parameters analysed: all (the trainable ones: a LoRA model's "
                      "frozen base weights stay put), no-biasbn, or comma-separated glob patterns on parameter "
                      "names ('transformer.h.*.attn.*'; a leading ! excludes).")


def parse_params(text: str) -> Any:
    """``--params`` as :func:`sharpscope.objective.select_parameters` takes it: ``"all"``,
    ``"no-biasbn"`` or the list of glob patterns."""
    if text in ("all", "no-biasbn"):
        return text
    patterns = [p.strip() for p in text.split(",") if p.strip()]
    if not patterns:
        raise ConfigError(f"--params needs all, no-biasbn or glob patterns, got {text!r}")
    return patterns


def params_record(model: Any, text: str) -> dict[str, Any]:
    """What ``--params`` chose, for the JSON and :func:`print_notes`: ``params``, ``n_params``
    (entries analysed) and ``n_frozen_params`` (``requires_grad=False`` entries left out); empty
    under ``all`` on a model without frozen parameters."""
    from ..objective import frozen_parameters, moved_parameters

    frozen = frozen_parameters(model)
    if text == "all" and not frozen:
        return {}
    sizes = dict((n, p.numel()) for n, p in model.named_parameters())
    chosen = moved_parameters(model, parse_params(text))
    return {"params": text, "n_params": sum(sizes[n] for n in chosen),
            "n_frozen_params": sum(sizes[n] for n in frozen if n not in chosen)}


def objective_record(obj: Any, text: str) -> dict[str, Any]:
    """:func:`params_record` of an :class:`~sharpscope.objective.Objective`, plus
    ``attention_kernel: "math"`` when its derivatives ran SDPA on the math kernel."""
    record: dict[str, Any] = {}
    if text != "all" or obj.frozen:
        record = {"params": text, "n_params": obj.n, "n_frozen_params": obj.n_frozen}
    kernel = obj.attention_kernel()
    if kernel is not None:
        record["attention_kernel"] = kernel
    return record


def objective_lines(record: dict[str, Any]) -> list[str]:
    """The summary lines of :func:`params_record` or :func:`objective_record`."""
    lines = []
    if "params" in record:
        frozen = record["n_frozen_params"]
        lines.append(f"parameters: {record['n_params']:,} ({record['params']})"
                     + (f"; {frozen:,} frozen (requires_grad=False) left out" if frozen else ""))
    if "attention_kernel" in record:
        from ..models.attention import MATH_KERNEL_NOTE

        lines.append(MATH_KERNEL_NOTE)
    return lines


def print_notes(out: Console, record: dict[str, Any]) -> None:
    """Print :func:`objective_lines` of ``record``."""
    for line in objective_lines(record):
        out.print(line, highlight=False)
