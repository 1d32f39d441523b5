"""PyAV decoding proven against the frame index (:mod:`tcclip.data.video_frames`): every picture returned is
checked against the digest of the sequential decode.

A file's pictures are reached in the fastest of three access modes that proves right for it, learnt on its first
reads and kept for the process and beside the file's index on disk: ``seek+skip`` (seek to a key picture, decode
forward, skip the non-reference pictures nobody asked for), ``seek`` (the same without skipping: XviD's placeholder
packets shift which picture comes out when a B-frame is skipped) and ``from start`` (decode from the start and count
pictures, the definition itself). :func:`decode_exact` reads a set of frames; :func:`stream_exact` reads many frames of
long footage one at a time in one forward decode; :func:`decode_sequential` is the definition, for cross-checks.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import av
import numpy as np

from tcclip.data.video_frames import (
    VideoDecodeError,
    VideoFrames,
    decode_packets,
    picture_digest,
    plain_reason,
    recall_access,
    remember_access,
    seek,
    upright,
)

__all__ = ["FROM_START", "SEEK", "SEEK_SKIP", "access_mode", "decode_exact", "decode_sequential", "stream_exact"]

log = logging.getLogger(__name__)

# How each file's pictures are reached (decode_exact), once a faster way was found wrong for it, in this process.
_MODES: dict[str, str] = {}


def _open_stream(container: av.container.InputContainer, num_threads: int) -> Any:
    stream = container.streams.video[0]
    # One thread unless asked: FFmpeg's slice threading conceals damaged slices differently (the digests say so).
    stream.codec_context.thread_count = num_threads
    if num_threads != 1:
        stream.thread_type = "AUTO"
    return stream


SEEK_SKIP, SEEK, FROM_START = "seek+skip", "seek", "from start"
"""How a file's pictures are reached, fastest first (see :func:`decode_exact`)."""


def _decode_from_start(frames: VideoFrames, indices: Sequence[int], num_threads: int = 1) -> dict[int, Any]:
    """Pictures at ``indices`` (sorted, unique) by decoding from the start and counting the pictures shown."""
    wanted, last = set(indices), max(indices)
    out: dict[int, Any] = {}
    with av.open(frames.path) as container:
        stream = _open_stream(container, num_threads)
        for shown, frame in enumerate(decode_packets(container, stream)):
            if shown in wanted:
                out[shown] = frame
            if shown >= last:
                break
    return out


def _decode_after_seeks(
    frames: VideoFrames, indices: Sequence[int], num_threads: int = 1, skip: bool = True
) -> dict[int, Any]:
    """Pictures at ``indices`` (sorted, unique) by seeking to the last key picture at or before each run of them and
    decoding forward, recognising pictures by label; with ``skip``, the non-reference pictures of packets whose
    label is not wanted are not decoded. Unproven: the caller checks the digests."""
    keys = frames.keys.tolist()
    runs: dict[int, list[int]] = {}
    for i in indices:
        k = bisect.bisect_right(keys, i) - 1
        runs.setdefault(keys[k] if k >= 0 else -1, []).append(i)
    out: dict[int, Any] = {}
    with av.open(frames.path) as container:
        stream = _open_stream(container, num_threads)
        for key, run in runs.items():
            if key < 0:  # no key picture before these: from the start
                container.seek(0, stream=stream, backward=True, any_frame=False)
            else:
                seek(container, stream, int(frames.labels[key]))
            by_label = {int(frames.labels[i]): i for i in run}
            got = 0
            for frame in decode_packets(container, stream, set(by_label) if skip else None):
                i = by_label.get(frame.pts)
                if i is not None and i not in out:
                    out[i] = frame
                    got += 1
                    if got == len(run):
                        break
    return out


def decode_exact(frames: VideoFrames, indices: Sequence[int], num_threads: int = 1) -> np.ndarray:
    """Frames at sorted, unique ``indices`` of ``frames.path``, upright, as uint8 [n, H, W, 3], with PyAV.

    Every picture returned is checked against the digest of the sequential decode (:mod:`tcclip.data.video_frames`).
    A file is first read by seeking to key pictures, decoding forward and skipping the non-reference pictures
    nobody asked for; where that misses or changes a picture, by seeking without skipping (XviD's placeholder
    packets shift which picture comes out when); where that fails too, by decoding from the start and counting,
    which is the definition itself. A file stays on the mode that worked, in this process.
    """
    indices = list(indices)
    mode = access_mode(frames)
    got: dict[int, Any] = {}
    try:
        while True:
            rest = [i for i in indices if i not in got]
            if mode == FROM_START:
                decoded = _decode_from_start(frames, rest, num_threads)
            else:
                decoded = _decode_after_seeks(frames, rest, num_threads, skip=mode == SEEK_SKIP)
            proven = {i: f for i, f in decoded.items() if _proven(frames, i, f)}
            got.update(proven)
            if len(got) == len(indices):
                break
            if mode == FROM_START:
                wrong = next((i for i in rest if i in decoded and i not in proven), None)
                if wrong is not None:
                    raise VideoDecodeError(
                        frames.path,
                        f"frame {wrong} decodes differently from one pass to the next (a decoder problem: re-encode "
                        "the file with `tcclip data prepare`, or report it)",
                    )
                missing = next(i for i in rest if i not in decoded)
                raise VideoDecodeError(
                    frames.path, f"frame {missing} of {len(frames)} is not shown by a decode from the start"
                )
            mode = SEEK if mode == SEEK_SKIP else FROM_START
            _MODES[frames.path] = mode
            remember_access(frames.path, mode)
            log.debug("%s: seeking did not give the sequential decode's pictures; now %s", frames.path, mode)
        images = np.stack([got[i].to_ndarray(format="rgb24") for i in indices])
    except av.error.FFmpegError as err:
        raise VideoDecodeError(frames.path, f"cannot be decoded ({plain_reason(err)})") from err
    return upright(images, frames.rotation)


