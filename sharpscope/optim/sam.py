"""Sharpness-Aware Minimization (SAM) and its adaptive variant (ASAM) as a torch optimizer.

SAM (Foret et al., ICLR 2021, Sec. 2) minimizes max_{||e||_p <= rho} L(w + e). The inner
maximum is replaced by its first-order solution, the dual-norm vector of the gradient

    e_hat(w) = rho * sign(g) |g|^(q-1) / (||g||_q^q)^(1/p),   1/p + 1/q = 1,   g = grad L(w)

(p = 2: e_hat = rho g / ||g||_2;  p = inf: e_hat = rho sign(g)), and the update uses
grad L evaluated at w + e_hat (the second-order term d e_hat / dw is dropped).

ASAM (Kwon et al., ICML 2021, Eq. 8-9) measures the neighbourhood with T_w = |w| + eta:
e = T_w e' with e' the dual-norm solution above for the gradient T_w g
(p = 2: e = rho T_w^2 g / ||T_w g||_2).

:class:`SAM` wraps any ``torch.optim`` class and shares its ``param_groups`` (davda54/sam);
its ``state_dict`` is the base optimizer's. Batch norm (the official rule): running statistics
come from the clean pass only (:func:`sam_step` does it; by hand, wrap the second forward
pass in :func:`frozen_bn_stats`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..errors import ConfigError
from .. import reductions
from .registry import Registered, RunOptions, base_optimizer, register

__all__ = ["SAM", "owns_storage"]


def require_nonnegative(owner: str, **values: Any) -> None:
    """Refuse (ConfigError naming ``owner`` and the option) any value that is not a finite number >= 0."""
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ConfigError(f"{owner}{name} must be a finite number >= 0, got {value!r}")


def _check_hyper(rho: float, p: float, eta: float) -> None:
    require_nonnegative("", rho=rho)
    if not (p == math.inf or (isinstance(p, (int, float)) and p > 1)):
        raise ConfigError(f"p must be > 1 or inf (2 and inf are the usual choices), got {p!r}")
    require_nonnegative("", eta=eta)


def dual_exponent(p: float) -> float:
    """q with 1/p + 1/q = 1 (p = inf -> q = 1)."""
    return 1.0 if p == math.inf else p / (p - 1.0)


def _gradient_entries(w: torch.Tensor) -> torch.Tensor:
    """``w.grad`` when dense; the values of the coalesced gradient when sparse."""
    g = w.grad
    if g.is_sparse:
        w.grad = g = g.coalesce()
        return g._values()
    return g


def _scaled_gradients(params: list[torch.Tensor], adaptive: bool,
                      eta: float) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """(T g, T) on the gradients' stored entries; T = |w| + eta for ASAM, else identity."""
    grads = [_gradient_entries(w) for w in params]
    if not adaptive:
        return grads, None
    scales = [torch.abs(w.sparse_mask(w.grad)._values() if w.grad.is_sparse else w) + eta for w in params]
    return torch._foreach_mul(grads, scales), scales


def owns_storage(w: torch.Tensor) -> bool:
    """A plain tensor (no subclass) that is all of its storage (not a view into a flat buffer
    such as FSDP1's, whose hooks point the parameter back at its view before every forward):
    pointing its ``.data`` at another buffer for a while hides nothing. SAM's step and the
    finite-difference product (:mod:`sharpscope.fd_hvp`) re-point only such parameters."""
    data = w.data
    return (type(data) is torch.Tensor and data.layout == torch.strided and data.storage_offset() == 0
            and data.untyped_storage().nbytes() == data.numel() * data.element_size())


def _tied_storages(params: list[torch.Tensor]) -> set[int]:
    """The storages (by address) that more than one of ``params`` lives in."""
    seen: set[int] = set()
    tied = set()
    for w in params:
        address = w.untyped_storage().data_ptr()
        (tied if address in seen else seen).add(address)
    return tied


