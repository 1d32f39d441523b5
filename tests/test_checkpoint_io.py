"""Checkpoint writes are atomic (a kill, an exception or a full disk never leaves a partial file under a checkpoint
name, and the previous file survives) and finite-only; reads are safe and refuse non-finite weights."""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from tcclip.training.checkpoint_io import AtomicCheckpointIO
from tcclip.training.runs import find_checkpoint
from tcclip.utils.errors import UserError
from tcclip.utils.finite import NonFiniteError
from tcclip.utils.outputs import atomic_write, is_temporary, staged_files

REPO = Path(__file__).resolve().parents[1]


def checkpoint(value: float, size: int = 1000) -> dict:
    return {"state_dict": {"model.w": torch.full((size,), value)}, "epoch": 0, "tcclip": {"best": None, "last": None}}


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_save_writes_a_loadable_file_and_nothing_else(tmp_path: Path) -> None:
    io_ = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io_.save_checkpoint(checkpoint(1.0), path)
    assert names(path.parent) == ["last.ckpt"]
    assert torch.equal(io_.load_checkpoint(path)["state_dict"]["model.w"], torch.ones(1000))


def test_an_exception_mid_write_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    io_ = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io_.save_checkpoint(checkpoint(1.0), path)
    before = path.read_bytes()
    real_save = torch.save

    def half_then_fail(obj, f):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        io_.save_checkpoint(checkpoint(2.0), path)
    assert path.read_bytes() == before and names(tmp_path) == ["last.ckpt"]


def test_a_full_disk_leaves_no_partial_best_checkpoint(tmp_path: Path, monkeypatch) -> None:
    real_save = torch.save

    def disk_full_after_a_while(obj, f):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[:4096])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full_after_a_while)
    best = tmp_path / "best-epoch003-top1_75.00.ckpt"
    with pytest.raises(UserError, match="cannot write the checkpoint: the disk is full") as info:
        AtomicCheckpointIO().save_checkpoint(checkpoint(1.0), best)
    assert str(best) in info.value.format()
    assert names(tmp_path) == []


def test_non_finite_weights_are_never_saved_nor_loaded(tmp_path: Path) -> None:
    io_ = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io_.save_checkpoint(checkpoint(1.0), path)
    before = path.read_bytes()
    with pytest.raises(NonFiniteError, match=r"model\.w \(1000 NaN of 1000 values\).*previous one .* is kept"):
        io_.save_checkpoint(checkpoint(float("nan")), path)
    assert path.read_bytes() == before
    torch.save(checkpoint(float("inf")), tmp_path / "inf.ckpt")
    with pytest.raises(NonFiniteError, match=r"inf\.ckpt: .*model\.w \(1000 Inf of 1000 values\)"):
        io_.load_checkpoint(tmp_path / "inf.ckpt")


def test_atomic_write_names_an_unwritable_place(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write the report"):
        atomic_write(blocker / "sub" / "out.json", lambda f: f.write(b"{}"), what="report")


def test_several_files_are_made_durable_before_and_after_their_renames(tmp_path: Path, monkeypatch) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    finals = [tmp_path / "a" / "train.txt", tmp_path / "a" / "val.txt", tmp_path / "b" / "test.txt"]
    with staged_files() as stage:
        temps = [stage(final) for final in finals]
        for temp, final in zip(temps, finals, strict=True):
            temp.write_text(final.name)
    monkeypatch.undo()
    assert [p.read_text() for p in finals] == ["train.txt", "val.txt", "test.txt"]
    synced_files = [("fsync", str(temp)) for temp in temps]
    renames = [("replace", str(final)) for final in finals]
    folders = [("fsync", str(tmp_path / "a")), ("fsync", str(tmp_path / "b"))]
    assert events == synced_files + renames + folders  # every file on disk before any name points at it
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "test.txt", "train.txt", "val.txt"]


SLOW_WRITER = textwrap.dedent(
    """
    import io, sys, time
    import torch
    from tcclip.training.checkpoint_io import AtomicCheckpointIO

    real_save = torch.save

    def slow_save(obj, f):  # a large checkpoint on a slow disk: the bytes arrive over seconds
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        for start in range(0, len(data), 4096):
            f.write(data[start : start + 4096])
            f.flush()
            if start == 0:
                print("writing", flush=True)
            time.sleep(0.05)

    torch.save = slow_save
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"model.w": torch.full((100000,), 2.0)}}, sys.argv[1])
    print("done", flush=True)
    """
)


def test_kill_9_during_a_save_keeps_the_previous_last_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "version_0" / "checkpoints"
    path = folder / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(checkpoint(1.0), path)
    before = path.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(0.3)  # some more chunks, far from the end (100 chunks of 50 ms)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == before  # the previous checkpoint, whole
    leftovers = [p for p in folder.iterdir() if p.name != "last.ckpt"]
    assert leftovers and all(is_temporary(p) for p in leftovers)  # only the hidden in-progress file
    # The lookup ignores the leftover and finds the intact checkpoint.
    assert find_checkpoint("last", tmp_path) == str(path)
