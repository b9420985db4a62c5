"""Model zoo and model specs.

A *model spec* is a plain, JSON-serialisable dict that describes how to build a model, so
it can be stored in checkpoints and rebuilt later:

* built-in::

    {"name": "cnn", "kwargs": {"bn": True}, "input_shape": [1, 8, 8], "num_classes": 10}

* custom factory::

    {"factory": "package.module:function", "kwargs": {"width": 32}}

  ``function(**kwargs)`` must return a :class:`torch.nn.Module`.  Building a factory spec
  imports and runs code named by the spec, and a spec may come from a checkpoint or run
  folder made elsewhere, so :func:`build_model` does it only when the caller allows it:
  ``allow_factory="package.module:function"`` (that factory only: the one the user named,
  e.g. ``--model`` on the command line) or ``allow_factory=True`` (any factory: the CLI's
  ``--trust-factory``). The module is imported as ``python -m`` would: the current folder
  is on the path.

Built-in architectures (every one but ``cnn1d`` accepts ``input_shape`` ``(C, H, W)``; ``mlp``
also ``(D,)``, ``cnn1d`` only ``(L,)``):

* ``mlp`` -- multi-layer perceptron.
* ``cnn1d`` -- the small 1-D convnet of the MNIST-1D paper (Greydanus & Kobak); on 40 features
  and 10 classes it has 5,210 parameters.
* ``cnn`` -- small VGG-style convolutional net; with its defaults on 8x8 one-channel digits
  and 10 classes it has exactly 85,066 parameters.
* ``resnet`` -- CIFAR ResNet of He et al., "Deep Residual Learning for Image Recognition",
  CVPR 2016, Sec. 4.2 (depth 6n+2, projection shortcuts = option B).
* ``wrn`` -- Wide ResNet of Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016
  (depth 6n+4, pre-activation blocks).

Aliases fix some options: ``resnet20`` is ``resnet`` with ``depth=20`` and ``wrn28-10`` is
``wrn`` with ``depth=28, widen_factor=10`` (any ``resnet<depth>`` / ``wrn<depth>-<k>`` parses).
"""

from __future__ import annotations

import importlib
import inspect
import math
import numbers
import re
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from sharpscope.errors import ModelSpecError

__all__ = [
    "MODEL_NAMES",
    "MLP",
    "SimpleCNN",
    "Conv1dNet",
    "BasicBlock",
    "CifarResNet",
    "WideBasicBlock",
    "WideResNet",
    "build_model",
    "check_factory_allowed",
    "count_parameters",
    "factory_name",
    "is_factory",
    "make_factory_spec",
    "make_model_spec",
    "parse_model_name",
]

_ACTIVATIONS: Mapping[str, Callable[[], nn.Module]] = MappingProxyType(
    {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
)
_BUILTIN_KEYS = ("name", "kwargs", "input_shape", "num_classes")
_FACTORY_KEYS = ("factory", "kwargs")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


# --------------------------------------------------------------------------- validation


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_int(what: str, value: Any, minimum: int = 1) -> int:
    if not _is_int(value) or value < minimum:
        raise ModelSpecError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_bool(what: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ModelSpecError(f"{what} must be true or false, got {value!r}")
    return value


def _check_prob(what: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0.0 <= float(value) < 1.0
    ):
        raise ModelSpecError(f"{what} must be a number in [0, 1), got {value!r}")
    return float(value)


def _check_widths(what: str, value: Any, allow_empty: bool) -> tuple[int, ...]:
    """An int or a list of ints >= 1 -> tuple of ints."""
    if _is_int(value):
        return (_check_int(what, value),)
    if not isinstance(value, (list, tuple)) or (not value and not allow_empty):
        raise ModelSpecError(
            f"{what} must be an integer or a{'' if allow_empty else ' non-empty'} list of "
            f"integers, got {value!r}"
        )
    return tuple(_check_int(f"{what} entries", v) for v in value)


def _check_input_shape(value: Any) -> tuple[int, ...]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) not in (1, 3)
        or not all(_is_int(v) and v >= 1 for v in value)
    ):
        raise ModelSpecError(
            f"input_shape must be [C, H, W] or [D] with positive integers, got {value!r}"
        )
    return tuple(int(v) for v in value)


