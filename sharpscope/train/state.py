"""What a run keeps across a restart: the RNG state, the metrics files; Ctrl-C as a stop request."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write_bytes
from .callbacks import TrainState


@contextmanager
def sigint_requests_stop(state: TrainState) -> Iterator[None]:
    """First Ctrl-C asks the loop to save and stop at the next step boundary; a second one aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if state.stop_requested:
            raise KeyboardInterrupt
        state.stop_requested = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global torch RNG state (and every CUDA device's on ``cuda``), for a checkpoint."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any] | None, device: torch.device) -> None:
    """Restore an :func:`rng_state` (nothing when ``state`` is empty)."""
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])


def write_metrics_file(path: Path, metrics: Sequence[dict[str, Any]]) -> None:
    """Write ``metrics`` as JSON lines to ``path`` atomically."""
    text = "".join(json.dumps(m) + "\n" for m in metrics).encode()
    atomic_write_bytes(path, lambda fh: fh.write(text))


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to ``path`` and fsync it."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())

