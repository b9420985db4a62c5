"""Which attention a model computes through ``F.scaled_dot_product_attention`` (SDPA): only SDPA's
math kernel has a double backward, so derivatives run under
:func:`sharpscope.batches.higher_order_attention` and :func:`attention_calls` says whether SDPA is used.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["attention_calls", "MATH_KERNEL_NOTE"]

MATH_KERNEL_NOTE = ("attention (F.scaled_dot_product_attention) on its math kernel: the fused kernels have no "
                    "second derivative")

# nn.MultiheadAttention reaches SDPA inside F.multi_head_attention_forward, one call to a function mode
_ATTENTION = {F.scaled_dot_product_attention: "scaled_dot_product_attention",
              F.multi_head_attention_forward: "multi_head_attention_forward"}


class _Recorder(TorchFunctionMode):
    """Counts the calls of the functions in ``_ATTENTION`` made inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = _ATTENTION.get(func)
        if name is not None:
            self.calls[name] += 1
        return func(*args, **(kwargs or {}))


def attention_calls(run: Callable[[], Any]) -> dict[str, int]:
    """Calls of ``F.scaled_dot_product_attention`` (and of ``F.multi_head_attention_forward``,
    ``nn.MultiheadAttention``'s way to it) that ``run()`` makes, by name; empty when none."""
    recorder = _Recorder()
    with recorder:
        run()
    return dict(recorder.calls)
