"""Weight-spectrum measures (sharpscope.weight_spectra): the power-law fit on samples of known
exponent, the metrics by hand, and weightwatcher 0.7.7 layer by layer."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from sharpscope.errors import ConfigError
from sharpscope.weight_spectra import fit_power_law, layer_eigenvalues, weight_spectra


@pytest.mark.parametrize("alpha", [2.0, 3.5])
def test_power_law_fit_recovers_a_known_exponent(alpha):
    """2,000 draws of a Pareto tail p(x) ~ x^-alpha above 1: the KS-chosen fit recovers alpha
    within 4 standard errors of the MLE, (alpha - 1) / sqrt(n) (Clauset et al. 2009)."""
    rng = np.random.default_rng(0)
    x = (1 - rng.random(2000)) ** (-1 / (alpha - 1))
    est, xmin, d = fit_power_law(x)
    assert abs(est - alpha) < 4 * (alpha - 1) / math.sqrt(2000)
    assert 1.0 <= xmin < 3.0 and 0 < d < 0.05


def test_metrics_by_hand():
    """W = diag(3, 2, 1, ...) (10 x 10): eigenvalues 9, 4, 1, ...; log_norm = log10(sum),
    log_spectral_norm = log10(9), stable rank = sum / 9; conv slices are pooled and halved."""
    w = torch.diag(torch.arange(10, 0, -1, dtype=torch.float64) / 3.0)
    lin = nn.Linear(10, 10, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(w)
    evals = np.sort((np.arange(10, 0, -1) / 3.0) ** 2)
    assert np.allclose(layer_eigenvalues(lin), evals, rtol=1e-14)
    res = weight_spectra(nn.Sequential(lin))
    layer = res.layers[0]
    assert layer.log_norm == pytest.approx(math.log10(evals.sum()), rel=1e-14)
    assert layer.log_spectral_norm == pytest.approx(math.log10(evals.max()), rel=1e-14)
    assert layer.stable_rank == pytest.approx(evals.sum() / evals.max(), rel=1e-14)
    assert layer.alpha_weighted == pytest.approx(layer.alpha * math.log10(evals.max()), rel=1e-14)
    conv = nn.Conv2d(10, 10, 2, bias=False).double()
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, 0, 0] = w
        conv.weight[:, :, 1, 1] = 2 * w
    expected = np.sort(np.concatenate([evals, 4 * evals, np.zeros(20)]) / 2)
    assert np.allclose(layer_eigenvalues(conv), expected, rtol=1e-14, atol=1e-14)


def test_small_layers_are_skipped_and_a_model_without_layers_is_refused():
    res = weight_spectra(nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3)))
    assert [layer.name for layer in res.layers] == ["0"] and res.skipped == ["2"]
    with pytest.raises(ConfigError, match="no Linear or Conv2d"):
        weight_spectra(nn.Sequential(nn.ReLU()))


def _cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 24, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(24 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))


@pytest.mark.filterwarnings("ignore:Passing a dict to DataFrame.from_records")  # inside weightwatcher, pandas 3
@pytest.mark.parametrize("seed", [0, 1])
def test_every_layer_matches_weightwatcher(seed):
    """weightwatcher 0.7.7's ``analyze()`` (its defaults) on a CNN with a 3x3 conv of 3 -> 16
    (9 x 3 eigenvalues, its small-sample fit), a 16 -> 24 conv and two linear layers: every metric
    of every layer within 1e-12 relative (both in float64 from the same singular values; 1.7e-15
    measured on the digits CNNs)."""
    ww = pytest.importorskip("weightwatcher")
    logging.disable(logging.WARNING)
    try:
        model = _cnn(seed)
        details = ww.WeightWatcher(model=model).analyze(plot=False)
    finally:
        logging.disable(logging.NOTSET)
    ours = weight_spectra(model)
    assert len(details) == len(ours.layers) == 4
    pairs = [("alpha", "alpha"), ("alpha_weighted", "alpha_weighted"), ("log_norm", "log_norm"),
             ("log_spectral_norm", "log_spectral_norm"), ("log_alpha_norm", "log_alpha_norm"),
             ("stable_rank", "stable_rank"), ("xmin", "xmin"), ("D", "ks_distance")]
    for (_, row), layer in zip(details.iterrows(), ours.layers):
        for theirs, mine in pairs:
            assert getattr(layer, mine) == pytest.approx(float(row[theirs]), rel=1e-12, abs=1e-12), (layer.name, mine)


def test_cli_and_correlate_measure(cli, tmp_path):
    import json

    from sharpscope.experiments import measure_runs as mr
    from sharpscope.train import TrainConfig, train

    train(TrainConfig(optimizer="sgd", n_train=128, epochs=1, keep_snapshots=False), tmp_path / "run")
    code, out, err = cli(["weights", str(tmp_path / "run"), "--json", "-"])
    assert code in (0, None), err
    report = json.loads(out)
    assert len(report["layers"]) == 4 and set(report["summary"]) >= {"alpha", "stable_rank"}
    row = mr.measure_runs([tmp_path / "run"], ["weights"], mr.MeasureSettings())[0]
    assert row["ww_alpha"] == pytest.approx(report["summary"]["alpha"])