def _image_shape(model: str, input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = _check_input_shape(input_shape)
    if len(shape) != 3:
        raise ModelSpecError(
            f"model {model!r} needs image input (C, H, W); got input_shape {list(shape)}"
        )
    return shape  # type: ignore[return-value]


def _check_depth(model: str, depth: Any, offset: int, minimum: int) -> int:
    if not _is_int(depth) or depth < minimum or (depth - offset) % 6 != 0:
        raise ModelSpecError(
            f"{model} depth must be 6n+{offset} with n >= 1 "
            f"(e.g. {offset + 6}, {offset + 12}, {offset + 18}), got {depth!r}"
        )
    return int(depth)


def _plain(value: Any, where: str) -> Any:
    """Return ``value`` as JSON-plain data (tuples become lists); reject anything else."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if _is_int(value):
        return int(value)
    if isinstance(value, numbers.Real):
        if not math.isfinite(float(value)):
            raise ModelSpecError(f"{where} must be finite, got {value!r}")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise ModelSpecError(f"{where} keys must be strings, got {key!r}")
            out[key] = _plain(v, f"{where}[{key!r}]")
        return out
    raise ModelSpecError(
        f"{where} must be str/int/float/bool/None/list/dict, got {type(value).__name__}"
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------- modules


def _norm2d(channels: int, bn: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if bn else nn.Identity()


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=bias)


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convs with zero bias; BatchNorm weight 1, bias 0.

    Linear layers keep PyTorch's default initialisation.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class MLP(nn.Module):
    """Multi-layer perceptron: flatten -> [Linear -> (BatchNorm1d) -> act] * len(hidden) -> Linear.

    With ``bn=True`` the hidden Linear layers have no bias (BatchNorm's shift replaces it).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        num_classes: int,
        bn: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers.append(nn.Linear(width, h, bias=not bn))
            if bn:
                layers.append(nn.BatchNorm1d(h))
            layers.append(_ACTIVATIONS[activation]())
            width = h
        self.flatten = nn.Flatten()
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.flatten(x)))


