"""No analysis result is replaced silently (issue 23, item 5).

One rule for every analysis verb: it saves its numbers by default (hessian, sharpness, gradcos
and weights under <run>/analyses/, surface and interpolate in their output folder); a second
run that would write over an earlier result is refused with one line naming --overwrite, and
--overwrite removes every file of the earlier result (stale figures included).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sharpscope.train import TrainConfig, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    train(TrainConfig(optimizer="sgd", model="mlp", model_kwargs={"hidden": [8]}, n_train=120, epochs=1,
                      batch_size=40), out)
    return out


@pytest.fixture
def run(trained, tmp_path):
    """A fresh copy of the trained run (with its per-epoch snapshots) for each test."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _refused(code: int, err: str, path: Path) -> None:
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"sharpscope: error: {path} holds an earlier result"), err
    assert "--overwrite" in lines[0]


# (verb arguments, default JSON under <run>/analyses/, a value of the JSON that the second run changes)
VERBS = {
    "hessian": (["hessian", "--top-k", "1", "--samples", "40", "--no-progress"], "hessian.json",
                ["--top-k", "2"], lambda r: len(r["eigenvalues"]["eigenvalues"])),
    "ggn": (["hessian", "--operator", "ggn", "--top-k", "1", "--samples", "40", "--no-progress"], "ggn.json",
            ["--samples", "30"], lambda r: r["n_examples"]),
    "sharpness": (["sharpness", "--m", "8", "--ascent-steps", "1", "--samples", "40", "--no-progress"], "m_sharpness.json",
                  ["--rho", "0.1"], lambda r: r["results"][0]["rho"]),
    "worst": (["sharpness", "--measure", "worst", "--m", "8", "--ascent-steps", "1", "--samples", "40", "--no-progress"],
              "sharpness_worst.json", ["--rho", "0.1"], lambda r: r["results"][0]["rho"]),
    "gradcos": (["gradcos", "--samples", "40"], "gradcos.json", ["--rho", "0.1"], lambda r: r["rho"]),
    "weights": (["weights"], "weights.json", ["--deterministic"], lambda r: "checkpoint" in r),
}


@pytest.mark.parametrize("name", list(VERBS))
def test_analysis_saves_its_numbers_by_default_and_never_replaces_them_unasked(name, run, cli):
    args, file, change, value = VERBS[name]
    target = run / "analyses" / file
    code, _, err = cli([args[0], str(run), *args[1:]])
    assert code == 0, err
    first = json.loads(target.read_text())
    assert f"saved {target}" in " ".join(err.split())
    code, _, err = cli([args[0], str(run), *args[1:], *change])
    _refused(code, err, target)
    assert json.loads(target.read_text()) == first  # kept as it was
    code, _, err = cli([args[0], str(run), *args[1:], *change, "--overwrite"])
    assert code == 0, err
    second = json.loads(target.read_text())
    if name != "weights":
        assert value(second) != value(first)


@pytest.mark.parametrize("name", ["gradcos", "hessian"])
def test_json_path_and_stdout(name, run, cli, tmp_path):
    args, file, _, _ = VERBS[name]
    code, out, err = cli([args[0], str(run), *args[1:], "--json", "-"])  # stdout only: nothing saved
    assert code == 0, err
    json.loads(out)
    assert not (run / "analyses").exists()
    path = tmp_path / "mine.json"
    assert cli([args[0], str(run), *args[1:], "--json", str(path)])[0] == 0
    assert path.is_file() and not (run / "analyses").exists()
    _refused(*cli([args[0], str(run), *args[1:], "--json", str(path)])[::2], path)


def test_snapshot_analyses_get_their_own_folder(run, cli):
    snapshot = run / "checkpoints" / "epoch_0001.pt"
    assert cli(["gradcos", str(snapshot), "--samples", "40"])[0] == 0
    assert cli(["gradcos", str(run), "--samples", "40"])[0] == 0  # the run's checkpoint: another result
    assert (run / "checkpoints" / "analyses" / "epoch_0001" / "gradcos.json").is_file()
    assert (run / "analyses" / "gradcos.json").is_file()


