"""Output files that appear whole or not at all, and output folders checked before any work is done.

A command that writes several files (split lists, pictures) first writes each to a temporary file next to its final
place, and renames them all only once every one is complete: a failure or a kill part-way leaves the previous files
(or none), never a truncated file with a valid-looking name. Renames within one folder are atomic on POSIX file
systems; the temporary files start with a dot so that globs such as ``*.txt`` do not pick them up.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tcclip.errors import UserError

__all__ = ["atomic_write_texts", "check_writable_folder", "staged_files"]


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()  # what open() would give a new file (mkstemp's are private)


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
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(
            f"{option} {folder}: cannot write there ({e.strerror or e})",
            fix=f"Choose a folder you can write to for {option}.",
        ) from None
    return folder


class _Stage:
    """Hands out temporary paths next to final ones (see `staged_files`)."""

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []  # (temporary, final)

    def __call__(self, final: str | os.PathLike) -> Path:
        final = Path(final)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        except OSError as e:
            raise UserError(
                f"cannot write into the folder {final.parent} ({e.strerror or e})",
                path=final,
                fix="Choose an output folder you can write to.",
            ) from None
        os.close(fd)
        os.chmod(name, _FILE_MODE)
        self.pending.append((Path(name), final))
        return Path(name)


@contextmanager
def staged_files() -> Iterator[_Stage]:
    """``stage(final) -> temporary path`` to write to; all are renamed to their final names when the block succeeds.

    Example:
        >>> with staged_files() as stage:
        ...     figure.savefig(stage(out / "seeds.png"), format="png")
        ...     stage(out / "numbers.json").write_text(text)
    """
    stage = _Stage()
    try:
        yield stage
        for _, final in stage.pending:
            if final.is_dir():
                raise UserError(
                    "is a folder; a file of that name was to be written",
                    path=final,
                    fix="Move the folder away or choose another output folder.",
                )
        for temp, final in stage.pending:
            os.replace(temp, final)
    finally:
        for temp, _ in stage.pending:
            temp.unlink(missing_ok=True)


def atomic_write_texts(files: Mapping[str | os.PathLike, str]) -> list[Path]:
    """Write several UTF-8 text files (Unix line ends), all or none; returns their paths."""
    with staged_files() as stage:
        for path, text in files.items():
            stage(path).write_text(text, encoding="utf-8", newline="\n")
    return [Path(path) for path in files]
