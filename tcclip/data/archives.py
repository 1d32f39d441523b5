"""Extract tar, zip and RAR archives so that a kill at any moment leaves only whole files under their final names.

Every member is first written into a hidden staging folder beside the destination (same file system), and the
files are renamed into place only once the whole archive has been read without error; a rerun wipes a staging
folder left by a killed run and starts that archive again. Files already renamed into place by an interrupted
rename phase are whole, and are simply replaced by the same bytes on the rerun.

tar (any compression Python's tarfile reads, also read as one stream from several consecutive parts) and zip use
the standard library; RAR uses libarchive through ``libarchive-c`` (RAR 4 and 5), which needs the system's
libarchive (Debian/Ubuntu: ``libarchive13``, which ``libarchive-tools`` pulls in; macOS: ``brew install
libarchive``; conda: ``conda install -c conda-forge libarchive``). Member paths that are absolute or climb out of
the destination (``..``) are refused, and free space is checked before extracting.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO

from tcclip.data.download import DiskFullError, check_free_space, format_bytes
from tcclip.utils.errors import UserError

STAGING_PREFIX = ".tcclip-extract-"
SPACE_MARGIN = 1.05
"""Free space asked for beyond the members' sizes (tar.gz members' sizes are unknown before reading: videos hardly
compress, so the archive's size stands for them)."""

Place = Callable[[str], str | None]
"""Member path in the archive -> path relative to the destination, or None to leave the member out."""


class ArchiveError(UserError):
    """An archive cannot be read (corrupt, truncated, an unknown format, or no RAR reader installed)."""


RAR_FIX = (
    "Install libarchive (Debian/Ubuntu: sudo apt-get install libarchive-tools; Fedora: sudo dnf install "
    "libarchive; macOS: brew install libarchive; conda: conda install -c conda-forge libarchive) and the Python "
    "package libarchive-c (pip install libarchive-c), then run the same command again."
)


def archive_format(path: Path) -> str:
    """ "rar", "zip" or "tar" from the file's first bytes (not its name: mirrors rename files)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"Rar!\x1a\x07"):
        return "rar"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00" or head[257:262] == b"ustar":
        return "tar"
    raise ArchiveError(
        "not a tar, zip or RAR archive (its first bytes are none of theirs; an HTML error page saved under the "
        "archive's name looks like this)",
        path=path,
        fix="Delete it and run the same command again to download it afresh.",
    )


class _Concatenated(io.RawIOBase):
    """Several files read as one stream, in order (the parts of a split archive)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = list(paths)
        self._file: IO[bytes] | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            if self._file is None:
                if not self._paths:
                    return 0
                self._file = open(self._paths.pop(0), "rb")  # noqa: SIM115 - closed when exhausted
            n = self._file.readinto(buffer)
            if n:
                return n
            self._file.close()
            self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


def _safe(name: str, archive: Path) -> str:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts:
        raise ArchiveError(f"member {name!r} would be written outside the destination; refused", path=archive)
    return path.as_posix()


# Each reader yields (member path, size or None, function writing the member's bytes to a file).
Member = tuple[str, int | None, Callable[[IO[bytes]], None]]


def _tar_members(parts: Sequence[Path]) -> Iterator[Member]:
    with _Concatenated(parts) as raw, tarfile.open(fileobj=io.BufferedReader(raw, CHUNK), mode="r|*") as tar:
        for info in tar:
            if info.isfile():
                source = tar.extractfile(info)
                yield info.name, info.size, lambda out, s=source: shutil.copyfileobj(s, out, CHUNK)


def _zip_members(path: Path) -> Iterator[Member]:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.is_dir():

                def write(out: IO[bytes], info: zipfile.ZipInfo = info) -> None:
                    with archive.open(info) as source:
                        shutil.copyfileobj(source, out, CHUNK)

                yield info.filename, info.file_size, write


def _libarchive():
    try:
        import libarchive
    except (ImportError, OSError, AttributeError, TypeError) as e:  # TypeError/AttributeError: no libarchive.so
        raise ArchiveError(f"RAR archives need libarchive, which cannot be loaded here ({e})", fix=RAR_FIX) from None
    return libarchive


def _rar_members(path: Path) -> Iterator[Member]:
    libarchive = _libarchive()
    with libarchive.file_reader(str(path)) as archive:
        for entry in archive:
            if entry.isfile:

                def write(out: IO[bytes], entry=entry) -> None:
                    for block in entry.get_blocks():
                        out.write(block)

                yield entry.pathname, entry.size, write


