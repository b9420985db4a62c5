"""Tests of sharpscope.models: builders, specs, factories, parameter counts, errors."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

from sharpscope.errors import ModelSpecError
from sharpscope.models import (
    MODEL_NAMES,
    build_model,
    count_parameters,
    make_factory_spec,
    make_model_spec,
    parse_model_name,
)

IMAGE_SHAPES = [(1, 8, 8), (3, 32, 32)]


def _forward(model: nn.Module, shape: tuple[int, ...], batch: int = 3) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(batch, *shape))


# --------------------------------------------------------------------------- names


def test_model_names_has_bases_and_aliases() -> None:
    for name in ("mlp", "cnn", "resnet", "wrn", "resnet20", "resnet32", "resnet44",
                 "resnet56", "wrn16-4", "wrn28-10"):
        assert name in MODEL_NAMES
    assert len(set(MODEL_NAMES)) == len(MODEL_NAMES)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cnn", ("cnn", {})),
        ("MLP ", ("mlp", {})),
        ("resnet32", ("resnet", {"depth": 32})),
        ("resnet20", ("resnet", {"depth": 20})),
        ("wrn28-10", ("wrn", {"depth": 28, "widen_factor": 10})),
        ("wrn16-4", ("wrn", {"depth": 16, "widen_factor": 4})),
    ],
)
def test_parse_model_name(name: str, expected: tuple[str, dict]) -> None:
    assert parse_model_name(name) == expected


@pytest.mark.parametrize("name", ["vgg16", "", "wrn28", "resnetXL", "wrn-28"])
def test_parse_model_name_unknown(name: str) -> None:
    with pytest.raises(ModelSpecError, match="known models: mlp, cnn, resnet, wrn"):
        parse_model_name(name)


# --------------------------------------------------------------------------- forward passes


@pytest.mark.parametrize("shape", IMAGE_SHAPES)
@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n not in ("cnn1d", "gpt", "bert", "vit")])  # cnn1d: 1-D
# signals only, below; gpt and bert: token sequences, tests/test_transformers.py; vit (transformers): tests/test_vit.py
def test_every_name_builds_and_runs(name: str, shape: tuple[int, ...]) -> None:
    model = build_model(make_model_spec(name, shape, 10))
    assert _forward(model, shape).shape == (3, 10)


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet", "wrn"])
def test_mnist_shape_and_train_mode(name: str) -> None:
    model = build_model(make_model_spec(name, (1, 28, 28), 7))
    model.train()
    out = model(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 7)
    out.sum().backward()  # gradients flow through every builder


def test_cnn1d_parameter_count_by_hand_and_forward_shape() -> None:
    # the MNIST-1D paper's ConvBase on 40 points: conv k5 s2 p1 -> 19, k3 s2 p1 -> 10 -> 5
    model = build_model(make_model_spec("cnn1d", [40], 10))
    convs = (1 * 25 * 5 + 25) + 2 * (25 * 25 * 3 + 25)
    assert count_parameters(model) == convs + 25 * 5 * 10 + 10 == 5210
    assert _forward(model, (40,)).shape == (3, 10)
    bn = build_model(make_model_spec("cnn1d", [40], 10, bn=True))  # no conv bias; BN weight + bias
    assert count_parameters(bn) == 5210 - 3 * 25 + 3 * 2 * 25
    assert sum(isinstance(m, nn.BatchNorm1d) for m in bn.modules()) == 3
    small = build_model(make_model_spec("cnn1d", [12], 4, channels=[6, 8]))  # 12 -> 5 -> 3
    assert count_parameters(small) == (6 * 5 + 6) + (6 * 8 * 3 + 8) + 8 * 3 * 4 + 4
    small.train()
    small(torch.randn(5, 12)).sum().backward()
    assert all(p.grad is not None for p in small.parameters())


@pytest.mark.parametrize("kwargs,shape,fragment", [
    ({}, [1, 8, 8], "1-D input"),
    ({}, [2], "longer inputs"),
    ({"channels": []}, [40], "non-empty"),
    ({"bn": 1}, [40], "true or false"),
    ({"kernel": 3}, [40], "accepted: bn, channels"),
])
def test_cnn1d_bad_options(kwargs, shape, fragment) -> None:
    with pytest.raises(ModelSpecError, match=fragment):
        make_model_spec("cnn1d", shape, 10, **kwargs)


def test_mlp_vector_input() -> None:
    for kwargs in ({}, {"hidden": 32, "bn": True, "activation": "tanh"},
                   {"hidden": [8, 8, 8], "activation": "gelu"}, {"hidden": []}):
        model = build_model(make_model_spec("mlp", [16], 3, **kwargs))
        assert _forward(model, (16,)).shape == (3, 3)
    logistic = build_model(make_model_spec("mlp", [16], 3, hidden=[]))
    assert count_parameters(logistic) == 16 * 3 + 3


@pytest.mark.parametrize("name", ["cnn", "resnet", "wrn", "resnet20", "wrn16-4"])
def test_conv_models_reject_vector_input(name: str) -> None:
    with pytest.raises(ModelSpecError, match="needs image input"):
        make_model_spec(name, [16], 10)
    with pytest.raises(ModelSpecError, match="needs image input"):
        build_model({"name": name, "input_shape": [16], "num_classes": 10})


# --------------------------------------------------------------------------- parameter counts


def test_default_cnn_on_digits_has_85066_parameters() -> None:
    model = build_model(make_model_spec("cnn", (1, 8, 8), 10))
    conv1 = 1 * 32 * 9 + 32  # 320
    conv2 = 32 * 64 * 9 + 64  # 18,496
    fc = (64 * 4 * 4) * 64 + 64  # 65,600 (8x8 -> max-pool -> 4x4)
    out = 64 * 10 + 10  # 650
    assert conv1 + conv2 + fc + out == 85_066
    assert count_parameters(model) == 85_066
    sizes = [p.numel() for p in model.parameters()]
    assert sum(sizes[0:2]) == conv1 and sum(sizes[2:4]) == conv2
    assert sum(sizes[4:6]) == fc and sum(sizes[6:8]) == out


def _conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k


def _bn(c: int) -> int:
    return 2 * c


def _resnet_hand_count(depth: int, width: int, in_ch: int, classes: int) -> tuple[int, int]:
    """(total, shortcut-only) parameters of the option-B CIFAR ResNet, convs without bias."""
    n = (depth - 2) // 6
    total = _conv(in_ch, width, 3) + _bn(width)
    shortcuts = 0
    cin = width
    for stage in range(3):
        cout = width * 2**stage
        for _ in range(n):
            total += _conv(cin, cout, 3) + _bn(cout) + _conv(cout, cout, 3) + _bn(cout)
            if cin != cout:
                shortcuts += _conv(cin, cout, 1) + _bn(cout)
            cin = cout
    total += shortcuts + cin * classes + classes
    return total, shortcuts


def test_resnet20_parameter_count_matches_hand_count() -> None:
    total, shortcuts = _resnet_hand_count(20, 16, 3, 10)
    # With 1x1-conv + BN projection shortcuts (option B) the count is 272,474; the
    # parameter-free zero-padding shortcut (option A) would give 269,722 (both ~0.27M).
    assert total == 272_474
    assert total - shortcuts == 269_722
    model = build_model(make_model_spec("resnet20", (3, 32, 32), 10))
    assert count_parameters(model) == total
    alias = build_model(make_model_spec("resnet", (3, 32, 32), 10, depth=20))
    assert count_parameters(alias) == total


@pytest.mark.parametrize("depth", [8, 32, 56])
def test_resnet_counts_other_depths(depth: int) -> None:
    model = build_model(make_model_spec("resnet", (1, 8, 8), 4, depth=depth, width=8))
    assert count_parameters(model) == _resnet_hand_count(depth, 8, 1, 4)[0]


def _wrn_hand_count(depth: int, k: int, in_ch: int, classes: int) -> int:
    n = (depth - 4) // 6
    total = _conv(in_ch, 16, 3)
    cin = 16
    for group in range(3):
        cout = 16 * k * 2**group
        for _ in range(n):
            total += _bn(cin) + _conv(cin, cout, 3) + _bn(cout) + _conv(cout, cout, 3)
            if cin != cout:
                total += _conv(cin, cout, 1)
            cin = cout
    return total + _bn(cin) + cin * classes + classes


def test_wrn_parameter_counts() -> None:
    model = build_model(make_model_spec("wrn16-4", (3, 32, 32), 10))
    assert count_parameters(model) == _wrn_hand_count(16, 4, 3, 10) == 2_748_890
    # WRN-28-10 on CIFAR-10: the widely quoted 36.5M (36,479,194).
    assert _wrn_hand_count(28, 10, 3, 10) == 36_479_194


# --------------------------------------------------------------------------- options


def _n_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize(
    ("name", "default_bn"), [("mlp", False), ("cnn", False), ("resnet", True), ("wrn", True)]
)
def test_bn_option_adds_and_removes_batchnorm(name: str, default_bn: bool) -> None:
    with_bn = build_model(make_model_spec(name, (1, 8, 8), 10, bn=True))
    without = build_model(make_model_spec(name, (1, 8, 8), 10, bn=False))
    default = build_model(make_model_spec(name, (1, 8, 8), 10))
    assert _n_bn(with_bn) > 0
    assert _n_bn(without) == 0
    assert (_n_bn(default) > 0) == default_bn
    # Without BN every conv / hidden linear has a bias; with BN the convs have none.
    for m in without.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert m.bias is not None
    assert all(m.bias is None for m in with_bn.modules() if isinstance(m, nn.Conv2d))
    assert _forward(without, (1, 8, 8)).shape == (3, 10)


def test_cnn_options() -> None:
    model = build_model(
        make_model_spec("cnn", (3, 32, 32), 5, channels=[8, 8, 16], hidden=20, dropout=0.5)
    )
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 8, 16]
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in model.modules())
    assert _forward(model, (3, 32, 32)).shape == (3, 5)
    single = build_model(make_model_spec("cnn", (1, 8, 8), 10, channels=4))
    assert len([m for m in single.modules() if isinstance(m, nn.Conv2d)]) == 1


def test_wrn_dropout_and_widths() -> None:
    model = build_model(make_model_spec("wrn", (1, 8, 8), 10, depth=10, widen_factor=2, dropout=0.3))
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert [c.out_channels for c in convs] == [16, 32, 32, 64, 64, 128, 128]


def test_init_is_standard() -> None:
    model = build_model(make_model_spec("resnet", (3, 32, 32), 10, width=8))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    conv = model.stem[0]
    fan_out = conv.out_channels * 9
    assert abs(conv.weight.std().item() - (2 / fan_out) ** 0.5) < 0.25 * (2 / fan_out) ** 0.5


# --------------------------------------------------------------------------- specs


def test_spec_is_plain_and_survives_json() -> None:
    spec = make_model_spec("cnn", (1, 8, 8), 10, channels=(8, 16), bn=True, dropout=0.1)
    assert spec == {
        "name": "cnn",
        "kwargs": {"channels": [8, 16], "bn": True, "dropout": 0.1, "hidden": 64},  # defaults filled in
        "input_shape": [1, 8, 8],
        "num_classes": 10,
    }
    loaded = json.loads(json.dumps(spec))
    assert loaded == spec
    a, b = build_model(spec), build_model(loaded)
    assert {k: v.shape for k, v in a.state_dict().items()} == {
        k: v.shape for k, v in b.state_dict().items()
    }
    assert str(a) == str(b)


@pytest.mark.parametrize("name", ["mlp", "resnet20", "wrn16-4"])
def test_json_roundtrip_same_architecture(name: str) -> None:
    spec = make_model_spec(name, (3, 32, 32), 10)
    loaded = json.loads(json.dumps(spec))
    a, b = build_model(spec), build_model(loaded)
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [
        (k, v.shape) for k, v in b.state_dict().items()
    ]


def test_same_seed_same_weights_and_spec_making_uses_no_rng() -> None:
    spec = make_model_spec("resnet20", (1, 8, 8), 10)
    torch.manual_seed(123)
    a = build_model(spec).state_dict()
    torch.manual_seed(123)
    make_model_spec("wrn16-4", (3, 32, 32), 10)  # dry build on meta: must not touch the RNG
    b = build_model(spec).state_dict()
    torch.manual_seed(124)
    c = build_model(spec).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_alias_option_consistency() -> None:
    make_model_spec("resnet20", (3, 32, 32), 10, depth=20)  # same value: fine
    with pytest.raises(ModelSpecError, match="fixes depth=20"):
        make_model_spec("resnet20", (3, 32, 32), 10, depth=32)
    spec = make_model_spec("wrn28-10", (3, 32, 32), 10, dropout=0.3)
    assert spec["name"] == "wrn28-10"
    assert spec["kwargs"] == {"dropout": 0.3, "depth": 28, "widen_factor": 10, "bn": True}


def test_count_parameters_counts_shared_once() -> None:
    layer = nn.Linear(4, 3)
    assert count_parameters(layer) == 15
    assert count_parameters(nn.Sequential(layer, layer)) == 15


# --------------------------------------------------------------------------- factories

_FACTORY_SOURCE = '''
from pathlib import Path
import torch.nn as nn

Path({marker!r}).open("a").write("imported\\n")

def make(width=4, classes=2):
    return nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, classes))

class Holder:
    @staticmethod
    def make():
        return nn.Linear(2, 2)

def not_a_module():
    return "hello"

def explodes(**kwargs):
    raise RuntimeError("boom\\nsecond line")

NOT_CALLABLE = 42
'''


@pytest.fixture
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a uniquely named module with an import side effect; yield (name, marker)."""
    name = f"sharpscope_test_factory_{uuid.uuid4().hex}"
    marker = tmp_path / "imported.txt"
    (tmp_path / f"{name}.py").write_text(_FACTORY_SOURCE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, marker
    sys.modules.pop(name, None)


def test_factory_spec_builds(factory_module) -> None:
    name, marker = factory_module
    spec = make_factory_spec(f"{name}:make", width=5, classes=3)
    assert spec == {"factory": f"{name}:make", "kwargs": {"width": 5, "classes": 3}}
    assert not marker.exists()  # make_factory_spec does not import
    model = build_model(json.loads(json.dumps(spec)), allow_factory=True)
    assert marker.exists()
    assert model(torch.randn(2, 3)).shape == (2, 3)
    assert count_parameters(model) == 3 * 5 + 5 + 5 * 3 + 3
    assert isinstance(build_model(make_factory_spec(f"{name}:Holder.make"), allow_factory=f"{name}:Holder.make"),
                      nn.Linear)


def test_factory_refused_without_import(factory_module) -> None:
    name, marker = factory_module
    spec = make_factory_spec(f"{name}:make")
    with pytest.raises(ModelSpecError, match="--trust-factory"):
        build_model(spec, allow_factory=False)
    with pytest.raises(ModelSpecError, match="--trust-factory"):
        build_model(spec)  # the default: a spec never chooses what code runs
    assert not marker.exists()
    assert name not in sys.modules


@pytest.mark.parametrize(
    ("attr", "match"),
    [
        ("missing", "has no attribute 'missing'"),
        ("Holder.missing", "has no attribute 'Holder.missing'"),
        ("NOT_CALLABLE", "not a callable"),
        ("not_a_module", "returned str, not a torch.nn.Module"),
        ("explodes", "raised RuntimeError: boom second line"),
    ],
)
def test_factory_errors(factory_module, attr: str, match: str) -> None:
    name, _ = factory_module
    with pytest.raises(ModelSpecError, match=match) as info:
        build_model(make_factory_spec(f"{name}:{attr}"), allow_factory=True)
    assert "\n" not in str(info.value)


def test_factory_bad_kwargs_and_missing_module(factory_module) -> None:
    name, _ = factory_module
    with pytest.raises(ModelSpecError, match="raised TypeError"):
        build_model(make_factory_spec(f"{name}:make", depth=3), allow_factory=True)
    with pytest.raises(ModelSpecError, match="cannot import module 'no_such_module_xyz.sub'"):
        build_model(make_factory_spec("no_such_module_xyz.sub:make"), allow_factory=True)


def test_factory_module_failing_at_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"sharpscope_test_broken_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text("raise ValueError('broken module')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelSpecError, match="failed: ValueError: broken module"):
        build_model(make_factory_spec(f"{name}:make"), allow_factory=True)
    sys.modules.pop(name, None)


