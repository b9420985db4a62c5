"""Loss landscapes follow the non-finite rule of every analysis (issue 23, item 9): NaN or
infinite weights at the centre (or an interpolation endpoint), or a non-finite loss at the
reference point (NaN data), raise NonFiniteLossError instead of mapping NaN silently; a loss
that blows up only away from the reference is kept in the map, where it belongs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharpscope.errors import NonFiniteLossError
from sharpscope.landscape import interpolate, surface


def _model(weight: float = 0.0) -> nn.Module:
    model = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(weight)
    return model


def _data(value: float = 1.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.full((4, 1), value, dtype=torch.float64), torch.zeros(4, 1, dtype=torch.float64))]


def _sqrt_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sqrt(1 - out^2): 1 at w = 0, NaN for |w x| > 1 (defined near the centre only)."""
    return torch.sqrt(1 - out.pow(2)).mean()


def _along_weight() -> list[dict[str, torch.Tensor]]:
    return [{"weight": torch.ones(1, 1, dtype=torch.float64)}]


def test_surface_with_infinite_centre_weights_raises() -> None:
    with pytest.raises(NonFiniteLossError, match="centre's weights.*weight"):
        surface(_model(float("inf")), F.mse_loss, _data(), _along_weight(), np.linspace(-1, 1, 5))


def test_surface_on_nan_data_raises_whether_or_not_the_centre_is_on_the_grid() -> None:
    with pytest.raises(NonFiniteLossError, match="at the centre"):
        surface(_model(), F.mse_loss, _data(float("nan")), _along_weight(), np.linspace(-1, 1, 5))
    with pytest.raises(NonFiniteLossError, match="every grid point"):
        surface(_model(), F.mse_loss, _data(float("nan")), _along_weight(), np.array([0.5, 1.0]))


def test_a_loss_that_blows_up_away_from_the_centre_is_kept_in_the_map() -> None:
    res = surface(_model(), _sqrt_loss, _data(), _along_weight(), np.linspace(-2, 2, 5))
    # w = -2, -1, 0, 1, 2: sqrt(1 - w^2) = nan, 0, 1, 0, nan
    np.testing.assert_allclose(res.loss, [np.nan, 0.0, 1.0, 0.0, np.nan], atol=1e-12)


def test_interpolation_refuses_non_finite_endpoints_and_nan_data() -> None:
    a, b = _model(0.0), _model(float("nan"))
    with pytest.raises(NonFiniteLossError, match="B's weights"):
        interpolate(a, b, F.mse_loss, _data(), np.linspace(0, 1, 3))
    with pytest.raises(NonFiniteLossError, match="A's weights"):
        interpolate(b, a, F.mse_loss, _data(), np.linspace(0, 1, 3))
    with pytest.raises(NonFiniteLossError, match=r"at A \(alpha = 0\)"):
        interpolate(_model(0.0), _model(1.0), F.mse_loss, _data(float("nan")), np.linspace(0, 1, 3))
    res = interpolate(_model(0.0), _model(2.0), _sqrt_loss, _data(), np.linspace(0, 1, 3))
    np.testing.assert_allclose(res.loss, [1.0, 0.0, np.nan], atol=1e-12)  # past B's pole: kept


def test_cli_surface_on_nan_data_is_one_line_and_exit_2(tmp_path: Path, cli) -> None:
    from sharpscope.train import TrainConfig, train

    rng = np.random.default_rng(0)
    npz = tmp_path / "d.npz"
    x = rng.normal(size=(64, 4)).astype(np.float32)
    np.savez(npz, X=x, y=np.arange(64) % 2)
    train(TrainConfig(optimizer="sgd", model="mlp", model_kwargs={"hidden": [4]}, data="npz", data_root=str(npz),
                      epochs=1, batch_size=32, keep_snapshots=False), tmp_path / "run")
    x[3, 1] = np.nan
    np.savez(npz, X=x, y=np.arange(64) % 2)
    code, _, err = cli(["surface", str(tmp_path / "run"), "--dim", "1", "--grid", "-1:1:3", "--no-progress"])
    assert code == 2, err
    errors = [ln for ln in err.splitlines() if ln.startswith("sharpscope: error:")]
    assert "Traceback" not in err and len(errors) == 1 and "NaN" in errors[0], err
    # (the npz reader refuses NaN inputs itself; the API rule above covers data from anywhere else)
