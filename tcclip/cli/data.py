"""``tcclip data check``: find unreadable or misdecoded videos of annotation lists (before a long run).

`check` is the typed command for lists given with ``--list``/``--root``; a config's lists are checked through
LightningCLI (`tcclip.cli.data_config`), and both print with `report`. The other ``tcclip data`` commands: ``synth``
and ``prepare`` (`tcclip.cli.data_make`), ``download`` (`tcclip.cli.data_get`) and ``verify``
(`tcclip.cli.data_config`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from tcclip.cli.types import Spelling

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoCheck:
    path: str
    """Path relative to the root, as in the list."""
    lists: tuple[str, ...]
    """Where the lists name it, as ``list:line``."""
    error: str | None = None
    num_frames: int = 0
    mismatch: str | None = None
    """With ``--verify-frames``: which decoders returned other frames than a sequential decode, or None."""
    decode_errors: int = 0
    """Packets the decoder reported errors for, or pictures it concealed errors in (read as players show them)."""


FRAME_TOLERANCE = 1.0
"""Mean absolute pixel difference (0-255) up to which two decodes of a frame count as the same frame: colour
conversions differ by a level here and there, a neighbouring frame differs by far more."""


def verify_frames(path: Path, backends: Sequence[str], num_frames: int) -> str | None:
    """Decode a test view's frames plus the first and last frame with each backend and sequentially; describe
    the backends whose frames differ from the sequential decode (None if all agree)."""
    import numpy as np

    from tcclip.data.sampling import test_indices
    from tcclip.data.video_reader import decode_sequential, open_video

    reader = open_video(path, backend=backends[0])
    count = len(reader)
    indices = sorted({0, *test_indices(count, num_frames)[0], count - 1})
    reference = decode_sequential(reader.frames, indices).astype(np.float32)
    problems = []
    for backend in dict.fromkeys(backends):
        frames = open_video(path, backend=backend).get_frames(indices).numpy().astype(np.float32)
        if frames.shape != reference.shape:
            problems.append(f"{backend} returns frames of shape {frames.shape[1:3]}, not {reference.shape[1:3]}")
            continue
        error = np.abs(frames - reference).mean(axis=(1, 2, 3))
        wrong = [i for i, e in zip(indices, error.tolist(), strict=True) if e > FRAME_TOLERANCE]
        if wrong:
            shown = ", ".join(map(str, wrong[:6])) + (", ..." if len(wrong) > 6 else "")
            problems.append(f"{backend} returns other frames than a sequential decode at frames {shown}")
    return "; ".join(problems) or None


def check_video(
    root: str, rel_path: str, backend: str, num_frames: int, verify_with: str | None = None
) -> tuple[str | None, int, str | None, int]:
    """Open a video and decode the frames a test view would use plus its last frame.

    Returns:
        (error or None, frames, mismatch or None, decode errors); ``verify_with`` names a second
        backend to cross-check ``backend`` with (see :func:`verify_frames`).
    """
    from tcclip.data.sampling import test_indices
    from tcclip.data.video_reader import VideoDecodeError, open_video

    path = Path(root) / rel_path
    try:
        reader = open_video(path, backend=backend)
        count = len(reader)
        indices = sorted({*test_indices(count, num_frames)[0], count - 1})
        frames = reader.get_frames(indices)
        if frames.shape[0] != len(indices):
            return f"decoded {frames.shape[0]} of {len(indices)} frames", count, None, 0
        mismatch = None
        if verify_with is not None:
            mismatch = verify_frames(path, [backend, verify_with], num_frames)
        return None, count, mismatch, reader.frames.decode_errors
    except (VideoDecodeError, OSError, IndexError) as e:  # unreadable input; anything else is a bug and propagates
        reason = e.reason if isinstance(e, VideoDecodeError) and e.reason else str(e)
        return reason, 0, None, 0


def _check_one(args: tuple[str, str, str, int, str | None]) -> tuple[str | None, int, str | None, int]:
    return check_video(*args)


def collect_videos(lists: Sequence[tuple[str, Path]]) -> dict[str, list[str]]:
    """Every distinct video path of the given (name, annotation list) pairs -> where it is listed (``name:line``)."""
    from tcclip.data.labels import read_annotations

    owners: dict[str, list[str]] = {}
    for name, path in lists:
        for a in read_annotations(path):
            owners.setdefault(a.path, []).append(f"{name}:{a.line}")
    return owners


def check_lists(
    lists: Sequence[tuple[str, Path]],
    root: Path,
    backend: str = "auto",
    num_frames: int = 16,
    workers: int | None = None,
    on_done: Any = None,
    verify_with: str | None = None,
) -> list[VideoCheck]:
    """Check every video of the given (name, annotation list) pairs once, in parallel processes.

    Args:
        on_done: called with no argument after each video (progress).
        verify_with: a second backend: also cross-check sampled frames (see :func:`verify_frames`).
    """
    owners = collect_videos(lists)
    videos = list(owners)
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    jobs = [(str(root), v, backend, num_frames, verify_with) for v in videos]
    results: list[tuple[str | None, int, str | None, int]] = []
    if workers == 1:
        for job in jobs:
            results.append(_check_one(job))
            if on_done:
                on_done()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(_check_one, jobs, chunksize=max(1, min(64, len(jobs) // (workers * 8) or 1))):
                results.append(result)
                if on_done:
                    on_done()
    return [VideoCheck(v, tuple(owners[v]), *result) for v, result in zip(videos, results, strict=True)]


def check(
    *,
    lists: Annotated[list[str], Spelling("--list")] = (),
    root: Path | None = None,
    backend: str = "auto",
    verify_frames: bool = False,
    num_frames: int = 16,
    workers: int | None = None,
    out: Path | None = None,
) -> int:
    """Decode every video of a config's splits (or of one list).

    Exit status 1 if a video is unreadable (or, with --verify-frames, decodes to other frames).

    A config's lists: `tcclip data check --config C.yaml [--stage fit|validate|test|all] [--root DIR] [--workers N]
    [--out FILE] [--verify-frames]`, read through LightningCLI as `tcclip fit` reads it (any --data.init_args.*
    setting too; `tcclip data check --config C.yaml --help` lists its options). No network is built.

    Args:
        lists: annotation list (repeat), with --root
        root: dataset root
        backend: auto, torchcodec, pyav or decord
        verify_frames: also decode sampled frames with a second backend and sequentially, and list files where they
            differ
        num_frames: frames per view to decode
        workers: processes (default: up to 8)
        out: also write the broken videos to this file
    """
    from rich.console import Console

    if not (lists and root):
        Console(stderr=True).print("[red]error:[/red] give --config CONFIG.yaml, or --list FILE --root DIR")
        return 2
    return report([(str(Path(p)), Path(p)) for p in lists], root, backend, num_frames, verify_frames, workers, out)


def report(
    lists: Sequence[tuple[str, Path]],
    root: Path,
    backend: str,
    num_frames: int,
    verify_frames: bool = False,
    workers: int | None = None,
    out: Path | None = None,
) -> int:
    """Check every video of the lists (`check_lists`) and print what is unreadable or decodes to other frames.

    Args:
        lists: (name, annotation list) pairs; a missing or malformed list is an error (exit status 2).
        root: the folder the lists' paths start from.

    Returns:
        The exit status: 1 if a video is unreadable or decodes to other frames, 2 for a list it cannot read, else 0.
    """
    from rich.console import Console
    from rich.table import Table

    from tcclip.data.video_reader import available_backends, resolve_backend
    from tcclip.utils.progress import progress_bar

    console = Console(stderr=True)
    try:
        total = len(collect_videos(lists))
    except (ValueError, OSError) as e:
        console.print(f"[red]error:[/red] {e}")
        return 2
    backend = resolve_backend(backend)  # a backend that cannot run here is a UserError with the fix, before any work
    verify_with = None
    if verify_frames:
        verify_with = next((b for b in available_backends() if b != backend), backend)
    with progress_bar(console=console, transient=False) as progress:
        task = progress.add_task(f"checking videos under {root}", total=total)
        results = check_lists(
            lists, Path(root), backend, num_frames, workers, lambda: progress.advance(task), verify_with
        )
    broken = [r for r in results if r.error is not None]
    differ = [r for r in results if r.mismatch is not None]
    if differ:
        title = f"{len(differ)} videos decode differently"
        table = Table("video", "lists", "frames", title=title, title_justify="left")
        for r in differ:
            table.add_row(r.path, ", ".join(r.lists), r.mismatch)
        console.print(table)
    if broken:
        table = Table("video", "lists", "reason", title=f"{len(broken)} unreadable videos", title_justify="left")
        for r in broken:
            table.add_row(r.path, ", ".join(r.lists), r.error)
        console.print(table)
        if out:
            out.write_text("".join(f"{r.path}\t{','.join(r.lists)}\t{r.error}\n" for r in broken))
            console.print(f"broken list written to {out}")
    names = ", ".join(name for name, _ in lists)
    console.print(f"{len(results) - len(broken)} of {len(results)} videos readable ({names}; backend {backend})")
    damaged = [r for r in results if r.decode_errors]
    if damaged:
        shown = ", ".join(f"{r.path} ({r.decode_errors})" for r in damaged[:5]) + (", ..." if len(damaged) > 5 else "")
        console.print(
            f"{len(damaged)} video(s) with decode errors, read with FFmpeg's concealment as players show them (not an "
            f"error; the count of damaged packets or pictures in brackets): {shown}"
        )
    if verify_with is not None:
        checked = ", ".join(dict.fromkeys([backend, verify_with]))
        console.print(
            f"{len(results) - len(broken) - len(differ)} of {len(results) - len(broken)} readable videos give the "
            f"same frames with {checked} and a sequential decode"
        )
    return 1 if broken or differ else 0
