"""What "the frames of a video" are: one definition that every decoding backend follows.

A video's frames are the pictures a plain sequential decode shows, in presentation order, numbered from 0:

- **Timestamps, not header counts.** The frame list is read from the container's packets (demuxing, no
  decoding): one frame per non-empty video packet, sorted by presentation timestamp. Header counts are only
  reported, never trusted: an AVI header may count the ticks of a variable-frame-rate video (444 "frames" of
  which 68 are coded, the rest being zero-size "repeat the previous frame" chunks the demuxer drops), and an MP4
  header counts samples whether or not they decode.
- **Truncated** means the file stops early in *time*: the end of its last packet (timestamp plus duration) falls
  short of the duration the container declares by more than two frames and 5%. Zero-size repeat chunks and
  variable frame rates therefore never make a complete file "truncated".
- **A last frame that does not decode** (a zeroed or cut final sample) is not a frame: the last group of pictures
  is decoded once, when the file is first read, and frames after the last one that decodes are dropped, so the
  count shrinks, deterministically, before any sampling. Sampling never asks for a frame that cannot come back,
  and no file is called broken because of which views happened to be drawn.
- **Non-zero start times** (clips cut from a longer recording) need nothing special: frame 0 is the first frame
  shown, whatever its timestamp.
- **Rotation**: phones store frames as the sensor sees them and a display matrix that turns them upright. Frames
  are returned as they are meant to be shown (turned by :attr:`VideoFrames.rotation`), by every backend.

Decoding frame i exactly means: seek to the key frame from which frame i can be decoded (the last key frame,
in decode order, that is not shown after it) and decode forward until the frame with frame i's timestamp comes
out. :attr:`VideoFrames.seek_pts` holds that key frame for every frame. See docs/decoding.md for why the key
frame *shown* after a frame is not good enough (open GOPs of MPEG-4 part 2, where key-frame seeking goes wrong).

:func:`read_video_frames` reads this table once per file and process (cached by path, size and modification time).
"""

from __future__ import annotations

import bisect
import functools
import os
from collections.abc import Collection
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

TRUNCATION_SLACK_FRAMES = 2
"""Missing time of up to this many frames is rounding, not truncation (with the relative slack below)."""
TRUNCATION_SLACK_FRACTION = 0.05