def _add_entries(params: list[torch.Tensor], entries: list[torch.Tensor]) -> None:
    """w += e, e dense or on the entries of w's sparse gradient (:func:`_gradient_entries`; values
    shaped like w cover every row in order, so they are added densely)."""
    dense = [(w, e) for w, e in zip(params, entries) if e.shape == w.shape]
    if dense:
        torch._foreach_add_([w for w, _ in dense], [e for _, e in dense])
    for w, e in zip(params, entries):
        if e.shape != w.shape:
            w.add_(torch.sparse_coo_tensor(w.grad._indices(), e, w.shape, is_coalesced=True, check_invariants=False))


def dual_vector(t: list[torch.Tensor], qnorm: torch.Tensor, rho: float, p: float,
                in_place: bool = False) -> list[torch.Tensor]:
    """rho * sign(t) |t|^(q-1) / ||t||_q^(q-1): the maximizer of <e, t> over ||e||_p <= rho, given
    ||t||_q (global, over every group) as ``qnorm``; zero where ``qnorm`` is 0 (p = inf: rho sign(t)).
    ``in_place``: for p = 2, scale ``t`` itself and return it (no parameter-sized allocation)."""
    if p == math.inf:
        e = [torch.sign(x) for x in t]
        torch._foreach_mul_(e, rho)
        return e
    q = p / (p - 1.0)
    # (||t||_q^q)^(1/p) = ||t||_q^(q-1)
    denom = qnorm ** (q - 1.0)
    factor = torch.where(denom > 0, rho / denom, torch.zeros_like(denom))
    if p == 2.0 and in_place:
        torch._foreach_mul_(t, factor)
        return t
    if p == 2.0:
        return torch._foreach_mul(t, factor)
    return [torch.sign(x) * torch.abs(x) ** (q - 1.0) * factor for x in t]


_SAM_STATE_KEY = "sam_state"


