"""Custom per-batch metrics on loss landscapes: exact values against hand-made loops, batch
weighting, the model left untouched, resume, refusals, and the CLI's --metric end to end."""

from __future__ import annotations

import copy
import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sharpscope import ConfigError
from sharpscope.landscape import SurfaceResult, import_metric, interpolate, random_direction, surface
from sharpscope.models import build_model, make_model_spec

from _quadratic import LinearRegression, regression_data
from _runs import tiny_run


def _regression():
    return LinearRegression(), regression_data()[2]


def _cnn64():
    torch.manual_seed(0)
    model = build_model(make_model_spec("cnn", (1, 8, 8), 10, channels=[4, 6], hidden=12, bn=True)).double()
    model.train()
    model(torch.randn(16, 1, 8, 8, dtype=torch.float64))  # move BN running statistics
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (40,), generator=g)
    return model, [(x[:16], y[:16]), (x[16:32], y[16:32]), (x[32:], y[32:])]  # 16, 16, 8 examples


def mse_metric(model, batch):
    return F.mse_loss(model(batch[0]), batch[1])


def sq_norm(model, batch):
    return model(batch[0]).square().sum(1).mean()  # squared norm of the outputs, mean over the examples


def test_a_metric_equal_to_the_loss_reproduces_the_loss_grid_exactly():
    model, batches = _regression()
    d1, d2 = (random_direction(model, norm="none", ignore="none", seed=s) for s in (1, 2))
    res = surface(model, F.mse_loss, batches, [d1, d2], np.linspace(-1, 2, 5), np.linspace(-0.5, 0.5, 3),
                  metrics={"mse": mse_metric})
    assert res.metrics["mse"].shape == res.loss.shape == (3, 5)
    np.testing.assert_array_equal(res.metrics["mse"], res.loss)
    line = interpolate(model, LinearRegression().requires_grad_(False).double(), F.mse_loss, batches,
                       np.linspace(-0.5, 1.5, 5), metrics={"mse": mse_metric})
    np.testing.assert_array_equal(line.metrics["mse"], line.loss)