class SimpleCNN(nn.Module):
    """Small VGG-style CNN.

    ``[Conv3x3(pad 1) -> (BatchNorm2d) -> ReLU] * len(channels) -> MaxPool2x2 -> flatten ->
    Linear(hidden) -> ReLU -> (Dropout) -> Linear(num_classes)``.  Convs carry a bias only
    without BatchNorm.  Defaults on (1, 8, 8) input with 10 classes: 85,066 parameters.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 64,
        bn: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        in_ch, height, width = input_shape
        layers: list[nn.Module] = []
        for out_ch in channels:
            layers += [_conv3x3(in_ch, out_ch, bias=not bn), _norm2d(out_ch, bn), nn.ReLU()]
            in_ch = out_ch
        layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        flat = in_ch * (height // 2) * (width // 2)
        head: list[nn.Module] = [nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU()]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(hidden, num_classes))
        self.classifier = nn.Sequential(*head)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Conv1dNet(nn.Module):
    """1-D convnet for signals such as MNIST-1D (Greydanus & Kobak 2020, their "CNN" baseline).

    ``[Conv1d(stride 2, padding 1) -> (BatchNorm1d) -> ReLU] * len(channels) -> flatten ->
    Linear(num_classes)``; the first conv has kernel 5, the others kernel 3. Input ``(N, L)`` is
    read as one channel. Convs carry a bias only without BatchNorm. PyTorch's default
    initialisation, as in the paper. Defaults on 40 features with 10 classes: 5,210 parameters
    (25 channels of length 19, 10, 5; the paper's ``ConvBase``).
    """

    def __init__(self, length: int, num_classes: int, channels: Sequence[int] = (25, 25, 25),
                 bn: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 1
        for i, out_ch in enumerate(channels):
            layers += [nn.Conv1d(in_ch, out_ch, 5 if i == 0 else 3, stride=2, padding=1, bias=not bn),
                       nn.BatchNorm1d(out_ch) if bn else nn.Identity(), nn.ReLU()]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_ch * _conv1d_length(length, len(channels)), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x.unsqueeze(1)), 1))


def _conv1d_length(length: int, n_convs: int) -> int:
    """Signal length after :class:`Conv1dNet`'s convs (kernel 5 then 3, stride 2, padding 1)."""
    for i in range(n_convs):
        length = (length + 2 - (5 if i == 0 else 3)) // 2 + 1
    return length


class BasicBlock(nn.Module):
    """Post-activation residual block of He et al. 2016: conv-BN-ReLU-conv-BN, add, ReLU.

    The shortcut is a 1x1 strided conv + BN (option B) when the shape changes.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, bn: bool = True) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, out_ch, stride, bias=not bn)
        self.bn1 = _norm2d(out_ch, bn)
        self.conv2 = _conv3x3(out_ch, out_ch, 1, bias=not bn)
        self.bn2 = _norm2d(out_ch, bn)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=not bn), _norm2d(out_ch, bn)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of He et al., "Deep Residual Learning for Image Recognition" (2016), Sec. 4.2.

    3x3 conv stem with ``width`` channels, three stages of n = (depth - 2) / 6 BasicBlocks
    with widths ``width, 2*width, 4*width`` and strides 1, 2, 2, global average pooling and a
    linear head.  Shortcuts that change shape are 1x1 conv + BN (option B), so ResNet-20 on
    CIFAR-10 has 272,474 parameters (269,722 with the parameter-free option A).
    ``bn=False`` replaces every BatchNorm by identity and gives the convs biases.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        depth: int = 20,
        width: int = 16,
        bn: bool = True,
    ) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            _conv3x3(input_shape[0], width, bias=not bn), _norm2d(width, bn), nn.ReLU()
        )
        stages: list[nn.Module] = []
        in_ch = width
        for i, stride in enumerate((1, 2, 2)):
            out_ch = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_ch, out_ch, stride if j == 0 else 1, bn))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.stages(self.stem(x)))
        return self.fc(torch.flatten(out, 1))


class WideBasicBlock(nn.Module):
    """Pre-activation wide block of Zagoruyko & Komodakis 2016.

    BN-ReLU-conv3x3(stride)-BN-ReLU-(Dropout)-conv3x3, added to the input, or to a 1x1
    strided conv of the pre-activated input when the shape changes.
    """

    def __init__(
        self, in_ch: int, out_ch: int, stride: int = 1, dropout: float = 0.0, bn: bool = True
    ) -> None:
        super().__init__()
        self.bn1 = _norm2d(in_ch, bn)
        self.conv1 = _conv3x3(in_ch, out_ch, stride, bias=not bn)
        self.bn2 = _norm2d(out_ch, bn)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = _conv3x3(out_ch, out_ch, 1, bias=not bn)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=not bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """Wide ResNet WRN-d-k of Zagoruyko & Komodakis, "Wide Residual Networks" (BMVC 2016).

    3x3 conv stem with 16 channels, three groups of n = (depth - 4) / 6 pre-activation
    blocks with widths 16k, 32k, 64k and strides 1, 2, 2, then BN-ReLU-average pool-linear.
    WRN-28-10 on CIFAR-10 has 36,479,194 parameters.  ``bn=False`` replaces every
    BatchNorm by identity and gives the convs biases.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        depth: int = 16,
        widen_factor: int = 4,
        dropout: float = 0.0,
        bn: bool = True,
    ) -> None:
        super().__init__()
        n = (depth - 4) // 6
        self.stem = _conv3x3(input_shape[0], 16, bias=not bn)
        groups: list[nn.Module] = []
        in_ch = 16
        for i, stride in enumerate((1, 2, 2)):
            out_ch = 16 * widen_factor * 2**i
            blocks = []
            for j in range(n):
                blocks.append(WideBasicBlock(in_ch, out_ch, stride if j == 0 else 1, dropout, bn))
                in_ch = out_ch
            groups.append(nn.Sequential(*blocks))
        self.groups = nn.Sequential(*groups)
        self.bn = _norm2d(in_ch, bn)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn(self.groups(self.stem(x))))
        return self.fc(torch.flatten(self.pool(out), 1))


# --------------------------------------------------------------------------- builders


def _build_mlp(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    hidden: int | Sequence[int] = (128, 128),
    bn: bool = False,
    activation: str = "relu",
) -> MLP:
    """Build :class:`MLP`; accepts vector (D,) or image (C, H, W) input."""
    shape = _check_input_shape(input_shape)
    widths = _check_widths("mlp option 'hidden'", hidden, allow_empty=True)
    if activation not in _ACTIVATIONS:
        raise ModelSpecError(
            f"mlp option 'activation' must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}"
        )
    return MLP(
        math.prod(shape),
        widths,
        _check_int("num_classes", num_classes),
        _check_bool("mlp option 'bn'", bn),
        activation,
    )