@pytest.mark.parametrize("factory", ["nocolon", "a:b:c", ":make", "mod:", "my-mod:make", "m:1x", 42])
def test_bad_factory_strings(factory) -> None:
    with pytest.raises(ModelSpecError, match="package.module:function"):
        make_factory_spec(factory)
    with pytest.raises(ModelSpecError, match="package.module:function"):
        build_model({"factory": factory, "kwargs": {}}, allow_factory=False)


# --------------------------------------------------------------------------- errors


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ModelSpecError, match="unknown model 'vgg'.*resnet20.*wrn28-10"):
        make_model_spec("vgg", (1, 8, 8), 10)
    with pytest.raises(ModelSpecError, match="unknown model 'vgg'"):
        build_model({"name": "vgg", "input_shape": [1, 8, 8], "num_classes": 10})


def test_unknown_kwarg_names_it_and_accepted_ones() -> None:
    with pytest.raises(ModelSpecError, match=r"'widht'.*accepted: bn, depth, width"):
        make_model_spec("resnet20", (3, 32, 32), 10, widht=32)
    with pytest.raises(ModelSpecError, match=r"'depth'.*accepted: bn, channels, dropout, hidden"):
        build_model({"name": "cnn", "kwargs": {"depth": 3}, "input_shape": [1, 8, 8],
                     "num_classes": 10})


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("resnet", {"depth": 21}, "resnet depth must be 6n\\+2"),
        ("resnet21", {}, "resnet depth must be 6n\\+2"),
        ("resnet", {"depth": 2}, "resnet depth must be 6n\\+2"),
        ("wrn", {"depth": 17}, "wrn depth must be 6n\\+4"),
        ("wrn28-10", {}, None),
        ("wrn20-4", {}, "wrn depth must be 6n\\+4"),
        ("wrn", {"widen_factor": 0}, "widen_factor"),
        ("mlp", {"activation": "sigmoid"}, "relu, tanh, gelu"),
        ("mlp", {"hidden": 0}, "hidden"),
        ("mlp", {"hidden": [32, "a"]}, "hidden"),
        ("mlp", {"bn": 1}, "true or false"),
        ("cnn", {"dropout": 1.0}, "dropout"),
        ("cnn", {"channels": []}, "non-empty"),
        ("resnet", {"width": 2.5}, "width"),
    ],
)
def test_bad_options(name: str, kwargs: dict, match: str | None) -> None:
    if match is None:  # a valid control case
        make_model_spec(name, (3, 32, 32), 10, **kwargs)
        return
    with pytest.raises(ModelSpecError, match=match):
        make_model_spec(name, (3, 32, 32), 10, **kwargs)
    with pytest.raises(ModelSpecError, match=match):
        build_model({"name": name, "kwargs": kwargs, "input_shape": [3, 32, 32],
                     "num_classes": 10})