@pytest.mark.parametrize("chunk_size", [None, 5, 1000])
def test_a_hand_made_metric_matches_a_loop_over_perturbed_copies(chunk_size):
    model, batches = _cnn64()
    d1, d2 = random_direction(model, seed=0), random_direction(model, seed=1)
    xs, ys = np.array([-0.5, 0.0, 0.7]), np.array([-0.3, 0.4])
    res = surface(model, F.cross_entropy, batches, [d1, d2], xs, ys, chunk_size=chunk_size,
                  metrics={"sq_norm": sq_norm, "logit_mean": lambda m, b: m(b[0]).mean()})
    for i, yv in enumerate(ys):
        for j, xv in enumerate(xs):
            other = copy.deepcopy(model).eval()
            with torch.no_grad():
                for n, p in other.named_parameters():
                    p.add_(xv * d1[n] + yv * d2[n])
                outs = torch.cat([other(x) for x, _ in batches])
            assert res.metrics["sq_norm"][i, j] == pytest.approx(outs.square().sum(1).mean().item(), rel=1e-12)
            assert res.metrics["logit_mean"][i, j] == pytest.approx(outs.mean().item(), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("cache,sizes", [(False, [16, 16, 8]), (True, [7, 7, 7, 7, 7, 5])])
def test_batches_are_weighted_by_their_size(cache, sizes):
    model, batches = _cnn64()  # batches of 16, 16 and 8 examples
    seen = []

    def size(m, batch):
        seen.append(len(batch[1]))
        return torch.tensor(float(len(batch[1])))

    d1 = random_direction(model, seed=0)
    # streamed: the batches as given; cached with chunk_size 7: the 40 examples re-split into chunks of 7
    res = surface(model, F.cross_entropy, batches, [d1], [0.0], chunk_size=7, cache=cache, metrics={"size": size})
    assert seen == sizes
    assert res.metrics["size"][0] == sum(n * n for n in sizes) / 40  # 14.4 (unweighted: 13.33) and 6.75


def test_the_model_is_left_untouched_and_the_metric_sees_eval_mode_without_grad():
    model, batches = _cnn64()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = []

    def probe(m, batch):
        flags.append((m.training, torch.is_grad_enabled(), m is model))
        return m(batch[0]).mean()

    d1 = random_direction(model, seed=0)
    surface(model, F.cross_entropy, batches, [d1], [-1.0, 1.0], metrics={"probe": probe})
    assert flags and all(f == (False, False, True) for f in flags)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(m.training for m in model.modules())


def test_resume_keeps_the_metric_values(tmp_path):
    model, batches = _regression()
    d1, d2 = (random_direction(model, norm="none", ignore="none", seed=s) for s in (1, 2))
    xs, ys = np.linspace(-1, 1, 4), np.linspace(-1, 1, 3)
    metrics = {"sq": sq_norm}
    full = surface(model, F.mse_loss, batches, [d1, d2], xs, ys, metrics=metrics)

    class Stop(Exception):
        pass

    def stop(k, lv, av):
        if k == 7:
            raise Stop

    path = tmp_path / "p.npz"
    with pytest.raises(Stop):
        surface(model, F.mse_loss, batches, [d1, d2], xs, ys, resume_path=path, save_every=4, on_point=stop,
                metrics=metrics)
    with np.load(path, allow_pickle=False) as z:
        assert z["done"].sum() == 8 and np.isfinite(z["metric/sq"][:8]).all()
    seen = []
    resumed = surface(model, F.mse_loss, batches, [d1, d2], xs, ys, resume_path=path, metrics=metrics,
                      on_point=lambda k, lv, av: seen.append(k))
    assert min(seen) == 8
    np.testing.assert_array_equal(resumed.metrics["sq"], full.metrics["sq"])
    # a partial file without the metric is not reused for a run with it (and vice versa)
    seen.clear()
    surface(model, F.mse_loss, batches, [d1, d2], xs, ys, resume_path=tmp_path / "q.npz")
    again = surface(model, F.mse_loss, batches, [d1, d2], xs, ys, resume_path=tmp_path / "q.npz", metrics=metrics,
                    on_point=lambda k, lv, av: seen.append(k))
    assert len(seen) == 12
    np.testing.assert_array_equal(again.metrics["sq"], full.metrics["sq"])


def test_save_load_and_summary(tmp_path):
    model, batches = _regression()
    d1 = random_direction(model, norm="none", ignore="none", seed=1)
    res = surface(model, F.mse_loss, batches, [d1], [-1.0, 0.0, 1.0], metrics={"sq": sq_norm})
    res.save(tmp_path / "s.npz")
    back = SurfaceResult.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.metrics["sq"], res.metrics["sq"])
    m = json.loads(json.dumps(res.to_dict()))["summary"]["metrics"]["sq"]
    assert m["centre"] == res.metrics["sq"][1] and m["min"] == res.metrics["sq"].min()
    assert res.value_at(0.5, metric="sq") == pytest.approx(res.metrics["sq"][1:].mean())
    assert "metrics" not in surface(model, F.mse_loss, batches, [d1], [0.0]).summary()


def test_non_finite_values_are_kept_like_the_loss():
    model, batches = _regression()
    d1 = random_direction(model, norm="none", ignore="none", seed=1)
    res = surface(model, F.mse_loss, batches, [d1], [0.0, 1.0],
                  metrics={"nan": lambda m, b: torch.tensor(math.nan, dtype=torch.float64)})
    assert np.isnan(res.metrics["nan"]).all()
    assert res.summary()["metrics"]["nan"] == {"centre": None, "min": None, "max": None}


@pytest.mark.parametrize("metrics,fragment", [
    ({"loss": sq_norm}, "clashes"), ({"accuracy": sq_norm}, "clashes"), ({"a b": sq_norm}, "letters"),
    ({"v": lambda m, b: m(b[0]).mean(1)}, "metric 'v' returned a tensor of shape (8,)"),
    ({"s": lambda m, b: "text"}, "metric 's' returned a str"), ({"f": 3}, "callable"),
])
def test_refusals(metrics, fragment):
    model, batches = _regression()
    d1 = random_direction(model, norm="none", ignore="none", seed=1)
    with pytest.raises(ConfigError) as info:
        surface(model, F.mse_loss, batches, [d1], [0.0], chunk_size=8, metrics=metrics)
    assert fragment in str(info.value)


METRIC_MODULE = '''
import torch

def logit_mean(model, batch):
    return model(batch[0]).mean()

def sq_norm(model, batch):
    return model(batch[0]).square().sum(1).mean()

not_callable = 3
'''