def _build_cnn(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    channels: int | Sequence[int] = (32, 64),
    hidden: int = 64,
    bn: bool = False,
    dropout: float = 0.0,
) -> SimpleCNN:
    """Build :class:`SimpleCNN`; needs image input at least 2x2."""
    shape = _image_shape("cnn", input_shape)
    if shape[1] < 2 or shape[2] < 2:
        raise ModelSpecError(f"model 'cnn' needs images of at least 2x2, got {list(shape)}")
    return SimpleCNN(
        shape,
        _check_int("num_classes", num_classes),
        _check_widths("cnn option 'channels'", channels, allow_empty=False),
        _check_int("cnn option 'hidden'", hidden),
        _check_bool("cnn option 'bn'", bn),
        _check_prob("cnn option 'dropout'", dropout),
    )


def _build_cnn1d(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    channels: int | Sequence[int] = (25, 25, 25),
    bn: bool = False,
) -> Conv1dNet:
    """Build :class:`Conv1dNet`; needs 1-D input (L,) long enough for its convs."""
    shape = _check_input_shape(input_shape)
    if len(shape) != 1:
        raise ModelSpecError(f"model 'cnn1d' needs 1-D input (L,) such as mnist1d's 40 features; "
                             f"got input_shape {list(shape)}")
    widths = _check_widths("cnn1d option 'channels'", channels, allow_empty=False)
    if any(_conv1d_length(shape[0], k) < 1 for k in range(1, len(widths) + 1)):
        raise ModelSpecError(f"model 'cnn1d' with {len(widths)} conv(s) needs longer inputs than {shape[0]} "
                             "(each conv halves the length; the first needs at least 3)")
    return Conv1dNet(shape[0], _check_int("num_classes", num_classes), widths, _check_bool("cnn1d option 'bn'", bn))


def _build_resnet(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    depth: int = 20,
    width: int = 16,
    bn: bool = True,
) -> CifarResNet:
    """Build :class:`CifarResNet`; depth must be 6n+2."""
    return CifarResNet(
        _image_shape("resnet", input_shape),
        _check_int("num_classes", num_classes),
        _check_depth("resnet", depth, offset=2, minimum=8),
        _check_int("resnet option 'width'", width),
        _check_bool("resnet option 'bn'", bn),
    )


def _build_wrn(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    depth: int = 16,
    widen_factor: int = 4,
    dropout: float = 0.0,
    bn: bool = True,
) -> WideResNet:
    """Build :class:`WideResNet`; depth must be 6n+4."""
    return WideResNet(
        _image_shape("wrn", input_shape),
        _check_int("num_classes", num_classes),
        _check_depth("wrn", depth, offset=4, minimum=10),
        _check_int("wrn option 'widen_factor'", widen_factor),
        _check_prob("wrn option 'dropout'", dropout),
        _check_bool("wrn option 'bn'", bn),
    )


#: Read-only registry: base model name -> builder(input_shape, num_classes, **options).
_BUILDERS: Mapping[str, Callable[..., nn.Module]] = MappingProxyType(
    {"mlp": _build_mlp, "cnn": _build_cnn, "resnet": _build_resnet, "wrn": _build_wrn, "cnn1d": _build_cnn1d}
)

MODEL_NAMES: tuple[str, ...] = (
    *_BUILDERS,
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "wrn16-4",
    "wrn16-8",
    "wrn28-10",
)


def _accepted_options(base: str) -> tuple[str, ...]:
    params = inspect.signature(_BUILDERS[base]).parameters.values()
    return tuple(sorted(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY))


def _default_options(base: str) -> dict[str, Any]:
    params = inspect.signature(_BUILDERS[base]).parameters.values()
    return {p.name: p.default for p in params
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty}


# --------------------------------------------------------------------------- public API


def parse_model_name(name: str) -> tuple[str, dict]:
    """Split a model name into (base name, options fixed by the alias).

    ``"cnn" -> ("cnn", {})``, ``"resnet32" -> ("resnet", {"depth": 32})``,
    ``"wrn28-10" -> ("wrn", {"depth": 28, "widen_factor": 10})``.  Matching ignores case
    and surrounding blanks.  Depth validity is checked when the model is built.
    """
    if not isinstance(name, str):
        raise ModelSpecError(f"model name must be a string, got {name!r}")
    key = name.strip().lower()
    if key in _BUILDERS:
        return key, {}
    match = re.fullmatch(r"resnet-?(\d+)", key)
    if match:
        return "resnet", {"depth": int(match.group(1))}
    match = re.fullmatch(r"wrn-?(\d+)-(\d+)", key)
    if match:
        return "wrn", {"depth": int(match.group(1)), "widen_factor": int(match.group(2))}
    raise ModelSpecError(
        f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)} "
        "(or any resnet<depth>, wrn<depth>-<widen_factor>)"
    )