class VideoDecodeError(RuntimeError):
    """A video could not be decoded as asked; ``path`` and ``reason`` say which and why.

    ``VideoDecodeError(path, reason)``; a single argument is taken as the whole message (as pickling by
    DataLoader workers and plain ``raise VideoDecodeError("...")`` do).
    """

    def __init__(self, path: str | Path, reason: str | None = None) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(self.path if reason is None else f"cannot decode video {self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # keep both fields through pickling
        return type(self), (self.path, self.reason)


def plain_reason(err: BaseException) -> str:
    """A decoding library's error as one plain sentence (FFmpeg's own wording, without codes or file names)."""
    text = getattr(err, "strerror", None) or str(err)
    return " ".join(str(text).split()) or type(err).__name__


@dataclass(frozen=True, eq=False)
class VideoFrames:
    """The frames of one video file (see the module docstring)."""

    path: str
    pts: np.ndarray
    """int64 [frames]: presentation timestamp of every frame, in :attr:`time_base` units, increasing. (Arrays,
    not tuples of Python ints: a worker caches the tables of thousands of videos.)"""
    seek_pts: np.ndarray
    """int64 [frames]: presentation timestamp of the key frame to seek to before decoding forward to each frame."""
    time_base: Fraction
    rotation: int
    """Counter-clockwise degrees (a multiple of 90) that turn the stored frames upright."""
    codec: str
    container: str
    declared_frames: int
    """The header's frame count (0 if none): for reports only, it may count ticks or undecodable samples."""
    dropped_tail: int
    """Frames the container lists after the last frame that decodes (not part of the video)."""

    def __len__(self) -> int:
        return len(self.pts)

    def seconds(self, index: int) -> float:
        """Presentation time of frame ``index`` in seconds."""
        return float(int(self.pts[index]) * self.time_base)


def _stream_end(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int | None:
    """The end time the container declares for the video stream, in stream time-base units (None if unknown)."""
    if stream.duration:
        return int(stream.start_time or 0) + int(stream.duration)
    if container.duration:
        start = container.start_time or 0
        return int(Fraction(start + container.duration, av.time_base) / stream.time_base)
    return None


def _display_rotation(frame: av.VideoFrame) -> int:
    rotation = int(round(getattr(frame, "rotation", 0) or 0))
    return (rotation // 90 * 90) % 360 if rotation % 90 == 0 else 0  # odd angles are not turned (rare, skew)


def decode_packets(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, needed: Collection[int] | None = None
):
    """Decoded frames from the stream's current position to its end; a packet that fails to decode is skipped,
    as a player does (its frame is missing or its neighbours show concealed errors).

    With ``needed`` (presentation timestamps), the decoder skips the non-reference frames that are not needed:
    no other frame is decoded from them, so the needed frames come out the same, and B-frames (often half of
    a stream) cost nothing.
    """
    context = stream.codec_context
    for packet in container.demux(stream):
        if needed is not None:
            context.skip_frame = "DEFAULT" if packet.pts is None or packet.pts in needed else "NONREF"
        try:
            yield from packet.decode()
        except av.error.FFmpegError:
            continue


def seek(container: av.container.InputContainer, stream: av.video.stream.VideoStream, pts: int) -> None:
    """Position the demuxer at the key frame shown at ``pts`` (or an earlier one: the index of some containers
    is in decode timestamps, which are smaller). Decoding forward from there then reaches every frame whose
    seek point (:attr:`VideoFrames.seek_pts`) it is."""
    container.seek(pts, stream=stream, backward=True, any_frame=False)


def _read(path: str) -> VideoFrames:
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoDecodeError(path, "no video stream")
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1  # decoded frames must not depend on threading (see decode_exact)
            # Demux only: (pts, dts, size, key) of every packet in decode order.
            pts, dts, size, key, duration = [], [], [], [], []
            for packet in container.demux(stream):
                if packet.dts is None and packet.pts is None and packet.size == 0:
                    continue  # the demuxer's end-of-stream flush packet
                pts.append(packet.pts if packet.pts is not None else packet.dts)
                dts.append(packet.dts if packet.dts is not None else packet.pts)
                size.append(packet.size)
                key.append(bool(packet.is_keyframe))
                duration.append(int(packet.duration or 0))
            declared_end = _stream_end(container, stream)
            time_base = Fraction(stream.time_base)
            codec, fmt = stream.codec_context.name, container.format.name.split(",")[0]
            declared = int(stream.frames or 0)
            shown = [i for i in range(len(pts)) if size[i] > 0]
            if not shown:
                raise VideoDecodeError(path, "the video stream has no frames")
            if any(pts[i] is None for i in shown):
                raise VideoDecodeError(
                    path,
                    "its frames carry no timestamps, so they cannot be located; re-encode it (tcclip data prepare)",
                )
            frame_pts = np.array(sorted({pts[i] for i in shown}), dtype=np.int64)
            gaps = np.diff(frame_pts)
            step = int(np.median(gaps)) if gaps.size else max(1, max(duration))
            ends = [p + (d or step) for p, d in zip(pts, duration, strict=True) if p is not None]
            if declared_end is not None:
                missing = declared_end - max(ends)
                length = declared_end - int(frame_pts[0])
                if missing > max(TRUNCATION_SLACK_FRAMES * step, TRUNCATION_SLACK_FRACTION * length):
                    end_s, declared_s = float(max(ends) * time_base), float(declared_end * time_base)
                    raise VideoDecodeError(
                        path, f"truncated: its frames end at {end_s:.2f} s but the file declares {declared_s:.2f} s"
                    )
            # Key frames in decode order; their timestamps increase (key frames are references, shown in order).
            key_pts = [pts[i] for i in range(len(pts)) if key[i] and size[i] > 0]
            seek_pts = []
            for p in frame_pts.tolist():
                k = bisect.bisect_right(key_pts, p) - 1
                seek_pts.append(key_pts[k] if k >= 0 else int(frame_pts[0]))

            # Decode the last group of pictures once: trailing frames that do not decode are not frames.
            seek(container, stream, seek_pts[-1])
            decoded, rotation = [], None
            # Only the last frames are looked at: earlier non-reference frames need not be decoded.
            for frame in decode_packets(container, stream, needed=set(frame_pts[-8:].tolist())):
                if frame.pts is not None:
                    decoded.append(frame.pts)
                    rotation = _display_rotation(frame) if rotation is None else rotation
    except av.error.FFmpegError as err:
        raise VideoDecodeError(path, f"cannot be read as a video ({plain_reason(err)})") from err
    if not decoded:
        raise VideoDecodeError(path, "its last frames do not decode (the file is damaged)")
    keep = int(np.searchsorted(frame_pts, max(decoded), side="right"))
    return VideoFrames(
        path=path,
        pts=frame_pts[:keep].copy(),
        seek_pts=np.array(seek_pts[:keep], dtype=np.int64),
        time_base=time_base,
        rotation=rotation or 0,
        codec=codec,
        container=fmt,
        declared_frames=declared,
        dropped_tail=len(frame_pts) - keep,
    )


@functools.lru_cache(maxsize=16384)
def _read_cached(path: str, size: int, mtime_ns: int) -> VideoFrames:
    return _read(path)


def read_video_frames(path: str | Path) -> VideoFrames:
    """The frame table of ``path`` (see the module docstring); cached per process while the file is unchanged.

    Raises:
        VideoDecodeError: missing, empty or unreadable file, no video stream, no frames, truncated.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise VideoDecodeError(path, "file not found") from None
    except OSError as err:
        raise VideoDecodeError(path, plain_reason(err)) from err
    if not path.is_file():
        raise VideoDecodeError(path, "not a regular file")
    if stat.st_size == 0:
        raise VideoDecodeError(path, "file is empty")
    return _read_cached(os.fspath(path), stat.st_size, stat.st_mtime_ns)


def upright(frames: np.ndarray, rotation: int) -> np.ndarray:
    """Turn stored frames [N, H, W, 3] counter-clockwise by ``rotation`` degrees (the display matrix's angle)."""
    k = (rotation // 90) % 4
    return frames if k == 0 else np.rot90(frames, k=k, axes=(1, 2))
