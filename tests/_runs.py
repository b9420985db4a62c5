"""A finished run folder to analyse in a test: a tiny MLP (one hidden layer of 8) trained for
one epoch on 64 synthetic examples, the options any test needs changed by keyword."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny_run(folder: Path, **options: Any) -> Path:
    """Train the tiny run into ``folder`` (SGD unless ``optimizer=`` says otherwise); returns ``folder``."""
    from sharpscope.train import TrainConfig, train

    config = dict(optimizer="sgd", model="mlp", model_kwargs={"hidden": [8]}, data="synthetic", n_train=64, epochs=1,
                  batch_size=32)
    train(TrainConfig(**{**config, **options}), folder)
    return folder