def test_hessian_overwrite_removes_the_earlier_figures(run, cli):
    args = ["hessian", str(run), "--top-k", "1", "--samples", "40", "--no-progress"]
    assert cli([*args, "--plot", "--pdf"])[0] == 0
    assert (run / "hessian_eigenvalues.png").is_file() and (run / "hessian_eigenvalues.pdf").is_file()
    _refused(*cli([*args, "--plot", "--json", str(run / "other.json")])[::2], run / "hessian_eigenvalues.png")
    code, _, err = cli([*args, "--overwrite"])
    assert code == 0, err
    assert not (run / "hessian_eigenvalues.png").exists() and not (run / "hessian_eigenvalues.pdf").exists()
    assert "figures" not in json.loads((run / "analyses" / "hessian.json").read_text())


def test_sharpness_figures_are_claimed_too(run, cli, tmp_path):
    args = ["sharpness", str(run), "--m", "8", "--ascent-steps", "1", "--samples", "40", "--no-progress", "--plot",
            "--out", str(tmp_path / "figs")]
    assert cli(args)[0] == 0
    _refused(*cli([*args, "--json", "-"])[::2], tmp_path / "figs" / "m_sharpness.png")


def test_second_surface_is_refused_and_overwrite_leaves_nothing_stale(run, cli):
    """The issue's case: a 21x21 surface with figures, then a 9x9 one in the same folder."""
    args = ["surface", str(run), "--samples", "40", "--no-progress"]
    code, _, err = cli([*args, "--grid", "-1:1:5", "--plot"])
    assert code == 0, err
    folder = run / "surface"
    figures = {f.name for f in folder.glob("*.png")}
    assert figures == {"surface_2d_contour.png", "surface_2d_filled.png", "surface_2d_3d.png"}
    before = (folder / "surface_2d.npz").read_bytes()
    _refused(*cli([*args, "--grid", "-1:1:3"])[::2], folder / "surface_2d.npz")
    assert (folder / "surface_2d.npz").read_bytes() == before
    code, _, err = cli([*args, "--grid", "-1:1:3", "--overwrite"])
    assert code == 0, err
    assert sorted(f.name for f in folder.iterdir()) == ["surface_2d.json", "surface_2d.npz"]  # no stale PNG
    with np.load(folder / "surface_2d.npz") as npz:
        assert list(npz["xs"]) == [-1.0, 0.0, 1.0]
    assert json.loads((folder / "surface_2d.json").read_text())["xs"] == [-1.0, 0.0, 1.0]
    code, _, err = cli([*args, "--grid", "-1:1:3", "--dim", "1"])  # another surface: its own files
    assert code == 0, err


def test_second_interpolation_is_refused(run, cli, tmp_path):
    args = ["interpolate", str(run), str(run / "checkpoints" / "epoch_0000.pt"), "--samples", "40", "--no-progress"]
    code, _, err = cli([*args, "--grid", "0:1:3", "--plot"])
    assert code == 0, err
    folder = run / "interpolate"
    assert (folder / "interpolation.png").is_file()
    _refused(*cli([*args, "--grid", "0:1:5"])[::2], folder / "interpolation.npz")
    code, _, err = cli([*args, "--grid", "0:1:5", "--overwrite"])
    assert code == 0, err
    assert sorted(f.name for f in folder.iterdir()) == ["interpolation.json", "interpolation.npz"]
    report = json.loads((folder / "interpolation.json").read_text())
    assert len(report["xs"]) == 5 and report["npz"] == str(folder / "interpolation.npz")
    assert cli([*args, "--grid", "0:1:5", "--out", str(tmp_path / "elsewhere")])[0] == 0


def test_overwrite_removes_only_result_files_in_the_result_folders(run, cli, tmp_path):
    """An earlier JSON (from a run folder someone sent) naming files elsewhere cannot make
    --overwrite delete them."""
    precious = tmp_path / "precious.png"
    precious.write_bytes(b"keep me")
    (run / "analyses").mkdir()
    (run / "analyses" / "gradcos.json").write_text(json.dumps({"figures": [str(precious), str(run / "checkpoint.pt")]}))
    assert cli(["gradcos", str(run), "--samples", "40", "--overwrite"])[0] == 0
    assert precious.read_bytes() == b"keep me" and (run / "checkpoint.pt").is_file()
