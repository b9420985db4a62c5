"""Training callbacks the tests share."""

from __future__ import annotations

from sharpscope.train import Callback


class StopAt(Callback):
    """Ask the trainer to stop (save and return, as Ctrl-C does) once ``step`` steps are done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state) -> None:
        if state.step == self.step:
            state.stop_requested = True
