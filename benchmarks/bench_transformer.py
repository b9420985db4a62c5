"""Transformers: step costs on a GPT-2-small-size model and top-eigenvalue accuracy on a small
GPT, sharpscope side by side with hessian-eigenthings 1.0 (issue 25, "Goals").

    pip install --no-deps "hessian-eigenthings==1.0.0a5"   # benchmark only, never a dependency
    python benchmarks/bench_transformer.py --threads 2              # part (a) on a small GPT + part (b)
    python benchmarks/bench_transformer.py --threads 2 --size gpt2  # part (a) on 124 M parameters
    python benchmarks/bench_transformer.py --threads 1 --part a --size gpt2 --layers 2 --profile  # quicker

Part (a), cost. ``--size gpt2``: ``GPT2LMHeadModel`` from ``GPT2Config``'s defaults (12 layers,
n_embd 768, vocabulary 50,257, context 1,024, dropout 0.1, eager attention: 124,439,808
parameters), random init (seed 0), one batch of 2 x 128 random tokens, the model's own loss
``model(**batch).loss``; ``--layers N`` keeps N of its 12 blocks (same widths and vocabulary: a
quicker look). ``--size small``: the 2-layer GPT of part (b) on the same batch shape
(a quick run). Timed in interleaved rounds (medians), in one process, by the wall clock and by
the process's CPU time (all its threads; the steadier of the two on a shared machine):

- one gradient: ``model(**batch).loss.backward()`` (eval mode) -- the unit of the HVP rows --
  and sharpscope's ``Objective.grad`` (``torch.func``);
- one HVP with each of sharpscope's modes (``Objective(..., hvp_mode=...)``):
  forward-over-reverse (``jvp`` of ``grad``) and the reused double-backward graph (per
  product once the graph exists, and the first product, which builds it), and, beside the
  per-product row, the floor of that formulation: ``torch.autograd.grad`` through a gradient
  graph built here, its result left in per-parameter pieces (:func:`autograd_product`);
- one SGD step and one SAM step (rho 0.05, SGD base) through ``sharpscope.sam_step`` in
  train mode (dropout on), the model's own loss; SAM in units of SGD; and one copy of the
  parameters, the unit of SAM's passes over them beyond its two forward-backward passes.

Goals: HVP at most 2.0x a gradient, SAM at most 2.05x SGD. ``--profile`` prints the top ops
(self CPU time, torch.profiler) of each timed operation.

Part (b), accuracy. A 2-layer GPT (n_embd 64, 2 heads, context 64, byte vocabulary 256:
120,576 parameters) trained ``--train-steps`` AdamW steps on the embedded corpus
(``sharpscope.data.text``), then its loss over 8 validation blocks of 64 tokens (2 batches of
4). Reference: the same model and batches in float64, the causal token mean written out
here, Hessian-vector products by reverse-over-reverse autograd (checked against central
differences of the float64 gradient), top eigenvalue by ARPACK (``scipy.sparse.linalg.eigsh``,
tol 1e-12) with its residual ||H v - lambda v|| / |lambda|. Measured against it, on the
float32 model: sharpscope ``hessian.eigenvalues(model, None, data, k=1)`` (defaults), and
hessian-eigenthings' ``HessianOperator`` with ``hf_lm_loss()`` under its ``lanczos`` (defaults:
``max_iter = 2k``, ``which = "LM"``; and with sharpscope's number of products) and
``power_iteration_one`` (defaults); products counted, wall and CPU time (medians of ``--repeats``). Then two differences checked
against the float64 reference: a model left in train mode (dropout 0.1, as
``GPT2LMHeadModel(config)`` leaves it) and batches of different token counts.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import sharpscope as ss
from sharpscope.data.text import BYTE_VOCAB, text_tokens, token_batches
from sharpscope.models import build_model, count_parameters, make_model_spec
from sharpscope.objective import Objective

Batch = dict[str, Tensor]
GPT2_SMALL_PARAMS = 124_439_808
SMALL = dict(n_layer=2, n_embd=64, n_head=2)


# -- shared helpers ------------------------------------------------------------------------
def interleaved_medians(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, tuple[float, float]]:
    """(wall seconds, process CPU seconds) per call of each function, medians: one warm-up call
    each, then ``rounds`` rounds that call every function once in turn (so load drifts hit all
    alike). On a shared machine the CPU time (every thread of this process) is the steadier one."""
    for fn in fns.values():
        fn()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    return {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}


def random_tokens(vocab: int, batch: int, length: int, seed: int) -> Batch:
    """A dict batch of uniform random tokens (every position counted; labels = input_ids)."""
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def small_gpt(seed: int = 0, dropout: float = 0.0, context: int = 64) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(make_model_spec("gpt", [context], BYTE_VOCAB, dropout=dropout, **SMALL))


class OwnLoss(nn.Module):
    """``model(**batch).loss`` as a module of one argument, for ``sam_step(model, loss_fn, inputs,
    targets, ...)``, which calls ``loss_fn(model(inputs), targets)``; its loss_fn returns the output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> Tensor:
        return self.model(**batch).loss


