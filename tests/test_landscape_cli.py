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


def test_interpolate_losses_equal_an_independent_computation(runs, tmp_path, cli):
    """Issue 23.10: the loss at alpha is the eval-mode loss of (1 - alpha) A + alpha B, BN
    statistics interpolated too, on --samples examples (the first 80 of the seeded
    permutation): at 0 A's loss, at 1 B's, between them the loss of the averaged weights,
    each recomputed in float64 from the two checkpoints (functional_call; tests/_exact.py).
    The float32 CLI differs by rounding (measured 9.5e-8 relative); A and B differ by far
    more, so swapped endpoints fail, and so does interpolating the two losses instead of the
    weights."""
    import torch
    import torch.nn.functional as F
    from _exact import load, seeded_subset, training_data
    from sharpscope.landscape import SurfaceResult

    code, _, err = cli(["interpolate", str(runs / "sgd"), str(runs / "sam"), "--grid", "0:1:5", "--samples", "80",
                        "--out", str(tmp_path), "--no-progress"])
    assert code == 0, err
    (npz,) = tmp_path.glob("*.npz")
    got = SurfaceResult.load(npz)
    a, b = load(runs / "sgd"), load(runs / "sam")
    x, y = seeded_subset(*training_data(a), 80, seed=0)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    model = a.model.double().eval()

    def loss_at(t: float) -> float:
        mixed = {k: ((1 - t) * v.double() + t * sb[k].double()) if v.is_floating_point() else v for k, v in sa.items()}
        with torch.no_grad():
            return F.cross_entropy(torch.func.functional_call(model, mixed, (x,)), y).item()
    want = [loss_at(t) for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
    np.testing.assert_allclose(got.xs, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(got.loss, want, rtol=1e-6)  # measured 9.5e-8
    assert abs(want[0] - want[-1]) > 1e-2 * want[0]  # swapped endpoints fail (measured 10%)
    assert abs(want[2] - (want[0] + want[-1]) / 2) > 1e-4 * want[2]  # so do interpolated losses (1.2e-3)


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
