"""The run folder: `last` / `best` lookup (unreadable files skipped, best from the run's record), the version folder of
a checkpoint, and the lock that keeps a second process out."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tcclip.training.runs import LOCK_FILE, STALE_AFTER_S, RunFolder, RunLock, find_checkpoint, run_folder_of
from tcclip.utils.errors import UserError


def save(path: Path, epoch: int, top1: float, best: tuple[int, float] | None, mtime: int) -> Path:
    """A checkpoint of `epoch` saved right after its validation (top-1 `top1`), carrying the run's best record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "best": None if best is None else {"epoch": best[0], "top1": best[1]},
        "last": {"epoch": epoch, "top1": top1},
    }
    torch.save({"state_dict": {"model.w": torch.full((2,), float(epoch))}, "epoch": epoch, "tcclip": record}, path)
    os.utime(path, (mtime, mtime))
    return path


def test_nothing_found_is_none(tmp_path: Path) -> None:
    assert find_checkpoint("last", tmp_path) is None and find_checkpoint("best", tmp_path / "absent") is None


def test_last_skips_unreadable_files_with_a_warning(tmp_path: Path, caplog) -> None:
    ckpts = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    good = save(ckpts / "last.ckpt", 1, 50.0, (1, 50.0), mtime=100)
    cut = tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt"
    cut.parent.mkdir(parents=True)
    cut.write_bytes(good.read_bytes()[:100])  # a save cut short: newer, unreadable
    os.utime(cut, (200, 200))
    empty = cut.with_name("last-v1.ckpt")
    empty.write_bytes(b"")
    os.utime(empty, (300, 300))
    (ckpts / ".last.ckpt.tmp-123").write_bytes(b"partial")  # an in-progress file of a killed writer
    with caplog.at_level(logging.WARNING, logger="tcclip.training.runs"):
        assert find_checkpoint("last", tmp_path) == str(good)
    assert f"{cut}: not a checkpoint" in caplog.text and f"{empty}: not a checkpoint" in caplog.text


def test_last_includes_the_checkpoint_saved_before_a_slurm_requeue(tmp_path: Path, caplog) -> None:
    last = save(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", 1, 50.0, (1, 50.0), 100)
    hpc = save(tmp_path / "hpc_ckpt_1.ckpt", 2, 60.0, (2, 60.0), mtime=200)  # Lightning writes it in the root dir
    assert find_checkpoint("last", tmp_path) == str(hpc)
    cut = tmp_path / "hpc_ckpt_2.ckpt"
    cut.write_bytes(hpc.read_bytes()[:100])  # the signal handler's save cut short
    os.utime(cut, (300, 300))
    with caplog.at_level(logging.WARNING, logger="tcclip.training.runs"):
        assert find_checkpoint("last", tmp_path) == str(hpc)
    assert f"{cut}: not a checkpoint" in caplog.text
    hpc.unlink()
    assert find_checkpoint("last", tmp_path) == str(last)


def test_best_comes_from_the_runs_whole_record(tmp_path: Path) -> None:
    ckpts = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    # Epochs 0..3 validated at 50, 90, 60, 70: the best (epoch 1) was saved before a resume; later best-* files
    # (of a callback that forgot it) must not win.
    best = save(ckpts / "best-epoch001-top1_90.00.ckpt", 1, 90.0, (1, 90.0), mtime=100)
    save(ckpts / "best-epoch003-top1_70.00.ckpt", 3, 70.0, (1, 90.0), mtime=300)
    save(ckpts / "last.ckpt", 3, 70.0, (1, 90.0), mtime=301)
    assert find_checkpoint("best", tmp_path) == str(best)


def test_best_found_in_another_version_folder(tmp_path: Path) -> None:
    old = save(tmp_path / "lightning_logs/version_0/checkpoints/best-epoch000.ckpt", 0, 80.0, (0, 80.0), 100)
    save(tmp_path / "lightning_logs/version_1/checkpoints/last.ckpt", 2, 40.0, (0, 80.0), 200)
    assert find_checkpoint("best", tmp_path) == str(old)


def test_best_whose_checkpoint_is_gone_is_an_error_not_another_model(tmp_path: Path) -> None:
    ckpts = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    save(ckpts / "best-epoch003.ckpt", 3, 70.0, (1, 90.0), mtime=300)
    save(ckpts / "last.ckpt", 3, 70.0, (1, 90.0), mtime=301)
    damaged = ckpts / "best-epoch001.ckpt"
    damaged.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match=r"best epoch is 1 \(val top-1 90\.0000\).*--ckpt_path PATH"):
        find_checkpoint("best", tmp_path)


def test_run_folder_of_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "lightning_logs" / "version_7" / "checkpoints" / "last.ckpt"
    assert run_folder_of(path) == RunFolder(tmp_path / "runs", "lightning_logs", 7)
    assert run_folder_of(path).path == path.parent.parent
    assert run_folder_of(tmp_path / "last.ckpt") is None
    assert run_folder_of(tmp_path / "x" / "checkpoints" / "last.ckpt") is None
    relative = Path("run/lightning_logs/version_0/checkpoints/last.ckpt")  # kept as spelled
    assert run_folder_of(relative) == RunFolder(Path("run"), "lightning_logs", 0)


def test_lock_refuses_a_second_writer(tmp_path: Path) -> None:
    # The "other" run: a live process (our parent) on this host.
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "x"}))
    with pytest.raises(UserError, match=rf"another run is writing to this folder \(pid {os.getppid()}"):
        RunLock(tmp_path).acquire()
    other_host = {"pid": 1, "host": socket.gethostname() + "-elsewhere", "started": "x"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(other_host))
    with pytest.raises(UserError, match="another run"):
        RunLock(tmp_path).acquire()


def test_stale_lock_is_replaced(tmp_path: Path, caplog) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "x"}))
    lock = RunLock(tmp_path)
    with caplog.at_level(logging.WARNING, logger="tcclip.training.runs"):
        lock.acquire()
    assert "stale lock" in caplog.text
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_lock_in_an_unwritable_place(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot create the run folder.*trainer.default_root_dir"):
        RunLock(blocker / "run").acquire()


def test_locks_of_dead_runs_elsewhere_are_replaced(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    # Another host's lock, not refreshed for longer than a live run would leave it: its run is dead.
    owner = {"pid": 1, "host": socket.gethostname() + "-elsewhere", "slurm_job": None, "started": "x"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(owner))
    old = (tmp_path / LOCK_FILE).stat().st_mtime - STALE_AFTER_S - 60
    os.utime(tmp_path / LOCK_FILE, (old, old))
    lock = RunLock(tmp_path)
    lock.acquire()
    lock.release()
    # A requeued SLURM job finds the lock of its own previous incarnation (another node, same job id).
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    (tmp_path / LOCK_FILE).write_text(json.dumps({**owner, "slurm_job": "4242"}))
    lock.acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["slurm_job"] == "4242"
    lock.release()