def own_loss_of_output(out: Tensor, _targets: Any) -> Tensor:
    return out


def environment() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load} (1, 5, 15 min)"


# -- part (a): step costs --------------------------------------------------------------------
def gpt2_small(n_layer: int = 12) -> nn.Module:
    """GPT2LMHeadModel(GPT2Config()) through sharpscope's ``gpt`` builder: GPT2Config's defaults
    (``n_layer`` fewer blocks for a quicker look at the same widths and vocabulary)."""
    torch.manual_seed(0)
    model = build_model(make_model_spec("gpt", [1024], 50257, n_layer=n_layer, n_embd=768, n_head=12, dropout=0.1))
    assert n_layer != 12 or count_parameters(model) == GPT2_SMALL_PARAMS, count_parameters(model)
    return model


GRADIENT_BESIDE = "gradient, again (the unit of the next row)"


def step_costs(model: nn.Module, batch: Batch, rounds: int) -> dict[str, tuple[float, float]]:
    """Median seconds of a gradient, HVPs in each mode, an SGD and a SAM step (module docstring)."""
    data = [batch]
    fo = Objective(model, None, data, hvp_mode="forward-over-reverse")
    rg = Objective(model, None, data, hvp_mode="reuse-graph")
    fd = Objective(model, None, data, hvp_mode="finite-difference")
    v = torch.randn(fo.n, generator=torch.Generator().manual_seed(1))

    def backward() -> None:
        model.eval()
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)

    def first_reuse() -> None:
        rg.release()
        rg.hvp(v)

    timed = interleaved_medians({"gradient": backward, "objective.grad": fo.grad, "hvp forward-over-reverse":
                                 lambda: fo.hvp(v), "hvp finite-difference": lambda: fd.hvp(v),
                                 "hvp reuse-graph, first (builds graph)": first_reuse}, rounds)
    exact = rg.hvp(v)  # the graph exists from here on: its products are timed beside a gradient of their own
    err = float((fd.hvp(v) - exact).double().norm() / exact.double().norm())
    print(f"finite-difference HVP: relative error {err:.2e} against the exact (reuse-graph) product, float32 "
          "(goal < 1e-3)")
    del exact
    floor = autograd_product(model, batch, v)
    timed.update(interleaved_medians({GRADIENT_BESIDE: backward, "hvp reuse-graph, per product": lambda: rg.hvp(v),
                                      FLOOR: floor}, rounds))
    del floor
    rg.release()
    timed.update(train_steps(model, batch, rounds))
    return timed


FLOOR = "hvp reuse-graph, per product: autograd's backward alone (no flat vector, no check)"


def autograd_product(model: nn.Module, batch: Batch, v: Tensor) -> Callable[[], tuple[Tensor, ...]]:
    """The floor of the reused-graph product, built here independently of sharpscope: the
    gradient of the model's own loss (eval mode) at copies of its parameters with
    ``create_graph=True`` once, then each call one ``torch.autograd.grad`` of it with ``v``'s
    pieces as ``grad_outputs`` (d(g . v)/d theta = H v), returned per parameter as autograd
    gives it: no flat vector gathered, no finiteness check, no sum over batches."""
    named = dict(model.named_parameters())
    leaves = [p.detach().clone().requires_grad_(True) for p in named.values()]
    params = dict(zip(named, leaves))
    model.eval()
    with torch.enable_grad():
        g = torch.autograd.grad(torch.func.functional_call(model, params, (), batch).loss, leaves, create_graph=True)
    parts = [c.view_as(p) for c, p in zip(v.split([p.numel() for p in leaves]), leaves)]
    return lambda: torch.autograd.grad(g, leaves, grad_outputs=parts, retain_graph=True)


