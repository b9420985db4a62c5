"""Batches of any structure under two loss conventions: ``loss_fn(outputs, targets)`` over
``(inputs, targets)`` pairs (``model(inputs)``, inputs any pytree), or :class:`ModelLoss`
``fn(model, batch)`` (hessian-eigenthings' convention; ``loss_fn=None``: :class:`OutputLoss`).

Analyses average batch losses by weight, L = sum_b (w_b / W) loss_b, W = sum_b w_b, w_b the
batch's examples unless ``ModelLoss(weight=...)`` or ``loss_fn.batch_weight(targets)`` says
otherwise (token losses: counted tokens). Floating inputs are cast to the model's dtype.
:meth:`BatchLoss.read` keeps the batches on the device up to ``cache_bytes``
(:data:`DEFAULT_CACHE_BYTES`), else streams them, reading the loader on every pass; a pass
whose :func:`fingerprint` differs from the first (unseeded shuffle, augmentation) raises
ConfigError, and a one-shot iterator that would have to stream is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn
from torch.func import functional_call

from .errors import ConfigError

__all__ = ["ModelLoss", "OutputLoss", "count_tokens", "pad_join", "IGNORE_INDEX", "BatchLoss", "Prepared", "Streamed",
           "move", "concat", "take", "tensor_leaves", "higher_order_attention", "batch_bytes", "fingerprint",
           "DEFAULT_CACHE_BYTES"]

LossFn = Callable[[Any, Any], Tensor]
DEFAULT_CACHE_BYTES = 1 << 30  # batches kept on the device up to this many bytes; more are streamed


def batch_bytes(tree: Any) -> int:
    """The bytes the tensors of a batch take."""
    return sum(t.numel() * t.element_size() for t in tensor_leaves(tree))


def fingerprint(tree: Any) -> tuple:
    """Shapes, dtypes and, per tensor, the float64 sum, sum of squares and sum_i (i + 1) sum(t[i])
    over dim 0: equal for the same batch read twice, different for other or reordered examples."""
    leaves = tensor_leaves(tree)
    sums = []
    for t in leaves:
        if not t.numel():
            continue
        d = t.detach().double()
        rows = d.reshape(d.shape[0], -1).sum(1) if d.dim() else d.reshape(1)
        position = torch.arange(1, rows.numel() + 1, dtype=torch.float64, device=rows.device)
        sums.append(torch.stack([d.sum(), d.square().sum(), (position * rows).sum()]))
    values = tuple(torch.stack(sums).cpu().reshape(-1).tolist()) if sums else ()
    return tuple((tuple(t.shape), str(t.dtype)) for t in leaves), values


def tensor_leaves(tree: Any) -> list[Tensor]:
    """The tensors of a pytree, in its flattening order."""
    return [t for t in pytree.tree_leaves(tree) if isinstance(t, Tensor)]


def move(tree: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """Every tensor of ``tree`` on ``device``; floating ones cast to ``dtype`` (when given)."""
    return pytree.tree_map(lambda t: t.to(device, dtype if dtype is not None and t.is_floating_point() else t.dtype)
                           if isinstance(t, Tensor) else t, tree)


def concat(trees: list[Any]) -> Any:
    """Batches of one structure joined along dim 0, leaf by leaf."""
    flat = [pytree.tree_flatten(t) for t in trees]
    spec = flat[0][1]
    if any(s != spec for _, s in flat):
        raise ConfigError("batches differ in structure; they cannot be joined")
    leaves = [torch.cat(parts) if isinstance(parts[0], Tensor) else parts[0]
              for parts in zip(*(leaves for leaves, _ in flat))]
    return pytree.tree_unflatten(leaves, spec)


def take(tree: Any, index: Tensor | slice) -> Any:
    """The examples ``index`` of every tensor of ``tree`` (dim 0)."""
    return pytree.tree_map(lambda t: t[index] if isinstance(t, Tensor) else t, tree)


def leading_size(tree: Any, what: str) -> int:
    """The leading size of the first tensor of ``tree``."""
    leaves = tensor_leaves(tree)
    if not leaves or leaves[0].dim() == 0:
        raise ConfigError(f"cannot count the examples of a batch: its {what} hold no tensor with a leading "
                          "batch dimension (pass ModelLoss(fn, count=...) to say how)")
    return int(leaves[0].shape[0])


@contextlib.contextmanager
def higher_order_attention() -> Iterator[None]:
    """SDPA restricted to its math kernel in the block: the fused kernels have no forward-mode
    derivative or double backward (HVPs, second-order SAM); the math kernel has ``vmap`` rules."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield


