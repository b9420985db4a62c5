"""What the command line shows in an 80-column terminal and while it works: help and tables
that wrap instead of cutting ('--perturbation-wei…', 'alpha_w…'), bars with the time left, the
cost a long job announces before its first product."""

from __future__ import annotations

import re

import pytest
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from sharpscope.cli import app
from sharpscope.cli._common import folded
from sharpscope.cli.progress import ProductPlan, RemainingColumn, duration


def _columns(rendered: str) -> list[str]:
    """Each column of a rendered rich table, its lines' fragments joined: what a reader sees
    of a folded cell, put back together (header and body alike)."""
    cols: dict[int, str] = {}
    for line in rendered.splitlines():
        if line[:1] in ("┃", "│"):
            for j, cell in enumerate(re.split(r"[┃│]", line)[1:-1]):
                cols[j] = cols.get(j, "") + cell.strip()
    return [cols[j] for j in sorted(cols)]


@pytest.mark.parametrize("verb", sorted(typer.main.get_command(app).commands))
def test_every_option_name_is_shown_whole_at_80_columns(cli, monkeypatch, verb):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = cli([verb, "--help"])
    assert code == 0 and "…" not in out
    assert max(map(len, out.splitlines())) <= 80
    command = typer.main.get_command(app).commands[verb]
    words = set(re.split(r"[\s,/]+", out))
    for param in command.params:
        if getattr(param, "hidden", False):  # an old spelling, kept for one release (cli._options.old_spelling)
            continue
        for name in (*param.opts, *param.secondary_opts):
            if name.startswith("-"):
                assert name in words, f"{verb}: {name} not shown whole"


def test_the_verbs_first_paragraphs_are_shown_whole(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = cli(["--help"])
    text = " ".join(out.split("Commands:")[1].split())
    assert code == 0 and "..." not in text  # click's own listing cuts at the first full stop or the width
    assert "m-sharpness of a checkpoint (Foret et al. 2021, Sec. 4.1), with the surrogate gap;" in text


def test_a_folded_table_keeps_every_value_at_80_columns():
    names = ["layer", "shape", "evals", "alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "stable_rank"]
    rows = [["features.0.block.conv_weight", "128x64", "64", "2.846", "1.692", "1.735", "0.594", "13.830"],
            ["classifier.head.linear", "10x128", "10", "1.792", "1.136", "1.245", "0.634", "4.084"]]

    def render(fold: bool) -> str:
        table = Table(title="Weight spectra")
        for name in names:
            table.add_column(name, justify="left" if name in ("layer", "shape") else "right")
        for row in rows:
            table.add_row(*row)
        console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
        console.print(folded(table) if fold else table)
        return console.export_text()

    assert "…" in render(False)  # rich's default cuts: the check below would notice
    text = render(True)
    assert "…" not in text and max(map(len, text.splitlines())) <= 80
    columns = _columns(text)
    for j, name in enumerate(names):
        assert columns[j].startswith(name)
        assert all(row[j] in columns[j] for row in rows)


def test_weights_at_80_columns_shows_whole_names(cli, monkeypatch, tmp_path):
    from sharpscope.train import TrainConfig, train

    train(TrainConfig(optimizer="sgd", model="mlp", n_train=128, epochs=1, keep_snapshots=False), tmp_path / "run")
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = cli(["weights", str(tmp_path / "run"), "--json", str(tmp_path / "w.json")])
    assert code in (0, None), err
    assert "…" not in out
    columns = _columns(out)
    for header in ("alpha_weighted", "log_spectral_norm", "stable_rank"):
        assert any(c.startswith(header) for c in columns), header
    assert "features.0" in columns[0] and "head" in columns[0]


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_the_time_left_is_an_upper_bound_under_a_cap():
    clock = _Clock()
    bar = Progress(get_time=clock, disable=True)
    capped, exact = bar.add_task("eigenvalues", total=300, cap=True), bar.add_task("trace", total=100)
    column = RemainingColumn()
    assert column.render(bar.tasks[exact]).plain == "-:-- left"  # no rate yet
    for _ in range(10):
        clock.t += 1.0
        bar.advance(capped, 2)
        bar.advance(exact, 2)
    assert column.render(bar.tasks[capped]).plain == "<= 2:20 left"  # 280 more at 2 per second, at most
    assert column.render(bar.tasks[exact]).plain == "0:40 left"


def test_a_long_job_announces_its_products_then_their_time():
    said: list[str] = []
    clock = _Clock()
    plan = ProductPlan(said.append, "HVPs", {"eigenvalues (LA)": (300, False), "trace (Hutch++)": (99, True),
                                             "density (SLQ, 10 runs x 80 steps)": (800, True)}, now=clock)
    plan.announce()
    assert said == ["899 HVPs planned, and at most 300 more (eigenvalues (LA): at most 300; trace (Hutch++): 99; "
                    "density (SLQ, 10 runs x 80 steps): 800)"]
    clock.t = 5.0
    plan.done(1)  # the first product (5 s: building the graph) is not timed
    for _ in range(4):
        clock.t += 0.2
        plan.done(1)
    assert len(said) == 1  # 4 timed products: not yet
    clock.t += 0.2
    plan.done(1)  # 5 products in 1 s after the first
    assert said[1] == "at the measured 5 HVPs/s: about 3.0 min for the 899 planned, at most 4.0 min with all 300 more"
    clock.t += 1.0
    plan.done(10)
    assert len(said) == 2  # said once


def test_a_short_job_says_only_its_plan_after_its_first_product():
    said: list[str] = []
    clock = _Clock()
    plan = ProductPlan(said.append, "HVPs", {"trace (Hutch++)": (99, True)}, now=clock)
    assert said == []  # input refused before the first product: only its error is said
    for _ in range(20):
        plan.done(1)
        clock.t += 0.05  # 20 HVPs/s: 99 take 5 s
    assert said == ["99 HVPs planned (trace (Hutch++): 99)"]


@pytest.mark.parametrize("seconds,text", [(4.4, "4 s"), (89, "89 s"), (180, "3.0 min"), (7200, "2.0 h")])
def test_durations(seconds, text):
    assert duration(seconds) == text
