"""The optimizer registry: every name ``--optimizer`` takes, built from the classes.

A trainable optimizer is one class decorated with :func:`register`, stating as class attributes
the facts :class:`Registered` lists with their defaults: ``name`` (in its own body), ``option_names``
(``__init__`` keywords ``--optimizer-opt`` sets), ``perturbs`` and ``reads`` (the
:data:`PERTURBATION_OPTIONS` it reads besides ``m``), the :data:`CAPABILITIES` (False unless its
own body declares them), ``from_config`` and ``check_config``. :func:`specs` imports every module
of the package first, so a new module needs no import line.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from ..errors import ConfigError

__all__ = ["Registered", "OptimizerSpec", "OptionSpec", "register", "unregister", "specs", "names", "get",
           "lookup", "base_options", "adamw_options", "base_optimizer", "import_package", "PERTURBATION_OPTIONS",
           "CAPABILITIES", "BASE_OPTIMIZERS"]

# The training options that only perturbation-based optimizers read.
PERTURBATION_OPTIONS = ("rho", "p", "m", "eta", "second_order", "same_dropout_mask", "perturbation_weight_decay")
# m-SAM chunks, fp16's GradScaler, data-parallel ranks, --second-order.
CAPABILITIES = ("supports_m", "supports_scaler", "supports_ranks", "supports_second_order")
# What a SAM-family optimizer may wrap (``--base-optimizer``).
BASE_OPTIMIZERS = ("sgd", "adamw")


class RunOptions(Protocol):
    """What :meth:`Registered.from_config` reads of a :class:`sharpscope.train.TrainConfig`."""

    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool
    base_optimizer: str
    beta2: float
    adam_eps: float
    p: float
    eta: float
    perturbation_weight_decay: bool
    asam_rule: str
    seed: int
    sync_bn: bool
    optimizer_options: dict[str, Any]

    @property
    def effective_rho(self) -> float: ...


class Registered:
    """The registry facts an optimizer class declares (module docstring) and their defaults."""

    name: ClassVar[str] = ""
    default_rho: ClassVar[float] = 0.0
    summary: ClassVar[str] = ""
    option_names: ClassVar[tuple[str, ...]] = ()
    perturbs: ClassVar[bool] = False
    reads: ClassVar[frozenset[str]] = frozenset()
    supports_m: ClassVar[bool] = False
    supports_scaler: ClassVar[bool] = False
    supports_ranks: ClassVar[bool] = False
    supports_second_order: ClassVar[bool] = False

    @classmethod
    def from_config(cls, config: RunOptions, model: Any) -> Any:
        """The optimizer of ``model``'s parameters that ``config`` names."""
        raise NotImplementedError(f"{cls.__name__} does not say how a training configuration builds it")

    @classmethod
    def check_config(cls, config: RunOptions) -> None:
        """Raise :class:`ConfigError` where ``config`` breaks one of this class's own rules."""


@dataclass(frozen=True)
class OptionSpec:
    """One ``--optimizer-opt`` option: its name, type (the ``__init__`` annotation) and default."""

    name: str
    annotation: Any
    default: Any

    @property
    def is_bool(self) -> bool:
        return self.annotation in (bool, "bool")


@dataclass(frozen=True)
class OptimizerSpec:
    """One row of the registry, read off a registered class."""

    name: str
    cls: type
    default_rho: float
    summary: str
    options: tuple[OptionSpec, ...]
    perturbs: bool
    reads: frozenset[str]
    supports_m: bool
    supports_scaler: bool
    supports_ranks: bool
    supports_second_order: bool

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)

    def defaults(self) -> dict[str, Any]:
        """The defaults of the options that have one."""
        return {o.name: o.default for o in self.options if o.default is not inspect.Parameter.empty}

    def uses(self, option: str) -> bool:
        """Whether its runs read training option ``option`` (of :data:`PERTURBATION_OPTIONS`: ``m``
        when it runs m-SAM, the others when in ``reads``)."""
        if option not in PERTURBATION_OPTIONS:
            return True
        return self.supports_m if option == "m" else option in self.reads


