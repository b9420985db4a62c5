"""The offline interactive report (``compare --html``, ``sharpscope report``): self-contained,
every figure rendered in headless Chromium with the network off and no console error (that
test runs where ``chromium`` is installed and is skipped otherwise)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

pytest.importorskip("plotly")

# figures of a two-optimizer compare: differences, test accuracy, train loss, eigenvalues,
# m-sharpness, gradient cosine, lambda_max with its edges, two 3-D surfaces, interpolation
N_FIGURES = 10


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory):
    from sharpscope.cli import main

    out = tmp_path_factory.mktemp("cmp")
    with pytest.raises(SystemExit) as info:
        main(["compare", "--quick", "--seeds", "2", "--no-progress", "--html", "--out", str(out)])
    assert info.value.code in (0, None)
    return out


@pytest.mark.slow
def test_report_is_self_contained(compare_dir):
    page = (compare_dir / "report.html").read_text()
    assert page.count('class="figure"') == N_FIGURES
    assert not re.search(r"<script[^>]+src=", page)  # plotly.js inline: no CDN, nothing fetched
    assert "cdn.plot.ly" not in page.split("</script>", 1)[1]
    assert "sharpscope compare --optimizer sgd,sam" in page and "This page: sharpscope" in page
    assert "Computed with: sharpscope" in page and "deterministic off" in page  # results.json's record
    assert "Paired differences to SGD" in page and page.count("<table>") >= 3
    assert (compare_dir / "report.html").stat().st_size < 8 * 2**20
    # issue 23: the quick runs have not converged, and the page says so beside its verdicts
    assert "runs have not converged" in page and "(unconverged runs)" in page and "clipped to that range" in page


@pytest.mark.slow
def test_report_rebuilds_from_the_folder(compare_dir, cli):
    before = (compare_dir / "report.html").read_text()
    (compare_dir / "report.html").unlink()
    code, out, err = cli(["report", str(compare_dir)])
    assert code in (0, None), err
    assert (compare_dir / "report.html").read_text() == before
    code, _, err = cli(["report", str(compare_dir / "nowhere")])
    assert code == 2 and "results.json missing" in err


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium_with_the_network_off(compare_dir):
    """Every figure draws (one plotly ``main-svg`` each) and the console shows no error, with
    every host name unresolvable so that nothing could be fetched."""
    proc = subprocess.run(
        ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=20000", "--dump-dom", (compare_dir / "report.html").as_uri()],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count('class="main-svg"') >= N_FIGURES
    console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln]
    bad = [ln for ln in console if re.search(r"Uncaught|Error|Failed to load|net::ERR", ln)]
    assert not bad, bad


@pytest.mark.slow
def test_sweep_html_and_report_verb(tmp_path, cli):
    """sweep --html: one interactive scatter per metric and swept option (here test_acc and
    train_loss against rho: 2), self-contained; ``sharpscope report`` rebuilds it."""
    out = tmp_path / "sw"
    code, _, err = cli(["sweep", "--out", str(out), "--optimizer", "sam", "--rho", "0.02,0.05", "--epochs", "1",
                        "--n-train", "128", "--seeds", "1", "--analyses", "none", "--no-progress", "--html"])
    assert code in (0, None), err
    page = (out / "report.html").read_text()
    assert page.count('class="figure"') == 2 and not re.search(r"<script[^>]+src=", page)
    assert "optimizer=sam, rho=0.02" in page
    assert "Warning:</b> 2 of 2 runs have not converged" in page  # one epoch: no trend (issue 23)
    (out / "report.html").unlink()
    code, _, err = cli(["report", str(out)])
    assert code in (0, None), err
    assert (out / "report.html").read_text() == page
