"""Run a function on 2 CPU ranks (gloo) and bring back what rank 0 returned; run a command
that launches ranks (torchrun) with a deadline.

``fn`` must be a module-level function (spawned processes import it by name; pytest puts
``tests/`` on ``sys.path`` and spawn passes ``sys.path`` on). Rank 0 saves its result with
``torch.save``; the parent loads it back.

Nothing here can hang (issue 23.10): every call gets a folder of its own (a FileStore init
file must be new for each group: PyTorch removes it when the last rank leaves cleanly, but a
rank that dies while leaving, which run_on_ranks tolerates, leaves it behind, and the next
group on the same file reads the dead group's addresses and counters -- two calls in one test
used to share one), the process group has a timeout (a rank waiting longer for the others in
any collective raises), and the parent waits until a deadline, then kills the ranks and
raises naming the ones still running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sharpscope.distributed import finish

# Seconds a rank waits in one collective (or to join) before it raises, and seconds the parent
# waits for all ranks. The tests' collectives follow each other within a second or two; the
# deadline leaves room for training runs on a loaded 2-core machine.
COLLECTIVE_TIMEOUT_S = 60.0
DEADLINE_S = 300.0


def _worker(rank: int, world: int, init_file: str, fn: Callable[..., Any], args: tuple, out_file: str,
            timeout_s: float, backend: str = "gloo") -> None:
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    try:
        result = fn(*args)
        if rank == 0:
            torch.save(result, out_file)
        Path(f"{out_file}.rank{rank}.done").touch()  # this rank's work is complete
    except BaseException:
        finish(ok=False)  # leave without the barrier: the other rank may never reach it
        raise
    finish()  # barrier, then leave: no rank tears gloo down under another


def run_on_ranks(tmp_path: Path, fn: Callable[..., Any], *args: Any, world: int = 2,
                 timeout_s: float = COLLECTIVE_TIMEOUT_S, deadline_s: float = DEADLINE_S, backend: str = "gloo") -> Any:
    """``fn(*args)`` on ``world`` ranks (``backend`` "nccl": rank r on GPU r); returns rank 0's
    result. A rank that waits more than ``timeout_s`` in a collective raises (and the others are
    stopped); after ``deadline_s`` the ranks still running are killed and TimeoutError names them."""
    folder = Path(tempfile.mkdtemp(prefix=f"{fn.__name__}.", dir=tmp_path))  # new init file, new markers
    out_file = str(folder / "result.pt")
    context = mp.start_processes(_worker, args=(world, str(folder / "init"), fn, args, out_file, timeout_s, backend),
                                 nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + deadline_s
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                running = [r for r, p in enumerate(context.processes) if p.is_alive()]
                done = [r for r in range(world) if Path(f"{out_file}.rank{r}.done").exists()]
                for p in context.processes:
                    if p.is_alive():
                        p.kill()
                for p in context.processes:
                    p.join(5)
                raise TimeoutError(f"{fn.__name__} on {world} ranks: rank(s) {running} still running after "
                                   f"{deadline_s:g} s (finished their work: {done or 'none'}); killed")
    except mp.ProcessExitedException as err:
        # gloo occasionally aborts a process while tearing the group down at exit ("terminate
        # called without an active exception"). Only that is tolerated: every rank must have
        # finished its work (their markers exist) and the death must be that SIGABRT.
        finished = all(Path(f"{out_file}.rank{r}.done").exists() for r in range(world))
        if not (finished and err.signal_name == "SIGABRT"):
            raise
        warnings.warn(f"a rank aborted while leaving the gloo group after finishing: {err}")
    return torch.load(out_file, weights_only=False)  # our own test file, written a moment ago


def run_ranks_command(args: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 300,
                      collective_timeout_s: float = COLLECTIVE_TIMEOUT_S, **kw: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(args)`` for a command that launches ranks (torchrun, ``train --nproc``):
    its ranks get ``SHARPSCOPE_DIST_TIMEOUT`` (a stuck collective raises), and on ``timeout``
    the whole process group is killed (``subprocess.run`` kills only the launcher, leaving its
    ranks behind) and TimeoutError names the command."""
    env = {**(os.environ if env is None else env), "SHARPSCOPE_DIST_TIMEOUT": str(collective_timeout_s)}
    proc = subprocess.Popen(args, env=env, start_new_session=True, stdout=kw.pop("stdout", subprocess.PIPE),
                            stderr=kw.pop("stderr", subprocess.PIPE), text=kw.pop("text", True), **kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise TimeoutError(f"{' '.join(map(str, args))} still running after {timeout:g} s; killed its process "
                           f"group. Last stderr:\n{(err or '')[-2000:]}") from None
    return subprocess.CompletedProcess(args, proc.returncode, out, err)
