"""One training step, :func:`sam_step`: SAM's two passes (plain, m-SAM, data-parallel, accumulated
over micro-batches) and second-order SAM. Its options:

``m``: m-SAM (Foret et al. Sec. 4.1 / App. C.3, :mod:`.msam`); ``None`` or ``m >= batch`` is
plain SAM. BatchNorm's running statistics come from the clean pass only.

``accumulate``: both passes over that many micro-batches (:mod:`.passes`), the full-batch step to
float rounding (batch norm in train mode aside); weight decay, the scaler and a variant's state
act once, after the last. m-SAM's loop is unchanged (never vectorized); second-order SAM takes
its Hessian-vector term from a third forward at w per micro-batch.

A variant with ``perturbation_uses_gradient`` false (RSAM) gets a forward at w under ``no_grad``
then one forward-backward at w + e; one that does not perturb this step
(:meth:`SAM.perturbs_this_step` false: LookSAM) one pass at w and :meth:`SAM.second_step`.
Variants without ``supports_m`` / ``supports_scaler`` refuse ``m`` / ``scaler``.

``second_order`` (p = 2, not adaptive, no m): the full gradient of L(w + e_hat(w)), SAM's plus
(d e_hat / dw)^T grad L|_{w + e_hat} (:func:`sharpscope.sharpness.sam_gradient_cosine`).

``autocast`` (bfloat16 or float16) runs every forward under ``torch.autocast``; ``scaler`` (a
``GradScaler``) scales every back-propagated loss (e is scale-invariant), unscales the update's
gradient and on an inf or NaN from either pass leaves the weights at w (``skipped``), then calls
``scaler.update()``. Neither with second-order SAM.

``vectorize`` (m-SAM): all chunks at once through ``vmap`` (:func:`.msam.m_sam_vmapped`); ``None``
whenever :func:`.msam.vmappable`, ``False`` never, ``True`` or refuse.

``same_dropout_mask``: the pass at w + e replays the generator state of the pass at w (the same
dropout masks, as google-research/sam); by default each pass draws its own (davda54/sam).

``inputs``: a tensor or pytree passed as one argument; ``targets``: leading size = batch size.
DistributedDataParallel: ``loss_scale`` multiplies the back-propagated losses;
``sync_first_pass=False`` runs the first pass under ``model.no_sync()`` (per-rank e), which
:class:`~.sync_bn.GlobalBatchNorm` refuses (the pass at w + e must pool one model's statistics).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..batches import concat, higher_order_attention, leading_size, take
from ..errors import ConfigError
from .. import reductions
from .bn import frozen_bn_stats
from .msam import m_sam_loop, m_sam_vmapped, vmappable
from .passes import Passes, StepResult, check_accumulate, micro_slices
from .sam import SAM
from .sync_bn import has_global_bn

__all__ = ["sam_step", "StepResult"]


def _autocast(model: nn.Module, dtype: torch.dtype | None) -> Any:
    """``torch.autocast`` on the model's device type, or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    if dtype not in (torch.bfloat16, torch.float16):
        raise ConfigError(f"autocast runs in bfloat16 or float16, got {dtype}")
    device = next((w.device for w in model.parameters()), torch.device("cpu"))
    return torch.autocast(device_type=device.type, dtype=dtype)


def sam_step(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], inputs: Any,
             targets: Any, optimizer: torch.optim.Optimizer, m: int | None = None, second_order: bool = False,
             loss_scale: float = 1.0, sync_first_pass: bool = True, autocast: torch.dtype | None = None,
             scaler: torch.amp.GradScaler | None = None, vectorize: bool | None = None,
             same_dropout_mask: bool = False, accumulate: int = 1) -> StepResult:
    """One training step with SAM (a plain step if ``optimizer`` is not a :class:`SAM`); each
    option is described in the module docstring."""
    batch = leading_size(targets, "targets")
    check_accumulate(accumulate, batch)
    _check_options(model, optimizer, batch, m, second_order, loss_scale, sync_first_pass, autocast, scaler,
                   accumulate)
    if second_order:
        with higher_order_attention():
            return _second_order_step(model, loss_fn, inputs, targets, optimizer, m, accumulate)
    passes = Passes(model, loss_fn, _autocast(model, autocast), loss_scale, scaler, accumulate)
    optimizer.zero_grad(set_to_none=True)
    if not isinstance(optimizer, SAM):
        return _plain_step(passes, inputs, targets, optimizer)
    if m is None or m >= batch:
        return _whole_batch_step(passes, inputs, targets, optimizer, sync_first_pass, same_dropout_mask)
    if same_dropout_mask:
        raise ConfigError("same_dropout_mask is supported for plain SAM steps, not m-SAM chunks")
    if accumulate > 1 and vectorize:
        raise ConfigError("vectorize=True holds every m-SAM chunk of the batch at once, which accumulation over "
                          "micro-batches is meant to avoid; leave vectorize to None or False with accumulate > 1")
    if accumulate == 1 and vectorize is not False and vmappable(model, inputs, targets, optimizer, m, batch,
                                                                autocast, scaler):
        return m_sam_vmapped(model, loss_fn, inputs, targets, optimizer, m)
    if vectorize:
        raise ConfigError("vectorize=True: this m-SAM step cannot be vectorized (it needs m dividing the batch, "
                          "tensor inputs and targets, SAM's or ASAM's own perturbation, dense gradients and no "
                          "mixed precision)")
    return m_sam_loop(model, loss_fn, inputs, targets, optimizer, m, batch, passes.forward, scaler)


