"""m-SAM: one perturbation per chunk of m examples (Foret et al., Sec. 4.1 / App. C.3).

For a batch of B examples in chunks k of n_k <= m examples with losses L_k,

    g_k = grad L_k(w),   e_k = SAM's perturbation of g_k,
    update gradient = sum_k (n_k / B) grad L_k(w + e_k).

BatchNorm's running statistics become the mean of the per-chunk updates of the clean passes
(what averaging per-device buffers gives). :func:`m_sam_loop` takes one chunk at a time (any
batch, variant, sparse gradients, mixed precision); :func:`m_sam_vmapped` all at once through
``vmap``, equal to float rounding but for dropout masks and unused parameters (zero gradient).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ..batches import leading_size, take
from .bn import bn_restore, bn_snapshot, bn_modules, frozen_bn_stats
from .passes import StepResult
from .asam import ASAM
from .sam import SAM, dual_exponent

__all__ = ["m_sam_loop", "m_sam_vmapped", "vmappable", "chunk_perturbations"]


def m_sam_loop(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], inputs: Any,
                targets: Any, optimizer: SAM, m: int, batch: int,
                forward: Callable[[Any, Any], tuple[Any, torch.Tensor]],
                scaler: torch.amp.GradScaler | None) -> StepResult:
    """m-SAM one chunk at a time (module docstring)."""
    uses_gradient = optimizer.perturbation_uses_gradient
    params = [w for g in optimizer.param_groups for w in g["params"] if w.requires_grad]
    grad_sum: list[torch.Tensor | None] = [None] * len(params)
    bns = bn_modules(model)
    start = bn_snapshot(bns)
    bn_sum = [{k: torch.zeros_like(v, dtype=torch.float64) for k, v in s.items()} for s in start]
    losses, perturbed_losses, outs = [], [], []
    for lo in range(0, batch, m):
        x, y = take(inputs, slice(lo, lo + m)), take(targets, slice(lo, lo + m))
        weight = leading_size(y, "targets") / batch
        if uses_gradient:
            outputs, loss = forward(x, y)
            (scaler.scale(loss) if scaler is not None else loss).backward()
        else:
            with torch.no_grad():
                outputs, loss = forward(x, y)
        with torch.no_grad():  # collect this chunk's running-stat update, then rewind
            for b, acc in zip(bns, bn_sum):
                for k in acc:
                    acc[k] += b._buffers[k].double()
        bn_restore(bns, start)
        optimizer.first_step(zero_grad=True)
        with frozen_bn_stats(model):
            perturbed = forward(x, y)[1]
            (scaler.scale(perturbed) if scaler is not None else perturbed).backward()
        optimizer.unperturb()
        with torch.no_grad():
            for i, w in enumerate(params):
                if w.grad is None:
                    continue
                grad_sum[i] = w.grad * weight if grad_sum[i] is None else grad_sum[i].add_(w.grad, alpha=weight)
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach() * weight)
        perturbed_losses.append(perturbed.detach() * weight)
        outs.append(outputs.detach())
    n_chunks = len(outs)
    with torch.no_grad():
        for w, g in zip(params, grad_sum):
            w.grad = g
        for b, acc in zip(bns, bn_sum):
            for k, total in acc.items():
                b._buffers[k].copy_((total / n_chunks).to(b._buffers[k].dtype)
                                    if k != "num_batches_tracked" else b._buffers[k] + 1)
    skipped = False
    if scaler is None:
        optimizer.base_step()
    else:  # the summed chunk gradients are unscaled by the scaler; an inf or NaN skips the update
        before = scaler.get_scale()
        scaler.unscale_(optimizer)
        finite = all(bool(torch.isfinite(w.grad).all()) for w in params if w.grad is not None)
        if finite:
            optimizer.base_step()
        scaler.update()
        skipped = scaler.get_scale() < before or not finite
    return StepResult(torch.stack(losses).sum(), torch.cat(outs), torch.stack(perturbed_losses).sum(), skipped)


def vmappable(model: nn.Module, inputs: Any, targets: Any, optimizer: torch.optim.Optimizer, m: int, batch: int,
              autocast: torch.dtype | None, scaler: Any) -> bool:
    """Whether :func:`m_sam_vmapped` can take this step: m divides the batch, tensor inputs and
    targets, SAM's or ASAM's own rule, no mixed precision, no sparse gradients, not compiled."""
    sparse = any(getattr(mod, "sparse", False) for mod in model.modules()
                 if isinstance(mod, (nn.Embedding, nn.EmbeddingBag)))
    compiled = hasattr(model, "_orig_mod")  # torch.compile's wrapper: vmap does not go through dynamo
    return (type(optimizer) in (SAM, ASAM)
            and isinstance(inputs, torch.Tensor) and isinstance(targets, torch.Tensor) and batch % m == 0
            and autocast is None and scaler is None and not sparse and not compiled)


def chunk_perturbations(optimizer: SAM, named: list[tuple[str, torch.Tensor]],
                        grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SAM's perturbation of K gradients at once (``grads[name]``: parameter ``name``'s K chunk
    gradients along dim 0; e in the same layout): e = rho T sign(t) |t|^(q-1) / ||t||_q^(q-1),
    t = T g, the norm per chunk over every parameter; T = |w| + eta for ASAM groups, else 1."""
    group_of = {id(w): g for g in optimizer.param_groups for w in g["params"]}
    p = optimizer.param_groups[0]["p"]
    q = dual_exponent(p)
    scales = {n: w.detach().abs() + group_of[id(w)]["eta"] for n, w in named if group_of[id(w)]["adaptive"]}
    t = {n: grads[n] * scales[n] if n in scales else grads[n] for n, _ in named}
    k = next(iter(t.values())).shape[0]
    flat = [x.reshape(k, -1) for x in t.values()]
    if q == 1.0:
        qnorm = sum(x.abs().sum(1) for x in flat)
    else:
        qnorm = sum(x.abs().pow(q).sum(1) for x in flat).pow(1.0 / q)
    out = {}
    for name, w in named:
        rho = group_of[id(w)]["rho"]
        x = t[name]
        view = (k,) + (1,) * (x.dim() - 1)
        if p == float("inf"):
            e = torch.sign(x) * rho
        else:
            denom = qnorm.pow(q - 1.0)
            factor = torch.where(denom > 0, rho / denom, torch.zeros_like(denom)).view(view)
            e = x * factor if p == 2.0 else torch.sign(x) * x.abs().pow(q - 1.0) * factor
        out[name] = e * scales[name] if name in scales else e
    return out


