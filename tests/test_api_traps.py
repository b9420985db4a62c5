"""API traps of issue 23, item 8: LookSAM driven by the two-step recipe, booleans in
``--optimizer-opt`` read strictly, one-point grids."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharpscope import SAM, WSAM, ConfigError, LookSAM, sam_step
from sharpscope.checks import bool_option
from sharpscope.landscape import parse_grid
from sharpscope.train import TrainConfig

TINY = ["--model", "mlp", "--model-opt", "hidden=[16]", "--n-train", "200", "--epochs", "1", "--batch-size", "50",
        "--no-progress"]


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x, y = torch.randn(32, 6, dtype=torch.float64), torch.randint(0, 3, (32,))
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return model, x, y, calls


def _flat(model):
    return torch.cat([w.detach().reshape(-1) for w in model.parameters()])


def test_looksam_two_step_recipe_raises_on_a_reuse_step():
    """The README's recipe (first_step, backward at w + e, second_step) on LookSAM's second step
    raises instead of running SAM's full step, leaving w and the gradient at w untouched;
    second_step() then, and the protocol that asks perturbs_this_step(), give the closure/sam_step
    path's weights bit for bit with its 12 passes over 10 steps (k = 5), where SAM takes 20."""
    model, x, y, calls = _problem()
    opt = LookSAM(model.parameters(), torch.optim.SGD, rho=0.05, k=5, lr=0.2)
    F.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=True)  # step 1: a full SAM step
    F.cross_entropy(model(x), y).backward()
    opt.second_step(zero_grad=True)
    F.cross_entropy(model(x), y).backward()  # step 2: reuses g_v
    w, g = _flat(model).clone(), [p.grad.clone() for p in model.parameters()]
    with pytest.raises(ConfigError, match=r"LookSAM step 2 reuses .*second_step\(\) now"):
        opt.first_step(zero_grad=True)
    assert torch.equal(_flat(model), w) and all(torch.equal(p.grad, q) for p, q in zip(model.parameters(), g))
    opt.second_step(zero_grad=True)
    for _ in range(8):  # the protocol for hand-driven LookSAM
        F.cross_entropy(model(x), y).backward()
        if opt.perturbs_this_step():
            opt.first_step(zero_grad=True)
            F.cross_entropy(model(x), y).backward()
        opt.second_step(zero_grad=True)
    assert calls[0] == 12

    ref, _, _, ref_calls = _problem()
    ref_opt = LookSAM(ref.parameters(), torch.optim.SGD, rho=0.05, k=5, lr=0.2)
    for _ in range(10):
        sam_step(ref, F.cross_entropy, x, y, ref_opt)
    assert ref_calls[0] == 12 and torch.equal(_flat(model), _flat(ref))
    sam_model, _, _, _ = _problem()  # and that is not SAM
    sam = SAM(sam_model.parameters(), torch.optim.SGD, rho=0.05, lr=0.2)
    for _ in range(10):
        sam_step(sam_model, F.cross_entropy, x, y, sam)
    assert (_flat(sam_model) - _flat(ref)).abs().max() > 1e-6


# -- booleans read strictly ------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [("true", True), ("False", False), ("yes", True), ("no", False),
                                         ("on", True), ("OFF", False), ("1", True), ("0", False), (1, True),
                                         (0, False), (True, True), (False, False)])
def test_bool_option_reads_the_usual_spellings(text, value):
    assert bool_option("x", text) is value


@pytest.mark.parametrize("text", ["maybe", "", "2", 2, -1, 0.0, 1.0, None, "nein"])
def test_bool_option_refuses_everything_else(text):
    with pytest.raises(ConfigError, match=r"x must be true or false"):
        bool_option("x", text)


def test_wsam_decouple_no_is_coupled_wsam():
    """``decouple=no`` was bool("no") = True (decoupled WSAM): now False, stored as False, and the
    optimizer the run builds is the coupled one; ``maybe`` is refused; the classes take real bools."""
    config = TrainConfig(optimizer="wsam", optimizer_options={"decouple": "no"})
    assert config.optimizer_options == {"decouple": False}
    from sharpscope.train.config import make_optimizer
    assert make_optimizer(config, nn.Linear(2, 2)).decouple is False
    with pytest.raises(ConfigError, match="decouple of wsam must be true or false"):
        TrainConfig(optimizer="wsam", optimizer_options={"decouple": "maybe"})
    w = [torch.zeros(1, requires_grad=True)]
    with pytest.raises(ConfigError, match="decouple must be True or False"):
        WSAM(w, torch.optim.SGD, lr=0.1, decouple="no")
    for flag in ("adaptive", "perturbation_weight_decay"):
        with pytest.raises(ConfigError, match=f"{flag} must be True or False"):
            SAM(w, torch.optim.SGD, lr=0.1, **{flag: "no"})


def test_cli_optimizer_opt_booleans(tmp_path, cli):
    from sharpscope.checkpoint import read_checkpoint

    out = tmp_path / "wsam"
    code, _, err = cli(["train", *TINY, "--optimizer", "wsam", "--optimizer-opt", "decouple=no", "--out", str(out)])
    assert code == 0, err
    assert read_checkpoint(out / "checkpoint.pt")["config"]["optimizer_options"] == {"decouple": False}
    code, stdout, err = cli(["train", *TINY, "--optimizer", "wsam", "--optimizer-opt", "decouple=maybe",
                             "--out", str(tmp_path / "bad")])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "decouple" in err and "'maybe'" in err
    assert not (tmp_path / "bad").exists()
    # built-in model options were strict already: true/false only, one line otherwise
    code, _, err = cli(["train", *TINY, "--model-opt", "bn=no", "--out", str(tmp_path / "bn")])
    assert code == 2 and "'bn' must be true or false" in err and len(err.strip().splitlines()) == 1


# -- one-point grids ------------------------------------------------------------------------
def test_a_one_point_grid_is_its_single_point_or_refused():
    np.testing.assert_array_equal(parse_grid("0:0:1"), [0.0])
    np.testing.assert_array_equal(parse_grid("0.5:0.5:1"), [0.5])
    np.testing.assert_array_equal(parse_grid("-1:1:2"), [-1.0, 1.0])
    for text in ("-1:1:1", "0:1:1"):  # linspace would keep MIN alone, not the centre
        with pytest.raises(ConfigError, match="needs POINTS >= 2"):
            parse_grid(text)


def test_cli_surface_refuses_a_one_point_range(tmp_path, cli):
    run = tmp_path / "run"
    assert cli(["train", *TINY, "--optimizer", "sgd", "--out", str(run)])[0] == 0
    for extra in (["--grid", "-1:1:1"], ["--grid", "0:0:1", "--range", "auto"]):
        code, stdout, err = cli(["surface", str(run), "--dim", "1", *extra, "--samples", "32", "--no-progress",
                                 "--out", str(tmp_path / "s")])
        assert code == 2 and len(err.strip().splitlines()) == 1 and "POINTS >= 2" in err
        assert not (tmp_path / "s").exists()
    code, stdout, err = cli(["surface", str(run), "--dim", "1", "--grid", "0:0:1", "--samples", "32", "--no-progress",
                             "--out", str(tmp_path / "s"), "--json", str(tmp_path / "s.json")])
    assert code == 0, err
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["xs"] == [0.0] and summary["summary"]["centre_loss"] is not None  # the centre alone
