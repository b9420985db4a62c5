"""Offline interactive reports (``--html``, ``sharpscope report OUT``): one self-contained HTML
page built from what a finished compare, sweep or correlate folder holds, with the tables of
report.md, every figure interactive, and the command, options and versions behind them."""

from __future__ import annotations

import html
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import ConfigError
from .compare import KEY_METRICS, run_dir
from .files import read_results
from ..io import atomic_write_bytes
from .report import METRIC_NAMES, difference_table, gradcos_lines, summary_table, convergence_lines

__all__ = ["write_compare_html", "write_correlate_html", "write_sweep_html", "write_report_html", "markdown_table"]


def markdown_table(lines: list[str]) -> str:
    """A Markdown pipe table (header, rule, rows) as an HTML table."""
    rows = [[html.escape(c.strip()) for c in line.strip().strip("|").split("|")] for line in lines if line.strip()]
    head, body = rows[0], rows[2:]
    out = ["<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body]
    return "\n".join(out) + "</table>"


def _command(cfg: dict[str, Any]) -> str:
    parts = ["sharpscope compare", f"--optimizer {','.join(cfg['optimizers'])}", f"--model {cfg['model']}",
             f"--data {cfg['data']}", f"--epochs {cfg['epochs']}", f"--rho {cfg['rho']}",
             f"--seeds {','.join(map(str, cfg['seeds']))}"]
    parts += [f"--model-opt {k}={json.dumps(v)}" for k, v in cfg.get("model_kwargs", {}).items()]
    parts += [f"--label-noise {cfg['label_noise']}"] if cfg.get("label_noise") else []
    parts += [f"--m {cfg['m']}"] if cfg.get("m") else []
    parts += ["--profile quick"] if cfg.get("quick") else []
    return " ".join(parts) + " --html"


def _provenance(command: str, options: dict[str, Any], what: str, results: dict[str, Any]) -> str:
    """The command, the environment recorded, this page's own versions, and every option."""
    import plotly
    import torch

    from ..provenance import describe, unlike_runs_warning

    versions = {"sharpscope": __version__, "torch": torch.__version__, "numpy": np.__version__,
                "python": platform.python_version(), "plotly": plotly.__version__}
    recorded = ""
    if "environment" in results:
        unlike = results.get("environment_differences") or {}
        recorded = ("<p>Computed with: " + html.escape(describe(results["environment"])) + ".</p>"
                    + (f"<p><b>Warning:</b> {html.escape(unlike_runs_warning(unlike))}.</p>" if unlike else ""))
    return ("<h2>How this was made</h2><pre>" + html.escape(command) + "</pre>" + recorded
            + "<p>This page: " + html.escape(", ".join(f"{k} {v}" for k, v in versions.items())) + ".</p>"
            + f"<details><summary>Every option ({html.escape(what)})</summary><pre>"
            + html.escape(json.dumps(options, indent=1, default=str)) + "</pre></details>")


def _all_records(out: Path, results: dict[str, Any]) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """Every run's metrics.jsonl records: {OPTIMIZER: {seed: records}}."""
    records: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for opt in results["optimizers"]:
        for seed in results["config"]["seeds"]:
            path = run_dir(out, opt, seed) / "metrics.jsonl"
            lines = path.read_text().splitlines() if path.exists() else []
            records.setdefault(opt.upper(), {})[seed] = [json.loads(ln) for ln in lines if ln.strip()]
    return records


def _over_epochs(records: dict[str, dict[int, list[dict[str, Any]]]], key: str
                 ) -> dict[str, dict[int, tuple[list, list]]]:
    """{OPTIMIZER: {seed: (epochs, values of ``key``)}} over the records that hold ``key``."""
    series: dict[str, dict[int, tuple[list, list]]] = {}
    for label, seeds in records.items():
        for seed, recs in seeds.items():
            pts = [(r["epoch"], r[key]) for r in recs if r.get(key) is not None]
            if pts:
                series.setdefault(label, {})[seed] = tuple(map(list, zip(*pts)))  # type: ignore[assignment]
    return series


def _figures(out: Path, results: dict[str, Any]) -> list[Any]:
    from ..plots import html as ph
    from ..landscape import SurfaceResult

    seeds, opts = results["config"]["seeds"], results["optimizers"]
    records = _all_records(out, results)
    diffs = {o.upper(): r["difference"] for o, r in opts.items() if r.get("difference")}
    figs: list[Any] = ["<h2>Figures</h2><p>Click a legend entry to hide a seed, double-click to isolate it; "
                       "hover for values.</p>"]
    if diffs:
        figs.append(ph.difference_bars(diffs, KEY_METRICS, METRIC_NAMES, results["baseline"].upper()))
    figs.append(ph.seed_lines(_over_epochs(records, "test_acc"), "Test accuracy", "epoch", "test accuracy"))
    figs.append(ph.seed_lines(_over_epochs(records, "train_loss"), "Training loss", "epoch", "train loss",
                              log_y=True))
    figs.append(ph.eigenvalue_lines({o.upper(): {int(s): r["seeds"][str(s)]["eigenvalues"]["eigenvalues"]
                                                 for s in seeds} for o, r in opts.items()}))
    msh = {o.upper(): {int(s): ([x["m"] for x in r["seeds"][str(s)]["m_sharpness"]["results"]],
                                [x["mean"] for x in r["seeds"][str(s)]["m_sharpness"]["results"]]) for s in seeds}
           for o, r in opts.items()}
    figs.append(ph.seed_lines(msh, "m-sharpness against m", "m", "max L_b(w + e) - L_b(w)"))
    figs.append(ph.seed_lines(_over_epochs(records, "gradcos"), "cos(first-, second-order SAM gradient)",
                              "epoch", "cosine"))
    eos = _over_epochs(records, "lambda_max")
    if eos:
        edges = {f"{o}: edge (2 + 2 beta) / lr": v for o, v in _over_epochs(records, "edge_of_stability").items()}
        edges.update({f"{o}: SAM edge": v for o, v in _over_epochs(records, "sam_edge_of_stability").items()})
        figs.append(ph.seed_lines({**eos, **edges}, "lambda_max and the edge of stability", "epoch", "lambda_max",
                                  log_y=True, dash={k: "dot" for k in edges}))
    for opt in opts:
        path = run_dir(out, opt, seeds[0]) / "surface_2d.npz"
        if path.exists():
            s = SurfaceResult.load(path)
            figs.append(ph.surface_3d(f"{opt.upper()} (seed {seeds[0]})", s.xs, s.ys, s.loss))
    if (out / "interpolation.npz").exists():
        it = SurfaceResult.load(out / "interpolation.npz")
        figs.append(ph.curve(it.xs, it.loss, "Linear interpolation between the first two minima (first seed)",
                             "t (0: first, 1: second)", "loss"))
    return figs


def write_compare_html(out_dir: str | Path) -> Path:
    """``OUT/report.html`` for the finished compare in ``out_dir`` (module docstring)."""
    from ..plots import html as ph

    out = Path(out_dir)
    path = out / "results.json"
    if not path.exists():
        raise ConfigError(f"no finished compare in {out} (results.json missing)")
    results = read_results(out)
    if not (isinstance(results, dict) and "optimizers" in results and "config" in results):
        raise ConfigError(f"{path} is not a compare's results.json")
    names = " vs ".join(o.upper() for o in results["optimizers"])
    blocks: list[Any] = [f"<h1>{html.escape(names)}: sharpscope compare</h1>",
                         "<p>Each cell: mean +/- standard deviation over paired seeds [95 % confidence interval, "
                         f"{html.escape(results['ci_method'])}]. A difference is reported as higher or lower only "
                         "when its paired interval excludes zero.</p>",
                         *[f"<p>{html.escape(line).replace('**', '')}</p>" for line in convergence_lines(results)
                           if line],
                         *[f"<p><b>Warning:</b> {html.escape(w)}</p>" for w in results.get("warnings", [])],
                         *_figures(out, results),
                         "<h2>Metrics over seeds</h2>", markdown_table(summary_table(results)),
                         f"<h2>Paired differences to {html.escape(results['baseline'].upper())}</h2>",
                         "<details><summary>Every metric, its interval, p-value and verdict</summary>"
                         + markdown_table(difference_table(results)) + "</details>"]
    gradcos = gradcos_lines(results)
    if gradcos:
        blocks += ["<h2>First- vs second-order SAM gradient over training</h2>",
                   markdown_table([ln for ln in gradcos if ln.startswith("|")])]
    blocks.append(_provenance(_command(results["config"]), {"config": results["config"],
                                                             "settings": results["settings"]},
                              "results.json: config and analysis settings", results))
    text = ph.page(f"{names}: sharpscope compare", blocks).encode()
    return atomic_write_bytes(out / "report.html", lambda fh: fh.write(text))


def _tau_cell(e: dict[str, Any], method: str = "kendall") -> str:
    k = e[method]
    if k["estimate"] is None or not np.isfinite(k["estimate"]):
        return "undefined"
    return f"{k['estimate']:+.3f} [{k['ci_low']:+.3f}, {k['ci_high']:+.3f}]"


def write_correlate_html(out_dir: str | Path, rows: list[dict[str, Any]], table: Any, command: str,
                         settings: dict[str, Any], group_by: str = "optimizer",
                         recorded: dict[str, Any] | None = None) -> Path:
    """``OUT/correlations.html``: the correlation tables and a scatter per measure against the error gap."""
    from ..plots import html as ph
    from .correlate import generalization_gaps, select_runs

    out = Path(out_dir)
    lines = ["| measure | gap | n | Kendall tau [95 % CI] | Spearman rho [95 % CI] |", "|---|---|---|---|---|"]
    lines += [f"| {e['measure']} | {e['gap']} | {e['n']} | {_tau_cell(e)} | {_tau_cell(e, 'spearman')} |"
              for e in table.entries]
    left = table.left_out
    blocks: list[Any] = [f"<h1>Which measure tracks the generalization gap ({table.n_runs} runs)</h1>",
                         f"<p>Runs that finished with train accuracy >= {table.min_train_acc:g}; left out: "
                         f"{left['unfinished']} unfinished, {left['underfit']} below that.</p>",
                         "<p>gap_error = train accuracy - test accuracy, gap_loss = test loss - train loss; "
                         f"intervals: {table.confidence:.0%} percentile bootstrap over runs, "
                         f"{table.resamples} resamples.</p>", markdown_table(lines)]
    if table.granulated:
        thetas = list(table.granulated[0]["psi"])
        glines = ["| measure | gap | Psi | " + " | ".join(f"psi {t}" for t in thetas) + " |",
                  "|---|---|---|" + "---|" * len(thetas)]
        glines += [f"| {g['measure']} | {g['gap']} | {_num(g['Psi'])} | "
                   + " | ".join(_num(g["psi"][t]) for t in thetas) + " |" for g in table.granulated]
        blocks += ["<h2>Granulated Kendall coefficients (Jiang et al. 2020)</h2>", markdown_table(glines)]
    usable = select_runs(rows, table.min_train_acc)[0]  # the runs the table correlates
    thetas = list(table.granulated[0]["psi"]) if table.granulated else []
    for e in (e for e in table.entries if e["gap"] == "gap_error"):
        points: dict[str, list[tuple[float, float, str]]] = {}
        for r in usable:
            x, y = r.get(e["measure"]), generalization_gaps(r)["gap_error"]
            if isinstance(x, (int, float)) and y is not None and np.isfinite(x):
                text = html.escape(", ".join([Path(str(r.get("run", ""))).name]
                                             + [f"{t}={r.get(t)}" for t in thetas]))
                points.setdefault(str(r.get(group_by, "run")).upper(), []).append((float(x), y, text))
        blocks.append(ph.scatter(points, f"{e['measure']} against the error gap: tau {_tau_cell(e)}",
                                 e["measure"], "test error - train error"))
    blocks.append(_provenance(command, settings, "the measures' settings", recorded or {}))
    text = ph.page("sharpscope correlate", blocks).encode()
    return atomic_write_bytes(out / "correlations.html", lambda fh: fh.write(text))


def _num(x: Any) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


def write_sweep_html(out_dir: str | Path) -> Path:
    """``OUT/report.html`` of a finished sweep: each metric against every swept option (a point per
    run, its options on hover), summary.csv, and the configuration and versions."""
    from ..plots import html as ph
    from .tables import read_sweep_results

    out = Path(out_dir)
    stored = read_sweep_results(out)
    rows, options, grid = stored["rows"], stored["options"], stored["config"]["grid"]
    varying = [o for o in options if o != "seed" and len(grid.get(o, ())) > 1]
    metrics = [m for m in ("test_acc", "lambda_max", "train_loss") if any(r.get(m) is not None for r in rows)]
    blocks: list[Any] = [f"<h1>sharpscope sweep: {len(rows)} runs</h1>",
                         "<p>One point per run (every seed); hover for its options; click a legend entry to hide "
                         "an optimizer.</p>",
                         *[f"<p><b>Warning:</b> {html.escape(w)}</p>" for w in stored.get("warnings", [])]]
    for metric in metrics:
        for option in varying:
            points: dict[str, list[tuple[float, float, str]]] = {}
            for r in rows:
                x, y = r.get(option), r.get(metric)
                if isinstance(y, (int, float)) and np.isfinite(y) and isinstance(x, (int, float)):
                    text = html.escape(", ".join(f"{o}={r.get(o)}" for o in options) + f", status {r['status']}")
                    points.setdefault(str(r.get("optimizer", "run")).upper(), []).append((float(x), float(y), text))
            if points:
                blocks.append(ph.scatter(points, f"{metric} against {option}", option, metric))
    summary = out / "summary.csv"
    if summary.exists():
        lines = summary.read_text().splitlines()
        blocks += ["<h2>Summary over seeds (summary.csv)</h2>",
                   markdown_table(["|" + "|".join(lines[0].split(",")) + "|", "|---|"]
                                  + ["|" + "|".join(ln.split(",")) + "|" for ln in lines[1:]])]
    blocks.append(_provenance("sharpscope sweep (see the configuration below)", stored["config"],
                              "results.json: the sweep's configuration", stored))
    text = ph.page("sharpscope sweep", blocks).encode()
    return atomic_write_bytes(out / "report.html", lambda fh: fh.write(text))


def write_report_html(out_dir: str | Path) -> Path:
    """The interactive report of whatever finished experiment ``out_dir`` holds (compare or sweep)."""
    stored = read_results(Path(out_dir))
    kind = stored.get("kind") if isinstance(stored, dict) else None
    return write_sweep_html(out_dir) if kind == "sharpscope sweep" else write_compare_html(out_dir)
