"""Resumable HTTP downloads from a list of sources, checked against a known size and checksum.

A dataset archive is tens or hundreds of gigabytes on a server that drops connections, so a download:

- goes to ``<name>.part`` and is renamed to ``<name>`` only once complete and checked: a file under its final name
  is always whole (nothing else ever writes that name);
- resumes a ``.part`` file with an HTTP Range request (a server that ignores ranges restarts it from zero), from the
  same URL only (``<name>.part.url`` says which), since two servers may serve different bytes under one name;
- is retried after a cut, then moves to the next source (official first, then mirrors);
- checks the size and, where publicly known, the sha256 or md5; a file that fails is kept as ``<name>.corrupt``
  (for inspection, never used) and the next source is tried;
- checks the free disk space first where the size is known, and stops with a clear error (keeping the ``.part``)
  when the disk fills up.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import shutil
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tcclip.utils.errors import UserError

TIMEOUT_S = 60
RETRIES = 3
"""Attempts per source after a cut connection (each resumes where the last one stopped)."""
RETRY_WAIT_S = 2.0
"""Pause before the second attempt of a source; doubled for each further attempt (at most 10 s)."""
CHUNK = 1 << 20
USER_AGENT = "tcclip-dataset-download"

Progress = Callable[[int, int | None], None]
"""Called with (bytes on disk so far, total bytes or None)."""


class DownloadError(UserError):
    """No source gave a complete, valid copy of a file."""


class DiskFullError(UserError, OSError):
    """Not enough free space for a download or an extraction."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset and where it can be fetched."""

    name: str
    """File name under the download folder."""
    urls: tuple[str, ...]
    """Official source first, then mirrors."""
    size: int | None = None
    """Exact size in bytes, where published (None: unknown, not checked)."""
    sha256: str | None = None
    md5: str | None = None


@dataclass
class FetchReport:
    path: Path
    source: str | None
    """URL the file came from (None: already present)."""
    failures: list[str] = field(default_factory=list)
    """One line per failed attempt of a source."""


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Raise `DiskFullError` if ``folder``'s file system has less than ``needed`` bytes free."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DiskFullError(
            f"{what} needs {format_bytes(needed)} free but the file system has {format_bytes(free)}",
            path=folder,
            fix="Free some space (or choose a folder on a larger disk with --root / --downloads) and run the same "
            "command again: finished files are kept and a partial download resumes.",
        )


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _part_paths(target: Path) -> tuple[Path, Path]:
    return target.with_name(target.name + ".part"), target.with_name(target.name + ".part.url")


class _Cut(Exception):
    """The connection broke mid-transfer: retry the same source (resuming)."""


class _BadSource(Exception):
    """This source cannot give the file (dead, refused, wrong size): try the next one."""


def _check(path: Path, remote: RemoteFile) -> str | None:
    """What is wrong with a complete download (None if nothing)."""
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        return f"size {size} bytes, expected {remote.size}"
    for algorithm in ("sha256", "md5"):
        expected = getattr(remote, algorithm)
        if expected is not None:
            got = file_digest(path, algorithm)
            if got != expected.lower():
                return f"{algorithm} {got}, expected {expected.lower()}"
    return None


