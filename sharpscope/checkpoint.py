"""Safe checkpoint files: atomic writes, ``weights_only`` loads, rebuilt models.

A checkpoint is one ``.pt`` file of tensors and plain containers only, so
``torch.load(path, weights_only=True)`` reads it and nothing else is ever unpickled; writes are
atomic (:func:`sharpscope.io.atomic_write_bytes`). Layout (format version 1)::

    format, format_version               "sharpscope-checkpoint", 1
    sharpscope_version, torch_version
    model_spec, model_state              registry name or factory (sharpscope.models); state_dict
    optimizer_state                      the (SAM: base) optimizer's state_dict or None
    data_spec, data_fingerprint          sharpscope.data dicts, or None
    config                               training configuration dict or None
    progress                             {"epoch", "step", "batch_in_epoch": counts, "finished": bool}
    rng                                  {"torch": ByteTensor, "cuda": [ByteTensor, ...]} or None
    metrics, partial                     per-epoch metric dicts; an interrupted epoch's sums or None
    metadata                             plain values, with "environment" (sharpscope.provenance)
"""

from __future__ import annotations

import importlib
import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._version import __version__
from .errors import CheckpointError, ConfigError, DataChangedWarning, DataMismatchError, ModelSpecError
from .io import atomic_write_bytes as _atomic_write  # (not bound as a public name here: see __getattr__)

FORMAT = "sharpscope-checkpoint"
FORMAT_VERSION = 1

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint", "Checkpoint", "nonfinite_tensors",
           "check_data_fits", "check_fingerprint", "check_checkpoint_data", "checkpoint_data",
           "training_data_differences"]

_MOVED = {"atomic_write_bytes": "sharpscope.io"}  # old spelling -> where the name lives now


def __getattr__(name: str) -> Any:
    """Moved names (:data:`_MOVED`) keep working, with a DeprecationWarning."""
    if name in _MOVED:
        warnings.warn(f"sharpscope.checkpoint.{name} moved to {_MOVED[name]}.{name}; import it from there",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The fields a reader relies on: their types, and whether None is allowed.
_FIELD_TYPES: dict[str, tuple[type, bool]] = {
    "model_spec": (dict, False), "model_state": (dict, False), "optimizer_state": (dict, True),
    "data_spec": (dict, True), "data_fingerprint": (dict, True), "config": (dict, True), "progress": (dict, True),
    "rng": (dict, True), "metrics": (list, True), "partial": (dict, True), "metadata": (dict, True),
}
_PROGRESS_COUNTERS = ("epoch", "step", "batch_in_epoch")

def _to_plain(value: Any, where: str) -> Any:
    """A copy of ``value`` that ``weights_only`` loading reads back (subclasses and numpy scalars
    become built-in types; anything but tensors, numbers, strings, None and containers is refused)."""
    if value is None or type(value) in (str, int, float, bool) or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.generic):
        return value.item()
    for plain in (bool, int, float, str):
        if isinstance(value, plain):
            return plain(value)
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, (str, int))]
        if bad:
            raise CheckpointError(f"{where}: key {bad[0]!r} is not a str or int")
        return {(str(k) if isinstance(k, str) else int(k)): _to_plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_to_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise CheckpointError(f"{where}: {type(value).__name__} cannot be stored in a safe checkpoint "
                          "(only tensors, numbers, strings, None, lists and dicts)")


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, *, model_spec: dict, data_spec: dict | None = None,
                    data: Any = None, data_fingerprint: dict | None = None, optimizer_state: dict | None = None,
                    config: dict | None = None, progress: dict | None = None, rng: dict | None = None,
                    metrics: list | None = None, partial: dict | None = None, **metadata: Any) -> Path:
    """Write a checkpoint of ``model`` atomically (plain values only, else :class:`CheckpointError`
    before a byte is written); returns the path. ``model_spec``: a model name or a factory
    ``{"factory": "package.module:function", "kwargs": {...}}``; ``data_spec``: the data the
    analyses load (else they need ``--data``); ``data``: the training data (a Dataset, whose spec
    is the default ``data_spec``, or an ``(x, y)`` pair), whose fingerprint makes an analysis on
    changed data warn. ``metadata["environment"]`` defaults to :func:`sharpscope.provenance.of_model`::

        ss.save_checkpoint("mine.pt", model, model_spec={"factory": "mynets:build", "kwargs": {"width": 64}},
                           data_spec={"name": "npz", "root": "my.npz"})  # sharpscope hessian mine.pt --trust-factory
    """
    if not isinstance(model_spec, dict) or not ({"name", "factory"} & model_spec.keys()):
        raise CheckpointError("model_spec must be a dict with a 'name' or a 'factory' key")
    if data is not None:
        data_spec, data_fingerprint = _data_record(data, data_spec, data_fingerprint)
    if "environment" not in metadata:
        from .provenance import of_model
        metadata = {**metadata, "environment": of_model(model)}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = _to_plain({
        "format": FORMAT, "format_version": FORMAT_VERSION, "sharpscope_version": __version__,
        "torch_version": torch.__version__, "model_spec": model_spec, "model_state": state,
        "optimizer_state": optimizer_state, "data_spec": data_spec, "data_fingerprint": data_fingerprint,
        "config": config, "progress": progress, "rng": rng, "metrics": metrics or [], "partial": partial,
        "metadata": metadata,
    }, "checkpoint")
    return _atomic_write(path, lambda fh: torch.save(payload, fh))


