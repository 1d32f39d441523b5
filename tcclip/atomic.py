"""Files that appear whole or not at all.

A file is written under a hidden temporary name in its destination folder, flushed and fsynced, then renamed over
the final name (`os.replace`, atomic on POSIX within one filesystem) and the folder is fsynced so the rename itself
survives a power loss. A kill at any moment leaves either the previous file or the new one under the final name,
never a partial one; a failure (a full disk, a read-only folder) removes the temporary file and raises. Writing to
a temporary folder elsewhere and moving the result would not do: across filesystems a move is a copy plus an
unlink, which a kill can interrupt halfway (see docs/reliability.md).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from tcclip.errors import UserError

TMP_PREFIX = "."
TMP_MARK = ".tmp-"


def temporary_name(path: Path) -> Path:
    """Where `path` is written before its rename: a hidden name in the same folder, unique per process."""
    return path.with_name(f"{TMP_PREFIX}{path.name}{TMP_MARK}{os.getpid()}")


def is_temporary(path: Path) -> bool:
    """True for the in-progress files of `atomic_write` (left behind only by a killed writer)."""
    return path.name.startswith(TMP_PREFIX) and TMP_MARK in path.name


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened, e.g. on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (e.g. network mounts) refuse fsync on a folder; the rename is still atomic
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any], what: str = "file") -> Path:
    """Write `path` atomically: `write(f)` fills a binary file object; returns `path`.

    Raises:
        UserError: the folder cannot be created or written, or the disk is full; nothing is left behind.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _write_error(path, what, err) from err
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:  # a KeyboardInterrupt mid-write must not leave the temporary file either
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _write_error(path, what, err) from err
        raise
    fsync_dir(path.parent)
    return path


def _write_error(path: Path, what: str, err: OSError) -> UserError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        reason, fix = "the disk is full", "Free some space (or write elsewhere) and run the command again."
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason, fix = "the folder is not writable", "Choose a folder you can write to."
    else:
        reason, fix = f"{err.strerror or err}", "Check the path and that its folder can be written."
    return UserError(f"cannot write the {what}: {reason}; nothing was written under this name", path=path, fix=fix)
