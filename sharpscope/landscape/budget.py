"""Grid points of a surface or an interpolation evaluated within a memory budget (``memory_gb``,
``--memory GB``; issue 26, item 2).

:func:`~sharpscope.landscape.surface.evaluate_points` evaluates one grid point at a time (one
point's parameters in flight), its loss summed over chunks of ``s`` examples. Within a budget of
``B`` bytes a point holds

    its state       P + 2 p_max (+ P_4)   a copy of the parameters and floating-point buffers (P bytes;
                                          every parameter is shifted, buffers only by a states direction
                                          or interpolation: an upper bound), two temporaries of the
                                          largest tensor (p_max) while theta_0 + x d_1 + y d_2 is summed,
                                          and the channels-last copy of the 4-D parameters (P_4) that CPU
                                          image models are evaluated with
    activations     a + b s               the tensors alive at once in one chunk's forward (the loss, the
                                          metrics, the accuracy's argmax): the measured peak of the bytes
                                          of the tensor storages that forward creates and has not freed yet
                                          (:class:`LivePeak`: the same count on CPU and GPU, neither RSS nor
                                          an allocator's cache), on chunks of s_1 = min(n, 4) and
                                          s_2 = min(n, 8) examples, and the line through the two:
                                          b = (m_2 - m_1) / (s_2 - s_1), a = m_1 - b s_1 (both >= 0)

The model, the centre, the directions and the data are outside the budget: they are held
whatever the chunk. Data that cannot be re-split into chunks (streamed, or batches of different
shapes) is measured on its largest batch (a streamed one: the first, scaled by the largest
count), whole. The chunks that fit are the candidates the timing picks from without a budget
(:data:`~sharpscope.landscape.surface.CHUNK_CANDIDATES`), else the largest ``s`` that fits; when
not even one example does (one copy of the parameters and one example's activations),
:class:`~sharpscope.errors.MemoryBudgetError` says what it would need, before the first point.
The chunk moves the loss by rounding only; the values are those of an unbudgeted run at that
chunk, bit for bit.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import UntypedStorage, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

from ..batches import tensor_leaves
from ..checks import GIB, finite_float, size_text
from ..errors import MemoryBudgetError

__all__ = ["LivePeak", "PointPlan", "budget_bytes", "state_bytes", "plan_point", "fitting_chunks", "PROBE_EXAMPLES"]

#: The two chunk sizes whose forwards are measured (at most the examples there are).
PROBE_EXAMPLES = (4, 8)


def budget_bytes(memory_gb: float | None) -> float | None:
    """``memory_gb`` (GiB, 2^30 bytes) in bytes, checked (a ConfigError unless finite and > 0); None without."""
    return None if memory_gb is None else finite_float("memory_gb", memory_gb, above=0) * GIB


class LivePeak(TorchDispatchMode):
    """Inside ``with LivePeak() as m:``, ``m.peak`` is the largest number of bytes held at once by
    tensor storages that the operations run inside created and have not freed (views and in-place
    results of storages that existed before count nothing); counted at the dispatcher, so the same
    on every device, and independent of allocators' caches (the pattern of
    ``torch.distributed._tools.mem_tracker``: a weak reference to each storage)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._known: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._refs: list[weakref.ref] = []

    def _freed(self, n_bytes: int, _: weakref.ref) -> None:
        self.live -= n_bytes

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        for st in _storages((args, kwargs)):  # storages from before count nothing
            self._known.setdefault(st, 0)
        out = func(*args, **(kwargs or {}))
        for st in _storages(out):
            if st in self._known:
                continue
            n_bytes = st.nbytes()
            self._known[st] = n_bytes
            self._refs.append(weakref.ref(st, lambda ref, n=n_bytes: self._freed(n, ref)))
            self.live += n_bytes
            self.peak = max(self.peak, self.live)
        return out


def _storages(tree: Any) -> list[UntypedStorage]:
    """The storages of the tensors of ``tree`` (none for tensors without one: sparse, wrapper subclasses)."""
    out = []
    for t in tensor_leaves(tree):
        try:
            out.append(t.untyped_storage())
        except (RuntimeError, NotImplementedError, TypeError):
            continue
    return out