def train_steps(model: nn.Module, batch: Batch, rounds: int) -> dict[str, tuple[float, float]]:
    """Median seconds of ``sam_step`` with SGD and with SAM (SGD base), train mode, own loss, and
    of one copy of the parameters (the unit of SAM's few passes over them beyond SGD's)."""
    wrapped = OwnLoss(model).train()
    sgd = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    sam = ss.SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=1e-5, momentum=0.9)
    labels = batch["labels"]
    params = list(model.parameters())
    return interleaved_medians({
        "SGD step": lambda: ss.sam_step(wrapped, own_loss_of_output, batch, labels, sgd),
        "SAM step": lambda: ss.sam_step(wrapped, own_loss_of_output, batch, labels, sam),
        # the unit of SAM's passes over the parameters beyond its two forward-backward passes
        "one copy of the parameters (clone)": lambda: [w.detach().clone() for w in params]}, rounds)


def print_costs(timed: dict[str, tuple[float, float]]) -> None:
    grad, sgd = timed["gradient"], timed["SGD step"]
    print("| operation | wall s | ratio (wall) | CPU s | ratio (CPU) |\n|---|---:|---:|---:|---:|")
    for name, (wall, cpu) in timed.items():
        unit, what = (sgd, "SGD") if "step" in name or "copy" in name else (grad, "gradient")
        unit = timed[GRADIENT_BESIDE] if "per product" in name else unit
        print(f"| {name} | {wall:.3f} | {wall / unit[0]:.2f}x {what} | {cpu:.3f} | {cpu / unit[1]:.2f}x {what} |")
    for i, clock in enumerate(("wall", "CPU")):
        hvp = min(timed["hvp forward-over-reverse"][i] / grad[i],
                  timed["hvp reuse-graph, per product"][i] / timed[GRADIENT_BESIDE][i])
        sam = timed["SAM step"][i] / sgd[i]
        fd = timed["hvp finite-difference"][i] / grad[i]
        print(f"goals ({clock}): best exact HVP {hvp:.2f}x a gradient (goal <= 2.0: "
              f"{'met' if hvp <= 2.0 else 'MISSED'}); SAM {sam:.2f}x SGD (goal <= 2.05: "
              f"{'met' if sam <= 2.05 else 'MISSED'}); finite-difference HVP {fd:.2f}x a gradient (goal <= 2.0: "
              f"{'met' if fd <= 2.0 else 'MISSED'})")


def profile_ops(model: nn.Module, batch: Batch, top: int) -> None:
    """Top ops by self CPU time of one gradient, one HVP in each mode, one SGD and one SAM step."""
    from torch.profiler import ProfilerActivity, profile

    data = [batch]
    fo = Objective(model, None, data, hvp_mode="forward-over-reverse")
    rg = Objective(model, None, data, hvp_mode="reuse-graph")
    v = torch.randn(fo.n, generator=torch.Generator().manual_seed(1))
    rg.hvp(v)
    wrapped = OwnLoss(model)
    sgd = torch.optim.SGD(model.parameters(), lr=1e-5)
    sam = ss.SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=1e-5)

    def backward() -> None:
        model.eval()
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)

    ops = {"gradient": backward, "hvp forward-over-reverse": lambda: fo.hvp(v),
           "hvp reuse-graph": lambda: rg.hvp(v), "hvp reuse-graph, autograd alone": autograd_product(model, batch, v),
           "SGD step": lambda: ss.sam_step(wrapped.train(), own_loss_of_output, batch, batch["labels"], sgd),
           "SAM step": lambda: ss.sam_step(wrapped.train(), own_loss_of_output, batch, batch["labels"], sam)}
    for name, fn in ops.items():
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events) / 1e6
        print(f"\n{name}: {total:.3f} s self CPU in all ops; top {top}:")
        for e in events[:top]:
            print(f"  {e.key:<40} {e.self_cpu_time_total / 1e6:7.3f} s  x{e.count}")


