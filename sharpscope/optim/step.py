"""One training step: SAM's two passes (plain, m-SAM, data-parallel, accumulated over
micro-batches) and second-order SAM. :func:`sam_step` takes the step; what each of its options
means:

``m`` (m-SAM, Foret et al. Sec. 4.1 / App. C.3): the batch is split into consecutive chunks of
``m`` examples; each chunk gets its own perturbation e_k from its own gradient, the gradient at
w + e_k of that chunk's loss is taken, and the chunk gradients are averaged weighted by chunk
size. ``m = None`` or ``m >= batch size`` is plain SAM. BatchNorm: running statistics come from
the clean pass only; with m-SAM the clean pass runs per chunk and the stored statistics are the
average of the per-chunk updates (what averaging per-device buffers would give).

``accumulate`` (gradient accumulation, :mod:`.passes`): both passes run over ``accumulate``
micro-batches, each back-propagating its example-weighted share of the mean loss, so e comes
from the full batch's gradient and the update from the full batch's gradient at w + e: the
full-batch step to float rounding (for a model without batch norm in train mode, which
normalizes each micro-batch by itself; its running statistics get one update per micro-batch
of the pass at w). With ``m < batch`` (m-SAM) the step is m-SAM's loop over the whole batch,
unchanged: its passes already hold one chunk of ``m`` examples at a time, so the micro-batches
add nothing (``m`` = B / N, N dividing B, gives each micro-batch its own perturbation);
it is never vectorized then (``vectorize=True`` is refused: ``vmap`` holds the whole batch).
Second-order SAM accumulates its Hessian-vector term too, from a third forward at w per
micro-batch (the full-batch second-order step to float rounding). Weight decay, the gradient
scaler's unscale, inf check and update, and every variant's state change happen once per
step, in the one optimizer step after the last micro-batch.

A variant whose perturbation does not use the gradient at w (``perturbation_uses_gradient``
false: :class:`~sharpscope.optim.RSAM`) gets a clean pass without backward: a forward at w
under ``no_grad`` (BatchNorm statistics and the reported loss), then one forward-backward at
w + e. With m-SAM each chunk draws its own e.

``second_order`` (p = 2, not adaptive, no m): the update uses the full gradient of
L(w + e_hat(w)), i.e. SAM's gradient plus (d e_hat / dw)^T grad L|_{w + e_hat} (see
:func:`sharpscope.sharpness.sam_gradient_cosine`), at the cost of one double backward.

Mixed precision: ``autocast`` (``torch.bfloat16`` or ``torch.float16``) runs every forward
pass under ``torch.autocast``; the weights, gradients, perturbation and optimizer state stay
in the parameters' dtype. ``scaler`` (a ``torch.amp.GradScaler``, needed for float16) scales
every loss that is back-propagated. e is computed from the scaled gradient, which gives the
same e (e is invariant to the gradient's scale); the update's gradient is unscaled by the
scaler, and when it holds an inf or NaN (from either pass) the weights go back to w and the
update is skipped (``skipped``), as GradScaler skips a plain step; BatchNorm statistics follow
the same policy as in float32. ``scaler.update()`` is called here. Second-order SAM is not
supported under mixed precision.

``vectorize`` (m-SAM): compute all chunks at once with ``torch.func.vmap``
(:func:`~sharpscope.optim.msam.m_sam_vmapped`; the same step to float rounding, 1.1x (digits
CNN) to 1.9x (ResNet-20) faster than the loop on 2 CPU cores, BENCHMARKS.md) instead of one
chunk at a time. ``None`` (default) vectorizes whenever it can
(:func:`~sharpscope.optim.msam.vmappable`), ``False`` always loops, ``True`` refuses a step it
cannot vectorize.

``same_dropout_mask``: the pass at w + e draws the same dropout masks (and any other random
numbers of the forward pass) as the pass at w, by replaying the random-number generator's
state, as the official implementation does (google-research/sam ``flax_training.py`` passes
one dropout key to both passes); by default each pass draws its own (davda54/sam). The
generator continues from where the pass at w left it. Accumulated, the micro-batches of the
pass at w + e replay those of the pass at w in the same order.

A variant that does not perturb on this step (:meth:`SAM.perturbs_this_step` false: LookSAM
between its full steps) takes one pass at w and its :meth:`SAM.second_step`. Variants without
``supports_m`` / ``supports_scaler`` (GSAM, WSAM, LookSAM, Friendly SAM: :mod:`.registry`)
refuse ``m`` / ``scaler``.

``inputs`` is a tensor or any pytree of tensors (a dict, a tuple), passed to the model as one
argument; ``targets`` a tensor (or pytree) whose leading size is the batch size.

For DistributedDataParallel: ``loss_scale`` multiplies the losses that are back-propagated
(the reported losses are not scaled), and ``sync_first_pass=False`` runs the first pass under
``model.no_sync()``, so each rank perturbs with its own gradient. A model with
:class:`~sharpscope.optim.sync_bn.GlobalBatchNorm` layers (batch statistics over every rank's
slice) needs ``sync_first_pass=True``: one perturbation for all ranks, so that the pass at
w + e pools the statistics of one model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..batches import concat, higher_order_attention, leading_size, take
from ..errors import ConfigError
from .bn import frozen_bn_stats
from .msam import m_sam_loop, m_sam_vmapped, vmappable
from .passes import Passes, check_accumulate, micro_slices
from .result import StepResult
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


def sam_step(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: Any,
    targets: Any,
    optimizer: torch.optim.Optimizer,
    m: int | None = None,
    second_order: bool = False,
    loss_scale: float = 1.0,
    sync_first_pass: bool = True,
    autocast: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    vectorize: bool | None = None,
    same_dropout_mask: bool = False,
    accumulate: int = 1,
) -> StepResult:
    """One training step with SAM (or a plain step if ``optimizer`` is not a :class:`SAM`).

    Each option is described in the module docstring: ``m`` (m-SAM), ``second_order``,
    ``loss_scale`` and ``sync_first_pass`` (DistributedDataParallel), ``autocast`` and
    ``scaler`` (mixed precision), ``vectorize`` (m-SAM through ``vmap``), ``same_dropout_mask``
    (the pass at w + e replays the dropout masks of the pass at w) and ``accumulate`` (both
    passes accumulated over that many micro-batches: the full-batch step to float rounding).
    """
    batch = leading_size(targets, "targets")
    check_accumulate(accumulate, batch)
    _check_options(model, optimizer, batch, m, second_order, loss_scale, sync_first_pass, autocast, scaler,
                   accumulate)
    if second_order:
        with higher_order_attention():
            if accumulate > 1:
                return _second_order_accumulated(model, loss_fn, inputs, targets, optimizer, m, accumulate)
            return _second_order_step(model, loss_fn, inputs, targets, optimizer, m)
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
        outputs, loss = passes.clean_forward(inputs, targets)
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


def _second_order_step(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                       inputs: Any, targets: Any, optimizer: torch.optim.Optimizer,
                       m: int | None) -> StepResult:
    """SAM with the full gradient of L(w + rho g / ||g||) (Foret et al., Sec. 2, App. C.4).

    Works on detached copies of the parameters through ``functional_call``, so nothing is
    modified in place while the double-backward graph is alive.
    """
    rho = _second_order_rho(optimizer, m)
    named = [(n, w) for n, w in model.named_parameters() if w.requires_grad]
    names = [n for n, _ in named]
    leaves = [w.detach().requires_grad_(True) for _, w in named]
    outputs = torch.func.functional_call(model, dict(zip(names, leaves)), (inputs,))
    loss = loss_fn(outputs, targets)
    grads = torch.autograd.grad(loss, leaves, create_graph=True)
    with torch.no_grad():
        g = [t.detach() for t in grads]
        gnorm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in g]))
        if gnorm == 0:  # no ascent direction: a plain step
            for (_, w), t in zip(named, g):
                w.grad = t.clone()
            optimizer.base_step()
            return StepResult(loss.detach(), outputs.detach(), loss.detach())
        shifted = [(w.detach() + rho * t / gnorm).requires_grad_(True) for (_, w), t in zip(named, g)]
    with frozen_bn_stats(model):
        perturbed = loss_fn(torch.func.functional_call(model, dict(zip(names, shifted)), (inputs,)), targets)
    g_sam = torch.autograd.grad(perturbed, shifted)
    with torch.no_grad():
        dot = sum((a * b).sum() for a, b in zip(g, g_sam)) / gnorm
        u = [(rho / gnorm) * (b - a * (dot / gnorm)) for a, b in zip(g, g_sam)]
    hu = torch.autograd.grad(grads, leaves, grad_outputs=u)
    with torch.no_grad():
        for (_, w), a, b in zip(named, g_sam, hu):
            w.grad = a + b
    optimizer.base_step()
    return StepResult(loss.detach(), outputs.detach(), perturbed.detach())


def _second_order_rho(optimizer: torch.optim.Optimizer, m: int | None) -> float:
    """The radius of a second-order SAM step; :class:`ConfigError` for what it does not support."""
    if type(optimizer) is not SAM:
        raise ConfigError("second-order SAM needs the SAM optimizer (its gradient term is that of SAM's e_hat(w))")
    groups = optimizer.param_groups
    if m is not None or any(g["adaptive"] or g["p"] != 2.0 for g in groups) or len({g["rho"] for g in groups}) > 1:
        raise ConfigError("second-order SAM supports p = 2, one rho, no ASAM and no m-SAM")
    return groups[0]["rho"]


def _second_order_accumulated(model: nn.Module, loss_fn: Callable[[Any, Any], torch.Tensor], inputs: Any,
                              targets: Any, optimizer: torch.optim.Optimizer, m: int | None,
                              accumulate: int) -> StepResult:
    """:func:`_second_order_step` over ``accumulate`` micro-batches (module docstring): g and
    grad L(w + e) accumulated as in the first-order step, then the full batch's H(w) u as the
    example-weighted sum of each micro-batch's, from a third forward at w per micro-batch that
    replays the random numbers of its first (the same dropout masks) and leaves the batch-norm
    statistics as the first left them. Three forwards per micro-batch instead of two."""
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
    rngs, outs, loss, perturbed = [], [], 0.0, 0.0
    for part, weight in zip(parts, weights):
        rngs.append(_rng_snapshot(model))
        _, out, part_loss, grads = micro(w0, part, False)
        torch._foreach_add_(g, list(grads), alpha=weight)
        outs.append(out.detach())
        loss = loss + part_loss.detach() * weight
    gnorm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in g]))
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
            with _replayed_rng(rng):
                leaves, _, _, grads = micro(w0, part, True)
            torch._foreach_add_(g_sam, list(torch.autograd.grad(grads, leaves, grad_outputs=u)), alpha=weight)
    for (_, w), t in zip(named, g_sam):
        w.grad = t
    optimizer.base_step()
    return StepResult(loss, concat(outs), perturbed)
