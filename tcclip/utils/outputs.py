"""Output files that appear whole or not at all, and output folders checked before any work is done.

Every file is first written under a hidden temporary name in its destination folder (`.<name>.tmp-<pid>-<random>`),
then flushed to disk (`fsync`) and renamed over its final name (`os.replace`, atomic on POSIX within one file
system), and the folder is fsynced so the rename itself survives a power loss. A command writing several files
(split lists, pictures, result tables) renames them only once every one is complete. A failure or a kill at any
moment leaves the previous files (or none) under the final names, never a truncated file with a valid-looking name;
a failure also removes the temporary files. The leading dot keeps globs such as ``*.txt`` from picking up a
temporary file that a killed writer left behind. Writing to a temporary folder elsewhere and moving the result
would not do: across file systems a move is a copy plus an unlink, which a kill can interrupt halfway (see
docs/reliability.md).

Every file and folder written here gets the mode any new file gets (`0666 & ~umask`, folders `0777 & ~umask`), read
when it is written: the temporary names come from `mkstemp` / `mkdtemp`, which make them private (0600 / 0700), and
some libraries write privately too (safetensors), but an output on a shared cluster must be readable by whoever the
umask lets read it.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from tcclip.utils.errors import UserError

__all__ = [
    "atomic_write",
    "atomic_write_texts",
    "check_output_folder",
    "check_writable_folder",
    "current_umask",
    "fsync_dir",
    "give_usual_mode",
    "is_temporary",
    "staged_files",
    "staged_folder",
]

TMP_PREFIX = "."
TMP_MARK = ".tmp-"


def current_umask() -> int:
    """The process's umask now (it may change while the process runs).

    Read from /proc where Linux has it: setting the umask to read it back (the only portable way) would, for an
    instant, let another thread create files with no umask at all.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def give_usual_mode(path: str | os.PathLike) -> None:
    """Give a file (or a folder) the mode a new one gets from open() (mkdir): `0666 & ~umask` (`0777 & ~umask`),
    keeping a file's execute bits where the umask allows them."""
    umask = current_umask()
    mode = os.stat(path).st_mode
    if os.path.isdir(path):
        os.chmod(path, 0o777 & ~umask)
    else:
        os.chmod(path, (0o666 | (mode & 0o111)) & ~umask)


def is_temporary(path: Path) -> bool:
    """True for the in-progress files of `staged_files` (left behind only by a killed writer)."""
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


