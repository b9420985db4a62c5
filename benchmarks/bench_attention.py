"""What each attention kernel costs for a gradient and a Hessian-vector product, in one process.

    OMP_NUM_THREADS=1 python benchmarks/bench_attention.py                 # 1 thread, T = 64, 256
    python benchmarks/bench_attention.py --threads 2 --lengths 128 --repeats 7

Setting: a GPT-2-style causal language model written out here (``--layers`` blocks of
LayerNorm -> causal self-attention -> LayerNorm -> GELU MLP, width ``--width``, ``--heads``
heads, byte vocabulary of 256, random init, seeded), on a batch of ``--batch`` random
sequences of each length T in ``--lengths``, float32 on the CPU. Its attention is computed
three ways, the same function each time:

- ``math``: ``F.scaled_dot_product_attention`` restricted to its math kernel
  (``sdpa_kernel(SDPBackend.MATH)``): plain matmul / softmax ops, every derivative; the kernel
  sharpscope runs every derivative on (``sharpscope.batches.higher_order_attention``);
- ``flash``: SDPA restricted to the fused CPU flash kernel: a first derivative only (no
  double backward, no forward-mode derivative);
- ``explicit``: the attention written out (q k^T / sqrt(d), causal mask, softmax, @ v), as
  a model without SDPA computes it.

Timed (median of ``--repeats`` rounds after a warm-up; each round calls every computation once,
in turn, so that load changes on a shared machine hit them alike): one gradient (``torch.func.grad`` of the
mean token loss, as ``Objective.value_and_grad``), one HVP forward-over-reverse
(``jvp(grad)``, sharpscope's default for large data) and one HVP by double backward
(``autograd.grad(create_graph=True)`` then a second ``autograd.grad``, the reuse-graph mode,
graph built inside the timing), each also as a ratio to the math kernel's gradient. A kernel
without the derivative prints why. The last row is what sharpscope does on this model under
the caller's default kernel choice: ``Objective.value_and_grad`` and ``Objective.hvp`` in its
two modes (it runs them on the math kernel; reuse-graph builds its graph once, in the
warm-up, so its time is one product on the kept graph). The first lines check that the three compute the same
loss and gradient (max relative difference).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

KERNELS = ("math", "flash", "explicit")


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.c_attn, self.c_proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.c_fc, self.mlp_proj = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.explicit = False

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if not self.explicit:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        t = q.shape[-2]
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2)
                   for z in self.c_attn(self.ln_1(x)).split(c, -1))
        x = x + self.c_proj(self.attend(q, k, v).transpose(1, 2).reshape(b, t, c))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, layers: int, width: int, heads: int, context: int, vocab: int = 256) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.h = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f, self.lm_head = nn.LayerNorm(width), nn.Linear(width, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


@contextlib.contextmanager
def kernel(model: GPT, name: str) -> Iterator[None]:
    """Attention computed the ``name`` way inside the block."""
    for block in model.h:
        block.explicit = name == "explicit"
    backend = SDPBackend.FLASH_ATTENTION if name == "flash" else SDPBackend.MATH
    try:
        with sdpa_kernel([backend]):
            yield
    finally:
        for block in model.h:
            block.explicit = False


def derivatives(model: GPT, x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The three timed computations on ``model``'s parameters (detached copies)."""
    theta = {n: p.detach() for n, p in model.named_parameters()}
    tangent = {n: torch.randn_like(p) for n, p in theta.items()}

    def loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, params, (x,)).flatten(0, 1), y.flatten())

    def double_backward() -> list[torch.Tensor]:
        leaves = {n: t.clone().requires_grad_(True) for n, t in theta.items()}
        g = torch.autograd.grad(loss(leaves), list(leaves.values()), create_graph=True)
        return list(torch.autograd.grad(g, list(leaves.values()), grad_outputs=list(tangent.values())))

    return {"gradient": lambda: grad(loss)(theta),
            "HVP forward-over-reverse": lambda: jvp(grad(loss), (theta,), (tangent,))[1],
            "HVP double backward": double_backward}