def flat_dot(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
    """<x, y> over a list of tensors (one flat vector), accumulated in float64."""
    if not xs:
        return torch.zeros((), dtype=torch.float64)
    return torch.stack([(x.double() * y.double()).sum() for x, y in zip(xs, ys)]).sum()


@contextlib.contextmanager
def substituted_gradients(params: list[torch.Tensor], grads: list[torch.Tensor]) -> Iterator[None]:
    """``w.grad = g`` inside the block; the original gradients are put back."""
    saved = [w.grad for w in params]
    for w, g in zip(params, grads):
        w.grad = g
    try:
        yield
    finally:
        for w, g in zip(params, saved):
            w.grad = g


def _weight_decayed_gradients(groups: list[dict[str, Any]]) -> contextlib.AbstractContextManager[None]:
    """g + weight_decay * w in place of g for the groups with ``perturbation_weight_decay``
    (google-research/sam ``flax_training.py``: the L2 term is in the loss whose gradient sets e)."""
    params, grads = [], []
    for group in groups:
        wd = group.get("weight_decay", 0.0)
        if not group.get("perturbation_weight_decay") or not wd:
            continue
        for w in group["params"]:
            if w.grad is not None and not w.grad.is_sparse:
                params.append(w)
                grads.append(w.grad + wd * w.detach())
    return substituted_gradients(params, grads) if params else contextlib.nullcontext()


@register
class SAM(Registered, torch.optim.Optimizer):
    """SAM / ASAM around a ``base_optimizer`` class (``**kwargs`` are its options).

    Args:
        params: parameters or groups (a group may override ``rho``, ``p``, ``adaptive``, ``eta``).
        rho: radius of the neighbourhood (0: exactly the base optimizer); ``p`` > 1 or ``math.inf``.
        adaptive: ASAM's neighbourhood with ``T_w = |w| + eta`` (Kwon et al.: eta = 0.01).
        perturbation_weight_decay: set e from g + weight_decay * w, as google-research/sam
            does; the default (davda54/sam) sets e from g, the weight decay in the update only.

    ``first_step`` after the backward at w, ``second_step`` after the backward at w + e (right after
    the one at w where :meth:`perturbs_this_step` is false), or ``step(closure)``: both passes, returns
    the loss at w. The perturbation norm is global over every parameter.
    """

    #: False: :func:`sam_step` skips the backward at w (the perturbation ignores the gradient).
    perturbation_uses_gradient = True
    #: Set by :meth:`first_step(zero_grad=True) <first_step>` while e is formed: the gradients
    #: are discarded after it, so :meth:`_perturbation` may scale them in place.
    _disposable_grads = False
    #: True: :meth:`first_step` computes w + e into a buffer of SAM's and points a plain parameter's
    #: ``.data`` there, so w itself is never written (one pass less each way than copying w and
    #: copying it back; see :meth:`_move` for the parameters that are still copied). Set it False
    #: on an instance whose parameters' storage must stay put, e.g. a CUDA graph captured by hand
    #: around the forward pass would keep reading w (torch.compile's CUDA graphs re-record, or
    #: run without graphs past a limit: slower, not wrong).
    repoint_parameters = True
    #: :meth:`first_step` keeps the gradient at w (``state[w]["clean_grad"]``) for :meth:`_update_gradient`.
    keeps_clean_gradient = False
    # Registry facts (sharpscope.optim.registry; a subclass re-declares the capabilities it keeps).
    name = "sam"
    default_rho = 0.05
    perturbs = True
    reads = frozenset({"rho", "p", "second_order", "same_dropout_mask", "perturbation_weight_decay"})
    supports_m = True
    supports_scaler = True
    supports_ranks = True
    supports_second_order = True
    #: Per-parameter state entries (in ``self.state[w]``) that :meth:`state_dict` saves.
    _saved_state_keys: tuple[str, ...] = ()
    #: What ``repr`` shows between rho and lr: a group key or attribute (``label=attribute`` renames).
    _shown: tuple[str, ...] = ("p", "adaptive")

    def __init__(self, params: Any, base_optimizer: type[torch.optim.Optimizer], rho: float = 0.05, p: float = 2.0,
                 adaptive: bool = False, eta: float = 0.01, perturbation_weight_decay: bool = False,
                 **kwargs: Any) -> None:
        _check_hyper(rho, p, eta)
        for name, flag in (("adaptive", adaptive), ("perturbation_weight_decay", perturbation_weight_decay)):
            if not isinstance(flag, bool):  # bool("no") is True: only a real bool is taken
                raise ConfigError(f"{name} must be True or False, got {flag!r}")
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
            raise ConfigError(f"base_optimizer must be a torch.optim.Optimizer class, got {base_optimizer!r}")
        defaults = dict(rho=float(rho), p=float(p), adaptive=adaptive, eta=float(eta),
                        perturbation_weight_decay=perturbation_weight_decay, **kwargs)
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (SAM's options checked; after ``__init__`` it goes to the base optimizer)."""
        base = self.__dict__.get("base_optimizer")
        group = dict(param_group)
        for key in ("rho", "p", "adaptive", "eta", "perturbation_weight_decay"):
            group.setdefault(key, self.defaults[key])
        _check_hyper(group["rho"], group["p"], group["eta"])
        if any(dual_exponent(g["p"]) != dual_exponent(group["p"]) for g in self.param_groups):
            raise ConfigError("all parameter groups of one SAM optimizer must use the same p, "
                              f"got p = {group['p']} beside p = {self.param_groups[0]['p']}")
        if base is None:  # during __init__
            super().add_param_group(group)
        else:
            base.add_param_group(group)

    @classmethod
    def from_config(cls, config: RunOptions, model: Any) -> SAM:
        """This optimizer around the configuration's base optimizer (SGD or AdamW), on
        :meth:`config_params`, with :meth:`config_kwargs` and ``optimizer_options``."""
        base, options = base_optimizer(config)
        return cls(cls.config_params(config, model), base, **cls.config_kwargs(config), **options,
                   **config.optimizer_options)

    @classmethod
    def config_params(cls, config: RunOptions, model: Any) -> Any:
        """The parameters (or groups) it optimizes: all of ``model``'s."""
        return model.parameters()

    @classmethod
    def config_kwargs(cls, config: RunOptions) -> dict[str, Any]:
        """The SAM options a configuration sets: rho, p, eta and the perturbation's weight decay."""
        return dict(rho=config.effective_rho, p=config.p, eta=config.eta,
                    perturbation_weight_decay=config.perturbation_weight_decay)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> torch.Tensor:
        """Move every parameter to w + e (:meth:`_perturbation`), remembering w; returns the norm
        that scaled e (SAM: ||T g||_q). A zero gradient gives e = 0; a sparse one a sparse e.
        Raises :class:`ConfigError` at w + e already (w would be lost)."""
        if self.perturbed():
            raise ConfigError("first_step() at w + e: call second_step() (or unperturb()) before the next first_step()")
        if self.keeps_clean_gradient:
            for _, w in self._each_param():
                if w.grad is not None:
                    self.state[w]["clean_grad"] = w.grad.detach().clone()
        self._disposable_grads = zero_grad  # e may then be formed in the gradients' own buffers
        try:
            with _weight_decayed_gradients(self.param_groups):
                norm, perturbations = self._perturbation()
        finally:
            self._disposable_grads = False
        every = [w for params, _ in perturbations for w in params]
        tied = _tied_storages(every) if self.repoint_parameters else set()
        for params, e in perturbations:
            self._move(params, e, tied)
        if zero_grad:
            self.zero_grad()
        return norm

    def _perturbation(self) -> tuple[torch.Tensor, list[tuple[list[torch.Tensor], list[torch.Tensor]]]]:
        """The perturbation rule a variant overrides: ``(norm, [(params, e), ...])``, one pair per
        non-empty group. SAM / ASAM: the dual-norm vector of T g, norm = ||T g||_q."""
        qnorm = self._dual_norm()
        out = []
        for group in self.param_groups:
            params = [w for w in group["params"] if w.grad is not None]
            if not params:
                continue
            tg, scales = _scaled_gradients(params, group["adaptive"], group["eta"])
            # in place in T g when it is a temporary (ASAM) or the gradients are discarded after the step
            in_place = group["adaptive"] or self._disposable_grads
            e = dual_vector(tg, qnorm, self._radius(group), group["p"], in_place=in_place)
            if group["adaptive"]:
                torch._foreach_mul_(e, scales)
            out.append((params, e))
        return qnorm, out

    def _move(self, params: list[torch.Tensor], e: list[torch.Tensor], tied: set[int]) -> None:
        """w -> w + e, remembering w exactly. A plain dense parameter is never written: w + e is
        computed into a spare buffer and ``w.data`` points there until :meth:`unperturb` points it
        back at its own storage (no copy either way). Others are copied and moved in place: tensor
        subclasses (FSDP2's DTensor), views into a larger buffer (FSDP1), parameters sharing
        storage with another (manual weight tying: ``tied``, storages seen twice), sparse e, and
        all when :attr:`repoint_parameters` is False."""
        in_place = []
        for w, x in zip(params, e):
            spare = self._spare().pop(w, None)
            layout = (w.shape, w.stride(), w.dtype, w.device)
            fits = spare is not None and (spare.shape, spare.stride(), spare.dtype, spare.device) == layout
            if self.repoint_parameters and x.shape == w.shape and owns_storage(w) \
                    and w.untyped_storage().data_ptr() not in tied:
                self.state[w]["own_data"] = w.data
                w.data = torch.add(w.data, x, out=spare if fits else torch.empty_like(w))
            else:
                self.state[w]["old_p"] = spare.copy_(w) if fits else w.detach().clone()
                in_place.append((w, x))
        if in_place:
            _add_entries([w for w, _ in in_place], [x for _, x in in_place])

    def _spare(self) -> dict[torch.Tensor, torch.Tensor]:
        """Buffers :meth:`unperturb` no longer needs (the one that held w + e, or the copy of w),
        by parameter: the next :meth:`first_step` writes into them instead of allocating (one
        parameter-sized buffer stays allocated between steps; the peak, during the pass at w + e,
        is unchanged)."""
        return self.__dict__.setdefault("_spare_copies", {})

    def perturbed(self) -> bool:
        """Whether the parameters are at w + e (after :meth:`first_step`, before :meth:`unperturb`)."""
        return any("own_data" in self.state[w] or "old_p" in self.state[w] for _, w in self._each_param())

    def _radius(self, group: dict[str, Any]) -> float:
        """This step's radius for ``group`` (SAM: its ``rho``; GSAM follows the learning rate)."""
        return group["rho"]

    def perturbs_this_step(self) -> bool:
        """Whether this step perturbs (two passes) or updates from the gradient at w (LookSAM)."""
        return True

    def _update_gradient(self) -> None:
        """Turn ``.grad`` (at w + e, or at w on a step that did not perturb) into the update's
        gradient, the weights back at w (SAM: unchanged)."""

    def _clean_gradient(self, w: torch.Tensor) -> torch.Tensor:
        """The gradient at w kept by :meth:`first_step` (zeros where ``w`` had none then)."""
        kept = self.state[w].get("clean_grad")
        return torch.zeros_like(w.grad) if kept is None else kept

    def _after_base_step(self) -> None:
        """Anything applied after the base optimizer's update (WSAM's decoupled sharpness step)."""

    def _each_param(self) -> Iterator[tuple[dict[str, Any], torch.Tensor]]:
        """(group, w) for every parameter, in group order."""
        return ((group, w) for group in self.param_groups for w in group["params"])

    def _popped(self, key: str) -> Iterator[tuple[dict[str, Any], torch.Tensor, Any]]:
        """(group, w, value) for every parameter whose state held ``key``, removing it."""
        for group, w in self._each_param():
            value = self.state[w].pop(key, None)
            if value is not None:
                yield group, w, value

    @torch.no_grad()
    def unperturb(self) -> None:
        """Put every parameter back to w exactly: ``.data`` back at its own storage, or the copy
        saved by :meth:`first_step` copied back."""
        for _, w, own in self._popped("own_data"):
            self._spare()[w] = w.data  # w + e's buffer, reused by the next first_step
            w.data = own
        for _, w, old in self._popped("old_p"):
            w.copy_(old)
            self._spare()[w] = old

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Return to w and update it with the base optimizer using the gradient at w + e_hat."""
        self.unperturb()
        self._update_gradient()
        self.base_step()
        self._after_base_step()
        for _, w in self._each_param():
            self.state[w].pop("clean_grad", None)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def base_step(self) -> None:
        """Apply the base optimizer with the gradients now in ``.grad`` (used by m-SAM)."""
        self.base_optimizer.step()
        self._opt_called = True  # tells torch LR schedulers that this optimizer has stepped

    # GradScaler.step(sam) then calls step() itself (``grad_scale``, ``found_inf`` set), even on an inf
    _step_supports_amp_scaling = True

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        """One full SAM update; ``closure`` computes forward + backward and returns the loss.

        ``scaler.step(sam)`` (a ``GradScaler``, after the scaled backward at w, :meth:`first_step`
        (e is invariant to the gradient's scale) and the scaled backward at w + e) is the second
        step: it unscales and calls :meth:`second_step`, or on an inf/NaN goes back to w without
        an update. Without a closure outside a scaler it raises, after going back to w.
        """
        found_inf = getattr(self, "found_inf", None)
        if closure is None and found_inf is not None:
            return self._scaled_second_step(getattr(self, "grad_scale", None), found_inf)
        if closure is None:
            self.unperturb()  # never leave w + e behind
            raise ConfigError("SAM.step needs a closure that runs forward and backward; or call first_step() and "
                              "second_step() yourself (with a GradScaler: first_step(), then scaler.step(sam))")
        self.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = closure()
        if not self.perturbs_this_step():  # one pass: the update from the gradient at w
            self.second_step()
            return loss
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            closure()
        self.second_step()
        return loss

    @torch.no_grad()
    def _scaled_second_step(self, grad_scale: torch.Tensor | None, found_inf: torch.Tensor) -> None:
        """The second step as ``GradScaler.step`` asks for it (see :meth:`step`)."""
        if not self.perturbed():
            for name in ("found_inf", "grad_scale"):  # GradScaler removes them only when step() returns
                self.__dict__.pop(name, None)
            raise ConfigError("scaler.step(sam) is SAM's second step: call sam.first_step() after the first scaled "
                              "backward pass, then backward at w + e, then scaler.step(sam)")
        if float(found_inf) > 0:  # an inf or NaN at w or at w + e: back to w, no update
            self.unperturb()
            return None
        if grad_scale is not None:  # the scaler did not unscale: divide here (sparse gradients too)
            inv = 1.0 / float(grad_scale)
            for _, w in self._each_param():
                if w.grad is not None:
                    w.grad.mul_(inv)
        self.second_step()
        return None

    def _dual_norm(self) -> torch.Tensor:
        """||T g||_q over all parameters with gradients (q = p / (p - 1); inf -> 1-norm)."""
        parts = []
        for group in self.param_groups:
            q = dual_exponent(group["p"])
            params = [w for w in group["params"] if w.grad is not None]
            if not params:
                continue
            tg, _ = _scaled_gradients(params, group["adaptive"], group["eta"])
            # p = 2: tensors of over 2^20 entries summed in float64 blocks (float32's own sum drifts)
            norms = reductions.norms(tg) if q == 2.0 else torch._foreach_norm(tg, q)
            parts.append(torch.stack(norms).pow(q).sum())
        if not parts:
            return torch.zeros(())
        return torch.stack(parts).sum().pow(1.0 / dual_exponent(self.param_groups[0]["p"]))

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict (its groups carry SAM's options), plus under ``sam_state``
        each of ``_saved_state_keys``: one entry per parameter in group order, None where unset."""
        state = self.base_optimizer.state_dict()
        if self._saved_state_keys:
            params = [w for _, w in self._each_param()]
            state[_SAM_STATE_KEY] = {key: [self.state[w].get(key) for w in params] for key in self._saved_state_keys}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop(_SAM_STATE_KEY, None)
        if self._saved_state_keys and extra is None:
            raise ConfigError(f"this optimizer state has no {type(self).__name__} state (saved by another optimizer?)")
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        params = [w for _, w in self._each_param()]
        for key, values in (extra or {}).items():
            if len(values) != len(params):
                raise ConfigError(f"saved {type(self).__name__} state has {len(values)} entries for {len(params)} "
                                  "parameters")
            for w, value in zip(params, values):
                if value is not None:
                    self.state[w][key] = value.to(device=w.device, dtype=w.dtype)

    def __repr__(self) -> str:
        """``Name(base=..., rho=..., <each of _shown: the attribute, else the first group's entry>, lr=...)``"""
        g = self.param_groups[0]
        shown = ""
        for label, _, key in (entry.partition("=") for entry in self._shown):
            shown += f"{label}={getattr(self, key or label, g.get(key or label))}, "
        base = type(self.base_optimizer).__name__
        return f"{type(self).__name__}(base={base}, rho={g['rho']}, {shown}lr={g.get('lr')})"