def state_bytes(model: nn.Module, channels_last: bool = False) -> int:
    """P + 2 p_max (+ P_4): what one grid point's state adds to the model (module docstring)."""
    tensors = [p for p in model.parameters()] + [b for b in model.buffers() if b.is_floating_point()]
    sizes = [t.numel() * t.element_size() for t in tensors]
    p4 = sum(p.numel() * p.element_size() for p in model.parameters() if p.dim() == 4) if channels_last else 0
    return sum(sizes) + 2 * max(sizes, default=0) + p4


@dataclass(frozen=True)
class PointPlan:
    """One point's bytes: ``state`` plus ``fixed + per_example * s`` for a chunk of ``s`` examples
    (``per_example`` 0 and ``fixed`` the largest batch's when the data cannot be re-split)."""

    state: int
    fixed: float
    per_example: float
    budget: float
    n_examples: int
    splittable: bool
    n_parameters: int

    def need(self, size: int | None) -> float:
        """Bytes a point holds with chunks of ``size`` examples (None: the batches as given)."""
        return self.state + self.fixed + self.per_example * (size or 0)

    def largest(self) -> int:
        """The most examples per chunk that fit (at most every example; 0: not even one)."""
        if self.per_example <= 0:
            return self.n_examples if self.need(1) <= self.budget else 0
        return max(0, min(self.n_examples, math.floor((self.budget - self.state - self.fixed) / self.per_example)))

    def refusal(self, size: int | None, what: str) -> MemoryBudgetError:
        """The error for chunks of ``size`` examples (None: the batches as given): what one point
        would need, and the largest chunk that fits when there is one."""
        if self.splittable:
            acts = f"{size or 1:,} example(s)' activations, {size_text(self.fixed + self.per_example * (size or 1))}"
        else:
            acts = f"the activations of its largest batch, {size_text(self.fixed)}"
        fits = self.largest() if self.splittable else 0
        return MemoryBudgetError(
            f"{what} over {self.n_parameters:,} parameters needs at least {size_text(self.need(size or 1))} (its "
            f"parameters and buffers as they are shifted, {size_text(self.state)}, and {acts}), more than the memory "
            f"budget of {size_text(self.budget)}" + (f"; chunks of at most {fits:,} examples fit" if fits else ""))


def plan_point(model: nn.Module, measure: Callable[[int | None], float], n_examples: int,
               splittable: bool, budget: float, channels_last: bool = False) -> PointPlan:
    """A point's bytes within ``budget``; ``measure(s)``: the peak bytes (:class:`LivePeak`) of one chunk's
    forward of ``s`` examples (None: the largest batch as given)."""
    state, n_params = state_bytes(model, channels_last), sum(p.numel() for p in model.parameters())
    if not splittable:
        peak = measure(None)
        return PointPlan(state, float(peak), 0.0, budget, n_examples, False, n_params)
    s1, s2 = (min(n_examples, s) for s in PROBE_EXAMPLES)
    m1 = measure(s1)
    if s2 == s1:
        return PointPlan(state, 0.0, m1 / s1, budget, n_examples, True, n_params)
    m2 = measure(s2)
    slope = max(0.0, (m2 - m1) / (s2 - s1))
    return PointPlan(state, max(0.0, m1 - slope * s1), slope, budget, n_examples, True, n_params)


def fitting_chunks(plan: PointPlan, candidates: Sequence[int], chunk_size: int | None,
                   what: str = "a grid point") -> list[int | None]:
    """The chunk sizes to choose from: ``chunk_size`` if given and it fits; else the
    ``candidates`` (capped at the examples) that fit, else the largest size that fits; a
    :class:`MemoryBudgetError` (before any point) when none does."""
    if not plan.splittable:
        if plan.need(None) > plan.budget:
            raise plan.refusal(None, what)
        return [None]
    if chunk_size is not None:
        size = min(chunk_size, plan.n_examples)
        if plan.need(size) > plan.budget:
            raise plan.refusal(size, what)
        return [chunk_size]
    sizes = sorted({min(c, plan.n_examples) for c in candidates})
    fits = [s for s in sizes if plan.need(s) <= plan.budget]
    if fits:
        return fits
    if plan.largest() < 1:
        raise plan.refusal(1, what)
    return [plan.largest()]