def agreement(model: GPT, x: torch.Tensor, y: torch.Tensor) -> str:
    """Max relative difference of the loss and the gradient of each kernel against math."""
    ref = None
    parts = []
    for name in KERNELS:
        with kernel(model, name):
            theta = {n: p.detach() for n, p in model.named_parameters()}
            g = grad(lambda p: F.cross_entropy(functional_call(model, p, (x,)).flatten(0, 1), y.flatten()))(theta)
            flat = torch.cat([t.reshape(-1) for t in g.values()])
        if ref is None:
            ref = flat
            continue
        parts.append(f"{name} vs math: gradient max rel. diff {float((flat - ref).abs().max() / ref.abs().max()):.1e}")
    return "; ".join(parts)


def objective_calls(model: GPT, x: torch.Tensor, y: torch.Tensor) -> dict[tuple[str, str], Callable[[], object]]:
    """sharpscope's Objective on the same batch: its gradient and its HVP in both modes."""
    from sharpscope.objective import Objective

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.flatten(0, 1), target.flatten())

    objs = {mode: Objective(model, loss_fn, [(x, y)], hvp_mode=mode)
            for mode in ("forward-over-reverse", "reuse-graph")}
    assert objs["reuse-graph"].attention_kernel() == "math"
    v = torch.randn(objs["reuse-graph"].n, generator=torch.Generator().manual_seed(2))
    return {("sharpscope", "gradient"): objs["reuse-graph"].value_and_grad,
            ("sharpscope", "HVP forward-over-reverse"): lambda: objs["forward-over-reverse"].hvp(v),
            ("sharpscope", "HVP double backward"): lambda: objs["reuse-graph"].hvp(v)}


def _in_kernel(model: GPT, name: str, fn: Callable[[], object]) -> Callable[[], object]:
    def call() -> object:
        with kernel(model, name):
            return fn()
    return call


def round_robin(fns: dict[tuple[str, str], Callable[[], object]], repeats: int) -> dict[tuple[str, str], float | str]:
    """Median time of each function, timed in turns (one call of each per round, ``repeats``
    rounds after a warm-up round), so that a change of load on a shared machine hits them
    alike; a function that raises gets ``n/a`` and why."""
    out: dict[tuple[str, str], float | str] = {}
    live = {}
    for key, fn in fns.items():
        try:
            fn()
            live[key] = fn
        except (RuntimeError, NotImplementedError) as err:
            out[key] = "n/a: " + str(err).split("\n")[0][:60]
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in live}
    for _ in range(repeats):
        for key, fn in live.items():
            t0 = time.perf_counter()
            fn()
            samples[key].append(time.perf_counter() - t0)
    out.update({key: statistics.median(v) for key, v in samples.items()})
    return out


def run_length(model: GPT, t: int, batch: int, repeats: int) -> None:
    g = torch.Generator().manual_seed(1)
    seq = torch.randint(0, 256, (batch, t + 1), generator=g)
    x, y = seq[:, :-1], seq[:, 1:]
    print(f"\nT = {t} (batch {batch} x {t} tokens): {agreement(model, x, y)}")
    fns = {(name, what): _in_kernel(model, name, fn) for name in KERNELS
           for what, fn in derivatives(model, x, y).items()}
    fns.update(objective_calls(model, x, y))
    times = round_robin(fns, repeats)
    base = times["math", "gradient"]
    assert isinstance(base, float)
    whats = list(derivatives(model, x, y))
    print(f"{'kernel':10s}" + "".join(f"{w:>34s}" for w in whats))
    for name in (*KERNELS, "sharpscope"):
        cells = []
        for w in whats:
            v = times[name, w]
            cells.append(f"{v * 1e3:10.1f} ms ({v / base:5.2f}x math grad)" if isinstance(v, float)
                         else f"{v[:32]:>32s}")
        print(f"{name:10s}" + "".join(f"{c:>34s}" for c in cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lengths", default="64,256")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS or 1)")
    args = ap.parse_args()
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    lengths = [int(v) for v in args.lengths.split(",")]
    torch.manual_seed(0)
    model = GPT(args.layers, args.width, args.heads, max(lengths)).eval()
    n = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float32 CPU; GPT {args.layers} layers x "
          f"width {args.width}, {args.heads} heads, {n:,} parameters; median of {args.repeats}")
    for t in lengths:
        run_length(model, t, args.batch, args.repeats)


if __name__ == "__main__":
    main()
