"""A fit stopped by SIGTERM in the middle of an epoch saves, exits non-zero, and resumes with exactly the batches
(videos, order, augmentations) and weights of the uninterrupted run: `tcclip fit` as a child process, signalled
from here between two known training steps (tests/stop_helpers.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tcclip.training.callbacks import read_batch_log
from tcclip.training.preemption import STOP_KEY

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent


def fit_command(tiny_run_args, data: Path, run: Path, pause_at: int | None, during: str = "train") -> list[str]:
    """2 epochs of 4 batches of 2 videos, mixup on (the step draws from the RNG too), a BatchLog."""
    command = [sys.executable, "-m", "tcclip.cli", "fit", *tiny_run_args(data, run)]
    command += ["--data.init_args.batch_size=2", "--model.optim.total_batch_size=2", "--model.loss.mixup=true"]
    command += ["--trainer.max_epochs=2", "--trainer.devices=1", "--trainer.deterministic=true"]
    command += ["--trainer.enable_progress_bar=false", "--trainer.callbacks+=tcclip.training.callbacks.BatchLog"]
    if pause_at is not None:
        command += ["--trainer.callbacks+=stop_helpers.PauseAt", f"--trainer.callbacks.init_args.step={pause_at}"]
        command += [
            f"--trainer.callbacks.init_args.folder={run / 'pause'}",
            f"--trainer.callbacks.init_args.during={during}",
        ]
    return command


def child_env() -> dict[str, str]:
    # One thread: the two runs then add up their floats in the same order, and compare bit for bit.
    return {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}


def weights(run: Path) -> dict[str, torch.Tensor]:
    (last,) = run.rglob("last.ckpt")
    return torch.load(last, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.parametrize(
    ("pause_at", "epoch", "during"),
    [
        (3, 0, "train"),  # before the first epoch-end save
        (5, 1, "train"),  # after it
        (4, 0, "val"),  # in the middle of epoch 0's validation: the resumed run validates the whole set again
    ],
)
def test_sigterm_mid_epoch_saves_exits_143_and_resumes_exactly(
    pause_at: int, epoch: int, during: str, data_synth: Path, tmp_path: Path, tiny_run_args
):
    full = tmp_path / "full"
    proc = subprocess.run(fit_command(tiny_run_args, data_synth, full, None), env=child_env(), capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]

    stopped = tmp_path / "stopped"
    command = fit_command(tiny_run_args, data_synth, stopped, pause_at=pause_at, during=during)
    child = subprocess.Popen(command, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not list((stopped / "pause").glob("paused-*")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    out = child.communicate(timeout=120)[0]
    assert child.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert f"SIGTERM at epoch {epoch}, global step {pause_at}: saved the run in" in out
    (last,) = stopped.rglob("last.ckpt")
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved[STOP_KEY] == {"signal": "SIGTERM", "global_step": pause_at} and saved["global_step"] == pause_at

    resume = [*command, "--ckpt_path", "last"]
    proc = subprocess.run(resume, env=child_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in (stopped / "lightning_logs").iterdir()] == ["version_0"]  # one folder holds the run
    assert [p.name for p in stopped.rglob("last*.ckpt")] == ["last.ckpt"]  # the final save replaced the stop's

    uninterrupted = read_batch_log(full / "lightning_logs" / "version_0" / "batches.tsv")
    interrupted = read_batch_log(stopped / "lightning_logs" / "version_0" / "batches.tsv")
    assert sorted(uninterrupted) == list(range(8))
    assert interrupted == uninterrupted  # same videos, order and augmented pixels at every step
    expected, got = weights(full), weights(stopped)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    # Every epoch validated: the run's record (best and last epoch, their top-1) and checkpoint names agree.
    (full_last,), (stopped_last,) = full.rglob("last.ckpt"), stopped.rglob("last.ckpt")
    record = torch.load(full_last, map_location="cpu", weights_only=True)["tcclip"]
    assert torch.load(stopped_last, map_location="cpu", weights_only=True)["tcclip"] == record
    assert sorted(p.name for p in stopped.rglob("*.ckpt")) == sorted(p.name for p in full.rglob("*.ckpt"))


def test_sigterm_under_ddp_stops_every_rank_at_one_batch_and_resumes_exactly(
    data_synth: Path, tmp_path: Path, tiny_run_args
):
    """Two CPU processes (local DDP): SIGTERM to the launching process reaches the other rank, both agree on the
    batch, save together and exit 143; the resumed run trains each rank's batches and ends with the weights of the
    uninterrupted one."""

    def command(run: Path, pause_at: int | None) -> list[str]:
        words = fit_command(tiny_run_args, data_synth, run, pause_at)
        words += ["--data.init_args.batch_size=1", "--model.optim.total_batch_size=2", "--model.loss.mixup=false"]
        return [*words, "--trainer.devices=2", "--trainer.strategy=ddp"]

    full, stopped = tmp_path / "full", tmp_path / "stopped"
    proc = subprocess.run(command(full, None), env=child_env(), capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    child = subprocess.Popen(command(stopped, 3), env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        # Both ranks paused (one rank alone would hold the other in a collective, with its signal handler unrun).
        while len(list((stopped / "pause").glob("paused-*"))) < 2 and child.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        child.send_signal(signal.SIGTERM)
        out = child.communicate(timeout=120)[0]
    finally:
        if child.poll() is None:  # a hang is a failure, and leaves no process behind
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert out.count("SIGTERM at epoch 0, global step 3: saved the run in") == 2, out[-3000:]  # both ranks, one batch
    proc = subprocess.run([*command(stopped, 3), "--ckpt_path", "last"], env=child_env(), capture_output=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    for rank in (0, 1):
        name = f"batches_rank{rank}.tsv"
        expected = read_batch_log(full / "lightning_logs" / "version_0" / name)
        assert read_batch_log(stopped / "lightning_logs" / "version_0" / name) == expected and len(expected) >= 5
    expected, got = weights(full), weights(stopped)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