def _resolve(name: str, kwargs: Mapping[str, Any]) -> tuple[str, dict]:
    """Base name and full options (alias options merged in) after checking option names."""
    base, fixed = parse_model_name(name)
    accepted = _accepted_options(base)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ModelSpecError(
            f"unknown option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(k) for k in unknown)} for model {name!r}; "
            f"accepted: {', '.join(accepted)}"
        )
    for key, value in fixed.items():
        if key in kwargs and kwargs[key] != value:
            raise ModelSpecError(
                f"model {name!r} fixes {key}={value}, but {key}={kwargs[key]!r} was given; "
                f"use model {base!r} to choose {key} freely"
            )
    return base, {**kwargs, **fixed}


def make_model_spec(
    name: str, input_shape: Sequence[int], num_classes: int, **kwargs: Any
) -> dict:
    """Validate a built-in model choice and return it as a plain-dict spec.

    The name, the option names and values, and their fit to ``input_shape`` are all
    checked (by a dry build on the ``meta`` device: no memory, no use of the RNG).
    The spec keeps the (normalised) name and every option, defaults filled in, so a
    checkpoint rebuilds the same architecture even if a default changes later.
    """
    shape = _check_input_shape(input_shape)
    classes = _check_int("num_classes", num_classes)
    options = _plain(kwargs, "model options")
    base, full = _resolve(name, options)
    key = name.strip().lower()
    with torch.device("meta"):
        _BUILDERS[base](shape, classes, **full)
    resolved = _plain({**_default_options(base), **full}, "model options")
    return {"name": key, "kwargs": resolved, "input_shape": list(shape), "num_classes": classes}


def parse_factory(factory: Any, what: str = "model factory", error: type[Exception] = ModelSpecError
                  ) -> tuple[str, str]:
    """``(module, attribute)`` of a ``'package.module:function'`` spec; ``error`` when it is not one."""
    if not isinstance(factory, str) or factory.count(":") != 1:
        raise error(
            f"{what} must look like 'package.module:function', got {factory!r}"
        )
    module, attr = (part.strip() for part in factory.split(":"))
    if not _DOTTED.fullmatch(module) or not _DOTTED.fullmatch(attr):
        raise error(
            f"{what} must look like 'package.module:function', got {factory!r}"
        )
    return module, attr


def is_factory(model: Any) -> bool:
    """Whether a model name (``--model``, ``TrainConfig.model``) names a custom factory
    (``package.module:function``) rather than a built-in architecture."""
    return isinstance(model, str) and ":" in model


def factory_name(factory: str) -> str:
    """The canonical ``module:function`` form of a factory name (spaces around the parts
    dropped); :class:`ModelSpecError` when it does not have that form."""
    module, attr = parse_factory(factory)
    return f"{module}:{attr}"


def make_factory_spec(factory: str, **kwargs: Any) -> dict:
    """Return ``{"factory": factory, "kwargs": kwargs}`` after checking the ``module:function``
    form and that the kwargs are JSON-plain.  Nothing is imported."""
    module, attr = parse_factory(factory)
    return {"factory": f"{module}:{attr}", "kwargs": _plain(kwargs, "factory kwargs")}


def _spec_kwargs(spec: Mapping[str, Any]) -> dict:
    kwargs = spec.get("kwargs", {})
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ModelSpecError(f"model spec 'kwargs' must be a dict with string keys, got {kwargs!r}")
    return dict(kwargs)


def _check_keys(spec: Mapping[str, Any], allowed: Sequence[str], required: Sequence[str]) -> None:
    extra = sorted(str(k) for k in spec if k not in allowed)
    if extra:
        raise ModelSpecError(
            f"model spec has unknown key(s) {', '.join(map(repr, extra))}; "
            f"expected: {', '.join(allowed)}"
        )
    missing = [k for k in required if k not in spec]
    if missing:
        raise ModelSpecError(f"model spec is missing {', '.join(map(repr, missing))}")