# -- part (b): accuracy ----------------------------------------------------------------------
def train_small_gpt(steps: int, seed: int = 0, batch: int = 16, context: int = 64) -> tuple[nn.Module, float, float]:
    """The 2-layer GPT trained by AdamW on random blocks of the embedded corpus's train split;
    returns the model (eval mode) and its own loss on the first and the last step."""
    model = small_gpt(seed, context=context).train()
    tokens = text_tokens("train")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    first = last = float("nan")
    for step in range(steps):
        starts = torch.randint(0, len(tokens) - context, (batch,), generator=gen)
        ids = torch.stack([tokens[s:s + context] for s in starts.tolist()])
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last = float(loss.detach())
        first = last if step == 0 else first
    return model.eval(), first, last


def token_mean_loss(model: nn.Module, data: list[Batch]) -> Tensor:
    """The causal token mean written out: sum of every counted next-token CE / their number."""
    total, count = 0.0, 0
    for b in data:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        y = b["labels"][:, 1:]
        total = total + F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), y.reshape(-1),
                                        ignore_index=-100, reduction="sum")
        count += int((y != -100).sum())
    return total / count


class ReferenceHessian:
    """H of :func:`token_mean_loss` at the model's weights, by reverse-over-reverse autograd on a
    float64 copy (its gradient graph built once, each product one more backward pass)."""

    def __init__(self, model: nn.Module, data: list[Batch]) -> None:
        self.model = copy.deepcopy(model).double().eval()
        self.data = data
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.n = sum(p.numel() for p in self.params)
        self.grads = torch.autograd.grad(token_mean_loss(self.model, data), self.params, create_graph=True)
        self.n_products = 0

    def split(self, v: Tensor) -> list[Tensor]:
        return [c.view_as(p) for c, p in zip(v.split([p.numel() for p in self.params]), self.params)]

    def hvp(self, v: Tensor) -> Tensor:
        self.n_products += 1
        hv = torch.autograd.grad(self.grads, self.params, grad_outputs=self.split(v.double()), retain_graph=True)
        return torch.cat([h.reshape(-1) for h in hv])

    def gradient_at(self, v: Tensor) -> Tensor:
        """The float64 gradient at theta + v, on a copy (for a finite-difference check of :meth:`hvp`)."""
        moved = copy.deepcopy(self.model)
        params = [p for p in moved.parameters() if p.requires_grad]
        with torch.no_grad():
            for p, d in zip(params, self.split(v)):
                p.add_(d)
        g = torch.autograd.grad(token_mean_loss(moved, self.data), params)
        return torch.cat([x.reshape(-1) for x in g])

    def finite_difference_error(self, v: Tensor, eps: float = 1e-4) -> float:
        """||H v - (g(theta + eps v) - g(theta - eps v)) / (2 eps)|| / ||H v|| (O(eps^2) + rounding)."""
        v = v / v.norm()
        hv = self.hvp(v)
        fd = (self.gradient_at(eps * v) - self.gradient_at(-eps * v)) / (2 * eps)
        return float((hv - fd).norm() / hv.norm())

    def top(self, which: str = "LA", tol: float = 1e-12) -> tuple[float, Tensor, float]:
        """(lambda, unit vector, ||H v - lambda v|| / |lambda|) of ARPACK's extreme eigenpair."""
        from scipy.sparse.linalg import LinearOperator, eigsh

        op = LinearOperator((self.n, self.n), dtype=np.float64,
                            matvec=lambda x: self.hvp(torch.from_numpy(np.asarray(x).reshape(-1))).numpy())
        v0 = np.random.default_rng(0).standard_normal(self.n)
        vals, vecs = eigsh(op, k=1, which=which, tol=tol, v0=v0)
        lam, vec = float(vals[0]), torch.from_numpy(vecs[:, 0])
        return lam, vec, relative_residual(self.hvp, lam, vec)


def relative_residual(hvp: Callable[[Tensor], Tensor], lam: float, vec: Tensor) -> float:
    """||H x - lambda x|| / |lambda| for x = vec / ||vec|| (float64)."""
    x = vec.double() / vec.double().norm()
    return float((hvp(x) - lam * x).norm() / abs(lam))


