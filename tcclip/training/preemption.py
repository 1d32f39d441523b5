"""Stopping on a signal without losing work: `scancel`, SLURM preemption and the time limit.

SLURM ends a job with SIGTERM (`scancel`, and preemption unless the cluster is set up to send the job's own signal
first), then SIGKILL after `KillWait` (30 s by default); the job script asks for SIGUSR1 `--grace` seconds before the
time limit. Lightning's SLURM support saves its checkpoint inside the SIGUSR1 handler (in the middle of a training
step: the data loader may then be a batch ahead of the weights) and only logs "Bypassing SIGTERM", after which the
fit ends with exit status 0 as if it had finished.

`Preemption` does this instead: the handler only notes the signal; at the next batch boundary the fit saves its
full state (weights, optimizer, loops, data-loader position, RNG states) as `last.ckpt` in its version folder, where
`--ckpt_path last` resumes from, and stops with exit status 128 + signal number (143 for SIGTERM), so that a job
script, `tcclip.experiments.cells` and SLURM see a stopped run, not a finished one. On the requeue signal under SLURM
it also
asks SLURM to requeue the task (`scontrol requeue`), which then starts it again from that checkpoint.

A checkpoint saved this way carries `tcclip.training.runs.STOP_KEY` ({"signal": name, "global_step": n}), so that
nothing
mistakes it for the checkpoint of a finished fit (`tcclip.experiments.cells` writes `fit.done` only for a finished one).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

from tcclip.training.runs import STOP_KEY
from tcclip.utils.finite import nonfinite_tensors

log = logging.getLogger(__name__)

REQUEUE_SIGNAL = signal.SIGUSR1
"""What the job script asks SLURM to send `--grace` seconds before the time limit (`#SBATCH --signal`)."""


class Stopped(SystemExit):
    """The run stopped on a signal after saving what it could; the exit status is 128 + the signal number."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.message = message

    def __str__(self) -> str:
        return self.message


