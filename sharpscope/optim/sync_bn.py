"""Batch norm over the global batch of every rank, built from all-reduces (any backend, CPU too;
``torch.nn.SyncBatchNorm`` refuses CPU tensors in training).

Each rank computes its slice's per-channel mean m_r and sum of squared deviations M2_r over n_r
values; one all-gather brings every rank's, combined as Chan, Golub & LeVeque (1979):

    N = sum_r n_r,   mean = sum_r n_r m_r / N,
    var = (sum_r M2_r + sum_r n_r (m_r - mean)^2) / N.

The gather's backward sums over ranks the gradients reaching the statistics, so the gradients
summed over ranks are the global-batch loss's. Running statistics: ``torch.nn.BatchNorm``'s rule
on every rank. In eval mode, or on one rank, this is ``F.batch_norm``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .. import distributed as dist_utils

__all__ = ["GlobalBatchNorm", "convert_to_global_bn", "has_global_bn"]


class _GatherOverRanks(torch.autograd.Function):
    """y = stack of every rank's x; backward: dL/dx_r = sum_r' dL_r'/dy[r] (module docstring)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rank = dist.get_rank()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total[ctx.rank]


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm layer (input (N, C, ...)) whose training statistics are the global batch's
    (module docstring); the parameters, buffers and ``state_dict`` keys of ``nn.BatchNorm*d``."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not (self.training and dist_utils.is_distributed()):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        channels, local_count = x.shape[1], x.numel() // x.shape[1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        if local_count:
            local_var, local_mean = torch.var_mean(x, dims, correction=0)  # one fused pass
        else:  # an empty slice contributes nothing
            local_var = local_mean = x.new_zeros(channels)
        # one collective per forward (and one in the backward): every rank's (mean, M2, count)
        stats = _GatherOverRanks.apply(torch.cat([local_mean, local_var * local_count,
                                                  x.new_full((1,), float(local_count))]))
        counts = stats[:, -1:].detach()
        count = counts.sum()
        if local_count <= 1 and float(count) <= 1:
            raise ValueError(f"expected more than 1 value per channel over all ranks when training, got "
                             f"{int(count)} (input {list(input.shape)} on this rank)")
        means = stats[:, :channels]
        mean = (counts * means).sum(0) / count
        # Chan et al.'s pairwise combination: M2 = sum_r M2_r + sum_r n_r (mean_r - mean)^2
        var = (stats[:, channels:2 * channels].sum(0) + (counts * (means - mean).square()).sum(0)) / count
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)
        # y = (x - mean) / sqrt(var + eps) * weight + bias as x * scale + shift: two passes over x
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        shift = -mean * scale + (self.bias if self.affine else 0.0)
        out = torch.addcmul(shift.reshape(shape), x, scale.reshape(shape))
        return out.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        """torch.nn.BatchNorm's rule: EMA with ``momentum`` (None: cumulative average)."""
        assert self.num_batches_tracked is not None and self.running_mean is not None and self.running_var is not None
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        unbiased = var * (count / (count - 1))
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def convert_to_global_bn(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer in ``module`` by a :class:`GlobalBatchNorm` sharing its
    parameters and buffers; in place for children, returns the (possibly new) root."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        new._parameters = module._parameters  # the same Parameter objects
        new._buffers = module._buffers
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = convert_to_global_bn(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


def has_global_bn(module: nn.Module) -> bool:
    return any(isinstance(m, GlobalBatchNorm) for m in module.modules())