class CountingOperator:
    """A hessian-eigenthings operator wrapped so that its products are counted."""

    def __new__(cls, op: Any) -> Any:
        from hessian_eigenthings import LambdaOperator

        counter = {"n": 0}

        def matvec(v: Tensor) -> Tensor:
            counter["n"] += 1
            return op.matvec(v)

        wrapped = LambdaOperator(matvec, op.size, device=op.device, dtype=op.dtype)
        wrapped.counter = counter
        return wrapped


def median_run(run: Callable[[], Any], repeats: int) -> tuple[Any, float, float]:
    """(the last result, median wall seconds, median process CPU seconds) of ``repeats`` calls
    of a seeded (so repeatable) run."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = run()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return out, statistics.median(walls), statistics.median(cpus)


def eigenthings_runs(model: nn.Module, data: list[Batch], budget: int,
                     repeats: int) -> list[tuple[str, float, Tensor, int, float, float, bool]]:
    """(label, top eigenvalue, its vector, products, median wall and CPU seconds, its own converged flag) for
    hessian-eigenthings' Lanczos (defaults; and max_iter = ``budget``, which="LA") and power
    iteration (defaults), each on a fresh counted ``HessianOperator`` with ``hf_lm_loss()``."""
    import hessian_eigenthings as he

    out = []
    runs = {"lanczos, defaults (max_iter = 2k, which = LM)": lambda op: he.lanczos(op, k=1, seed=0),
            f"lanczos, max_iter = {budget}, which = LA": lambda op: he.lanczos(op, k=1, max_iter=budget, which="LA",
                                                                                seed=0),
            "power_iteration_one, defaults (tol 1e-4)": lambda op: he.power_iteration_one(op, seed=0)}
    for label, run in runs.items():
        op = CountingOperator(he.HessianOperator(model, data, he.hf_lm_loss()))
        res, wall, cpu = median_run(lambda: run(op), repeats)
        n = op.counter["n"] // repeats
        if isinstance(res, tuple):  # power_iteration_one: (value, vector, residual, iterations, converged)
            out.append((label, float(res[0]), res[1], n, wall, cpu, bool(res[4])))
        else:
            out.append((label, float(res.eigenvalues[0]), res.eigenvectors[0], n, wall, cpu, bool(res.converged[0])))
    return out


def product_error(hvp: Callable[[Tensor], Tensor], ref: ReferenceHessian, v: Tensor) -> float:
    """||hvp(v) - H v|| / ||H v|| against the float64 reference."""
    exact = ref.hvp(v.double())
    return float((hvp(v).double() - exact).norm() / exact.norm())


def differences(model: nn.Module, data: list[Batch], lam: float, budget: int) -> None:
    """Two settings where hessian-eigenthings' operator is not the Hessian of the token mean,
    against the float64 reference: batches of unequal token counts (it averages batch means)
    and a model left in train mode with dropout (it does not switch to eval mode). One
    product's relative error, and the top eigenvalue (sharpscope's defaults; the peer's Lanczos
    with ``budget`` steps, which="LA") with its relative error."""
    import hessian_eigenthings as he

    v = torch.randn(count_parameters(model), generator=torch.Generator().manual_seed(3))
    dropout = small_gpt(0, dropout=0.1)
    dropout.load_state_dict(model.state_dict())
    dropout.train()  # as GPT2LMHeadModel(config) leaves it; the reference copies it in eval mode
    ragged = [data[0], {k: t[:1] for k, t in data[1].items()}]  # 4 x 63 and 1 x 63 targets
    print("\n| setting | sharpscope: HVP error | lambda_max (error) | hessian-eigenthings: HVP error | "
          "lambda_max (error) |\n|---|---:|---:|---:|---:|")
    for label, net, batches in (("equal batches (2 x 4 blocks)", model, data),
                                ("unequal batches (4 blocks, 1 block)", model, ragged),
                                ("dropout 0.1, model in train mode", dropout, data)):
        ref = ReferenceHessian(net, batches)
        exact = lam if batches is data else ref.top("LA")[0]
        mine = ss.hessian.eigenvalues(net, None, batches, k=1).eigenvalues[0]
        op = he.HessianOperator(net, batches, he.hf_lm_loss())
        theirs = float(he.lanczos(op, k=1, max_iter=budget, which="LA", seed=0).eigenvalues[0])
        print(f"| {label} (lambda_max {exact:.6g}) | {product_error(Objective(net, None, batches).hvp, ref, v):.1e} | "
              f"{mine:.6g} ({abs(mine - exact) / abs(exact):.1e}) | {product_error(op.matvec, ref, v):.1e} | "
              f"{theirs:.6g} ({abs(theirs - exact) / abs(exact):.1e}) |")


def reference_line(ref: ReferenceHessian) -> tuple[float, str]:
    """The float64 reference's lambda_max and a line describing it and its checks."""
    t0 = time.perf_counter()
    fd = ref.finite_difference_error(torch.randn(ref.n, generator=torch.Generator().manual_seed(2),
                                                 dtype=torch.float64))
    lam, _, res = ref.top("LA")
    lam_lm, _, _ = ref.top("LM")
    return lam, (f"float64 reference: lambda_max {lam:.8g} (ARPACK tol 1e-12, residual ||Hv - lv|| / |l| {res:.1e}); "
                 f"largest |lambda| {lam_lm:.8g}; reference HVP vs central differences {fd:.1e}; "
                 f"{ref.n_products} float64 products, {time.perf_counter() - t0:.1f} s")