def m_sam_vmapped(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  inputs: torch.Tensor, targets: torch.Tensor, optimizer: SAM, m: int) -> Any:
    """:func:`m_sam_loop`'s step with every chunk at once (needs :func:`vmappable`)."""
    batch = inputs.shape[0]
    k = batch // m
    named = [(n, w) for n, w in model.named_parameters() if w.requires_grad]
    theta = {n: w.detach() for n, w in named}
    fixed = {n: w.detach() for n, w in model.named_parameters() if not w.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    xs, ys = inputs.reshape(k, m, *inputs.shape[1:]), targets.reshape(k, m, *targets.shape[1:])

    def chunk_loss(params: dict[str, torch.Tensor], bufs: dict[str, torch.Tensor], x: torch.Tensor,
                   y: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        out = functional_call(model, {**fixed, **bufs, **params}, (x,))
        loss = loss_fn(out, y)
        return loss, (loss.detach(), out.detach())

    def per_chunk_buffers() -> dict[str, torch.Tensor]:  # BN updates land in these copies
        return {n: b.unsqueeze(0).repeat(k, *([1] * b.dim())) for n, b in buffers.items()}

    clean_buffers = per_chunk_buffers()
    step = grad(chunk_loss, has_aux=True)
    g, (losses, outputs) = vmap(step, in_dims=(None, 0, 0, 0), randomness="different")(theta, clean_buffers, xs, ys)
    e = chunk_perturbations(optimizer, named, g)
    shifted = {n: theta[n].unsqueeze(0) + e[n] for n in theta}
    g_sam, (perturbed, _) = vmap(step, in_dims=(0, 0, 0, 0), randomness="different")(shifted, per_chunk_buffers(),
                                                                                       xs, ys)
    bn_ids = {id(b) for mod in bn_modules(model) for b in mod._buffers.values() if b is not None}
    with torch.no_grad():
        for n, w in named:
            w.grad = g_sam[n].mean(0)
        for n, b in model.named_buffers():  # BatchNorm's, as the loop does; other buffers untouched
            if id(b) not in bn_ids:
                continue
            if b.is_floating_point():
                b.copy_(clean_buffers[n].double().mean(0).to(b.dtype))
            else:  # num_batches_tracked: one step
                b.add_(1)
    optimizer.base_step()
    return StepResult(losses.mean(), outputs.reshape(batch, *outputs.shape[2:]), perturbed.mean())