def _data_record(data: Any, data_spec: dict | None, data_fingerprint: dict | None) -> tuple[dict | None, dict]:
    """``save_checkpoint(data=...)``: the data spec and the training split's fingerprint."""
    from .data import Dataset, fingerprint

    if data_fingerprint is not None:
        raise CheckpointError("give data or data_fingerprint, not both")
    if isinstance(data, Dataset):
        return (data_spec if data_spec is not None else data.spec.to_dict()), data.fingerprint()
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return data_spec, fingerprint(data[0], data[1])
    raise CheckpointError(f"data must be a sharpscope Dataset or an (inputs, labels) pair of tensors, "
                          f"got {type(data).__name__}")


def _describe_unpickling_error(err: Exception) -> str:
    """Unsafe when the pickle names a class or function, else garbage bytes."""
    text = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    detail = next((ln for ln in text if "global" in ln.lower()), "")
    if not detail:  # torch wraps the unpickler's own words ("Unsupported operand 103") in advice
        words = [ln for ln in text if not ln.startswith(("Weights only load failed", "Please file", "Check the"))]
        return f"unreadable (truncated or corrupt?): {(words or text or [type(err).__name__])[0][:160]}"
    detail = detail.removeprefix("WeightsUnpickler error:").split(" was not an allowed")[0].strip()
    return ("refused: the file needs arbitrary unpickling, which sharpscope never does "
            f"(weights_only=True): {detail[:160]}")


def _type_name(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def _check_fields(raw: dict[str, Any], p: Path) -> None:
    """Refuse a checkpoint whose fields do not have the types readers rely on."""
    for key, (kind, optional) in _FIELD_TYPES.items():
        value = raw.get(key)
        if not isinstance(value, kind) and not (optional and value is None):
            raise CheckpointError(f"{p}: field '{key}' must be a {kind.__name__}"
                                  f"{' or None' if optional else ''}, got {_type_name(value)}")
    for name, tensor in raw["model_state"].items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{p}: field 'model_state' must map parameter names to tensors, "
                                  f"got {name!r}: {_type_name(tensor)}")
    for i, record in enumerate(raw.get("metrics") or []):
        if not isinstance(record, dict):
            raise CheckpointError(f"{p}: field 'metrics' must be a list of dicts, item {i} is {_type_name(record)}")
    progress = raw.get("progress") or {}
    for key in _PROGRESS_COUNTERS:
        value = progress.get(key, 0)
        if type(value) is not int or value < 0:
            raise CheckpointError(f"{p}: field 'progress.{key}' must be an int >= 0, got {value!r}")
    if not isinstance(progress.get("finished", False), bool):
        raise CheckpointError(f"{p}: field 'progress.finished' must be a bool, got {progress['finished']!r}")