def _fsync_file(path: Path) -> None:
    # fsync flushes the file's data whichever descriptor asks, so the writer (savefig, write_text) need not.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable_folder(folder: str | os.PathLike, option: str) -> Path:
    """Create ``folder`` if needed and make sure a file can be written in it.

    Args:
        folder: the output folder.
        option: how the user named it (``--out``), for the message.

    Raises:
        UserError: the folder cannot be created or written to (a file is in the way, no permission, read-only).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(
            f"{option} {folder}: is a file, not a folder", fix=f"Give {option} a folder (it is created if missing)."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unwritable(option, folder, e) from None
    _probe_writable(folder, option, folder)
    return folder


def _write_error(path: Path, what: str, err: OSError) -> UserError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        reason, fix = "the disk is full", "Free some space (or write elsewhere) and run the command again."
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason, fix = "the folder is not writable", "Choose a folder you can write to."
    else:
        reason, fix = f"{err.strerror or err}", "Check the path and that its folder can be written."
    return UserError(f"cannot write the {what}: {reason}; nothing was written under this name", path=path, fix=fix)


class _Stage:
    """Hands out temporary paths next to final ones (see `staged_files`)."""

    def __init__(self, what: str | None) -> None:
        self.what = what
        self.pending: list[tuple[Path, Path]] = []  # (temporary, final)

    def __call__(self, final: str | os.PathLike) -> Path:
        final = Path(final)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            prefix = f"{TMP_PREFIX}{final.name}{TMP_MARK}{os.getpid()}-"
            fd, name = tempfile.mkstemp(prefix=prefix, dir=final.parent)
        except OSError as e:
            if self.what is not None:
                raise _write_error(final, self.what, e) from e
            raise UserError(
                f"cannot write into the folder {final.parent} ({e.strerror or e})",
                path=final,
                fix="Choose an output folder you can write to.",
            ) from None
        os.close(fd)
        give_usual_mode(name)  # mkstemp's file is private; the output is not
        self.pending.append((Path(name), final))
        return Path(name)

    def commit(self) -> None:
        """fsync every file, rename them all, fsync their folders."""
        for _, final in self.pending:
            if final.is_dir():
                raise UserError(
                    "is a folder; a file of that name was to be written",
                    path=final,
                    fix="Move the folder away or choose another output folder.",
                )
        for temp, final in self.pending:
            try:
                give_usual_mode(temp)  # also when the writer replaced the file by a private one of its own
                _fsync_file(temp)  # the bytes are on disk before a name points at them
            except OSError as err:
                raise _write_error(final, self.what or "file", err) from err
        for temp, final in self.pending:
            try:
                os.replace(temp, final)
            except OSError as err:
                raise _write_error(final, self.what or "file", err) from err
        for folder in dict.fromkeys(final.parent for _, final in self.pending):
            fsync_dir(folder)


@contextmanager
def staged_files(what: str | None = None) -> Iterator[_Stage]:
    """``stage(final) -> temporary path`` to write to; all are renamed to their final names when the block succeeds.

    ``what`` names the output in errors (``"checkpoint"``). An exception in the block (a full disk while drawing)
    propagates unchanged, after the temporary files are removed.

    Example:
        >>> with staged_files() as stage:
        ...     figure.savefig(stage(out / "seeds.png"), format="png")
        ...     stage(out / "numbers.json").write_text(text)
    """
    stage = _Stage(what)
    try:
        yield stage
        stage.commit()
    finally:  # also after a KeyboardInterrupt: no temporary file is left behind
        for temp, _ in stage.pending:
            temp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any], what: str = "file") -> Path:
    """Write one file all or nothing: `write(f)` fills a binary file object; returns `path`.

    Raises:
        UserError: the folder cannot be created or written, or the disk is full; nothing is left behind.
    """
    path = Path(path)
    with staged_files(what) as stage:
        temp = stage(path)
        try:
            with open(temp, "wb") as f:
                write(f)
        except OSError as err:
            raise _write_error(path, what, err) from err
    return path


def atomic_write_texts(files: Mapping[str | os.PathLike, str]) -> list[Path]:
    """Write several UTF-8 text files (Unix line ends), all or none; returns their paths."""
    with staged_files() as stage:
        for path, text in files.items():
            stage(path).write_text(text, encoding="utf-8", newline="\n")
    return [Path(path) for path in files]


# ------------------------------------------------------------------------------------------- whole output folders


def _foreign_files(folder: Path, ours: frozenset[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in ours and not is_temporary(p))


def check_output_folder(folder: str | os.PathLike, option: str, ours: frozenset[str]) -> Path:
    """Before any work: `folder` can be written as a whole by a command whose outputs are the files `ours`.

    It may be missing, empty, or hold an earlier output of the same command (only names in `ours`), which
    `staged_folder` replaces; a file, or a folder with other files (never deleted), is refused, and so is a place
    where nothing can be created. Nothing is created here.

    Raises:
        UserError: naming `option` and the fix.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option} {folder}: is a file, not a folder", fix=f"Give {option} a folder (new or empty).")
    if folder.is_dir():
        foreign = _foreign_files(folder, ours)
        if foreign:
            raise UserError(
                f"{option} {folder}: holds files that this command does not write ({', '.join(foreign[:5])}"
                + (", ..." if len(foreign) > 5 else "")
                + "); it replaces its output folder as a whole and never deletes other files",
                fix=f"Give {option} a new or empty folder, or one that holds an earlier output of this command.",
            )
    existing = next((p for p in (folder.absolute(), *folder.absolute().parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise UserError(f"{option} {folder}: cannot be created, {existing} is a file", fix=f"Give {option} a folder.")
    _probe_writable(existing, option, folder)
    return folder


def _unwritable(option: str, folder: Path, error: OSError) -> UserError:
    return UserError(
        f"{option} {folder}: cannot write there ({error.strerror or error})",
        fix=f"Choose a folder you can write to for {option}.",
    )


def _probe_writable(where: Path, option: str, folder: Path) -> None:
    """Create and remove a file in ``where``; a refusal is the one-paragraph error about ``option`` ``folder``."""
    try:
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as e:
        raise _unwritable(option, folder, e) from None


@contextmanager
def staged_folder(final: str | os.PathLike, option: str, ours: frozenset[str], what: str = "outputs") -> Iterator[Path]:
    """Write a whole output folder, all or nothing: yields a hidden temporary folder beside `final` to write into;
    when the block succeeds its files are fsynced and the folder takes the place of `final` (an earlier output is
    moved aside, then deleted), so stale files of an earlier run never survive beside new ones.

    On any failure or Ctrl-C the temporary folder is deleted and `final` is as it was; an `OSError` while writing
    (a full disk) becomes a one-paragraph `UserError` naming `final`. Check `final` first with
    `check_output_folder` (the same `option` and `ours`).
    """
    final = Path(final)
    check_output_folder(final, option, ours)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}{TMP_MARK}{os.getpid()}-", dir=final.parent))
        give_usual_mode(temp)  # mkdtemp's folder is private; a new output folder is not
    except OSError as err:
        raise _write_error(final, what, err) from err
    try:
        try:
            yield temp
            for path in temp.rglob("*"):
                if path.is_file() and not path.is_symlink():
                    give_usual_mode(path)  # whatever wrote it (safetensors writes its files private)
                    _fsync_file(path)
            fsync_dir(temp)
        except OSError as err:
            raise _write_error(final, what, err) from err
        old = None
        if final.exists():
            old = final.with_name(f"{TMP_PREFIX}{final.name}{TMP_MARK}old-{os.getpid()}-{os.urandom(4).hex()}")
            os.rename(final, old)
        try:
            os.rename(temp, final)
        except OSError as err:
            if old is not None:
                os.rename(old, final)  # put the earlier output back
            raise _write_error(final, what, err) from err
        fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(temp, ignore_errors=True)  # gone already after a successful rename
