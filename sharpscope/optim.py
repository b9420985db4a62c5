"""Sharpness-Aware Minimization (SAM) and its adaptive variant (ASAM) as a torch optimizer.

SAM (Foret et al., ICLR 2021, Sec. 2) minimizes max_{||e||_p <= rho} L(w + e). The inner
maximum is replaced by its first-order solution, the dual-norm vector of the gradient

    e_hat(w) = rho * sign(g) |g|^(q-1) / (||g||_q^q)^(1/p),   1/p + 1/q = 1,   g = grad L(w)

(p = 2: e_hat = rho g / ||g||_2;  p = inf: e_hat = rho sign(g)), and the update uses
grad L evaluated at w + e_hat (the second-order term d e_hat / dw is dropped).

ASAM (Kwon et al., ICML 2021, Eq. 8-9) measures the neighbourhood with the normalization
operator T_w = |w| + eta: e = T_w e' where e' is the dual-norm solution above for the
gradient T_w g. For p = 2 this is e = rho T_w^2 g / ||T_w g||_2.

:class:`SAM` wraps any ``torch.optim`` class and shares its ``param_groups`` (the design
of davda54/sam), but its ``state_dict`` is the base optimizer's (momentum buffers
included), so a resumed run loses nothing.

Batch normalization policy (the official implementation's rule): the running statistics
come from the clean first pass only. :func:`sam_step` enforces it by restoring every
BatchNorm buffer after the second pass; when driving :class:`SAM` by hand, wrap the
second forward pass in :func:`frozen_bn_stats`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import ConfigError

__all__ = ["SAM", "sam_step", "frozen_bn_stats", "bn_modules", "StepResult"]


def _check_hyper(rho: float, p: float, eta: float) -> None:
    if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho >= 0):
        raise ConfigError(f"rho must be a finite number >= 0, got {rho!r}")
    if not (p == math.inf or (isinstance(p, (int, float)) and p > 1)):
        raise ConfigError(f"p must be > 1 or inf (2 and inf are the usual choices), got {p!r}")
    if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
        raise ConfigError(f"eta must be a finite number >= 0, got {eta!r}")


class SAM(torch.optim.Optimizer):
    """SAM / ASAM around any base optimizer.

    Args:
        params: parameters or parameter groups (groups may override ``rho``, ``p``,
            ``adaptive`` and ``eta``, e.g. to exempt biases from ASAM's scaling).
        base_optimizer: a ``torch.optim.Optimizer`` class, e.g. ``torch.optim.SGD``.
        rho: radius of the neighbourhood (``rho = 0`` is exactly the base optimizer).
        p: the norm of the neighbourhood, any p > 1 or ``math.inf``.
        adaptive: ASAM's scale-invariant neighbourhood with ``T_w = |w| + eta``.
        eta: ASAM's offset (Kwon et al. use 0.01).
        **kwargs: passed to the base optimizer (lr, momentum, weight_decay, ...).

    Use either the two steps by hand::

        loss_fn(model(x), y).backward(); opt.first_step(zero_grad=True)
        loss_fn(model(x), y).backward(); opt.second_step(zero_grad=True)

    or ``opt.step(closure)`` where ``closure`` runs forward and backward and returns the
    loss. Unlike davda54/sam, ``step`` runs the first pass too (as every closure-taking
    torch optimizer does) and returns the loss at the unperturbed weights.

    The perturbation norm is global: one norm over every parameter with a gradient.
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: type[torch.optim.Optimizer],
        rho: float = 0.05,
        p: float = 2.0,
        adaptive: bool = False,
        eta: float = 0.01,
        **kwargs: Any,
    ) -> None:
        _check_hyper(rho, p, eta)
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
            raise ConfigError(f"base_optimizer must be a torch.optim.Optimizer class, got {base_optimizer!r}")
        defaults = dict(rho=float(rho), p=float(p), adaptive=bool(adaptive), eta=float(eta), **kwargs)
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check_hyper(group["rho"], group["p"], group["eta"])
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    # -- the two steps -------------------------------------------------------------
    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> torch.Tensor:
        """Move every parameter to w + e_hat(w) and remember w. Returns ||T g||_q.

        A zero gradient gives e_hat = 0 (no NaN).
        """
        qnorm = self._dual_norm()
        for group in self.param_groups:
            rho, p, adaptive, eta = group["rho"], group["p"], group["adaptive"], group["eta"]
            params = [w for w in group["params"] if w.grad is not None]
            if not params:
                continue
            for w in params:
                self.state[w]["old_p"] = w.detach().clone()
            grads = [w.grad for w in params]
            scales = [torch.abs(w) + eta for w in params] if adaptive else None
            tg = torch._foreach_mul(grads, scales) if adaptive else grads
            if p == math.inf:
                e = [torch.sign(t) for t in tg]
                torch._foreach_mul_(e, rho)
            else:
                q = p / (p - 1.0)
                # rho * sign(t) |t|^(q-1) / ||t||_q^(q-1)   (since (||t||_q^q)^(1/p) = ||t||_q^(q-1))
                denom = qnorm ** (q - 1.0)
                factor = torch.where(denom > 0, rho / denom, torch.zeros_like(denom))
                if p == 2.0:
                    e = torch._foreach_mul(tg, factor)
                else:
                    e = [torch.sign(t) * torch.abs(t) ** (q - 1.0) * factor for t in tg]
            if adaptive:
                torch._foreach_mul_(e, scales)
            torch._foreach_add_(params, e)
        if zero_grad:
            self.zero_grad()
        return qnorm

    @torch.no_grad()
    def unperturb(self) -> None:
        """Put every parameter back to w exactly (the copy saved by :meth:`first_step`)."""
        for group in self.param_groups:
            for w in group["params"]:
                old = self.state[w].pop("old_p", None)
                if old is not None:
                    w.copy_(old)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Return to w and update it with the base optimizer using the gradient at w + e_hat."""
        self.unperturb()
        self.base_step()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def base_step(self) -> None:
        """Apply the base optimizer with the gradients now in ``.grad`` (used by m-SAM)."""
        self.base_optimizer.step()
        self._opt_called = True  # tells torch LR schedulers that this optimizer has stepped

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:  # type: ignore[override]
        """One full SAM update; ``closure`` computes forward + backward and returns the loss."""
        if closure is None:
            raise ConfigError("SAM.step needs a closure that runs forward and backward; "
                              "or call first_step() and second_step() yourself")
        self.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = closure()
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            closure()
        self.second_step()
        return loss

    # -- helpers ---------------------------------------------------------------------
    def _dual_norm(self) -> torch.Tensor:
        """||T g||_q over all parameters with gradients (q = p / (p - 1); inf -> 1-norm)."""
        parts = []
        for group in self.param_groups:
            p, adaptive, eta = group["p"], group["adaptive"], group["eta"]
            q = 1.0 if p == math.inf else p / (p - 1.0)
            params = [w for w in group["params"] if w.grad is not None]
            if not params:
                continue
            grads = [w.grad for w in params]
            if adaptive:
                grads = torch._foreach_mul(grads, [torch.abs(w) + eta for w in params])
            norms = torch._foreach_norm(grads, q)
            parts.append(torch.stack(norms).pow(q).sum())
        if not parts:
            return torch.zeros(())
        qs = {1.0 if g["p"] == math.inf else g["p"] / (g["p"] - 1.0) for g in self.param_groups}
        if len(qs) != 1:
            raise ConfigError("all parameter groups of one SAM optimizer must use the same p")
        return torch.stack(parts).sum().pow(1.0 / qs.pop())

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict (its param_groups carry rho, p, adaptive, eta)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups

    def __repr__(self) -> str:
        g = self.param_groups[0]
        return (f"SAM(base={type(self.base_optimizer).__name__}, rho={g['rho']}, p={g['p']}, "
                f"adaptive={g['adaptive']}, lr={g.get('lr')})")


# --------------------------------------------------------------------------------------
# Batch-norm policy and the training step
# --------------------------------------------------------------------------------------
_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def bn_modules(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BN_TYPES) and m.track_running_stats]


def _bn_snapshot(bns: list[nn.Module]) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in m._buffers.items() if v is not None} for m in bns]


@torch.no_grad()
def _bn_restore(bns: list[nn.Module], snapshot: list[dict[str, torch.Tensor]]) -> None:
    for m, bufs in zip(bns, snapshot):
        for k, v in bufs.items():
            m._buffers[k].copy_(v)


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Inside this block BatchNorm layers normalize with batch statistics as usual, but
    their running statistics (mean, var, num_batches_tracked) are restored on exit."""
    bns = bn_modules(model)
    saved = _bn_snapshot(bns)
    try:
        yield
    finally:
        _bn_restore(bns, saved)


