"""Helpers for tests that stop a run or a command from outside.

`default_sigint`: a `preexec_fn` that gives a child process Ctrl-C as a terminal session has it.

A callback for tests that stop a run from outside (SIGTERM, SIGUSR1, `scancel`) at a chosen training step.

`PauseAt(step, folder)`: after training step `step` (once per run folder), writes `<folder>/paused-<pid>` and waits
(up to `wait_s`) until a stop signal has been noted by `tcclip.training.preemption.Preemption`, so the signal lands
between two
known batches. Used through `--trainer.callbacks+=stop_helpers.PauseAt` with `tests/` on PYTHONPATH.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning as L

from tcclip.training.preemption import Preemption


def default_sigint() -> None:
    """`preexec_fn` for a child that a test will Ctrl-C: SIGINT back to its default disposition.

    A shell starts the background jobs of a script (`cmd &` without job control) with SIGINT ignored, an ignored
    signal stays ignored across exec, and Python then installs no KeyboardInterrupt handler: under such a runner the
    child would shrug off the test's SIGINT and finish its whole job.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class PauseAt(L.Callback):
    """`during="val"`: pause after the first validation batch run at global step `step` instead."""

    def __init__(self, step: int, folder: str, wait_s: float = 120.0, during: str = "train") -> None:
        self.step = step
        self.folder = Path(folder)
        self.wait_s = wait_s
        self.during = during

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self.during == "train":
            self._pause(trainer)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self.during == "val" and not trainer.sanity_checking:
            self._pause(trainer)

    def _pause(self, trainer: L.Trainer) -> None:
        if trainer.global_step != self.step:
            return
        done = Path(trainer.default_root_dir) / f"paused-once-rank{trainer.global_rank}"  # every DDP rank pauses
        if done.exists():  # the resumed run goes on
            return
        done.touch()
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"paused-{os.getpid()}").write_text(str(trainer.default_root_dir))
        guard = next(c for c in trainer.callbacks if isinstance(c, Preemption))
        deadline = time.monotonic() + self.wait_s
        while guard.received is None and time.monotonic() < deadline:
            time.sleep(0.05)
