"""What a parameter is, read off its name (GPT-2, BERT, ViT, Llama-style, ``nn.TransformerEncoder``
names, and their peft LoRA versions): the transformer block it sits in, ``...<h|layer|layers|block|
blocks>.<N>.`` (models without such names group by the outermost non-container module below the
root), and its kind, the first that claims it of ``norm``, ``embeddings``, ``attention``, ``mlp``
(also ``output`` inside a block: BERT's), ``head`` (outside the blocks), by module type or name part
(the ``_*_PARTS`` tables); else ``conv``, ``linear`` or ``other``.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from torch import nn

from ..errors import ConfigError

__all__ = ["GROUPINGS", "KINDS", "block_of", "kind_of", "group_parameters", "biasbn_names", "select_parameters",
           "moved_parameters", "frozen_parameters", "parameter_groups"]

GROUPINGS = ("layer", "block", "kind")
KINDS = ("embeddings", "attention", "mlp", "norm", "head", "conv", "linear", "other")

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm)
_BLOCK = re.compile(r"^(.*?(?:^|\.)(?:h|layer|layers|block|blocks)\.\d+)\.")
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_ATTENTION_PARTS = {"query", "key", "value", "q_proj", "k_proj", "v_proj", "o_proj", "qkv", "c_attn"}
_MLP_PARTS = {"mlp", "ffn", "feed_forward", "feedforward", "intermediate", "fc1", "fc2", "c_fc", "linear1",
              "linear2", "gate_proj", "up_proj", "down_proj"}
_HEAD_PARTS = {"lm_head", "head", "classifier", "pooler", "score", "fc"}


def block_of(name: str) -> str | None:
    """The numbered transformer block a parameter name sits in (``"transformer.h.3"``), or None."""
    return match.group(1) if (match := _BLOCK.match(name)) else None


def _owner(model: nn.Module, name: str) -> nn.Module | None:
    owner = name.rpartition(".")[0]
    try:
        return model.get_submodule(owner) if owner else model
    except AttributeError:
        return None


def kind_of(model: nn.Module, name: str) -> str:
    """The kind of parameter ``name`` of ``model``: one of :data:`KINDS` (module docstring)."""
    module = _owner(model, name)
    parts = [p.lower() for p in name.split(".")[:-1]]
    block = block_of(name)
    if isinstance(module, _NORM_TYPES) or any("norm" in p or p.startswith("ln") for p in parts):
        return "norm"
    if isinstance(module, nn.Embedding) or any(p in ("wte", "wpe") or "embed" in p for p in parts):
        return "embeddings"
    if (isinstance(module, nn.MultiheadAttention)
            or any("attn" in p or "attention" in p or p in _ATTENTION_PARTS for p in parts)):
        return "attention"
    if any(p in _MLP_PARTS for p in parts) or (block is not None and "output" in parts):
        return "mlp"
    if block is None and any(p in _HEAD_PARTS for p in parts):
        return "head"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    return "linear" if isinstance(module, nn.Linear) else "other"


def _outermost(modules: dict[str, nn.Module], owner: str) -> str:
    """The outermost module below the root on the path to ``owner`` that is not a container."""
    parts = owner.split(".")
    prefixes = (".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return next((prefix for prefix in prefixes if not isinstance(modules[prefix], _CONTAINERS)), owner)


def group_parameters(model: nn.Module, by: str = "layer") -> dict[str, list[str]]:
    """Trainable parameter names grouped ``by`` ``"layer"`` (the owning module), ``"block"`` or
    ``"kind"`` (module docstring), in model order."""
    if by not in GROUPINGS:
        raise ConfigError(f"group by {', '.join(GROUPINGS)}; got {by!r}")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    modules = dict(model.named_modules())
    transformer = by == "block" and any(block_of(n) is not None for n in names)
    groups: dict[str, list[str]] = {}
    for name in names:
        owner = name.rpartition(".")[0]
        if by == "kind":
            key = kind_of(model, name)
        elif transformer:
            key = block_of(name) or owner
        elif by == "block" and owner:
            key = _outermost(modules, owner)
        else:
            key = owner
        groups.setdefault(key or "(root)", []).append(name)
    return groups


def biasbn_names(model: nn.Module) -> set[str]:
    """Names of biases and of every parameter of a normalization layer."""
    return {f"{mod_name}.{p_name}" if mod_name else p_name for mod_name, module in model.named_modules()
            for p_name, _ in module.named_parameters(recurse=False)
            if isinstance(module, _NORM_TYPES) or p_name == "bias"}


def select_parameters(model: nn.Module, params: Any = None, include_frozen: bool = False) -> list[str]:
    """Trainable parameter names chosen by ``params``: ``None`` / ``"all"``, ``"no-biasbn"``, glob patterns
    (a leading ``!`` excludes) or a callable ``(name, parameter) -> bool``; frozen ones only with
    ``include_frozen``; an empty selection is a :class:`ConfigError`."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad or include_frozen]
    if params is None or params == "all":
        chosen = [n for n, _ in named]
    elif params == "no-biasbn":
        skip = biasbn_names(model)
        chosen = [n for n, _ in named if n not in skip]
    elif callable(params):
        chosen = [n for n, p in named if params(n, p)]
    else:
        patterns = [params] if isinstance(params, str) else list(params)
        include = [p for p in patterns if not p.startswith("!")]
        exclude = [p[1:] for p in patterns if p.startswith("!")]
        chosen = [n for n, _ in named
                  if (not include or any(fnmatch.fnmatchcase(n, pat) for pat in include))
                  and not any(fnmatch.fnmatchcase(n, pat) for pat in exclude)]
    if not chosen:
        frozen = len(frozen_parameters(model)) if not include_frozen else 0
        raise ConfigError(f"parameter selection {params!r} matches no trainable parameter; names look like "
                          f"{', '.join(n for n, _ in named[:4])}"
                          + (f" ({frozen} frozen tensors, requires_grad=False, are left out)" if frozen else ""))
    return chosen


def moved_parameters(model: nn.Module, params: Any = None) -> list[str]:
    """:func:`select_parameters` for the analyses that only move weights, except that a model with
    no trainable parameter at all (frozen for inference) has all of them."""
    return select_parameters(model, params, include_frozen=not any(p.requires_grad for p in model.parameters()))


def frozen_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters with ``requires_grad=False`` (a LoRA model's base weights)."""
    return [n for n, p in model.named_parameters() if not p.requires_grad]


parameter_groups = group_parameters  # the name sharpscope.objective and the README use
