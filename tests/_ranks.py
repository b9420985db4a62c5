"""Run a function on 2 CPU ranks (gloo) and bring back what rank 0 returned.

``fn`` must be a module-level function (spawned processes import it by name; pytest puts
``tests/`` on ``sys.path`` and spawn passes ``sys.path`` on). Rank 0 saves its result with
``torch.save``; the parent loads it back.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sharpscope.distributed import finish


def _worker(rank: int, world: int, init_file: str, fn: Callable[..., Any], args: tuple, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = fn(*args)
        if rank == 0:
            torch.save(result, out_file)
        Path(f"{out_file}.rank{rank}.done").touch()  # this rank's work is complete
    except BaseException:
        finish(ok=False)  # leave without the barrier: the other rank may never reach it
        raise
    finish()  # barrier, then leave: no rank tears gloo down under another


def run_on_ranks(tmp_path: Path, fn: Callable[..., Any], *args: Any, world: int = 2) -> Any:
    """``fn(*args)`` on ``world`` ranks; returns rank 0's result."""
    out_file = str(tmp_path / f"{fn.__name__}.result.pt")
    try:
        mp.spawn(_worker, args=(world, str(tmp_path / f"{fn.__name__}.init"), fn, args, out_file), nprocs=world,
                 join=True)
    except mp.ProcessExitedException as err:
        # gloo occasionally aborts a process while tearing the group down at exit ("terminate
        # called without an active exception"). Only that is tolerated: every rank must have
        # finished its work (their markers exist) and the death must be that SIGABRT.
        finished = all(Path(f"{out_file}.rank{r}.done").exists() for r in range(world))
        if not (finished and err.signal_name == "SIGABRT"):
            raise
        warnings.warn(f"a rank aborted while leaving the gloo group after finishing: {err}")
    return torch.load(out_file, weights_only=False)  # our own test file, written a moment ago
