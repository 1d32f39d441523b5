"""Runs that are stopped, resumed, diverge or collide lose nothing: `tcclip fit` on the tiny synthetic data."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path
from unittest import mock

import lightning as L
import pytest
import torch

from tcclip.cli import commands as cli
from tcclip.cli.lightning import run_lightning_cli
from tcclip.training.module import TCCLIPModule
from tcclip.training.reporting import SetsAccuracy
from tcclip.training.runs import LOCK_FILE, find_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture
def args(tiny_run_args, data_synth: Path, tmp_path: Path):
    """3 batches of 3 videos an epoch, one optimiser step each (global step = 3 x epoch + batch)."""
    return [
        *tiny_run_args(data_synth, tmp_path / "run"),
        "--data.init_args.batch_size=3",
        "--model.optim.total_batch_size=3",
        "--trainer.devices=1",
        "--trainer.enable_progress_bar=false",
    ]


def run(argv: list[str]) -> int:
    with mock.patch.object(sys, "argv", ["tcclip"]):
        return cli.main(argv)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_best_after_a_resume_is_the_best_of_the_whole_run(args, tmp_path: Path, monkeypatch) -> None:
    # Validation top-1 per epoch, scripted so that the best epoch (1) comes before the resume and every later
    # epoch improves on the one before it (what a callback that forgot the first part of the run would keep).
    scripted = {0: 50.0, 1: 90.0, 2: 60.0, 3: 70.0}
    collect = SetsAccuracy.collect

    def scripted_collect(self, module, prefix):
        out, confusions = collect(self, module, prefix)
        if prefix == "val" and module.trainer.state.fn == "fit":
            for result in out.values():
                result["top1"] = scripted[module.current_epoch]
        return out, confusions

    monkeypatch.setattr(SetsAccuracy, "collect", scripted_collect)
    run_dir = tmp_path / "run"
    assert run(["fit", *args, "--trainer.max_epochs=2"]) == 0
    assert run(["fit", *args, "--trainer.max_epochs=4", "--ckpt_path=last"]) == 0
    assert [p.name for p in (run_dir / "lightning_logs").iterdir()] == ["version_0"]

    best = Path(find_checkpoint("best", run_dir))
    stored = load(best)
    assert stored["epoch"] == 1 and stored["tcclip"]["last"] == {"epoch": 1, "top1": 90.0}
    results = json.loads((run_dir / "lightning_logs" / "version_0" / "results.json").read_text())
    assert results["best"] == {"epoch": 1, "top1": 90.0} and results["last"] == {"epoch": 3, "top1": 70.0}
    assert load(run_dir / "lightning_logs/version_0/checkpoints/last.ckpt")["epoch"] == 3


class CtrlC(L.Callback):
    """Ctrl-C in the middle of epoch 1 (Python raises KeyboardInterrupt where the signal lands)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == 1 and batch_idx == 1:
            raise KeyboardInterrupt


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(args, tmp_path: Path) -> None:
    from tcclip.utils.errors import take_interrupt_note

    run_dir = tmp_path / "run"
    with mock.patch.object(sys, "argv", ["tcclip"]):
        built = run_lightning_cli(["--trainer.max_epochs=2", *args], run=False)
    built.trainer.callbacks.append(CtrlC())
    try:
        with pytest.raises(SystemExit) as info:
            built.trainer.fit(built.model, built.datamodule)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores further Ctrl-C after one
    assert info.value.code != 0
    last = run_dir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    note = take_interrupt_note()  # what `tcclip` prints in its one line after Ctrl-C
    assert f"saved in {last}" in note and "run the same command with --ckpt_path last" in note
    assert load(last)["global_step"] == 5  # epoch 0 (3 steps) + the 2 steps of epoch 1 before the interrupt
    assert not list(run_dir.rglob(LOCK_FILE))

    assert run(["fit", *args, "--trainer.max_epochs=2", "--ckpt_path=last"]) == 0
    assert load(last)["global_step"] == 6 and load(last)["epoch"] == 1