def import_callable(module_name: str, attr: str, what: str, error: type[Exception] = ModelSpecError) -> Any:
    """``module_name:attr`` imported and checked to be callable; every failure one ``error``
    naming ``what`` (e.g. "model factory"). Callers decide first whether importing user code
    is allowed (``allow_factory`` / ``--trust-factory``): this function always imports."""
    path = f"{module_name}:{attr}"
    _current_folder_on_path()
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(
            f"cannot import module {module_name!r} of {what} {path}: {_one_line(exc)}"
        ) from exc
    except Exception as exc:  # the module's own code failed while importing
        raise error(
            f"importing module {module_name!r} of {what} {path} failed: {_one_line(exc)}"
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise error(
                f"module {module_name!r} has no attribute {attr!r} ({what} {path})"
            ) from exc
    if not callable(obj):
        raise error(
            f"{what} {path} is a {type(obj).__name__}, not a callable"
        )
    return obj


def _current_folder_on_path() -> None:
    """Put the current folder first on ``sys.path`` when it is not there, as ``python -m``
    does, so ``--model mynets:build`` finds ``./mynets.py`` from the console script too.
    Called only once importing user code has been allowed."""
    import os
    import sys

    here = os.getcwd()
    if not any(entry in ("", ".") or os.path.abspath(entry) == here for entry in sys.path):
        sys.path.insert(0, here)


def _refuse_factory(factory: str, kwargs: dict, allow_factory: bool | str) -> None:
    """ModelSpecError unless ``allow_factory`` lets ``factory`` run (module docstring)."""
    if allow_factory is True:
        return
    shown = repr(kwargs)
    call = f"{factory}(**{shown if len(shown) <= 200 else shown[:197] + '...'})"
    if isinstance(allow_factory, str) and allow_factory:
        named = factory_name(allow_factory)
        if named == factory:
            return
        raise ModelSpecError(
            f"model uses custom factory {factory}, not the {named} that was named; name {factory} "
            f"(--model {factory}) or pass allow_factory=True / --trust-factory to run {call}"
        )
    raise ModelSpecError(
        f"model uses custom factory {factory}; a checkpoint never chooses what code runs: pass "
        f"--trust-factory (allow_factory=True), or --model {factory} where the command takes it, to import "
        f"it and run {call}"
    )


def check_factory_allowed(spec: Mapping[str, Any], allow_factory: bool | str) -> None:
    """The refusal :func:`build_model` would raise for ``spec`` under ``allow_factory``
    (:class:`ModelSpecError`), without importing or building anything; nothing for a
    built-in spec or an allowed factory."""
    if isinstance(spec, Mapping) and "factory" in spec:
        _refuse_factory(factory_name(spec["factory"]), _spec_kwargs(spec), allow_factory)


def _build_from_factory(spec: Mapping[str, Any], allow_factory: bool | str) -> nn.Module:
    _check_keys(spec, _FACTORY_KEYS, ("factory",))
    module_name, attr = parse_factory(spec["factory"])
    factory = f"{module_name}:{attr}"
    kwargs = _spec_kwargs(spec)
    _refuse_factory(factory, kwargs, allow_factory)
    obj = import_callable(module_name, attr, "model factory", ModelSpecError)
    try:
        model = obj(**kwargs)
    except ModelSpecError:
        raise
    except Exception as exc:
        raise ModelSpecError(f"model factory {factory} raised {_one_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise ModelSpecError(
            f"model factory {factory} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def build_model(spec: Mapping[str, Any], *, allow_factory: bool | str = False) -> nn.Module:
    """Build a model from a spec dict (see the module docstring).

    Weights are drawn from torch's global RNG, so the same seed gives the same weights.
    A factory spec is imported and called only when ``allow_factory`` allows it: ``True``
    (any factory) or the factory's own ``"package.module:function"`` name (the one the user
    named); otherwise :class:`ModelSpecError` is raised before anything is imported, so a
    spec read from a checkpoint never chooses what code runs.  Every problem with the spec
    raises :class:`ModelSpecError` with a one-line message.
    """
    if not isinstance(spec, Mapping):
        raise ModelSpecError(f"model spec must be a dict, got {type(spec).__name__}")
    if ("factory" in spec) == ("name" in spec):
        raise ModelSpecError("model spec needs exactly one of 'name' (built-in) or 'factory'")
    if "factory" in spec:
        return _build_from_factory(spec, allow_factory)
    _check_keys(spec, _BUILTIN_KEYS, ("name", "input_shape", "num_classes"))
    base, options = _resolve(spec["name"], _spec_kwargs(spec))
    return _BUILDERS[base](spec["input_shape"], spec["num_classes"], **options)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters of ``model`` (trainable or not; shared ones counted once)."""
    return sum(p.numel() for p in model.parameters())
