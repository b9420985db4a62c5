"""`sharpscope surface` and `sharpscope interpolate` end to end on tiny runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sharpscope.landscape import SurfaceResult
from sharpscope.train import TrainConfig, train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for opt in ("sgd", "sam"):
        train(TrainConfig(optimizer=opt, model="cnn", model_kwargs={"channels": [4, 8], "hidden": 16, "bn": True},
                          n_train=200, epochs=4, batch_size=50), root / opt)
    return root


def test_surface_2d_non_square_with_files(runs, tmp_path, cli):
    code, out, err = cli(["surface", str(runs / "sam"), "--grid", "-1:1:5,-0.5:0.5:3", "--samples", "100",
                              "--out", str(tmp_path), "--plot", "--json", "-", "--no-progress"])
    assert code == 0, err
    report = json.loads(out[out.index("{"):])
    assert len(report["xs"]) == 5 and len(report["ys"]) == 3
    assert report["summary"]["n_examples"] == 100 and report["options"]["norm"] == "filter"
    res = SurfaceResult.load(tmp_path / "surface_2d.npz")
    assert res.loss.shape == (3, 5) and np.isfinite(res.loss).all()
    for name in ("surface_2d_contour.png", "surface_2d_filled.png", "surface_2d_3d.png", "surface_2d.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert not (tmp_path / "surface_2d.partial.npz").exists()
    with np.load(tmp_path / "surface_2d.npz", allow_pickle=False) as z:
        assert any(k.startswith("d1/") for k in z.files)  # both directions saved


def test_surface_1d_and_trajectory(runs, tmp_path, cli):
    code, _, err = cli(["surface", str(runs / "sgd"), "--dim", "1", "--grid", "-1:1:7", "--samples", "60",
                            "--out", str(tmp_path), "--plot", "--no-progress"])
    assert code == 0, err
    assert SurfaceResult.load(tmp_path / "surface_1d.npz").loss.shape == (7,)
    code, out, err = cli(["surface", "--trajectory", str(runs / "sam"), "--grid", "-2:2:4,-1:1:3",
                              "--samples", "60", "--out", str(tmp_path), "--plot", "--json", "-",
                              "--no-progress"])
    assert code == 0, err
    report = json.loads(out[out.index("{"):])
    assert len(report["explained_variance"]) == 2 and (tmp_path / "trajectory.png").is_file()
    assert SurfaceResult.load(tmp_path / "trajectory.npz").path.shape == (5, 2)  # epochs 0..4


def test_surface_states_direction_moves_the_bn_statistics(runs, tmp_path, cli):
    code, out, err = cli(["surface", str(runs / "sam"), "--dim", "1", "--grid", "-0.5:0.5:3", "--dir-type", "states",
                          "--ignore", "none", "--norm", "dlayer", "--samples", "60", "--out", str(tmp_path),
                          "--json", "-", "--no-progress"])
    assert code == 0, err
    report = json.loads(out[out.index("{"):])
    assert report["options"]["dir_type"] == "states" and report["options"]["norm"] == "dlayer"
    with np.load(tmp_path / "surface_1d.npz", allow_pickle=False) as z:
        stats = [k for k in z.files if k.endswith("running_var")]
        assert stats and all(np.all(z[k] > 0) for k in stats)  # d = the running variance (ignore none)
        assert not any(k.endswith("num_batches_tracked") for k in z.files)


def test_interpolate(runs, tmp_path, cli):
    code, out, err = cli(["interpolate", str(runs / "sgd"), str(runs / "sam"), "--grid", "0:1:5",
                              "--samples", "80", "--out", str(tmp_path), "--plot", "--json", "-",
                              "--no-progress"])
    assert code == 0, err
    report = json.loads(out[out.index("{"):])
    assert report["name_a"] == "SGD" and report["name_b"] == "SAM" and "barrier" in report["summary"]
    assert (tmp_path / "interpolation.png").is_file()


@pytest.mark.parametrize("args,fragment", [
    (["--grid", "-1:1"], "MIN:MAX:POINTS"), (["--dim", "4"], "--dim"), (["--norm", "spectral"], "norm"),
    (["--ignore", "all"], "ignore"), (["--dim", "1", "--grid", "-1:1:3,-1:1:3"], "one grid"),
])
def test_surface_bad_input(runs, cli, args, fragment):
    code, _, err = cli(["surface", str(runs / "sam"), "--no-progress", *args])
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err


def test_surface_needs_exactly_one_source(runs, cli):
    code, _, err = cli(["surface", "--no-progress"])
    assert code == 2 and "--trajectory" in err