def test_a_non_finite_loss_stops_the_run_with_a_checkpoint_from_before_it(args, tmp_path, monkeypatch, capsys):
    training_step = TCCLIPModule.training_step

    def poisoned(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 1:
            batch = {**batch, "video": torch.full_like(batch["video"], float("nan"))}
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(TCCLIPModule, "training_step", poisoned)
    assert run(["fit", *args, "--trainer.max_epochs=3"]) == 2
    err = capsys.readouterr().err
    assert "tcclip fit: error: the training loss became nan at epoch 1, global step 4 (batch 1)" in err
    assert "--ckpt_path last" in err and "Traceback" not in err
    last = tmp_path / "run" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert f"saved in {last}" in err
    saved = load(last)
    assert saved["global_step"] == 4  # before the failing step
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())


def test_a_second_process_on_the_same_run_is_refused_and_nan_weights_are_refused(args, tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    assert run(["fit", *args, "--trainer.max_epochs=1"]) == 0
    version = run_dir / "lightning_logs" / "version_0"
    last = version / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    # Another live process holds the run (a requeued job while the first still runs).
    lock = {"pid": os.getppid(), "host": socket.gethostname(), "started": "now"}
    (version / LOCK_FILE).write_text(json.dumps(lock))
    capsys.readouterr()
    assert run(["fit", *args, "--trainer.max_epochs=2", "--ckpt_path=last"]) == 2
    err = capsys.readouterr().err
    assert f"tcclip fit: error: {version}: another run is writing to this folder (pid {os.getppid()}" in err
    assert last.read_bytes() == before and [p.name for p in version.parent.iterdir()] == ["version_0"]
    (version / LOCK_FILE).unlink()

    # A checkpoint whose weights turned NaN: `tcclip test` refuses it instead of reporting chance accuracy.
    poisoned = load(last)
    name = next(k for k, v in poisoned["state_dict"].items() if v.is_floating_point())
    poisoned["state_dict"][name] = torch.full_like(poisoned["state_dict"][name], float("nan"))
    torch.save(poisoned, tmp_path / "nan.ckpt")
    assert run(["test", *args, f"--ckpt_path={tmp_path / 'nan.ckpt'}"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nan.ckpt'}: " in err and f"{name} (" in err and "NaN" in err and "Traceback" not in err


def test_too_many_broken_videos_stop_the_run_with_a_checkpoint(args, tmp_path, monkeypatch, capsys) -> None:
    from tcclip.data.dataset import VideoDataset
    from tcclip.data.video_reader import VideoDecodeError

    state = {"unplugged": False}  # the disk holding the videos goes away when epoch 1 starts
    load_frames = VideoDataset.load_frames

    def flaky(self, index, rng=None):
        if state["unplugged"]:
            raise VideoDecodeError(self.root / self.path(index), "input/output error")
        return load_frames(self, index, rng)

    def unplug(self) -> None:
        state["unplugged"] = self.current_epoch == 1

    monkeypatch.setattr(VideoDataset, "load_frames", flaky)
    monkeypatch.setattr(TCCLIPModule, "on_train_epoch_start", unplug, raising=False)
    assert run(["fit", *args, "--trainer.max_epochs=3"]) == 2
    err = capsys.readouterr().err
    assert "could not be read" in err and "raise data.init_args.max_broken_fraction" in err
    last = tmp_path / "run" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert f"saved in {last}" in err and "--ckpt_path last" in err and "Traceback" not in err
    saved = load(last)
    assert saved["epoch"] == 1 and saved["global_step"] >= 3  # epoch 0 and whatever of epoch 1 was trained


def test_resume_with_a_relative_run_folder_keeps_one_last_checkpoint(args, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = [*args, "--trainer.default_root_dir=rel_run"]  # as a user types it, relative to the working folder
    assert run(["fit", *relative, "--trainer.max_epochs=1"]) == 0
    assert run(["fit", *relative, "--trainer.max_epochs=2", "--ckpt_path=last"]) == 0
    (last,) = (tmp_path / "rel_run").rglob("last*.ckpt")  # no last-v1.ckpt beside a stale last.ckpt
    assert last.name == "last.ckpt" and (load(last)["epoch"], load(last)["global_step"]) == (1, 6)