def stream_exact(frames: VideoFrames, indices: Sequence[int], num_threads: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """Frames at sorted, unique ``indices`` of ``frames.path``, one at a time and in order, as ``(index, uint8 [H, W,
    3])``, upright, from one forward decode with PyAV: the way to read many frames of long footage.

    The same proof as :func:`decode_exact`: every picture is checked against the digest of the sequential decode,
    in the file's access mode. The decode seeks once, to the key picture before the first index, and then runs
    forward (skipping, in mode ``seek+skip``, the non-reference pictures nobody asked for); where a picture is
    missed or differs, the file moves to the next mode and the decode restarts at the first frame not yet given.
    Memory: one decoded picture at a time, whatever the number of indices.
    """
    pending = list(indices)
    while pending:
        mode = access_mode(frames)
        given = 0
        for index, picture in _forward_pass(frames, pending, mode, num_threads):
            if index < pending[given]:
                continue  # a picture already given (a repeated label)
            if index > pending[given] or not _proven(frames, index, picture):
                break
            yield index, upright(picture.to_ndarray(format="rgb24")[None], frames.rotation)[0]
            given += 1
            if given == len(pending):
                break
        missed = pending[given] if given < len(pending) else None
        pending = pending[given:]
        if missed is None:
            return
        if mode == FROM_START:
            raise VideoDecodeError(
                frames.path,
                f"frame {missed} of {len(frames)} is not shown by a decode from the start, or decodes differently "
                "from one pass to the next (a decoder problem: re-encode the file with `tcclip data prepare`, or "
                "report it)",
            )
        mode = SEEK if mode == SEEK_SKIP else FROM_START
        _MODES[frames.path] = mode
        remember_access(frames.path, mode)
        log.debug("%s: a forward decode did not give the sequential decode's pictures; now %s", frames.path, mode)


def _forward_pass(frames: VideoFrames, indices: list[int], mode: str, num_threads: int) -> Iterator[tuple[int, Any]]:
    """Candidate pictures for sorted ``indices``, in decode order, from one pass: by count from the start (mode
    ``from start``), else by label after one seek to the key picture at or before the first index. Unproven."""
    with av.open(frames.path) as container:
        stream = _open_stream(container, num_threads)
        if mode == FROM_START:
            wanted = set(indices)
            for shown, picture in enumerate(decode_packets(container, stream)):
                if shown in wanted:
                    yield shown, picture
            return
        keys = frames.keys.tolist()
        k = bisect.bisect_right(keys, indices[0]) - 1
        if k < 0:
            container.seek(0, stream=stream, backward=True, any_frame=False)
        else:
            seek(container, stream, int(frames.labels[keys[k]]))
        by_label = {int(frames.labels[i]): i for i in indices}
        for picture in decode_packets(container, stream, set(by_label) if mode == SEEK_SKIP else None):
            index = by_label.get(picture.pts)
            if index is not None:
                yield index, picture


def access_mode(frames: VideoFrames) -> str:
    """How :func:`decode_exact` reaches this file's pictures: learnt on its first reads, kept for this process and
    beside the file's index on disk (other workers and later runs start from it)."""
    mode = _MODES.get(frames.path)
    if mode is None:
        mode = recall_access(frames.path) if frames.seekable else FROM_START
        if mode not in (SEEK_SKIP, SEEK, FROM_START):
            mode = SEEK_SKIP
        _MODES[frames.path] = mode
    return mode


def _proven(frames: VideoFrames, index: int, frame: Any) -> bool:
    return picture_digest(frame) == int(frames.digests[index])


def decode_sequential(frames: VideoFrames, indices: Sequence[int]) -> np.ndarray:
    """Frames at sorted, unique ``indices``, upright, by decoding from the start and counting the pictures shown.

    The definition itself, slow and independent of labels, seeks and digests: the reference for cross-checks
    (``tcclip data check --verify-frames``).
    """
    wanted, last = set(indices), max(indices)
    out: dict[int, np.ndarray] = {}
    try:
        with av.open(frames.path) as container:
            stream = _open_stream(container, 1)
            for shown, frame in enumerate(decode_packets(container, stream)):
                if shown in wanted:
                    out[shown] = frame.to_ndarray(format="rgb24")
                if shown >= last:
                    break
    except av.error.FFmpegError as err:
        raise VideoDecodeError(frames.path, f"cannot be decoded ({plain_reason(err)})") from err
    if len(out) < len(wanted):
        raise VideoDecodeError(frames.path, f"a sequential decode shows only {len(out)} of the frames asked for")
    return upright(np.stack([out[i] for i in indices]), frames.rotation)
