"""The ``sharpscope`` command line: one typer app, one thin module per verb.

No maths here: every command parses options, calls a library function and prints.
Any :class:`~sharpscope.errors.SharpscopeError` or usage error becomes one line on
stderr and exit code 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import sys

import typer

from ..errors import SharpscopeError
from ._app import app
from . import compare_cmd, hessian_cmd, info_cmd, sharpness_cmd, surface_cmd, train_cmd  # noqa: F401  (registers the commands)

__all__ = ["app", "main"]

# Recent typer releases vendor click; older ones use the click package. Find the classes
# through typer's public BadParameter either way.
_CLICK_ERRORS = {c.__name__: c for c in typer.BadParameter.__mro__}
_USAGE_ERROR: type[Exception] = _CLICK_ERRORS["UsageError"]
_CLICK_EXCEPTION: type[Exception] = _CLICK_ERRORS["ClickException"]


def _fail(message: str, code: int = 2) -> None:
    first_line = " ".join(str(message).split())
    print(f"sharpscope: error: {first_line}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="sharpscope", standalone_mode=False)
    except _USAGE_ERROR as err:
        ctx = getattr(err, "ctx", None)
        where = f" (see 'sharpscope {ctx.info_name} --help')" if ctx is not None and ctx.parent else ""
        _fail(f"{err.format_message()}{where}")  # type: ignore[attr-defined]
    except _CLICK_EXCEPTION as err:
        _fail(err.format_message())  # type: ignore[attr-defined]
    except typer.Abort:
        _fail("aborted", 130)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except SharpscopeError as err:
        _fail(str(err))
    except OSError as err:
        _fail(f"{err.strerror or err}: {err.filename}" if err.filename else str(err))
    sys.exit(code if isinstance(code, int) else 0)