def fetch(
    remote: RemoteFile,
    folder: str | os.PathLike,
    *,
    urls: Sequence[str] | None = None,
    progress: Progress | None = None,
    insecure: bool = False,
    retries: int = RETRIES,
    timeout: float = TIMEOUT_S,
) -> FetchReport:
    """Download ``remote`` into ``folder`` (skipped if ``folder/name`` exists) and return where it is.

    Args:
        urls: replace the file's own sources (``--url``).
        insecure: do not verify TLS certificates (a server whose certificate has expired; the size/checksum checks
            still apply).

    Raises:
        DownloadError: every source failed (the message lists why, one line per source, and the fix).
        DiskFullError: not enough space (the partial file is kept and resumes next time).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / remote.name
    if target.is_file():
        return FetchReport(target, None)
    part, part_url = _part_paths(target)
    sources = tuple(urls) if urls else remote.urls
    report = FetchReport(target, None)
    for url in sources:
        for attempt in range(retries):
            try:
                _transfer(url, part, part_url, remote, progress, insecure, timeout)
            except _Cut as e:
                report.failures.append(f"{url}: connection cut ({e}), attempt {attempt + 1} of {retries}")
                time.sleep(min(RETRY_WAIT_S * 2**attempt, 10) if attempt + 1 < retries else 0)
                continue
            except _BadSource as e:
                report.failures.append(f"{url}: {e}")
                break
            problem = _check(part, remote)
            if problem is not None:
                corrupt = target.with_name(target.name + ".corrupt")
                os.replace(part, corrupt)
                part_url.unlink(missing_ok=True)
                report.failures.append(f"{url}: the downloaded file has {problem} (kept as {corrupt.name})")
                break
            os.replace(part, target)
            part_url.unlink(missing_ok=True)
            report.source = url
            return report
    lines = "\n  ".join(report.failures) or "no source given"
    raise DownloadError(
        f"could not download {remote.name}; tried:\n  {lines}\n",
        path=target,
        fix="Run the same command again later (a partial download resumes), or give a working source with "
        "--url URL (repeat for several), or download the file yourself into "
        f"{folder} under the name {remote.name} and run the command again.",
    )


def _open(url: str, start: int, insecure: bool, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if start:
        request.add_header("Range", f"bytes={start}-")
    context = ssl._create_unverified_context() if insecure else None  # noqa: S323 - the user asked (--insecure)
    try:
        return urllib.request.urlopen(request, timeout=timeout, context=context)
    except urllib.error.HTTPError as e:
        if e.code == 416:  # range not satisfiable: the part is already whole (or longer than the file)
            return e
        raise _BadSource(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise _BadSource(
                f"its TLS certificate does not verify ({reason.verify_message}); if you trust this server, "
                "--insecure skips the check (the size and checksum checks still apply)"
            ) from None
        if isinstance(reason, TimeoutError | ConnectionResetError):
            raise _Cut(str(reason)) from None
        raise _BadSource(f"cannot connect ({reason})") from None
    except (TimeoutError, ConnectionError) as e:
        raise _Cut(str(e) or type(e).__name__) from None


def _total_size(response, start: int) -> int | None:
    content_range = response.headers.get("Content-Range")
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) + (start if response.status == 206 else 0) if length and length.isdigit() else None


def _transfer(
    url: str, part: Path, part_url: Path, remote: RemoteFile, progress: Progress | None, insecure: bool, timeout: float
) -> None:
    if part.is_file() and (not part_url.is_file() or part_url.read_text().strip() != url):
        part.unlink()  # bytes from another server: start again rather than splice two files
    start = part.stat().st_size if part.is_file() else 0
    response = _open(url, start, insecure, timeout)
    with response:
        if response.status == 416:
            # The .part may be whole (a run killed between the last byte and the rename): the server says how long
            # the file is ("bytes */N"); the size and checksum checks that follow decide.
            total = _total_size(response, start)
            if start and start == (remote.size if remote.size is not None else total):
                return
            part.unlink(missing_ok=True)
            raise _Cut("the server refused to resume; starting again from zero")
        if response.status == 200 and start:
            start = 0  # the server ignores Range: it sends the whole file again
        total = _total_size(response, start)
        if remote.size is not None and total is not None and total != remote.size:
            raise _BadSource(f"serves {total} bytes, expected {remote.size} (another file under that name)")
        size = total if total is not None else remote.size
        if size is not None:
            check_free_space(part.parent, size - start, f"downloading {remote.name}")
        part_url.write_text(url + "\n")
        done = start
        try:
            with open(part, "ab" if start else "wb") as out:
                if progress:
                    progress(done, size)
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (TimeoutError, ConnectionError, OSError, http.client.HTTPException) as e:
                        raise _Cut(str(e) or type(e).__name__) from None
                    if not chunk:
                        break
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, size)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(
                    f"the disk filled up while downloading {remote.name} ({format_bytes(done)} so far, kept)",
                    path=part,
                    fix="Free some space and run the same command again: the download resumes where it stopped.",
                ) from None
            raise
        if size is not None and done < size:
            raise _Cut(f"the server sent {done} of {size} bytes")