@pytest.fixture
def metric_module(tmp_path, monkeypatch):
    (tmp_path / "my_metrics_mod.py").write_text(METRIC_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_metrics_mod"
    sys.modules.pop("my_metrics_mod", None)


def test_import_metric(metric_module):
    with pytest.raises(ConfigError, match="--trust-factory"):
        import_metric(f"{metric_module}:sq_norm")
    name, fn = import_metric(f"{metric_module}:sq_norm", allow_import=True)
    assert name == "sq_norm" and fn.__name__ == "sq_norm"
    assert import_metric(f"sq={metric_module}:sq_norm", allow_import=True)[0] == "sq"
    with pytest.raises(ConfigError, match="not a callable"):
        import_metric(f"{metric_module}:not_callable", allow_import=True)
    with pytest.raises(ConfigError, match="clashes"):
        import_metric(f"loss={metric_module}:sq_norm", allow_import=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("metric_run")
    return tiny_run(root / "run")


def test_cli_surface_with_metrics(run, metric_module, tmp_path, cli):
    code, out, err = cli(["surface", str(run), "--grid", "-1:1:3,-1:1:3", "--samples", "32", "--no-progress",
                          "--metric", f"{metric_module}:logit_mean", "--metric", f"sq={metric_module}:sq_norm",
                          "--trust-factory", "--plot", "--json", "-", "--out", str(tmp_path)])
    assert code == 0, err
    report = json.loads(out[out.index("{"):])
    assert set(report["summary"]["metrics"]) == {"logit_mean", "sq"}
    res = SurfaceResult.load(tmp_path / "surface_2d.npz")
    assert res.metrics["sq"].shape == (3, 3) and (res.metrics["sq"] >= 0).all()
    assert report["summary"]["metrics"]["sq"]["centre"] == pytest.approx(res.metrics["sq"][1, 1])
    for name in ("surface_2d_logit_mean_contour.png", "surface_2d_sq_contour.png", "surface_2d_contour.png"):
        assert (tmp_path / name).stat().st_size > 0
    code, out, err = cli(["surface", str(run), "--dim", "1", "--grid", "-1:1:3", "--samples", "32", "--no-progress",
                          "--metric", f"{metric_module}:sq_norm", "--trust-factory", "--plot", "--out", str(tmp_path)])
    assert code == 0, err
    assert (tmp_path / "surface_1d_sq_norm.png").stat().st_size > 0


def test_cli_surface_3d_with_a_metric_draws_its_slices(run, metric_module, tmp_path, cli):
    """--dim 3 --metric --plot drew the metric as a 2-D contour of a 3-D grid and failed after
    the work; its figure is the metric's slices, and the summary (of the centre slice) has it."""
    code, out, err = cli(["surface", str(run), "--dim", "3", "--grid", "-1:1:3", "--samples", "32", "--no-progress",
                          "--metric", f"sq={metric_module}:sq_norm", "--trust-factory", "--plot", "--json", "-",
                          "--out", str(tmp_path)])
    assert code == 0, err
    assert (tmp_path / "surface_3d_sq_slices.png").stat().st_size > 0
    report = json.loads(out[out.index("{"):])
    res = SurfaceResult.load(tmp_path / "surface_3d.npz")
    assert report["summary"]["metrics"]["sq"]["centre"] == pytest.approx(res.metrics["sq"][1, 1, 1])


def test_cli_interpolate_with_a_metric(run, metric_module, tmp_path, cli):
    code, out, err = cli(["interpolate", str(run), str(run), "--grid", "0:1:3", "--samples", "32", "--no-progress",
                          "--metric", f"{metric_module}:sq_norm", "--trust-factory", "--plot", "--json", "-",
                          "--out", str(tmp_path)])
    assert code == 0, err
    m = json.loads(out[out.index("{"):])["summary"]["metrics"]["sq_norm"]
    assert m["centre"] == pytest.approx(m["at_b"], rel=1e-12)  # A = B: a constant line
    assert (tmp_path / "interpolation_sq_norm.png").stat().st_size > 0


@pytest.mark.parametrize("spec,trust,fragment", [
    ("{mod}:sq_norm", False, "--trust-factory"),
    ("no_such_module_xyz:fn", True, "cannot import module 'no_such_module_xyz'"),
    ("{mod}:missing", True, "has no attribute 'missing'"),
    ("{mod}", True, "package.module:function"),
    ("loss={mod}:sq_norm", True, "clashes"),
])
@pytest.mark.parametrize("verb", ["surface", "interpolate"])
def test_cli_refusals_are_one_line(run, metric_module, cli, tmp_path, spec, trust, fragment, verb):
    args = [str(run)] * (1 if verb == "surface" else 2)
    code, _, err = cli([verb, *args, "--samples", "32", "--no-progress", "--out", str(tmp_path / "out"),
                        "--metric", spec.format(mod=metric_module), *(["--trust-factory"] if trust else [])])
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "out").exists()  # refused before any work