def _check_options(model: nn.Module, optimizer: torch.optim.Optimizer, batch: int, m: int | None,
                   second_order: bool, loss_scale: float, sync_first_pass: bool, autocast: torch.dtype | None,
                   scaler: torch.amp.GradScaler | None, accumulate: int) -> None:
    """Refuse (:class:`ConfigError`) a combination of :func:`sam_step`'s options it does not take."""
    if m is not None and m < 1:
        raise ConfigError(f"m must be a positive number of examples, got {m}")
    if second_order:
        if autocast is not None or scaler is not None:
            raise ConfigError("second-order SAM does not run under mixed precision (its double backward would "
                              "be taken in reduced precision); train it in float32")
        return
    if (loss_scale != 1.0 or not sync_first_pass) and m is not None:
        raise ConfigError("loss_scale and sync_first_pass are for data-parallel SAM, not m-SAM")
    if not sync_first_pass and not callable(getattr(model, "no_sync", None)):
        raise ConfigError("sync_first_pass=False needs a DistributedDataParallel model (its no_sync() keeps "
                          f"the first pass rank-local); got a {type(model).__name__}")
    if not sync_first_pass and isinstance(optimizer, SAM) and has_global_bn(model):
        raise ConfigError("batch norm over the global batch needs one perturbation for all ranks "
                          "(sync_first_pass=True, --sync-perturbation): with a per-rank perturbation each "
                          "rank's pass at w + e_r would pool the statistics of differently perturbed models")
    if isinstance(optimizer, SAM) and ((m is not None and m < batch and not optimizer.supports_m)
                                       or (scaler is not None and not optimizer.supports_scaler)):
        raise ConfigError(f"{type(optimizer).__name__} runs without m-SAM chunks and without a GradScaler (its "
                          "state is per step and it combines unscaled gradients); use bf16 autocast or float32")


def _plain_step(passes: Passes, inputs: Any, targets: Any, optimizer: torch.optim.Optimizer) -> StepResult:
    """One pass and one step of a non-SAM optimizer (through the scaler if any)."""
    outputs, loss = passes.forward_backward(inputs, targets)
    if passes.scaler is None:
        optimizer.step()
        return StepResult(loss.detach(), outputs.detach(), None)
    return StepResult(loss.detach(), outputs.detach(), None, _scaler_step(passes.scaler, optimizer))


def _whole_batch_step(passes: Passes, inputs: Any, targets: Any, optimizer: SAM, sync_first_pass: bool,
                      same_dropout_mask: bool) -> StepResult:
    """SAM's two passes over the whole batch (or its micro-batches): the pass at w, e from its
    gradient, the pass at w + e, the update (or LookSAM's one pass on a step it does not perturb)."""
    model = passes.model
    rng = _rng_snapshot(model) if same_dropout_mask else None
    uses_gradient = optimizer.perturbation_uses_gradient
    if uses_gradient:
        with (contextlib.nullcontext() if sync_first_pass else model.no_sync()):
            outputs, loss = passes.forward_backward(inputs, targets)
    else:
        outputs, loss = passes.forward_backward(inputs, targets, backward=False)
    if uses_gradient and not optimizer.perturbs_this_step():  # one pass: the update from the gradient at w
        optimizer.second_step()
        return StepResult(loss.detach(), outputs.detach(), None)
    optimizer.first_step(zero_grad=True)
    with frozen_bn_stats(model), _replayed_rng(rng):
        perturbed = passes.forward_backward(inputs, targets)[1]
    if passes.scaler is None:
        optimizer.second_step()
        return StepResult(loss.detach(), outputs.detach(), perturbed.detach())
    skipped = _scaler_step(passes.scaler, optimizer)  # SAM.step under the scaler: second step or back to w
    return StepResult(loss.detach(), outputs.detach(), perturbed.detach(), skipped)


def _rng_snapshot(model: nn.Module) -> tuple[torch.Tensor, torch.device | None, torch.Tensor | None]:
    """The CPU generator's state and, for a model on a CUDA device, that device's."""
    device = next((w.device for w in model.parameters()), torch.device("cpu"))
    if device.type == "cuda":
        return torch.get_rng_state(), device, torch.cuda.get_rng_state(device)
    return torch.get_rng_state(), None, None