_TABLE: dict[str, OptimizerSpec] = {}
_discovered = False


def _options(cls: type) -> tuple[OptionSpec, ...]:
    """``cls.option_names`` typed from ``cls.__init__``'s signature."""
    try:
        params = inspect.signature(cls.__init__, eval_str=True).parameters
    except (NameError, TypeError, SyntaxError):
        params = inspect.signature(cls.__init__).parameters
    missing = [n for n in cls.option_names if n not in params]
    if missing:
        raise TypeError(f"{cls.__name__}.option_names names {missing[0]!r}, which its __init__ does not take")
    return tuple(OptionSpec(n, params[n].annotation, params[n].default) for n in cls.option_names)


def register(cls: type) -> type:
    """Class decorator: add ``cls`` to the registry under ``cls.name`` (module docstring)."""
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name or name != name.strip().lower() or "," in name:
        raise TypeError(f"{cls.__name__} needs its own lowercase registry name (class attribute 'name')")
    if name in _TABLE and _TABLE[name].cls is not cls:
        raise TypeError(f"optimizer name {name!r} is taken by {_TABLE[name].cls.__name__}")
    for flag in CAPABILITIES:
        if flag not in cls.__dict__:
            setattr(cls, flag, False)
    _TABLE[name] = OptimizerSpec(name, cls, float(cls.default_rho), cls.summary, _options(cls), bool(cls.perturbs),
                                 frozenset(cls.reads), *(getattr(cls, flag) for flag in CAPABILITIES))
    return cls


def unregister(name: str) -> None:
    """Remove ``name`` from the registry (for optimizers defined at run time, e.g. in tests)."""
    _TABLE.pop(name, None)


def import_package(package_name: str) -> None:
    """Import every module of package ``package_name`` (alphabetically), registering its classes."""
    package = importlib.import_module(package_name)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        importlib.import_module(f"{package.__name__}.{info.name}")


def _discover() -> None:
    """Import every module of :mod:`sharpscope.optim` once."""
    global _discovered
    if not _discovered:
        _discovered = True
        import_package(__package__ or "sharpscope.optim")


def specs() -> tuple[OptimizerSpec, ...]:
    """Every registered optimizer, in registration order."""
    _discover()
    return tuple(_TABLE.values())


def names() -> tuple[str, ...]:
    return tuple(s.name for s in specs())


def lookup(name: str) -> OptimizerSpec | None:
    """The registry row of ``name``, or None."""
    _discover()
    return _TABLE.get(name)


def get(name: str) -> OptimizerSpec:
    """The registry row of ``name``; an unknown name is a :class:`ConfigError` listing the choices."""
    spec = lookup(name)
    if spec is None:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(names())}")
    return spec


def base_options(config: RunOptions) -> dict[str, Any]:
    """The keyword arguments of ``torch.optim.SGD`` a configuration names."""
    return dict(lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=config.nesterov)


def adamw_options(config: RunOptions) -> dict[str, Any]:
    """The keyword arguments of ``torch.optim.AdamW`` a configuration names: betas (``momentum``,
    ``beta2``), ``eps`` (``adam_eps``), the decoupled ``weight_decay`` (Loshchilov & Hutter)."""
    return dict(lr=config.lr, betas=(config.momentum, config.beta2), eps=config.adam_eps,
                weight_decay=config.weight_decay)


def base_optimizer(config: RunOptions) -> tuple[type, dict[str, Any]]:
    """The optimizer class a SAM-family optimizer wraps (``config.base_optimizer``) and its kwargs."""
    import torch

    name = getattr(config, "base_optimizer", "sgd")
    if name == "sgd":
        return torch.optim.SGD, base_options(config)
    if name == "adamw":
        return torch.optim.AdamW, adamw_options(config)
    raise ConfigError(f"--base-optimizer must be one of {', '.join(BASE_OPTIMIZERS)}, got {name!r}")
