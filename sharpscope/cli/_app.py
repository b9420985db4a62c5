"""The typer application shared by the command modules, and option help texts written only
when a command's help is shown (:func:`deferred_help`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperCommand
from typer.models import OptionInfo

_DEFERRED: dict[str, Callable[[], str]] = {}  # placeholder help text -> what writes the real one
_THREADS = "sharpscope.threads"  # the key of --threads in the click context's meta (shared by subcommands)


def deferred_help(option: OptionInfo, write: Callable[[], str]) -> OptionInfo:
    """``option`` with the help text ``write()`` returns when the help is shown, not when the
    command is built (at every start): for help from torch-backed facts (optimizers, HVP modes)."""
    key = f"(help of option {len(_DEFERRED) + 1}, written when shown)"
    _DEFERRED[key] = write
    option.help = key
    return option


def shown_help(text: str | None) -> str:
    """The help text an option shows: a :func:`deferred_help` text written now, else ``text``."""
    write = _DEFERRED.get(text or "")
    return write() if write is not None else (text or "")


class SharpscopeCommand(TyperCommand):
    """A verb: writes its :func:`deferred_help` texts when its help is formatted, sets the thread
    count (``sharpscope --threads``; imports torch) when it runs, and shows the first paragraph
    of its help whole in ``sharpscope --help`` (click cuts it at the first full stop)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.short_help is None and self.help:
            self.short_help = " ".join(self.help.split("\n\n")[0].split())

    def format_help(self, ctx: Any, formatter: Any) -> None:
        for param in self.params:
            if getattr(param, "help", None) in _DEFERRED:
                param.help = _DEFERRED[param.help]()  # type: ignore[attr-defined]
        super().format_help(ctx, formatter)

    def invoke(self, ctx: Any) -> Any:
        from ..cpu import configure_threads

        configure_threads(ctx.meta.get(_THREADS))
        return super().invoke(ctx)


class TorchOnDemandCommand(SharpscopeCommand):
    """A verb that may finish without torch (``info``): it sets the thread count itself
    (:func:`global_threads`) if it imports torch."""

    def invoke(self, ctx: Any) -> Any:
        return TyperCommand.invoke(self, ctx)


def global_threads(ctx: Any) -> int | None:
    """``sharpscope --threads N``'s N for the verb running in ``ctx`` (None when not given)."""
    return ctx.meta.get(_THREADS)


class _Typer(typer.Typer):
    """typer's app whose commands are :class:`SharpscopeCommand` unless they name another class."""

    def command(self, *args: Any, cls: type[TyperCommand] | None = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or SharpscopeCommand, **kwargs)


app = _Typer(
    name="sharpscope",
    help="Sharpness and loss-landscape analysis around SAM: train SGD/SAM/ASAM models, then measure them.",
    add_completion=False,
    no_args_is_help=True,
    # click's plain help wraps the text and never cuts an option's name (rich's table did), and
    # needs no rich at start-up
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _global_options(
    ctx: typer.Context,
    threads: int = typer.Option(None, "--threads", help="torch threads for this process (default: the CPUs this "
                                                        "process may use, from its affinity mask and CFS quota; "
                                                        "or SHARPSCOPE_THREADS / OMP_NUM_THREADS)."),
) -> None:
    """Sharpness and loss-landscape analysis around SAM: train SGD/SAM/ASAM models, then measure them."""
    from ..errors import ConfigError

    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be a positive number, got {threads}")
    ctx.meta[_THREADS] = threads  # applied when the verb runs (SharpscopeCommand.invoke)