def accuracy(train_steps_: int, repeats: int) -> None:
    model, first, last = train_small_gpt(train_steps_)
    data = token_batches(text_tokens("val"), 64, batch_size=4, n_blocks=8, seed=1)
    print(f"\n## (b) top Hessian eigenvalue: 2-layer GPT, {count_parameters(model):,} parameters, trained "
          f"{train_steps_} AdamW steps (own loss {first:.3f} -> {last:.3f}); 8 validation blocks of 64 tokens "
          f"in 2 batches; medians of {repeats} runs\n{environment()}")
    ref = ReferenceHessian(model, data)
    lam, line = reference_line(ref)
    print(line)
    print("\n| tool | lambda_max | rel. error | residual (float64) | HVPs | wall s | CPU s | says converged |\n"
          "|---|---:|---:|---:|---:|---:|---:|---|")
    budget = 0
    for label, loss in (("sharpscope, own loss (loss_fn=None)", None), ("sharpscope, TokenLoss('causal')",
                                                                         ss.TokenLoss("causal"))):
        r, wall, cpu = median_run(lambda: ss.hessian.eigenvalues(model, loss, data, k=1, return_vectors=True), repeats)
        value, budget = r.eigenvalues[0], max(budget, r.n_hvp)
        print(f"| {label} | {value:.6g} | {abs(value - lam) / abs(lam):.1e} | "
              f"{relative_residual(ref.hvp, value, r.eigenvectors[:, 0]):.1e} | {r.n_hvp} | {wall:.2f} | {cpu:.2f} | "
              f"{r.converged[0]} |")
    for label, value, x, n, wall, cpu, conv in eigenthings_runs(model, data, budget, repeats):
        print(f"| hessian-eigenthings {label} | {value:.6g} | {abs(value - lam) / abs(lam):.1e} | "
              f"{relative_residual(ref.hvp, value, x):.1e} | {n} | {wall:.2f} | {cpu:.2f} | {conv} |")
    differences(model, data, lam, budget)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=("small", "gpt2"), default="small", help="part (a)'s model")
    ap.add_argument("--part", choices=("a", "b", "all"), default="all")
    ap.add_argument("--layers", type=int, default=12, help="blocks of --size gpt2 (12: GPT-2 small)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds of part (a) (medians)")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each eigensolver in part (b) (median time)")
    ap.add_argument("--profile", action="store_true", help="top ops of each operation of part (a)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.part in ("a", "all"):
        model = gpt2_small(args.layers) if args.size == "gpt2" else small_gpt(0, context=128)
        batch = random_tokens(model.config.vocab_size, 2, 128, seed=0)
        print(f"## (a) step costs: {type(model).__name__}, {count_parameters(model):,} parameters, batch 2 x 128 "
              f"tokens, own loss\n{environment()}")
        print_costs(step_costs(model, batch, args.rounds))
        if args.profile:
            profile_ops(model, batch, top=10)
    if args.part in ("b", "all"):
        accuracy(args.train_steps, args.repeats)


if __name__ == "__main__":
    main()
