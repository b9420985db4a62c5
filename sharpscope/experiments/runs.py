"""Run folders of experiments: which training configuration a folder already holds, and the
refusal to reuse a folder that holds another one (never overwritten)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..checkpoint import read_checkpoint
from ..errors import ConfigError
from ..train import TrainConfig

__all__ = ["stored_config", "refuse_other_settings"]


def stored_config(run_dir: Path) -> dict[str, Any] | None:
    """The training configuration in ``run_dir`` (checkpoint or ``diverged.json``), through
    TrainConfig so that newer options take their defaults; None for an empty folder."""
    ckpt = run_dir / "checkpoint.pt"
    if ckpt.exists():
        return TrainConfig.from_dict(read_checkpoint(ckpt).get("config") or {}).to_dict()
    marker = run_dir / "diverged.json"
    if marker.exists():
        return TrainConfig.from_dict(json.loads(marker.read_text())["config"]).to_dict()
    return None


# Tracking leaves the weights and the random stream alone: a run tracked otherwise is the same run.
_MEASURED_ONLY = {"track", "track_every", "track_samples"}


def refuse_other_settings(run_dir: Path, wanted: Mapping[str, Any]) -> None:
    """ConfigError naming the options (tracking aside) in which the run in ``run_dir`` differs
    from ``wanted`` (a ``TrainConfig.to_dict()``)."""
    stored = stored_config(run_dir)
    if stored is None:
        return
    diff = sorted(k for k in wanted if k not in _MEASURED_ONLY and stored.get(k) != wanted[k])
    if diff:
        raise ConfigError(f"{run_dir} holds a run with other settings ({', '.join(diff)}); "
                          "use another --out or remove that folder")
