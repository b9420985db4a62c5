"""Thin helpers over ``torch.distributed`` (launched with ``torchrun``; gloo on CPU, NCCL on GPU).

Nothing here is home-made communication: it is rank bookkeeping and the few collectives
the analyses need. Every function works unchanged in a single process (world size 1).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import SharpscopeError

__all__ = ["init_from_env", "timeout_from_env", "TIMEOUT_ENV", "DEFAULT_TIMEOUT_S", "finish", "resolve_device",
           "is_distributed", "rank", "world_size", "is_main", "all_reduce_sum", "barrier", "shard",
           "broadcast_object", "naming_stuck_ranks", "StuckRanksError"]


def is_distributed() -> bool:
    """True inside an initialized process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


TIMEOUT_ENV = "SHARPSCOPE_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0


def timeout_from_env() -> timedelta:
    """How long a rank waits for the others, in joining the group and in each collective,
    before it fails with an error naming the operation (and torchrun stops the other ranks):
    ``SHARPSCOPE_DIST_TIMEOUT`` seconds, default 600. Every rank of a sharpscope job does the
    same work between collectives, so a longer wait means a rank is stuck or gone; PyTorch's
    own default (30 minutes for gloo) would leave a stuck job idle that long."""
    from .errors import ConfigError
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or raw.strip() == "":
        return timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return timedelta(seconds=seconds)


def init_from_env(device: str = "cpu") -> bool:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...);
    gloo for CPU, NCCL for CUDA, with the timeout of :func:`timeout_from_env` (checked in
    every process, so a bad value stops ``train --nproc`` before it launches). Returns whether
    this process is part of a group of more than one."""
    timeout = timeout_from_env()
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=timeout)
    return is_distributed()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (a no-op in one process); returns the tensor."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(n: int) -> range:
    """The indices 0..n-1 this rank owns (round robin: rank, rank + world, ...)."""
    return range(rank(), n, world_size())


def finish(ok: bool = True) -> bool:
    """Leave the process group (after a barrier when every rank finished normally); returns
    whether there was one."""
    if dist.is_available() and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()
        return True
    return False


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available); under torchrun on
    GPUs, ``cuda`` means this process's GPU (LOCAL_RANK)."""
    from .errors import ConfigError
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not (name == "cpu" or name == "cuda" or name.startswith("cuda:")):
        raise ConfigError(f"device must be cpu, cuda, cuda:N or auto, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name} requested but CUDA is not available")
    if name == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


class StuckRanksError(SharpscopeError, RuntimeError):
    """A rank waited longer than the group's timeout (:func:`timeout_from_env`) in a
    collective; the message names the rank(s) that did not arrive."""


def _timed_out(err: BaseException) -> bool:
    """Whether ``err`` is a collective's timeout (gloo: 'Timed out waiting ...'; NCCL's
    watchdog: '... Timeout ...')."""
    return isinstance(err, RuntimeError) and re.search(r"[Tt]imed out|[Tt]imeout", str(err)) is not None


def _who_is_stuck(monitor: object, timeout: timedelta) -> str:
    """Ask every rank to pass a monitored barrier on the side group ``monitor`` (its pairs
    survive the main group's timeout, which closes the main group's): rank 0 hears from every
    rank that arrives within ``timeout`` and torch names the others; another rank hears only
    from rank 0, so its failure names rank 0."""
    try:
        dist.monitored_barrier(group=monitor, timeout=timeout, wait_all_ranks=True)  # type: ignore[arg-type]
    except RuntimeError as err:
        text = str(err)
        many = re.search(r"Ranks? ([\d, ]+) failed to pass", text)
        one = re.search(r"from rank (\d+)", text)
        if many:
            return f"rank(s) [{', '.join(many.group(1).replace(' ', '').split(','))}] did not arrive (stuck or gone)"
        if one:
            return f"rank(s) [{one.group(1)}] did not arrive (stuck or gone)"
        return f"the others could not be reached ({text.splitlines()[0][:200] if text else type(err).__name__})"
    return "every rank has arrived since (a slow rank, not a stuck one: raise the timeout)"


@contextmanager
def naming_stuck_ranks() -> Iterator[None]:
    """Inside the block, a collective that times out raises :class:`StuckRanksError` saying
    which rank waited, for how long, and which rank(s) did not arrive. Entering the block is
    a collective (every rank joins a side gloo group for a ``dist.monitored_barrier``); a
    no-op in one process. The naming waits up to the timeout again, for ranks that entered
    the timed-out collective late but are not stuck."""
    if not is_distributed():
        yield
        return
    timeout = timeout_from_env()
    monitor = dist.new_group(backend="gloo", timeout=timeout)
    try:
        yield
    except RuntimeError as err:
        if not _timed_out(err):
            raise
        who = _who_is_stuck(monitor, timeout)
        raise StuckRanksError(f"rank {rank()} waited more than {timeout.total_seconds():g} s ({TIMEOUT_ENV}) for the "
                              f"other ranks in a collective: {who}") from err