@dataclass
class StepResult:
    """What one training step saw at the unperturbed weights (for metrics)."""

    loss: torch.Tensor      # mean loss of the batch at w (0-dim, detached)
    outputs: torch.Tensor   # model outputs at w (detached)
    perturbed_loss: torch.Tensor | None  # mean loss at w + e (SAM only)


def sam_step(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    m: int | None = None,
    second_order: bool = False,
    loss_scale: float = 1.0,
    sync_first_pass: bool = True,
) -> StepResult:
    """One training step with SAM (or a plain step if ``optimizer`` is not a :class:`SAM`).

    ``m`` (m-SAM, Foret et al. Sec. 4.1 / App. C.3): the batch is split into consecutive
    chunks of ``m`` examples; each chunk gets its own perturbation e_k from its own
    gradient, the gradient at w + e_k of that chunk's loss is taken, and the chunk
    gradients are averaged weighted by chunk size. ``m = None`` or ``m >= batch size`` is
    plain SAM. BatchNorm: running statistics come from the clean pass only; with m-SAM
    the clean pass runs per chunk and the stored statistics are the average of the
    per-chunk updates (what averaging per-device buffers would give).

    ``second_order`` (p = 2, not adaptive, no m): the update uses the full gradient of
    L(w + e_hat(w)), i.e. SAM's gradient plus (d e_hat / dw)^T grad L|_{w + e_hat} (see
    :func:`sharpscope.sharpness.sam_gradient_cosine`), at the cost of one double backward.

    For DistributedDataParallel: ``loss_scale`` multiplies the losses that are
    back-propagated (the reported losses are not scaled), and ``sync_first_pass=False``
    runs the first pass under ``model.no_sync()``, so each rank perturbs with its own
    gradient.
    """
    batch = inputs.shape[0]
    if m is not None and m < 1:
        raise ConfigError(f"m must be a positive number of examples, got {m}")
    if second_order:
        return _second_order_step(model, loss_fn, inputs, targets, optimizer, m)
    if (loss_scale != 1.0 or not sync_first_pass) and m is not None:
        raise ConfigError("loss_scale and sync_first_pass are for data-parallel SAM, not m-SAM")

    def backward(loss: torch.Tensor) -> None:
        (loss * loss_scale if loss_scale != 1.0 else loss).backward()

    optimizer.zero_grad(set_to_none=True)
    if not isinstance(optimizer, SAM):
        outputs = model(inputs)
        loss = loss_fn(outputs, targets)
        backward(loss)
        optimizer.step()
        return StepResult(loss.detach(), outputs.detach(), None)

    if m is None or m >= batch:
        with (contextlib.nullcontext() if sync_first_pass else model.no_sync()):
            outputs = model(inputs)
            loss = loss_fn(outputs, targets)
            backward(loss)
        optimizer.first_step(zero_grad=True)
        with frozen_bn_stats(model):
            perturbed = loss_fn(model(inputs), targets)
            backward(perturbed)
        optimizer.second_step()
        return StepResult(loss.detach(), outputs.detach(), perturbed.detach())

    params = [w for g in optimizer.param_groups for w in g["params"] if w.requires_grad]
    grad_sum: list[torch.Tensor | None] = [None] * len(params)
    bns = bn_modules(model)
    start = _bn_snapshot(bns)
    bn_sum = [{k: torch.zeros_like(v, dtype=torch.float64) for k, v in s.items()} for s in start]
    losses, perturbed_losses, outs = [], [], []
    for lo in range(0, batch, m):
        x, y = inputs[lo:lo + m], targets[lo:lo + m]
        weight = x.shape[0] / batch
        outputs = model(x)
        loss = loss_fn(outputs, y)
        loss.backward()
        with torch.no_grad():  # collect this chunk's running-stat update, then rewind
            for b, acc in zip(bns, bn_sum):
                for k in acc:
                    acc[k] += b._buffers[k].double()
        _bn_restore(bns, start)
        optimizer.first_step(zero_grad=True)
        with frozen_bn_stats(model):
            perturbed = loss_fn(model(x), y)
            perturbed.backward()
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
    optimizer.base_step()
    return StepResult(torch.stack(losses).sum(), torch.cat(outs), torch.stack(perturbed_losses).sum())


def _second_order_step(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                       inputs: torch.Tensor, targets: torch.Tensor, optimizer: torch.optim.Optimizer,
                       m: int | None) -> StepResult:
    """SAM with the full gradient of L(w + rho g / ||g||) (Foret et al., Sec. 2, App. C.4).

    Works on detached copies of the parameters through ``functional_call``, so nothing is
    modified in place while the double-backward graph is alive.
    """
    if not isinstance(optimizer, SAM):
        raise ConfigError("second-order SAM needs the SAM optimizer")
    groups = optimizer.param_groups
    if m is not None or any(g["adaptive"] or g["p"] != 2.0 for g in groups) or len({g["rho"] for g in groups}) > 1:
        raise ConfigError("second-order SAM supports p = 2, one rho, no ASAM and no m-SAM")
    rho = groups[0]["rho"]
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
