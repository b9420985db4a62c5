"""Custom per-batch metrics ``fn(model, batch) -> real scalar`` (a mean over the batch's examples),
evaluated next to the loss on a landscape grid with the point's state swapped in by
``functional_call`` (eval and inference mode, restored afterwards) and averaged as the loss is,
sum_b (n_b / N) metric_b; non-finite values are kept, a non-scalar is a :class:`ConfigError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["MetricFn", "RESERVED", "check_metrics", "metric_value", "import_metric", "MetricCall"]

MetricFn = Callable[[nn.Module, Any], Tensor]
RESERVED = ("loss", "accuracy")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def check_metrics(metrics: Mapping[str, MetricFn] | None) -> dict[str, MetricFn]:
    """``metrics`` as a dict; ConfigError for a name that clashes with loss / accuracy or is not
    plain (it names files and npz keys), or a value that is not callable."""
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise ConfigError(f"metrics must be a dict {{name: fn(model, batch)}}, got {type(metrics).__name__}")
    for name, fn in metrics.items():
        _check_name(name)
        if not callable(fn):
            raise ConfigError(f"metric {name!r} must be a callable fn(model, batch), got {type(fn).__name__}")
    return dict(metrics)


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"metric name {name!r} must be letters, digits, '_' or '-' (not starting with a digit)")
    if name in RESERVED:
        raise ConfigError(f"metric name {name!r} clashes with the built-in {name}; choose another name")


def metric_value(name: str, value: Any) -> Tensor:
    """The 0-d float64 tensor of a metric's value on one batch, or a ConfigError naming it."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = torch.tensor(float(value), dtype=torch.float64)
    if not isinstance(value, Tensor):
        raise ConfigError(f"metric {name!r} returned a {type(value).__name__}, not a scalar tensor")
    if value.numel() != 1:
        raise ConfigError(f"metric {name!r} returned a tensor of shape {tuple(value.shape)}, not a scalar "
                          "(return the mean over the batch's examples)")
    if value.is_complex():
        raise ConfigError(f"metric {name!r} returned a complex value")
    return value.reshape(()).double()


class MetricCall(nn.Module):
    """``fn(model, batch)`` as a module, for ``functional_call`` (state keys prefixed ``model.``)."""

    def __init__(self, model: nn.Module, fn: MetricFn) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, batch: Any) -> Any:
        return self.fn(self.model, batch)


def import_metric(spec: str, allow_import: bool = False) -> tuple[str, MetricFn]:
    """``"[name=]package.module:function"`` -> (name, function), imported only with
    ``allow_import=True`` (``--trust-factory``); otherwise, and for any failure, a ConfigError."""
    from ..models import parse_factory, import_callable

    name, sep, path = spec.partition("=")
    if not sep:
        name, path = "", spec
    module_name, attr = parse_factory(path.strip(), "metric", ConfigError)
    name = name.strip() or attr.rsplit(".", 1)[-1]
    _check_name(name)
    if not allow_import:
        raise ConfigError(f"metric {name}={module_name}:{attr} is custom code; pass --trust-factory "
                          "(Python: allow_import=True) to import and run it")
    return name, import_callable(module_name, attr, "metric", ConfigError)