@pytest.mark.parametrize("shape", [(8, 8), (0, 8, 8), [1, 8, 8.0], "1x8x8", (1, 1, 1, 1)])
def test_bad_input_shape(shape) -> None:
    with pytest.raises(ModelSpecError, match="input_shape"):
        make_model_spec("mlp", shape, 10)


def test_bad_num_classes_and_unplain_kwargs() -> None:
    with pytest.raises(ModelSpecError, match="num_classes"):
        make_model_spec("mlp", (4,), 0)
    with pytest.raises(ModelSpecError, match="num_classes"):
        build_model({"name": "cnn", "input_shape": [1, 8, 8], "num_classes": "10"})
    with pytest.raises(ModelSpecError, match="str/int/float/bool/None/list/dict"):
        make_model_spec("mlp", (4,), 2, hidden=object())
    with pytest.raises(ModelSpecError, match="str/int/float/bool/None/list/dict"):
        make_factory_spec("m:f", layer=nn.Linear(1, 1))
    with pytest.raises(ModelSpecError, match="finite"):
        make_factory_spec("m:f", lr=float("nan"))
    with pytest.raises(ModelSpecError, match="at least 2x2"):
        make_model_spec("cnn", (1, 1, 8), 2)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (["cnn"], "must be a dict"),
        ({}, "exactly one of 'name'"),
        ({"name": "cnn", "factory": "m:f"}, "exactly one of 'name'"),
        ({"name": "cnn", "num_classes": 10}, "missing 'input_shape'"),
        ({"name": "cnn", "input_shape": [1, 8, 8], "num_classes": 10, "extra": 1},
         "unknown key\\(s\\) 'extra'"),
        ({"name": "cnn", "input_shape": [1, 8, 8], "num_classes": 10, "kwargs": [1]},
         "'kwargs' must be a dict"),
        ({"name": 3, "input_shape": [1, 8, 8], "num_classes": 10}, "must be a string"),
        ({"factory": "m:f", "input_shape": [3]}, "unknown key\\(s\\) 'input_shape'"),
    ],
)
def test_malformed_specs(spec, match: str) -> None:
    with pytest.raises(ModelSpecError, match=match):
        build_model(spec)


def test_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        build_model({"name": "nope", "input_shape": [1], "num_classes": 2})