def nonfinite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state`` holding a NaN or an infinity."""
    return [name for name, t in state.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _wrap_hint(raw: Any) -> str:
    """How to make a sharpscope checkpoint of a foreign file (one line)."""
    tensors = isinstance(raw, dict) and bool(raw) and all(isinstance(v, torch.Tensor) for v in raw.values())
    nested = isinstance(raw, dict) and any(k in raw for k in ("state_dict", "model_state_dict", "model"))
    what = "a bare state_dict" if tensors else "a training checkpoint of other code" if nested else "this file"
    return (f"; to analyse {what}, load the weights into your model and wrap them once with "
            "sharpscope.save_checkpoint(path, model, model_spec={'factory': 'mymodule:build', 'kwargs': {}}, "
            "data_spec={'name': 'npz', 'root': 'data.npz'})")


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw checkpoint dict, read with ``weights_only=True`` and validated; a
    :class:`CheckpointError` for a missing, empty, truncated, foreign or unsafe file."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint file")
    if p.is_dir():
        if not (p / "checkpoint.pt").is_file():
            raise CheckpointError(f"{p}: is a folder without checkpoint.pt")
        p = p / "checkpoint.pt"
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: empty file, not a checkpoint")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says enough
            warnings.simplefilter("ignore")
            raw = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{p}: {_describe_unpickling_error(err)}") from None
    except Exception as err:  # any parser failure on an untrusted file means "corrupt"
        first = (str(err).splitlines() or [type(err).__name__])[0][:160]
        raise CheckpointError(f"{p}: unreadable (truncated or corrupt?): {first}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a sharpscope checkpoint (no '{FORMAT}' format field){_wrap_hint(raw)}")
    version = raw.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{p}: checkpoint format version {version!r} is newer than this "
                              f"sharpscope understands ({FORMAT_VERSION}); upgrade sharpscope")
    for key in ("model_spec", "model_state"):
        if key not in raw:
            raise CheckpointError(f"{p}: checkpoint lacks '{key}'")
    _check_fields(raw, p)
    return raw


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model (eval mode, CPU) and everything stored with it."""

    path: Path
    model: nn.Module
    model_spec: dict
    data_spec: dict | None
    config: dict | None
    progress: dict  # empty for a model saved outside the trainer
    metrics: list
    metadata: dict
    optimizer_state: dict | None = None
    rng: dict | None = None
    partial: dict | None = None
    raw: dict = field(default_factory=dict, repr=False)
    data_fingerprint: dict | None = None  # of the training split; None in older checkpoints

    @property
    def epoch(self) -> int | None:
        return self.progress.get("epoch")


def load_checkpoint(path: str | os.PathLike[str], *, allow_factory: bool | str = False,
                    map_location: str | torch.device = "cpu", allow_nonfinite: bool = False) -> Checkpoint:
    """Load a checkpoint and rebuild its model; a factory is imported only if ``allow_factory`` (True:
    any, ``--trust-factory``; a name: that one), NaN or Inf weights only with ``allow_nonfinite``."""
    from .models import build_model

    raw = read_checkpoint(path)
    bad = [] if allow_nonfinite else nonfinite_tensors(raw["model_state"])
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointError(f"{path}: weights hold NaN or Inf (in {', '.join(bad[:3])}{more}); "
                              "the run diverged, nothing can be measured on it")
    try:
        model = build_model(raw["model_spec"], allow_factory=allow_factory)
    except ModelSpecError as err:
        raise CheckpointError(f"{path}: {err}") from None
    try:
        model.load_state_dict(raw["model_state"])
    except RuntimeError as err:
        first = str(err).splitlines()[0][:200]
        raise CheckpointError(f"{path}: weights do not fit the model spec: {first}") from None
    model.to(map_location)
    model.eval()
    plain = ("model_spec", "data_spec", "config", "optimizer_state", "rng", "partial", "data_fingerprint")
    return Checkpoint(path=Path(path), model=model, progress=raw.get("progress") or {},
                      metrics=raw.get("metrics") or [], metadata=raw.get("metadata") or {}, raw=raw,
                      **{k: raw.get(k) for k in plain})


def check_data_fits(model: nn.Module, data: Any, *, n: int = 8) -> int:
    """K, the classes ``model`` scores on the first ``n`` training inputs of ``data`` (eval, no grad,
    RNG untouched); :class:`DataMismatchError` unless they give (n, K) and every label is below K."""
    from .objective import eval_mode

    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    x = data.x_train[:n]
    x = x.to(device, dtype) if x.is_floating_point() else x.to(device)  # token ids stay integers
    shape = tuple(data.x_train.shape[1:])
    try:
        with eval_mode(model), torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = model(x)
    except Exception as err:  # a model of the user's may raise anything on inputs it does not take
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise DataMismatchError(f"the data does not fit the model: it rejects inputs of shape {shape} "
                                f"({type(err).__name__}: {first_line})") from None
    k = _class_scores(out, len(x), shape, tuple(data.y_train.shape[1:]))
    labels = [t for t in (data.y_train, data.y_train_clean, data.y_test) if t.numel()]
    top = max(int(t.max()) for t in labels) if labels else -1
    if top >= k:
        raise DataMismatchError(f"the data does not fit the model: it has labels up to {top} ({top + 1} classes) "
                                f"but the model scores {k} classes")
    return k