class ModelLoss:
    """``fn(model, batch)`` -> the mean loss of a batch as the data yields it (on the model's
    device). ``count(batch)``: its examples (default: its first tensor's leading size);
    ``weight(batch)``: what the mean is over (default: the examples); ``join(batches)``: one
    batch of every example, where batches differ beyond dim 0 (e.g. padded to one length)."""

    def __init__(self, fn: Callable[[nn.Module, Any], Tensor], count: Callable[[Any], int] | None = None,
                 weight: Callable[[Any], int] | None = None, join: Callable[[list[Any]], Any] | None = None) -> None:
        if not callable(fn):
            raise ConfigError(f"ModelLoss needs a callable fn(model, batch), got {fn!r}")
        if weight is not None and not callable(weight):
            raise ConfigError(f"ModelLoss's weight must be a callable weight(batch), got {weight!r}")
        self.fn = fn
        self.count = count
        self.weight = weight
        self.join = join

    def __repr__(self) -> str:
        return f"ModelLoss({getattr(self.fn, '__name__', self.fn)!r})"


IGNORE_INDEX = -100  # a label that no loss counts (PyTorch's and Hugging Face's convention)


def count_tokens(labels: Tensor, shift: bool) -> Tensor:
    """The number of labels other than -100 in (B, T), the first position dropped when ``shift``
    (a causal LM's first label is never a target); a 0-dim integer tensor."""
    return ((labels[..., 1:] if shift else labels) != IGNORE_INDEX).sum()


def pad_join(batches: list[Any], labels_key: str = "labels") -> dict[str, Any]:
    """Dict batches of token sequences joined along dim 0, 2+ dim tensors padded at the end of dim 1
    (labels with -100, other fields with 0: masked), so each sequence's loss is unchanged."""
    if not batches or not all(isinstance(b, dict) for b in batches):
        raise ConfigError("only dict batches of token sequences can be padded to one length")
    if any(set(b) != set(batches[0]) for b in batches):
        raise ConfigError("the dict batches hold different fields; they cannot be joined")
    length = max(t.shape[1] for b in batches for t in b.values() if isinstance(t, Tensor) and t.dim() >= 2)

    def pad(key: str, t: Any) -> Any:
        if not isinstance(t, Tensor) or t.dim() < 2 or t.shape[1] == length:
            return t
        value = IGNORE_INDEX if key == labels_key else 0
        return torch.nn.functional.pad(t.movedim(1, -1), (0, length - t.shape[1]), value=value).movedim(-1, 1)

    return concat([{k: pad(k, v) for k, v in b.items()} for b in batches])


class OutputLoss(ModelLoss):
    """``model(**batch).loss`` (a Hugging Face model given ``labels``), weighted by what it is a
    mean over, ``per``: ``"causal"`` (counted tokens after a causal LM's shift), ``"tokens"``
    (no shift), ``"examples"``, or ``"auto"``: examples for 1-D or floating labels, else tokens,
    shifted for a ``*ForCausalLM`` / ``*LMHeadModel``."""

    PER = ("auto", "causal", "tokens", "examples")

    def __init__(self, model: nn.Module, per: str = "auto") -> None:
        if per not in self.PER:
            raise ConfigError(f"OutputLoss's per must be one of {', '.join(self.PER)}, got {per!r}")
        self.per = per
        base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model  # peft
        self.shift = per == "causal" or (per == "auto" and type(base).__name__.endswith(("ForCausalLM", "LMHeadModel")))
        super().__init__(self.output_loss, weight=self.count_weight, join=pad_join)

    @staticmethod
    def output_loss(model: nn.Module, batch: Any) -> Tensor:
        """``model(**batch).loss``; a ConfigError when the model computes none."""
        if not isinstance(batch, dict) or "labels" not in batch:
            raise ConfigError("the model's own loss needs dict batches with 'labels' (model(**batch).loss)")
        loss = getattr(model(**batch), "loss", None)
        if not isinstance(loss, Tensor):
            raise ConfigError(f"{type(model).__name__}(**batch) returned no .loss tensor; pass a loss_fn")
        return loss

    def count_weight(self, batch: Any) -> int:
        """The batch's number of counted tokens, or of examples (class docstring)."""
        labels = batch["labels"] if isinstance(batch, dict) and "labels" in batch else None
        if not isinstance(labels, Tensor):
            raise ConfigError("the model's own loss needs dict batches with a 'labels' tensor")
        if self.per == "examples" or (self.per == "auto" and (labels.dim() < 2 or labels.is_floating_point())):
            return int(labels.shape[0])
        return int(count_tokens(labels, self.shift))

    def __repr__(self) -> str:
        return f"OutputLoss(per={self.per!r}, shift={self.shift})"


