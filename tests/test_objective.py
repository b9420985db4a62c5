"""Objective: loss, gradient and HVPs over a data set against explicit autograd Hessians."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharpscope import ConfigError
from sharpscope.objective import Objective, parameter_groups, select_parameters


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Tanh(), nn.Dropout(0.3), nn.Linear(7, 3)).double()
    model.train()
    model(torch.randn(20, 5, dtype=torch.float64))  # running statistics away from their init
    return model


def _data(n: int = 23, batch: int = 8):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 5, dtype=torch.float64, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y, [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def exact_hessian(model: nn.Module, x, y, names: list[str]) -> torch.Tensor:
    """The explicit Hessian of the full-data mean loss in eval mode w.r.t. ``names``."""
    params = dict(model.named_parameters())
    fixed = {n: p.detach() for n, p in params.items() if n not in names}
    fixed.update(dict(model.named_buffers()))
    mode = model.training
    model.eval()

    def loss(*flat):
        out = torch.func.functional_call(model, {**fixed, **dict(zip(names, flat))}, (x,))
        return F.cross_entropy(out, y)

    blocks = torch.autograd.functional.hessian(loss, tuple(params[n].detach() for n in names))
    model.train(mode)
    sizes = [params[n].numel() for n in names]
    return torch.cat([torch.cat([blocks[i][j].reshape(sizes[i], sizes[j]) for j in range(len(names))], 1)
                      for i in range(len(names))], 0)


@pytest.mark.parametrize("mode", ["forward-over-reverse", "reuse-graph"])
def test_hvp_equals_explicit_hessian_over_uneven_batches(mode):
    model = _model()
    x, y, batches = _data()
    obj = Objective(model, F.cross_entropy, batches, hvp_mode=mode)
    H = exact_hessian(model, x, y, obj.names)
    assert obj.n == H.shape[0] == 5 * 7 + 7 + 7 + 7 + 7 * 3 + 3
    g = torch.Generator().manual_seed(2)
    v = torch.randn(obj.n, dtype=torch.float64, generator=g)
    V = torch.randn(obj.n, 4, dtype=torch.float64, generator=g)
    # float64 round-off of a few dozen accumulations: 1e-12 is ~1e4 ulps of entries of order 1
    torch.testing.assert_close(obj.hvp(v), H @ v, rtol=0, atol=1e-12)
    torch.testing.assert_close(obj.hvp(V), H @ V, rtol=0, atol=1e-12)
    assert obj.n_hvp == 5


def test_loss_and_gradient_are_the_full_data_mean():
    model = _model()
    x, y, batches = _data()
    obj = Objective(model, F.cross_entropy, batches)
    model.eval()
    full = F.cross_entropy(model(x), y)
    expected_grad = torch.autograd.grad(full, list(model.parameters()))
    model.train()
    assert obj.loss() == pytest.approx(full.item(), rel=1e-12)
    value, g = obj.value_and_grad()
    assert value == pytest.approx(full.item(), rel=1e-12) and torch.equal(g, obj.grad())
    torch.testing.assert_close(obj.grad(), torch.cat([t.reshape(-1) for t in expected_grad]), rtol=0, atol=1e-12)
    # at another point theta: the loss of the displaced model
    theta = obj.parameters_vector() + 0.1
    moved = _model()
    torch.nn.utils.vector_to_parameters(theta, moved.parameters())
    moved.eval()
    assert obj.loss(theta) == pytest.approx(F.cross_entropy(moved(x), y).item(), rel=1e-12)


def test_the_users_model_is_left_unchanged():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, _, batches = _data()
    for mode in ("forward-over-reverse", "reuse-graph"):
        obj = Objective(model, F.cross_entropy, batches, hvp_mode=mode)
        obj.loss(); obj.grad(); obj.hvp(torch.ones(obj.n, dtype=torch.float64))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_parameter_subsets_give_the_matching_hessian_block():
    model = _model()
    x, y, batches = _data()
    full = Objective(model, F.cross_entropy, batches)
    H = exact_hessian(model, x, y, full.names)
    sub = Objective(model, F.cross_entropy, batches, params="no-biasbn")
    assert sub.names == ["0.weight", "4.weight"]
    idx = torch.cat([torch.arange(0, 35), torch.arange(35 + 7 + 14, 35 + 7 + 14 + 21)])
    v = torch.randn(sub.n, dtype=torch.float64)
    torch.testing.assert_close(sub.hvp(v), H[idx][:, idx] @ v, rtol=0, atol=1e-12)


def test_parameter_selection_rules():
    model = _model()
    assert select_parameters(model) == [n for n, _ in model.named_parameters()]
    assert select_parameters(model, "4.*") == ["4.weight", "4.bias"]
    assert select_parameters(model, ["*.weight", "!1.*"]) == ["0.weight", "4.weight"]
    assert select_parameters(model, lambda n, p: p.dim() == 2) == ["0.weight", "4.weight"]
    with pytest.raises(ConfigError, match="matches no"):
        select_parameters(model, "nothing.*")
    assert parameter_groups(model) == {"0": ["0.weight", "0.bias"], "1": ["1.weight", "1.bias"],
                                       "4": ["4.weight", "4.bias"]}


def test_block_groups_follow_residual_blocks():
    from sharpscope.models import build_model, make_model_spec
    model = build_model(make_model_spec("resnet", (1, 8, 8), 10, depth=8, width=4))
    blocks = parameter_groups(model, by="block")
    assert "stages.0.0" in blocks and "stages.2.0" in blocks and "fc" in blocks
    assert all(n.startswith("stages.1.0.") for n in blocks["stages.1.0"])
    assert sum(len(v) for v in blocks.values()) == len(list(model.parameters()))


def test_bad_inputs():
    model = _model()
    _, _, batches = _data()
    with pytest.raises(ConfigError, match="hvp_mode"):
        Objective(model, F.cross_entropy, batches, hvp_mode="magic")
    with pytest.raises(ConfigError, match="no batches"):
        Objective(model, F.cross_entropy, [])
    with pytest.raises(ConfigError, match="pairs"):
        Objective(model, F.cross_entropy, [torch.zeros(3, 5)])
    obj = Objective(model, F.cross_entropy, batches)
    with pytest.raises(ConfigError, match="does not match"):
        obj.hvp(torch.zeros(obj.n + 1, dtype=torch.float64))