def _class_scores(out: Any, n: int, shape: tuple[int, ...], label_shape: tuple[int, ...]) -> int:
    """K of outputs (n, K), or logits (n, T, K) for token labels (n, T); else DataMismatchError."""
    if label_shape:  # token data: logits per position
        from .tokens import logits_of

        try:
            out = logits_of(out)
        except ConfigError:
            pass
    want = (n, *label_shape)
    if not isinstance(out, torch.Tensor) or out.dim() != len(want) + 1 or tuple(out.shape[:-1]) != want:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        what = "class scores" if not label_shape else "logits over a vocabulary (a language model: --model gpt)"
        raise DataMismatchError(f"the data does not fit the model: {n} inputs of shape {shape} give outputs "
                                f"{got}, not ({', '.join(map(str, want))}, K) {what}")
    return int(out.shape[-1])


def _fingerprint_note(recorded: dict | None, data: Any) -> list[str]:
    """How ``data``'s training split differs from a recorded fingerprint ([] without one)."""
    from .data import fingerprint_differences

    return fingerprint_differences(recorded, data.fingerprint()) if recorded else []


def check_fingerprint(recorded: dict | None, data: Any, where: str | os.PathLike[str]) -> list[str]:
    """How ``data``'s training split differs from a recorded fingerprint, in a :class:`DataChangedWarning`."""
    diffs = _fingerprint_note(recorded, data)
    spec = getattr(data, "spec", None)
    what = ("given data" if spec is None  # 'npz from my.npz' / 'digits'
            else f"{spec.name} from {spec.root}" if spec.root is not None else str(spec.name))
    if diffs:
        warnings.warn(f"{where}: the data loaded for it ({what}) differs from its training split: {'; '.join(diffs)} "
                      "(analysed as loaded: on data the model was not trained on)", DataChangedWarning, stacklevel=2)
    return diffs


def training_data_differences(a: Checkpoint, b: Checkpoint) -> list[str]:
    """How two checkpoints' training splits differ ("seed 0 for A, 1 for B"; []): fingerprints,
    when both have one, decide whether, the spec fields (else the fingerprints) say how."""
    from .data import fingerprint_differences, spec_differences

    names = ("for A", "for B")
    specs = spec_differences(a.data_spec or {}, b.data_spec or {}, root=False, names=names) \
        if a.data_spec and b.data_spec else []
    if a.data_fingerprint and b.data_fingerprint:
        prints = fingerprint_differences(a.data_fingerprint, b.data_fingerprint, names=names)
        return (specs or prints) if prints else []
    if a.data_spec and b.data_spec:
        return spec_differences(a.data_spec, b.data_spec, names=names)
    return []


def check_checkpoint_data(model: nn.Module, recorded: dict | None, data: Any, where: str | os.PathLike[str]) -> None:
    """:func:`check_data_fits` (naming ``where`` and how the data changed), :func:`check_fingerprint`."""
    try:
        check_data_fits(model, data)
    except DataMismatchError as err:
        diffs = _fingerprint_note(recorded, data)
        changed = f"; since training, {'; '.join(diffs)}" if diffs else ""
        raise DataMismatchError(f"{where}: {err}{changed}") from None
    check_fingerprint(recorded, data, where)


def checkpoint_data(ckpt: Checkpoint, spec: Any = None) -> Any:
    """``spec`` (default the checkpoint's; CheckpointError without) loaded and checked against ``ckpt``."""
    from .data import DataSpec, load_dataset

    spec = spec if spec is not None else ckpt.data_spec
    if not spec:
        raise CheckpointError(f"{ckpt.path}: records no data set; analyse it from Python with your own data")
    data = load_dataset(spec if isinstance(spec, DataSpec) else DataSpec.from_dict(spec))
    check_checkpoint_data(ckpt.model, ckpt.data_fingerprint, data, ckpt.path)
    return data