class _Call(nn.Module):
    """``fn(model, batch)`` as a module, so that ``functional_call`` can swap its parameters."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, Any], Tensor]) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, batch: Any) -> Tensor:
        return self.fn(self.model, batch)


class BatchLoss:
    """The mean loss of one batch as a function of the model's state (either convention)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn | ModelLoss | None) -> None:
        if loss_fn is None:  # the model's own loss, model(**batch).loss (Hugging Face)
            loss_fn = OutputLoss(model)
        if not callable(loss_fn) and not isinstance(loss_fn, ModelLoss):
            raise ConfigError(f"loss_fn must be callable or a ModelLoss, got {loss_fn!r}")
        self.model = model
        self.loss_fn = loss_fn
        self.takes_model = isinstance(loss_fn, ModelLoss)
        self._call = _Call(model, loss_fn.fn) if isinstance(loss_fn, ModelLoss) else None

    def prepare(self, batch: Any, device: torch.device, dtype: torch.dtype) -> Any:
        """``batch`` checked and moved to ``device`` (floating inputs cast to ``dtype``)."""
        if self.takes_model:
            return move(batch, device, dtype)
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ConfigError("data must yield (inputs, targets) pairs; for batches of another structure "
                              "pass loss_fn=ModelLoss(fn) with fn(model, batch) -> loss (dict batches of tokens: "
                              "sharpscope.tokens.TokenLoss('causal' or 'masked'), or loss_fn=None for the model's "
                              "own model(**batch).loss)")
        inputs, targets = batch
        return move(inputs, device, dtype), move(targets, device)

    def count(self, batch: Any) -> int:
        """The number of examples in a (prepared) batch."""
        if self.takes_model:
            counter = self.loss_fn.count  # type: ignore[union-attr]
            n = int(counter(batch)) if counter is not None else leading_size(batch, "fields")
        else:
            n = leading_size(batch[1], "targets") if tensor_leaves(batch[1]) else leading_size(batch[0], "inputs")
        if n < 1:
            raise ConfigError(f"a batch holds {n} examples")
        return n

    def weight(self, batch: Any) -> int:
        """The weight of a (prepared) batch in the mean over batches (module docstring)."""
        weigh = self.loss_fn.weight if self.takes_model else getattr(self.loss_fn, "batch_weight", None)  # type: ignore
        if not callable(weigh):
            return self.count(batch)
        w = int(weigh(batch if self.takes_model else batch[1]))
        if w < 0:
            raise ConfigError(f"a batch has the negative weight {w}")
        return w

    def read(self, data: Iterable[Any], device: torch.device, dtype: torch.dtype, cache: bool | str = "auto",
             cache_bytes: int | None = None) -> Prepared:
        """Every batch of ``data`` prepared, with its count and weight, kept on ``device`` or
        streamed (module docstring; ``cache``: "auto", True or False). One pass over ``data``."""
        if cache not in ("auto", True, False):
            raise ConfigError(f"cache must be 'auto', True or False, got {cache!r}")
        budget = DEFAULT_CACHE_BYTES if cache_bytes is None else cache_bytes
        if not (isinstance(budget, int) and budget >= 0):
            raise ConfigError(f"cache_bytes must be a non-negative number of bytes, got {cache_bytes!r}")
        kept: list[Any] | None = [] if cache is not False else None
        counts, weights, prints, size = [], [], [], 0
        for raw in data:
            batch = self.prepare(raw, device, dtype)
            counts.append(self.count(batch))
            weights.append(self.weight(batch))
            prints.append(fingerprint(batch))
            size += batch_bytes(batch)
            if kept is not None:
                kept.append(batch)
                if cache == "auto" and size > budget:
                    kept = None  # over the budget: drop what was kept and stream from here on
        if not counts:
            raise ConfigError("data holds no batches")
        if not sum(weights):
            raise ConfigError("the data holds nothing the loss counts (every batch has weight 0: no token "
                              "with a label other than -100?)")
        if kept is not None:
            return Prepared(self, kept, counts, weights=weights)
        if iter(data) is data:  # type: ignore[comparison-overlap]
            raise ConfigError(f"the data ({size / 2**20:.0f} MiB of batches) would have to be streamed, but it is a "
                              "one-shot iterator that cannot be read again; pass a DataLoader or a list")
        return Prepared(self, Streamed(self, data, device, dtype, prints), counts, streamed=True, weights=weights)

    def outputs_and_loss(self, state: dict[str, Tensor], batch: Any) -> tuple[Any, Tensor]:
        """(model outputs or None under ModelLoss, mean loss of the batch) at ``state``."""
        if self._call is not None:
            state = {f"model.{k}": v for k, v in state.items()}
            return None, functional_call(self._call, state, (batch,))
        inputs, targets = batch
        outputs = functional_call(self.model, state, (inputs,))
        return outputs, self.loss_fn(outputs, targets)  # type: ignore[operator]

    def __call__(self, state: dict[str, Tensor], batch: Any) -> Tensor:
        return self.outputs_and_loss(state, batch)[1]


