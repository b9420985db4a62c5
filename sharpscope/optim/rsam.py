"""Random-perturbation SAM (RSAM): the control for SAM's ascent direction.

SAM's update w <- w - lr grad L(w + e), with e SAM's dual-norm rule applied to a Gaussian z
drawn independently of the gradient,

    e = rho * sign(z) |z|^(q-1) / ||z||_q^(q-1),   z ~ N(0, I),   1/p + 1/q = 1,

so ||e||_p = rho (p = 2: uniform on the rho-sphere; p = inf: a uniform corner of the l_inf
ball), the norm global over every parameter with ``requires_grad``. The optimizer's own
generator (seeded with ``seed``, on the first parameter's device) is in ``state_dict()``: a
resumed run continues bit for bit, and ranks seeded alike draw the same e.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from ..errors import ConfigError
from .registry import RunOptions, register
from .sam import SAM, dual_exponent, dual_vector

__all__ = ["RSAM", "stream_seed"]

_STATE_KEY = "rsam_generator"


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for the random stream ``stream`` of run ``seed``, independent of its others."""
    digest = hashlib.blake2b(f"{int(seed)}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@register
class RSAM(SAM):
    """SAM with a random perturbation of norm ``rho`` (module docstring), drawn by a generator seeded
    with ``seed`` (not the model's seed: it would replay its draws); no ``adaptive`` (isotropic)."""

    name = "rsam"
    summary = "SAM's step at a random e of norm rho: the control for SAM's ascent direction"
    supports_m = True
    supports_scaler = True
    supports_ranks = True
    perturbation_uses_gradient = False
    _shown = ("p",)

    def __init__(self, params: Any, base_optimizer: type[torch.optim.Optimizer], rho: float = 0.05,
                 p: float = 2.0, seed: int = 0, **kwargs: Any) -> None:
        if "adaptive" in kwargs or "eta" in kwargs:
            raise ConfigError("RSAM draws an isotropic random direction; it takes no adaptive / eta (ASAM)")
        if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**64):
            raise ConfigError(f"RSAM seed must be an integer in [0, 2**64), got {seed!r}")
        super().__init__(params, base_optimizer, rho=rho, p=p, **kwargs)
        device = next((w.device for g in self.param_groups for w in g["params"]), torch.device("cpu"))
        self.generator = torch.Generator(device=device).manual_seed(seed)

    @classmethod
    def config_kwargs(cls, config: RunOptions) -> dict[str, Any]:
        """rho, p and the seed of the run's ``rsam`` stream (:func:`stream_seed`)."""
        return dict(rho=config.effective_rho, p=config.p, seed=stream_seed(config.seed, "rsam"))

    @classmethod
    def check_config(cls, config: RunOptions) -> None:
        if config.sync_bn:
            raise ConfigError("--sync-bn is for sgd, sam and asam: rsam draws its random perturbation on each rank")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if param_group.get("adaptive"):
            raise ConfigError("RSAM parameter groups cannot be adaptive (ASAM's scaling needs a gradient)")
        super().add_param_group(param_group)

    def _perturbation(self) -> tuple[torch.Tensor, list[tuple[list[torch.Tensor], list[torch.Tensor]]]]:
        """e = the dual-norm vector of a fresh Gaussian z; norm = ||z||_q (global)."""
        gen = self.generator
        groups = [(g, [w for w in g["params"] if w.requires_grad]) for g in self.param_groups]
        groups = [(g, params) for g, params in groups if params]
        z = [[torch.randn(w.shape, generator=gen, device=gen.device, dtype=w.dtype).to(w.device) for w in params]
             for _, params in groups]
        if not groups:
            return torch.zeros(()), []
        q = dual_exponent(groups[0][0]["p"])
        parts = [torch.stack(torch._foreach_norm(zs, q)).pow(q).sum() for zs in z]
        znorm = torch.stack([t.to(parts[0].device) for t in parts]).sum().pow(1.0 / q)
        return znorm, [(params, dual_vector(zs, znorm.to(zs[0].device), group["rho"], group["p"]))
                       for (group, params), zs in zip(groups, z)]

    def state_dict(self) -> dict[str, Any]:
        """SAM's state dict plus the generator's state (key ``rsam_generator``)."""
        state = super().state_dict()
        state[_STATE_KEY] = self.generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        gen_state = state.pop(_STATE_KEY, None)
        if gen_state is None:
            raise ConfigError("this optimizer state has no RSAM generator state (saved by another optimizer?)")
        try:
            self.generator.set_state(gen_state.cpu())
        except RuntimeError as err:
            raise ConfigError(f"cannot restore the RSAM generator on {self.generator.device} (its state was "
                              f"saved on another kind of device?): {str(err).splitlines()[0]}") from None
        super().load_state_dict(state)