@contextlib.contextmanager
def _replayed_rng(snapshot: tuple[torch.Tensor, torch.device | None, torch.Tensor | None] | None) -> Any:
    """Run the block from the generator state ``snapshot`` (so it draws what the block after the
    snapshot drew); ``fork_rng`` then leaves the generators where they were before the block."""
    if snapshot is None:
        yield
        return
    cpu, device, cuda = snapshot
    with torch.random.fork_rng(devices=[device] if device is not None else []):
        torch.set_rng_state(cpu)
        if device is not None:
            torch.cuda.set_rng_state(cuda, device)
        yield


def _scaler_step(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> bool:
    """``scaler.step`` then ``scaler.update``; True when the step was skipped (the scale fell)."""
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() < before


def _second_order_rho(optimizer: torch.optim.Optimizer, m: int | None) -> float:
    """The radius of a second-order SAM step; :class:`ConfigError` for what it does not support."""
    if type(optimizer) is not SAM:
        raise ConfigError("second-order SAM needs the SAM optimizer (its gradient term is that of SAM's e_hat(w))")
    groups = optimizer.param_groups
    if m is not None or any(g["adaptive"] or g["p"] != 2.0 for g in groups) or len({g["rho"] for g in groups}) > 1:
        raise ConfigError("second-order SAM supports p = 2, one rho, no ASAM and no m-SAM")
    return groups[0]["rho"]


def _second_order_step(model: nn.Module, loss_fn: Callable[[Any, Any], torch.Tensor], inputs: Any, targets: Any,
                       optimizer: torch.optim.Optimizer, m: int | None, accumulate: int) -> StepResult:
    """SAM with the full gradient of L(w + rho g / ||g||) (Foret et al., Sec. 2, App. C.4), on detached
    copies of the parameters through ``functional_call`` (nothing changes in place while the
    double-backward graph lives). g and grad L(w + e) are accumulated as in the first-order step;
    H(w) u is the example-weighted sum of each micro-batch's, from a third forward at w that
    replays the random numbers of its first (one micro-batch keeps the graph of its first)."""
    rho = _second_order_rho(optimizer, m)
    named = [(n, w) for n, w in model.named_parameters() if w.requires_grad]
    names, w0 = [n for n, _ in named], [w.detach() for _, w in named]
    parts = micro_slices(leading_size(targets, "targets"), accumulate)
    weights = [(s.stop - s.start) / parts[-1].stop for s in parts]

    def micro(params: list[torch.Tensor], part: slice, graph: bool) -> tuple[Any, ...]:
        leaves = [t.detach().requires_grad_(True) for t in params]
        out = torch.func.functional_call(model, dict(zip(names, leaves)), (take(inputs, part),))
        loss = loss_fn(out, take(targets, part))
        return leaves, out, loss, torch.autograd.grad(loss, leaves, create_graph=graph)

    g, g_sam = [torch.zeros_like(t) for t in w0], [torch.zeros_like(t) for t in w0]
    rngs, outs, loss, perturbed, kept = [], [], 0.0, 0.0, None
    for part, weight in zip(parts, weights):
        rngs.append(_rng_snapshot(model))
        leaves, out, part_loss, grads = micro(w0, part, accumulate == 1)
        kept = (leaves, grads) if accumulate == 1 else None
        torch._foreach_add_(g, [t.detach() for t in grads], alpha=weight)
        outs.append(out.detach())
        loss = loss + part_loss.detach() * weight
    gnorm = torch.linalg.vector_norm(torch.stack([reductions.norm(t) for t in g]))
    if gnorm == 0:  # no ascent direction: a plain step
        for (_, w), t in zip(named, g):
            w.grad = t
        optimizer.base_step()
        return StepResult(loss, concat(outs), loss)
    shifted = [w + rho * t / gnorm for w, t in zip(w0, g)]
    with frozen_bn_stats(model):
        for part, weight in zip(parts, weights):
            _, _, part_loss, grads = micro(shifted, part, False)
            torch._foreach_add_(g_sam, list(grads), alpha=weight)
            perturbed = perturbed + part_loss.detach() * weight
        dot = sum((a * b).sum() for a, b in zip(g, g_sam)) / gnorm
        u = [(rho / gnorm) * (b - a * (dot / gnorm)) for a, b in zip(g, g_sam)]
        for part, weight, rng in zip(parts, weights, rngs):
            if kept is None:
                with _replayed_rng(rng):
                    leaves, _, _, grads = micro(w0, part, True)
            else:
                leaves, grads = kept
            torch._foreach_add_(g_sam, list(torch.autograd.grad(grads, leaves, grad_outputs=u)), alpha=weight)
    for (_, w), t in zip(named, g_sam):
        w.grad = t
    optimizer.base_step()
    return StepResult(loss, concat(outs), perturbed)
