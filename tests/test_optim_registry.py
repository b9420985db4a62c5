"""The optimizer registry (sharpscope.optim.registry): one table built from the classes.

A SAM variant is one class: it is trained by ``TrainConfig`` / ``train``, listed by
``sharpscope train --help`` and refused where it lacks a capability without any other
sharpscope file knowing it (the toy variant below lives in this test only).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

import sharpscope.train as st
from sharpscope.checkpoint import load_checkpoint
from sharpscope.errors import ConfigError
from sharpscope.experiments.sweep import PERTURBATION_OPTIONS, SweepConfig, uses_option
from sharpscope.optim import ASAM, RSAM, SAM, SGD, registry
from sharpscope.train import TrainConfig, train
from sharpscope.train.config import make_optimizer
from sharpscope.train.loop import check_ranks

TINY = dict(model="mlp", model_kwargs={"hidden": [16]}, data="synthetic", n_train=120, epochs=2, batch_size=40,
            keep_snapshots=False, seed=3)


def test_the_table_is_what_the_seven_places_declared_before():
    """The values OPTIMIZERS, DEFAULT_RHO, VARIANTS, M_SAM_OPTIMIZERS and sweep.uses_option held
    as literals before the registry, now read off the classes."""
    assert st.OPTIMIZERS == ("sgd", "adamw", "sam", "asam", "rsam", "gsam", "wsam", "looksam", "fsam")
    assert st.DEFAULT_RHO == {"sgd": 0.0, "adamw": 0.0, "sam": 0.05, "asam": 0.5, "rsam": 0.05, "gsam": 0.05, "wsam": 0.05,
                              "looksam": 0.05, "fsam": 0.05}
    assert {k: v[1] for k, v in st.VARIANTS.items()} == {
        "gsam": ("alpha", "rho_min"), "wsam": ("gamma", "decouple"), "looksam": ("k", "alpha"),
        "fsam": ("sigma", "lmbda")}
    assert st.M_SAM_OPTIMIZERS == ("sam", "asam", "rsam")
    for spec in registry.specs():  # m-SAM, the scaler and ranks: stated once, on the class
        flags = (spec.supports_m, spec.supports_scaler, spec.supports_ranks)
        assert flags == ((False,) * 3 if spec.name in st.VARIANTS else (spec.perturbs, True, True))
        if spec.perturbs:  # what sam_step reads off an instance is the same flag
            opt = spec.cls(nn.Linear(2, 2).parameters(), torch.optim.SGD, lr=0.1)
            assert (opt.supports_m, opt.supports_scaler) == flags[:2]
    assert [s.name for s in registry.specs() if s.supports_second_order] == ["sam"]
    assert registry.get("sgd").supports_scaler and registry.get("sgd").supports_ranks
    assert not registry.get("sgd").supports_m
    wsam = {o.name: o for o in registry.get("wsam").options}
    assert wsam["decouple"].is_bool and wsam["decouple"].default is True and wsam["gamma"].annotation is float


def test_each_name_builds_its_class():
    model = nn.Linear(3, 2)
    kinds = {name: type(make_optimizer(TrainConfig(optimizer=name, **TINY), model)) for name in st.OPTIMIZERS}
    assert kinds["sgd"] is SGD and issubclass(SGD, torch.optim.SGD)
    assert kinds["sam"] is SAM and kinds["asam"] is ASAM and kinds["rsam"] is RSAM
    asam = make_optimizer(TrainConfig(optimizer="asam", **TINY), model)
    assert [g["adaptive"] for g in asam.param_groups] == [True, False]  # the official rule: weights only


def test_unknown_names_are_refused_with_the_choices():
    with pytest.raises(ConfigError, match="unknown optimizer 'adam'; choose one of sgd, adamw, sam, asam"):
        TrainConfig(optimizer="adam")
    with pytest.raises(ConfigError, match="unknown optimizer"):
        registry.get("adam")
    assert registry.lookup("adam") is None


@pytest.fixture
def toy() -> Iterator[type]:
    """A SAM variant defined here only: SAM with an option that doubles rho (exactly: 0.05 * 2 is
    0.1 in floating point), registered by its decorator and removed afterwards."""

    @registry.register
    class ToySAM(SAM):
        name = "toysam"
        summary = "a test's variant"
        option_names = ("double",)

        def __init__(self, params: Any, base_optimizer: type[torch.optim.Optimizer], rho: float = 0.05,
                     double: bool = False, **kwargs: Any) -> None:
            super().__init__(params, base_optimizer, rho=rho * 2 if double else rho, **kwargs)
            self.double = double

    try:
        yield ToySAM
    finally:
        registry.unregister("toysam")
    assert "toysam" not in st.OPTIMIZERS


def test_a_variant_is_one_class_trained_through_train_config(tmp_path, toy):
    assert st.OPTIMIZERS[-1] == "toysam" and st.DEFAULT_RHO["toysam"] == 0.05
    config = TrainConfig(optimizer="toysam", optimizer_options={"double": "yes"}, **TINY)  # typed: bool
    assert config.optimizer_options == {"double": True}
    result = train(config, tmp_path / "toy")
    reference = train(TrainConfig(optimizer="sam", rho=0.1, **TINY), tmp_path / "sam")
    a, b = (load_checkpoint(r.checkpoint).model.state_dict() for r in (result, reference))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit SAM at rho 0.1
    assert make_optimizer(config, nn.Linear(2, 2)).double is True


def test_a_variant_gets_only_the_capabilities_it_declares(toy):
    assert not (toy.supports_m or toy.supports_scaler or toy.supports_ranks or toy.supports_second_order)
    with pytest.raises(ConfigError, match="m \\(m-SAM\\) needs --optimizer sam, asam or rsam, not toysam"):
        TrainConfig(optimizer="toysam", m=8, **TINY)
    with pytest.raises(ConfigError, match="fp16"):
        TrainConfig(optimizer="toysam", amp="fp16", **TINY)
    with pytest.raises(ConfigError, match="--second-order needs --optimizer sam with"):
        TrainConfig(optimizer="toysam", second_order=True, **TINY)
    with pytest.raises(ConfigError, match="single process"):
        check_ranks(TrainConfig(optimizer="toysam", **TINY), 2)
    with pytest.raises(ConfigError, match="has no option 'triple'; its options: double"):
        TrainConfig(optimizer="toysam", optimizer_options={"triple": True}, **TINY)
    with pytest.raises(ConfigError, match="double of toysam must be true or false"):
        TrainConfig(optimizer="toysam", optimizer_options={"double": "maybe"}, **TINY)
    # what a sweep reads of it: the SAM family's options, not m (no m-SAM) and not eta (ASAM's)
    assert [o for o in PERTURBATION_OPTIONS if uses_option("toysam", o)] == \
        ["rho", "p", "second_order", "same_dropout_mask", "perturbation_weight_decay"]
    base = {k: v for k, v in TINY.items() if k != "seed"}
    runs = SweepConfig(grid={"optimizer": "sam,toysam", "m": "none,8"}, seeds=1, base=base).runs()
    assert sorted(r.label for r in runs) == ["sam m=8 seed=0", "sam m=none seed=0", "toysam seed=0"]


def test_a_subclass_states_its_capabilities_again():
    @registry.register
    class Sub(RSAM):
        name = "subrsam"
        supports_m = True

    try:
        assert Sub.supports_m and not Sub.supports_scaler and not Sub.supports_ranks  # RSAM has all three
        assert RSAM.supports_scaler and "subrsam" in st.M_SAM_OPTIMIZERS
        TrainConfig(optimizer="subrsam", m=8, **TINY)  # m-SAM accepted: it said so
    finally:
        registry.unregister("subrsam")


def test_registration_mistakes_are_refused():
    class Nameless(SAM):
        pass

    with pytest.raises(TypeError, match="its own lowercase registry name"):
        registry.register(Nameless)

    class Taken(SAM):
        name = "sam"

    with pytest.raises(TypeError, match="'sam' is taken by SAM"):
        registry.register(Taken)

    class Unknown(SAM):
        name = "unknownopt"
        option_names = ("gamma",)

    with pytest.raises(TypeError, match="names 'gamma', which its __init__ does not take"):
        registry.register(Unknown)
    assert "unknownopt" not in st.OPTIMIZERS


def test_the_cli_lists_and_trains_a_variant_it_has_never_heard_of(tmp_path, cli, toy):
    code, stdout, _ = cli(["train", "--help"])
    text = " ".join(stdout.replace("│", " ").split())
    assert code == 0 and "toysam (a test's variant)" in text and "toysam double" in text
    args = ["train", "--model", "mlp", "--model-opt", "hidden=[16]", "--data", "synthetic", "--n-train", "120",
            "--epochs", "2", "--batch-size", "40", "--seed", "3", "--no-snapshots", "--no-progress"]
    code, _, err = cli(args + ["-o", "toysam", "--optimizer-opt", "double=maybe", "--out", str(tmp_path / "bad")])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "double of toysam" in err
    code, _, err = cli(args + ["-o", "toysam", "--optimizer-opt", "double=yes", "--out", str(tmp_path / "toy")])
    assert code == 0, err
    code, _, err = cli(args + ["-o", "sam", "--rho", "0.1", "--out", str(tmp_path / "sam")])
    assert code == 0, err
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt").model.state_dict() for d in ("toy", "sam"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    code, _, err = cli(["train", "-o", "nosuchsam", "--out", str(tmp_path / "none")])
    assert code == 2 and "choose one of sgd, adamw, sam, asam, rsam, gsam, wsam, looksam, fsam, toysam" in err


def test_a_variant_in_its_own_module_is_found_without_an_import_line(tmp_path, monkeypatch):
    """What :func:`registry.specs` does for sharpscope.optim, on a package of our own: a module
    that nothing imports registers its class once the package is scanned."""
    package = tmp_path / "plugin_pkg_h8"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "onefile.py").write_text(
        "from sharpscope.optim import SAM, registry\n\n\n"
        "@registry.register\nclass OneFileSAM(SAM):\n    name = 'onefilesam'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert registry.lookup("onefilesam") is None
    try:
        registry.import_package("plugin_pkg_h8")
        assert registry.get("onefilesam").cls.__name__ == "OneFileSAM" and "onefilesam" in st.OPTIMIZERS
    finally:
        registry.unregister("onefilesam")