def slurm_task() -> str | None:
    """`JOBID_TASK` of this SLURM array task (or the job id), None outside SLURM."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


class Preemption(L.Callback):
    """Save and stop at the next batch boundary after SIGTERM (or, under SLURM, the requeue signal); see the module
    docstring. Under DDP the ranks agree at every training batch end (one small all-reduce), so they save together.

    Args:
        requeue: under SLURM, requeue the task after the requeue signal (off: save and stop only).
    """

    def __init__(self, requeue: bool = True) -> None:
        self.requeue = requeue
        self.received: int | None = None
        self._original: dict[int, Any] = {}  # the handlers before setup, put back at teardown
        self._chain: dict[int, Any] = {}  # a handler of the user's that was there before: still called
        self._launcher: Any = None
        self._stopping = False

    # -- handlers ----------------------------------------------------------------------------------------------------
    def _handler(self, signum: int, frame: Any) -> None:
        # Only note it: saving here would write a half-finished step.
        if self.received is None or signum == signal.SIGTERM:
            self.received = signum
        launcher = self._launcher
        if signum == signal.SIGTERM and launcher is not None:
            # Local DDP: the other ranks are this process's children and must stop at the same batch.
            try:
                launcher.kill(signum)
            except Exception:  # noqa: BLE001 - a child that is gone already
                pass
        chained = self._chain.get(signum)
        if callable(chained):
            chained(signum, frame)

    def _signums(self) -> list[int]:
        return [signal.SIGTERM] + ([REQUEUE_SIGNAL] if slurm_task() is not None else [])

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self._signums():
            if signum not in self._original:
                current = signal.getsignal(signum)
                self._original[signum] = current
                self._chain[signum] = current if callable(current) else None
            signal.signal(signum, self._handler)

    def _restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, original in self._original.items():
            signal.signal(signum, original if original is not None else signal.SIG_DFL)
        self._original, self._chain = {}, {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.received = None
        self._launcher = trainer.strategy.launcher
        self._install()

    def _take_over(self) -> None:
        # Lightning installs its own SIGTERM handler after `setup`: it ends a fit with exit status 0 and, under DDP,
        # broadcasts from inside the handler on rank 0 only, which deadlocks the ranks' next collective. Ours alone.
        if self._original:
            self._install()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_over()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_over()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_over()

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_over()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    # -- the decision, at batch boundaries ---------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        received = self.received
        if trainer.world_size > 1:
            # Training batches are the same in number on every rank, so this collective cannot hang.
            stop = trainer.strategy.reduce_boolean_decision(received is not None, all=False)
            if stop and received is None:
                received = signal.SIGTERM
        if received is not None:
            self._stop(trainer, received)

    def _on_eval_batch_end(self, trainer: L.Trainer) -> None:
        # Evaluation batches may differ in number between ranks (unpadded sharding): no collective here; under DDP
        # Lightning's own SIGTERM check stops the loop.
        if self.received is not None and trainer.world_size == 1:
            self._stop(trainer, self.received)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._on_eval_batch_end(trainer)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._on_eval_batch_end(trainer)

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._on_eval_batch_end(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # A signal that arrived between two of the hooks above reaches here as Lightning's SIGTERMException, raised at
        # the start of the next training batch: the state is whole, so save it then.
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException) and not self._stopping and self._fitting(trainer):
            self._save(trainer, pl_module, self.received or signal.SIGTERM)
        self._restore()

    # -- saving ------------------------------------------------------------------------------------------------------
    @staticmethod
    def _fitting(trainer: L.Trainer) -> bool:
        return trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if not self._stopping:
            return
        name = signal.Signals(self.received or signal.SIGTERM).name
        checkpoint[STOP_KEY] = {"signal": name, "global_step": trainer.global_step}
        if trainer.validating:
            _restart_validation(checkpoint)

    def _save(self, trainer: L.Trainer, pl_module: L.LightningModule, signum: int) -> str | None:
        from tcclip.training.callbacks import RunGuard

        self._stopping = True
        path = RunGuard.last_path(trainer)
        if path is None:
            return None
        if nonfinite_tensors(pl_module.state_dict()):  # keep the previous good checkpoint as the resume point
            log.warning("not saving on %s: the weights are not finite", signal.Signals(signum).name)
            return None
        RunGuard.save_last(trainer, path)  # collective: every rank is here (see on_train_batch_end)
        return str(path)

    def _stop(self, trainer: L.Trainer, signum: int) -> None:
        pl_module = trainer.lightning_module
        name = signal.Signals(signum).name
        where = f"epoch {trainer.current_epoch}, global step {trainer.global_step}"
        saved = self._save(trainer, pl_module, signum) if self._fitting(trainer) else None
        note = f"saved the run in {saved}" if saved else "nothing to save outside training"
        requeued = ""
        task = slurm_task()
        if signum == REQUEUE_SIGNAL and self.requeue and task is not None and saved and trainer.is_global_zero:
            proc = subprocess.run(["scontrol", "requeue", task], capture_output=True, text=True)
            if proc.returncode == 0:
                requeued = f"; SLURM task {task} requeued, it resumes from there"
            else:
                requeued = f"; `scontrol requeue {task}` failed: {proc.stderr.strip()}"
        message = f"{name} at {where}: {note}{requeued}; exiting with status {128 + signum}"
        log.warning("tcclip: %s", message)
        raise Stopped(signum, message)


def _restart_validation(checkpoint: dict) -> None:
    """Make a save from the middle of a validation run resume that validation from its first batch.

    Lightning resumes "mid evaluation" only from a save made inside a batch, and then runs the remaining number of
    batches from the start of the (not resumable) loader, with metrics that start empty: a validation top-1 over part
    of the set, picked as the epoch's result. From a save between batches it skips the rest of the validation
    instead, and the epoch has no result. So the save says: validation started, no batch done; the resumed run
    validates the whole set.
    """
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    key = "epoch_loop.val_loop.batch_progress"
    if key in loop:
        counts = {"ready": 1, "started": 1, "processed": 0, "completed": 0}
        loop[key] = {**loop[key], "total": dict(counts), "current": dict(counts), "is_last_batch": False}
