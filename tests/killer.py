"""A callback that SIGKILLs its own process at a given global step (a real mid-epoch crash, for resume tests)."""

from __future__ import annotations

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
