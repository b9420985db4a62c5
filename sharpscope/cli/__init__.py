"""The ``sharpscope`` command line: one typer app, one thin module per verb (options in, a
library call, lines out). A :class:`~sharpscope.errors.SharpscopeError` or usage error is one
line on stderr and exit code 2; Ctrl-C exits with 130."""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from ..errors import SharpscopeError
from ._app import app
from ._common import CHECK_LAUNCH_ENV
# Registers the verbs (in --help's order); what a verb needs beyond typer loads when it runs.
from . import (compare_cmd, correlate_cmd, hessian_cmd, info_cmd, report_cmd, sharpness_cmd,  # noqa: F401,E402
               surface_cmd, interpolate_cmd, sweep_cmd, train_cmd, weights_cmd)

__all__ = ["app", "main"]

# click's classes through typer's BadParameter (recent typer releases vendor click).
_CLICK_ERRORS = {c.__name__: c for c in typer.BadParameter.__mro__}
_USAGE_ERROR: type[Exception] = _CLICK_ERRORS["UsageError"]
_CLICK_EXCEPTION: type[Exception] = _CLICK_ERRORS["ClickException"]


def _fail(message: str, code: int = 2) -> None:
    first_line = " ".join(str(message).split())
    print(f"sharpscope: error: {first_line}", file=sys.stderr)
    sys.exit(code)


def _launch_plan(argv: list[str]) -> tuple[int, list[str]]:
    """For ``sharpscope [--threads N] train ... --nproc P ...``: (P, the arguments without
    --nproc); for ``hessian ... --nproc P`` (P > 1) the same with ``--shard`` added (each rank
    shards the model, :mod:`sharpscope.cli.hessian_sharded`); (1, argv) for anything else."""
    i = 0
    while i < len(argv) and argv[i].startswith("--threads"):
        i += 1 if "=" in argv[i] else 2
    if i >= len(argv) or argv[i] not in ("train", "hessian"):
        return 1, argv
    rest, nproc, args = argv[:i + 1], "1", iter(argv[i + 1:])
    for arg in args:
        if arg.startswith("--nproc="):
            nproc = arg.split("=", 1)[1]
        elif arg == "--nproc" and (value := next(args, None)) is not None:
            nproc = value
        else:
            rest.append(arg)
    if not nproc.isdigit() or int(nproc) < 1:
        _fail(f"--nproc must be a positive integer, got {nproc!r}")
    if argv[i] == "hessian" and int(nproc) > 1:
        rest.append("--shard")
    return int(nproc), rest


def _torchrun(command: Any, nproc: int, args: list[str]) -> int:
    """Check the input here (one line and exit 2 if bad), then run ``torchrun --standalone
    --nproc-per-node N -m sharpscope ARGS`` and return its exit code."""
    import os
    import subprocess
    os.environ[CHECK_LAUNCH_ENV] = str(nproc)
    try:
        command.main(args=args, prog_name="sharpscope", standalone_mode=False)
    finally:
        os.environ.pop(CHECK_LAUNCH_ENV, None)
    return subprocess.call([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            f"--nproc-per-node={nproc}", "-m", "sharpscope", *args])


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    """Warnings on the command line: one line, no source path ('sharpscope: warning: ...')."""
    return f"sharpscope: warning: {' '.join(str(message).split())}\n"


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    import warnings

    from ..cpu import prepare_wait_policy

    prepare_wait_policy()  # before torch loads its OpenMP runtime
    previous_format = warnings.formatwarning
    warnings.formatwarning = _one_line_warning  # type: ignore[assignment]
    nproc, args = _launch_plan(list(sys.argv[1:] if argv is None else argv))
    command = typer.main.get_command(app)
    try:
        code = _torchrun(command, nproc, args) if nproc > 1 else \
            command.main(args=args, prog_name="sharpscope", standalone_mode=False)
    except _USAGE_ERROR as err:
        ctx = getattr(err, "ctx", None)
        where = f" (see 'sharpscope {ctx.info_name} --help')" if ctx is not None and ctx.parent else ""
        _fail(f"{err.format_message()}{where}")  # type: ignore[attr-defined]
    except _CLICK_EXCEPTION as err:
        _fail(err.format_message())  # type: ignore[attr-defined]
    except typer.Abort:
        _fail("aborted", 130)
    except KeyboardInterrupt as err:
        _fail(f"interrupted{': ' + str(err) if str(err) else ''}", 130)
    except SharpscopeError as err:
        _fail(str(err))
    except MemoryError:
        _fail("out of memory: ask for less (--samples, --batch-size, the grid, --runs or --slq-steps)")
    except OSError as err:
        _fail(f"{err.strerror or err}: {err.filename}" if err.filename else str(err))
    finally:
        warnings.formatwarning = previous_format
        left_group = False
        if "torch.distributed" in sys.modules:  # else no process group exists, and torch stays unloaded
            from .. import distributed as dist_utils

            left_group = dist_utils.finish(ok=sys.exc_info()[0] is None)
    code = code if isinstance(code, int) else 0
    if left_group and argv is None:  # a torchrun rank of the console script that finished: every file
        # is written (finish's barrier) and flushed here
        sys.stdout.flush()
        sys.stderr.flush()
        # skip the interpreter's teardown, where a C++ thread of torch's finished group aborted
        # the rank (SIGABRT, "terminate called without an active exception") in 1 run of 10
        os._exit(code)
    sys.exit(code)
