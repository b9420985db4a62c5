"""``sharpscope report``: rebuild the interactive HTML report of a finished compare or sweep."""

from __future__ import annotations

from pathlib import Path

import typer

from ._app import app
from ._common import require_html, say_page


@app.command("report")
def report_command(
    out: Path = typer.Argument(..., help="The --out folder of a finished 'sharpscope compare' or 'sweep'."),
) -> None:
    """Write OUT/report.html from what the folder holds (results.json, the runs' metrics, the
    surfaces): one self-contained interactive page that opens with no network.

    Example: sharpscope report runs/compare
    """
    from ..experiments.html_report import write_report_html

    require_html(True)
    say_page(write_report_html(out))