class Streamed:
    """A loader's batches read again on every iteration, each checked against its first-pass fingerprint."""

    def __init__(self, loss: BatchLoss, data: Iterable[Any], device: torch.device, dtype: torch.dtype,
                 prints: list[tuple]) -> None:
        self.loss, self.data, self.device, self.dtype, self.prints = loss, data, device, dtype, prints

    def __len__(self) -> int:
        return len(self.prints)

    def __iter__(self) -> Iterator[Any]:
        i = -1
        for i, raw in enumerate(self.data):
            batch = self.loss.prepare(raw, self.device, self.dtype)
            if i >= len(self.prints) or fingerprint(batch) != self.prints[i]:
                raise ConfigError(f"the data yielded a different batch {i} on a later pass (a DataLoader with "
                                  "shuffle=True, whose order changes on every pass even with a seeded generator, "
                                  "or random augmentation?): a streamed analysis needs the same batches on every "
                                  "pass")
            yield batch
        if i + 1 != len(self.prints):
            raise ConfigError(f"the data yielded {i + 1} batches on a later pass, {len(self.prints)} on the first")


@dataclass
class Prepared:
    """Batches on the model's device (a list, or :class:`Streamed`), their counts and weights."""

    loss: BatchLoss
    batches: list[Any] | Streamed
    counts: list[int]
    streamed: bool = False
    weights: list[int] | None = None

    def __post_init__(self) -> None:
        if self.weights is None:
            self.weights = list(self.counts)

    @property
    def n_examples(self) -> int:
        return sum(self.counts)

    @property
    def total_weight(self) -> int:
        """W = sum_b w_b: the number of examples, or of counted tokens under a token loss."""
        return sum(self.weights)  # type: ignore[arg-type]

    def per_example(self) -> bool:
        """Whether every tensor holds its batch's examples along dim 0 and the batches agree in
        every other dimension (so examples can be joined and re-split); never when streamed."""
        if self.streamed:
            return False
        leaves = [tensor_leaves(b) for b in self.batches]
        return (all(t.dim() > 0 and t.shape[0] == n for ts, n in zip(leaves, self.counts) for t in ts)
                and all(len(ts) == len(leaves[0]) and all(t.shape[1:] == f.shape[1:] for t, f in zip(ts, leaves[0]))
                        for ts in leaves))

    def joined(self) -> Any:
        """All examples as one batch (dim 0); a :class:`ConfigError` when they cannot be."""
        if not self.per_example():
            join = self.loss.loss_fn.join if self.loss.takes_model else None  # type: ignore[union-attr]
            if join is not None and not self.streamed:
                return join(list(self.batches))  # type: ignore[arg-type]
            raise ConfigError("this analysis splits the data into examples along dim 0, but a batch holds a tensor "
                              "whose leading size is not its number of examples, or the batches differ in another "
                              "dimension (token sequences of different lengths: pad them to one length)")
        return self.batches[0] if len(self.batches) == 1 else concat(self.batches)

    def chunks(self, size: int | None) -> Iterable[tuple[Any, int]]:
        """Re-iterable (batch, weight) pairs of at most ``size`` examples (if they can be re-split)."""
        if size is None or not self.per_example():
            return _Pairs(self.batches, self.weights)  # type: ignore[arg-type]
        everything = self.joined()
        parts = [take(everything, slice(lo, lo + size)) for lo in range(0, self.n_examples, size)]
        return [(part, self.loss.weight(part)) for part in parts]


class _Pairs:
    """Re-iterable (batch, weight) pairs of batches that may be streamed."""

    def __init__(self, batches: list[Any] | Streamed, counts: list[int]) -> None:
        self.batches, self.counts = batches, counts

    def __len__(self) -> int:
        return len(self.counts)

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        return zip(self.batches, self.counts)