CHUNK = 1 << 20


def _members(parts: Sequence[Path]) -> Iterator[Member]:
    kind = archive_format(parts[0])
    if kind != "tar" and len(parts) > 1:
        raise ArchiveError("only tar archives can be read from several parts", path=parts[0])
    if kind == "tar":
        return _tar_members(parts)
    return _zip_members(parts[0]) if kind == "zip" else _rar_members(parts[0])


@contextmanager
def _read_errors(archive: Path) -> Iterator[None]:
    """Turn a reader's exception for a damaged archive into an `ArchiveError` with the fix."""
    try:
        yield
    except (UserError, KeyboardInterrupt):
        raise
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                "the disk filled up during extraction (the partial extraction was removed; the archive is kept)",
                path=archive,
                fix="Free some space and run the same command again.",
            ) from None
        if e.errno is not None:  # a file system error (permissions, ...) is not the archive's fault
            raise
        raise _damaged(archive, e) from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, ValueError) as e:
        raise _damaged(archive, e) from None
    except Exception as e:  # libarchive.ArchiveError (its class is only known once it is imported)
        if type(e).__module__.startswith("libarchive"):
            raise _damaged(archive, e) from None
        raise


def _damaged(archive: Path, e: BaseException) -> ArchiveError:
    return ArchiveError(
        f"cannot be read to the end ({type(e).__name__}: {e}); it is truncated or damaged",
        path=archive,
        fix="Delete it and run the same command again to download it afresh (or give another source with --url).",
    )


def required_space(parts: Sequence[Path]) -> int:
    """Bytes an extraction needs: the members' total size where the archive lists them cheaply (zip, RAR), else
    the archive's size (tar.gz of videos), with a margin."""
    kind = archive_format(parts[0])
    if kind == "zip":
        with _read_errors(parts[0]), zipfile.ZipFile(parts[0]) as archive:
            total = sum(i.file_size for i in archive.infolist())
    elif kind == "rar":
        with _read_errors(parts[0]), _libarchive().file_reader(str(parts[0])) as archive:
            total = sum(entry.size or 0 for entry in archive if entry.isfile)
    else:
        total = sum(p.stat().st_size for p in parts)
    return int(total * SPACE_MARGIN)


def staging_folder(dest: Path, archive: Path) -> Path:
    return dest / f"{STAGING_PREFIX}{archive.name}"


def extract(
    archive: str | os.PathLike | Sequence[str | os.PathLike],
    dest: str | os.PathLike,
    place: Place | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Extract ``archive`` (or the parts of one archive, in order) into ``dest``; return the placed paths.

    Args:
        place: maps each member's path to its path under ``dest`` (None leaves it out); default: as in the archive.
        progress: called with each member's path once it is written (to staging).

    Raises:
        ArchiveError: damaged archive, unsafe member path, two members placed on one path, or no RAR reader.
        DiskFullError: not enough free space (checked first; also a full disk during extraction).
    """
    parts = [Path(archive)] if isinstance(archive, str | os.PathLike) else [Path(p) for p in archive]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(dest, parts[0])
    if staging.exists():
        shutil.rmtree(staging)  # left by a killed run: that extraction starts again
    needed = required_space(parts)
    check_free_space(dest, needed, f"extracting {parts[0].name} ({format_bytes(needed)} with margin)")
    placed: dict[str, str] = {}
    try:
        with _read_errors(parts[0]):
            for name, _size, write in _members(parts):
                rel = place(name) if place is not None else name
                if rel is None:
                    continue
                rel = _safe(rel, parts[0])
                _safe(name, parts[0])
                if rel in placed:
                    raise ArchiveError(
                        f"members {placed[rel]!r} and {name!r} would both be written to {rel!r}", path=parts[0]
                    )
                placed[rel] = name
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as out:
                    write(out)
                if progress:
                    progress(name)
        for rel in placed:  # the whole archive was read: now move every file into place
            final = dest / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.is_dir():
                raise ArchiveError(f"{final} is a folder; the archive has a file of that name", path=parts[0])
            os.replace(staging / rel, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return list(placed)


def flatten(name: str) -> str:
    """``place`` function keeping only the file name (datasets whose lists name files without folders)."""
    return PurePosixPath(name.replace("\\", "/")).name
