"""Files and folders written by `tcclip.utils.outputs` get the mode any new file gets (`0666 & ~umask`, folders
`0777 & ~umask`), whatever made them private on the way (mkstemp, mkdtemp, a library writing its own file)."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from tcclip.utils.outputs import atomic_write, atomic_write_texts, current_umask, staged_files, staged_folder


@pytest.fixture(params=[0o022, 0o002, 0o077], ids=["umask022", "umask002", "umask077"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_privately(path: Path, text: str) -> None:
    """What safetensors does: a private temporary file renamed over the destination."""
    fd, name = tempfile.mkstemp(dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(name, path)


def test_current_umask_is_the_one_set(umask):
    assert current_umask() == umask


def test_single_files(tmp_path, umask):
    atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
    atomic_write_texts({tmp_path / "b.txt": "b", tmp_path / "sub" / "c.txt": "c"})
    for name in ("a.bin", "b.txt", "sub/c.txt"):
        assert mode(tmp_path / name) == 0o666 & ~umask, name
    assert mode(tmp_path / "sub") == 0o777 & ~umask


def test_staged_files_written_privately(tmp_path, umask):
    with staged_files() as stage:
        write_privately(stage(tmp_path / "weights.bin"), "w")
    assert mode(tmp_path / "weights.bin") == 0o666 & ~umask


def test_staged_folder(tmp_path, umask):
    out = tmp_path / "out"
    with staged_folder(out, "--out", frozenset({"a.txt", "private.bin", "run.sh", "sub"})) as folder:
        (folder / "a.txt").write_text("a")
        write_privately(folder / "private.bin", "p")
        (folder / "run.sh").write_text("#!/bin/sh\n")
        (folder / "run.sh").chmod(0o755)
        (folder / "sub").mkdir()
        write_privately(folder / "sub" / "deep.bin", "d")
    assert mode(out) == 0o777 & ~umask and mode(out / "sub") == 0o777 & ~umask
    for name in ("a.txt", "private.bin", "sub/deep.bin"):
        assert mode(out / name) == 0o666 & ~umask, name
    assert mode(out / "run.sh") == 0o777 & ~umask  # an executable stays executable
