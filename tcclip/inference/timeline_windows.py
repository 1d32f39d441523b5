"""The windows of a timeline: where each lies in time, which frames it samples, and reading those frames.

Window k covers `[offset + k * stride, offset + k * stride + window)` seconds from the first frame; its sample i is
the frame on screen at `start + (i + 0.5) * window / T`: the last frame whose display time, in the frame index
(`tcclip.data.video_frames`), is at or before it. Which windows a video has and which frames they sample is decided
from the index alone, before anything is decoded; the frames are then read through the data reader
(`VideoReader.iter_frames`, the reader training uses), one at a time and in order. A frame is put through `convert`
once, when it is read, shared by the windows that sample it, and dropped as soon as no later window needs it: memory
depends on the window and the batch, not on the video's length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
from torch import Tensor

from tcclip.data.video_frames import VideoDecodeError, VideoFrames, read_video_frames
from tcclip.data.video_reader import open_video
from tcclip.utils.errors import UserError

TIME_SLACK = 1e-6
"""Seconds added to every sample time, so that 0.7 + 0.2 (0.8999...) picks the frame stamped 0.9."""
END_SLACK = 1e-6
"""Seconds a window may reach past the end of the video and still count as inside it."""
MAX_WINDOWS = 100_000
"""The most windows one timeline scores (about 28 hours of video at the default 1 s stride): a stride typed a
thousand times too small would otherwise run for days and hold millions of rows."""
MIN_STRIDE = 1e-3
"""Seconds: no video has two frames closer than a millisecond, so a smaller stride only repeats windows."""

WindowFrames = tuple[int, float, float, list[Tensor]]
"""What `stream_windows` yields per window: (index, start, end, the converted frames of its T samples)."""


class PlannedWindow(NamedTuple):
    """One window of a video, before decoding: its index, where it lies, and the frame index of each sample."""

    index: int
    start: float
    end: float
    frames: tuple[int, ...]


def frame_index(path: Path) -> VideoFrames:
    """The video's frame index: the same refusals as predict and training (not a video, truncated), and the display
    time of every picture, which B-frame AVIs do not carry in their timestamps."""
    try:
        return read_video_frames(path)
    except VideoDecodeError as err:
        raise UserError(err.reason or str(err), path=path, fix="Give a readable video file.") from err


def plan_windows(
    times: np.ndarray,
    end: float,
    num_frames: int,
    window: float,
    stride: float,
    offset: float = 0.0,
    count: int | None = None,
) -> list[PlannedWindow]:
    """The windows that fit inside a video whose frames are shown from `times` (seconds from the first frame,
    increasing) until `end`, in order: at most `count` from `offset` seconds, and at most one past `MAX_WINDOWS`.

    A window fits when every sample time lies before `end`. A window that reaches past the end by more than
    `END_SLACK` does not, unless all of it lies within the last frame's display time (a window shorter than a frame).
    """
    step = window / num_frames
    last_shown = float(times[-1])
    limit = MAX_WINDOWS + 1 if count is None else min(count, MAX_WINDOWS + 1)
    k = np.arange(min(limit, max(0, math.ceil((end - offset) / stride)) + 2))
    starts = offset + k * stride
    taus = starts[:, None] + (np.arange(num_frames) + 0.5)[None, :] * step + TIME_SLACK  # [K, T] sample times
    first, last = taus[:, 0], taus[:, -1]
    before_last = last < last_shown
    reaches_past = (first < last_shown) & (starts + window > end + END_SLACK)
    fits = (first < end) & (before_last | ((last < end) & ~reaches_past))
    frames = np.searchsorted(times, taus, side="right") - 1
    return [
        PlannedWindow(int(i), float(starts[i]), float(starts[i]) + window, tuple(int(f) for f in frames[i]))
        for i in np.flatnonzero(fits)
    ]


def stream_windows(
    path: str | Path,
    num_frames: int,
    window: float,
    stride: float,
    convert: Callable[[Tensor], Tensor],
    on_time: Callable[[float], None] | None = None,
    *,
    offset: float = 0.0,
    count: int | None = None,
    backend: str | None = None,
) -> Iterator[WindowFrames]:
    """Read the windows of `path` and yield `(index, start, end, frames)` per window, in order.

    `convert` turns one frame, uint8 RGB [H, W, 3] and upright, as the data reader returns it, into what is kept
    (called once per sampled frame); `on_time` gets the display time of every frame read (a progress bar). Only
    windows that fit inside the video are yielded; a video shorter than one window gives one window over the whole
    video. A part of the video (boundary refinement): `count` windows from `offset` seconds; the reader seeks to
    the key frame before the first of their frames.

    Raises:
        UserError: the video cannot be read, or it has more than `MAX_WINDOWS` windows.
    """
    path = Path(path)
    index = frame_index(path)
    times = index.times - index.times[0]
    end = index.duration()
    plan = plan_windows(times, end, num_frames, window, stride, offset, count)
    if not plan and count is None:  # shorter than one window: one window over the whole video
        plan = plan_windows(times, end, num_frames, end * (1 - 1e-9), max(stride, end))
    too_many = next((w for w in plan if w.index >= MAX_WINDOWS), None)
    if too_many is not None:  # a container that declared no duration: the cap, found from the frame index
        check_window_count(too_many.start + window, window, stride, path)
    yield from _read_windows(path, plan, times, convert, on_time, backend)


def _read_windows(
    path: Path,
    plan: list[PlannedWindow],
    times: np.ndarray,
    convert: Callable[[Tensor], Tensor],
    on_time: Callable[[float], None] | None,
    backend: str | None,
) -> Iterator[WindowFrames]:
    """Read the frames `plan` samples, in order, and yield each window as soon as its last frame is there."""
    needed = sorted({f for w in plan for f in w.frames})
    kept: dict[int, Tensor] = {}  # frame index -> converted frame, for the windows not yet yielded
    position = 0
    try:
        with open_video(path, backend) as reader:
            for frame_number, frame in reader.iter_frames(needed):
                kept[frame_number] = convert(frame)
                if on_time is not None:
                    on_time(float(times[frame_number]))
                while position < len(plan) and plan[position].frames[-1] <= frame_number:
                    w = plan[position]
                    position += 1
                    yield w.index, w.start, w.end, [kept[f] for f in w.frames]
                    keep_from = plan[position].frames[0] if position < len(plan) else math.inf
                    while kept and next(iter(kept)) < keep_from:  # frames arrive in order: the oldest go first
                        del kept[next(iter(kept))]
    except VideoDecodeError as err:
        raise UserError(err.reason or str(err), path=path, fix="Give a readable video file.") from err


def check_window_options(
    window: float, stride: float | None, top_k: int = 3, batch_size: int = 8, smooth: int = 1, refine: int = 4
) -> None:
    """Refuse window, stride and the other numbers of a timeline before any work (the option named)."""
    if not (math.isfinite(window) and window > 0):
        raise UserError(f"--window (window=) must be positive seconds, got {window}", fix="e.g. --window 2")
    if stride is not None and not (math.isfinite(stride) and stride > 0):
        raise UserError(f"window and stride must be positive seconds, got {window} and {stride}", fix="e.g. 2 and 1")
    if stride is not None and stride < MIN_STRIDE:
        raise UserError(
            f"--stride {stride:g} is under a millisecond: no video has frames that close, so windows would repeat",
            fix=f"Give --stride (stride=) at least {MIN_STRIDE:g} seconds (default: half the window).",
        )
    if smooth < 1 or smooth % 2 == 0:
        raise UserError(
            f"--smooth (smooth=) must be an odd number of windows, got {smooth}", fix="e.g. 1 (off), 3 or 5"
        )
    if top_k < 1 or batch_size < 1:
        raise UserError("--top-k and --batch-size (top_k=, batch_size=) must be >= 1", fix="pass positive numbers")
    if refine < 0 or refine == 1:
        raise UserError(f"--refine (refine=) must be 0 (off) or a factor >= 2, got {refine}", fix="e.g. 4 or 0")


def check_window_count(duration: float, window: float, stride: float | None, path: str | Path) -> int:
    """The number of windows of a video of `duration` seconds; more than `MAX_WINDOWS` is refused up front."""
    stride = window / 2 if stride is None else stride
    count = 1 + max(0, math.floor((duration - window) / stride + 1e-9)) if duration > 0 else 1
    if count > MAX_WINDOWS:
        raise UserError(
            f"{duration:.1f} s with a window of {window:g} s every {stride:g} s makes {count:,} windows, more than "
            f"the {MAX_WINDOWS:,} a timeline scores",
            path=path,
            fix=f"Use a larger --stride: at least {max(duration - window, 0) / (MAX_WINDOWS - 1):.3g} s for this "
            "video.",
        )
    return count
