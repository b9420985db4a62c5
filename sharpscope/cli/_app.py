"""The typer application object shared by the command modules."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="sharpscope",
    help="Sharpness and loss-landscape analysis around SAM: train SGD/SAM/ASAM models, then measure them.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _global_options(
    threads: int = typer.Option(None, "--threads", help="torch threads for this process (default: the CPUs this "
                                                        "process may use, from its affinity mask and CFS quota; "
                                                        "or SHARPSCOPE_THREADS / OMP_NUM_THREADS)."),
) -> None:
    """Sharpness and loss-landscape analysis around SAM: train SGD/SAM/ASAM models, then measure them."""
    from ..cpu import configure_threads
    from ..errors import ConfigError

    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be a positive number, got {threads}")
    configure_threads(threads)
