"""A run stopped after its first epoch and resumed from its last checkpoint ends as the uninterrupted run does."""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import lightning as L
import pytest
import torch

from tcclip.cli.lightning import run_lightning_cli
from tcclip.training.reporting import BestLast, find_callback

pytestmark = pytest.mark.slow


class StopAfterEpochs(L.Callback):
    """Ask the trainer to stop at the end of an epoch, as a preempted job would (the last checkpoint is written)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def fit(
    tiny_run_args, data_root: Path, run_dir: Path, ckpt_path: str | None = None, stop_after: int | None = None
) -> L.Trainer:
    """`tcclip fit` on the tiny setting, built by the CLI (defaults.yaml included) and run here to add a callback."""
    args = [
        *tiny_run_args(data_root, run_dir),
        "--data.init_args.batch_size=3",
        "--model.optim.total_batch_size=6",
        "--model.loss.mixup=true",  # exercises the RNG of the training step too
        "--trainer.max_epochs=3",
        "--trainer.devices=1",
        "--trainer.deterministic=true",
        "--trainer.precision=32-true",
    ]
    with mock.patch.object(sys, "argv", ["tcclip"]):
        cli = run_lightning_cli(args, run=False)
    if stop_after is not None:
        cli.trainer.callbacks.append(StopAfterEpochs(stop_after))
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=ckpt_path)
    return cli.trainer


def test_resumed_run_ends_with_the_same_weights(data_synth: Path, tmp_path: Path, tiny_run_args) -> None:
    full = fit(tiny_run_args, data_synth, tmp_path / "full")
    stopped = fit(tiny_run_args, data_synth, tmp_path / "stopped", stop_after=1)
    assert stopped.current_epoch == 1 and stopped.global_step == 2
    last = next((tmp_path / "stopped").rglob("last.ckpt"))
    resumed = fit(tiny_run_args, data_synth, tmp_path / "resumed", ckpt_path=str(last))
    assert resumed.global_step == full.global_step == 6

    expected, got = full.lightning_module.state_dict(), resumed.lightning_module.state_dict()
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert find_callback(full, BestLast).record() == find_callback(resumed, BestLast).record()
