"""The edge of stability beside lambda_max (sharpscope.train.tracking)."""

from __future__ import annotations

import pytest

from sharpscope import plots
from sharpscope.errors import ConfigError
from sharpscope.experiments.runs import refuse_other_settings
from sharpscope.train.tracking import sam_stability_threshold, stability_threshold
from sharpscope.train import TrainConfig, train


def test_gradient_descent_threshold():
    assert stability_threshold(0.1) == pytest.approx(20.0)
    assert stability_threshold(0.1, momentum=0.9) == pytest.approx(38.0)


@pytest.mark.parametrize("lr,rho,g,beta", [(0.1, 0.05, 1.0, 0.0), (0.2, 0.05, 0.01, 0.9), (0.01, 0.5, 3.0, 0.5)])
def test_sam_threshold_is_where_the_effective_step_reaches_the_gd_edge(lr, rho, g, beta):
    """SAM's gradient along an eigenvector of eigenvalue lambda is lambda (1 + rho lambda / ||g||)
    times the component: at the threshold lr lambda (1 + rho lambda / ||g||) = 2 + 2 beta exactly;
    without momentum the iteration x <- (1 - m) x with that multiplier m is stable just below it
    and unstable just above."""
    lam = sam_stability_threshold(lr, rho, g, beta)
    assert lr * lam * (1 + rho * lam / g) == pytest.approx(2 + 2 * beta, rel=1e-12)
    assert lam < stability_threshold(lr, beta)
    if beta == 0:
        for factor, stable in ((0.99, True), (1.01, False)):
            mult = lr * factor * lam * (1 + rho * factor * lam / g)
            assert (abs(1 - mult) <= 1) is stable


def test_sam_threshold_limits():
    assert sam_stability_threshold(0.1, 0.0, 1.0) == stability_threshold(0.1)
    assert sam_stability_threshold(0.1, 1e-9, 1.0) == pytest.approx(stability_threshold(0.1), rel=1e-6)
    assert sam_stability_threshold(0.1, 0.05, 0.0) == 0.0


def test_tracked_runs_record_the_edges_and_the_figure_draws_them(tmp_path):
    """--track lambda_max adds the edge at the epoch's last learning rate (and SAM's own for SAM,
    not for SGD); the tracking figure draws them on a log axis."""
    base = dict(model="mlp", model_kwargs={"hidden": [16]}, n_train=200, epochs=2, batch_size=50,
                keep_snapshots=False, track=["lambda_max"], track_samples=64)
    sam = train(TrainConfig(optimizer="sam", **base), tmp_path / "sam").metrics
    sgd = train(TrainConfig(optimizer="sgd", **base), tmp_path / "sgd").metrics
    for rec in sam:
        assert rec["edge_of_stability"] == pytest.approx(stability_threshold(rec["lr"], 0.9))
        assert 0 < rec["sam_edge_of_stability"] < rec["edge_of_stability"]
    assert all("sam_edge_of_stability" not in rec and "edge_of_stability" in rec for rec in sgd)
    files = plots.plot_tracking({"SAM": sam, "SGD": sgd}, ["lambda_max"], tmp_path / "eos")
    assert files[0].stat().st_size > 10_000


def test_tracking_options_do_not_make_a_run_another_run(tmp_path):
    """What is tracked does not change the weights, so a folder tracked otherwise is reused;
    a training option still refuses."""
    cfg = TrainConfig(optimizer="sgd", model="mlp", model_kwargs={"hidden": [8]}, n_train=64, epochs=1,
                      track=["gradcos"])
    train(cfg, tmp_path / "run")
    refuse_other_settings(tmp_path / "run", TrainConfig(**{**cfg.to_dict(), "track": ["gradcos", "lambda_max"],
                                                          "track_every": 3}).to_dict())
    with pytest.raises(ConfigError, match="other settings \\(lr\\)"):
        refuse_other_settings(tmp_path / "run", TrainConfig(**{**cfg.to_dict(), "lr": 0.01}).to_dict())
