"""``tcclip data prepare``: re-encode a dataset so that training is no longer bound by video decoding.

Random access into compressed video costs a decode from the previous key frame, and original dataset files
have large frames and long groups of pictures. A copy with a short side of 320 (or 256) pixels and a key frame
every 16 frames, in H.264, decodes several times faster (see the README's data-loading table).

- Every frame the original shows (by the shared definition of :mod:`tcclip.data.video_frames`) is written,
  upright, with its original timestamp, so frame counts, durations and sampling are unchanged.
- Every relative path and file name is kept (the container inside is MP4 whatever the extension), so the
  annotation lists and configs stay valid: only the dataset root changes. Given lists are copied next to the
  videos.
- Originals are only read. Each output is written to a hidden temporary name in its destination folder, then
  checked (it decodes, with the same number of frames and the same duration) and renamed: an interrupted run
  leaves no half-written file under a final name, and a rerun skips the files that are done.

Evaluation against published numbers should use the original files: re-encoding changes pixels.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tcclip.data.video_frames import (
    VideoDecodeError,
    VideoFrames,
    decode_packets,
    plain_reason,
    read_video_frames,
    upright,
)
from tcclip.utils.errors import UserError

VIDEO_EXTENSIONS = (".avi", ".mp4", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts")
FAILURES_FILE = "prepare_failures.txt"
MIN_PSNR_DB = 25.0
"""Every frame of a copy is at least this close to the original's frame at the same index (luma PSNR at the
copy's size): a shifted or swapped frame falls far below it, re-encoding at the default quality stays above."""
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


@dataclass(frozen=True)
class PrepareSettings:
    """How videos are re-encoded."""

    short_side: int = 320
    """Frames are scaled (never enlarged) so that their shorter side has this many pixels; 256 is the other
    common choice."""
    keyframe_interval: int = 16
    """Frames between key frames: random access decodes at most this many frames per requested frame."""
    crf: int = 23
    """x264 constant rate factor (lower is better quality and larger files)."""
    preset: str = "veryfast"
    """x264 speed preset (how long the encoder searches; it does not change how fast the copy decodes)."""
    fast_decode: bool = True
    """No B-frames and x264's ``fastdecode`` tuning (no CABAC, no deblocking): larger files that decode faster,
    which is what training on 320x240 clips is bound by."""

    def __post_init__(self) -> None:
        if self.preset not in X264_PRESETS:
            raise UserError(
                f"--preset {self.preset!r} is not an x264 preset", fix=f"Choose one of {', '.join(X264_PRESETS)}."
            )
        if self.short_side < 16 or self.short_side % 2:
            raise UserError(f"--short-side must be an even number >= 16, got {self.short_side}")
        if self.keyframe_interval < 1:
            raise UserError(f"--keyframe-interval must be >= 1, got {self.keyframe_interval}")
        if not 0 <= self.crf <= 51:
            raise UserError(f"--crf must be in 0..51, got {self.crf}")

    def x264_options(self) -> dict[str, str]:
        """The encoder's options."""
        k = self.keyframe_interval
        params = f"keyint={k}:min-keyint={k}:scenecut=0"
        options = {"crf": str(self.crf), "preset": self.preset}
        if self.fast_decode:
            params += ":bframes=0"
            options["tune"] = "fastdecode"
        return options | {"x264-params": params}


@dataclass(frozen=True)
class PrepareResult:
    path: str
    """Relative path."""
    status: str
    """"done", "skipped" (prepared by an earlier run) or "failed"."""
    size_in: int = 0
    size_out: int = 0
    reason: str | None = None


def output_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) with the shorter side ``short_side`` (never enlarged), aspect kept, both even."""
    scale = min(1.0, short_side / min(height, width))
    return max(2, round(height * scale / 2) * 2), max(2, round(width * scale / 2) * 2)


def _frame_pts(table: VideoFrames) -> tuple[list[int], Fraction]:
    """Timestamps for the copy's frames, from 0, strictly increasing, and their time base: the original's
    presentation times (variable rates kept), in its own time base where every picture has one."""
    if table.seekable:
        ordered = np.sort(table.labels)
        return (ordered - ordered[0]).tolist(), table.time_base
    step = Fraction(table.times[1] - table.times[0]).limit_denominator(100_000) if len(table) > 1 else Fraction(1, 25)
    return list(range(len(table))), step or Fraction(1, 25)


def _upright_frame(frame: av.VideoFrame, rotation: int) -> av.VideoFrame:
    if not rotation:
        return frame
    image = upright(frame.to_ndarray(format="rgb24")[None], rotation)[0]
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")


def _encode(src: Path, tmp: Path, settings: PrepareSettings) -> int:
    """Write the re-encoded copy of ``src`` to ``tmp``; returns the number of frames written.

    Frames are the pictures of a sequential decode (the shared definition), not packets: XviD's placeholder
    packets and out-of-order B-frame timestamps of AVI files never reach the encoder.
    """
    table = read_video_frames(src)
    pts, time_base = _frame_pts(table)
    with av.open(str(src)) as source, av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        stream_in = source.streams.video[0]
        stream_in.codec_context.thread_count = 1  # the processes are the parallelism; the definition's decode
        rate = stream_in.average_rate or stream_in.guessed_rate or Fraction(25)
        stream_out = out.add_stream("libx264", rate=rate, options=settings.x264_options())
        stream_out.codec_context.thread_count = 1
        stream_out.codec_context.time_base = time_base
        stream_out.pix_fmt = "yuv420p"
        written = 0
        for frame in decode_packets(source, stream_in):
            if written == len(pts):
                break
            frame_in = _upright_frame(frame, table.rotation)
            if written == 0:
                stream_out.height, stream_out.width = output_size(frame_in.height, frame_in.width, settings.short_side)
            resized = frame_in.reformat(
                width=stream_out.width, height=stream_out.height, format="yuv420p", interpolation="AREA"
            )
            resized.pts, resized.time_base = pts[written], time_base
            out.mux(stream_out.encode(resized))
            written += 1
        out.mux(stream_out.encode())
    return written


def _luma(frame: av.VideoFrame, height: int, width: int) -> np.ndarray:
    return frame.reformat(width=width, height=height, format="gray", interpolation="AREA").to_ndarray()


def _verify(src: Path, tmp: Path) -> str | None:
    """Why the copy ``tmp`` is not a faithful copy of ``src`` (None if it is): the same number of frames, at the same
    times, and every frame within :data:`MIN_PSNR_DB` of the original's frame at that index (luma, at the copy's
    size). One pass decodes both side by side (memory stays flat for long videos); the copy gets no frame index of
    its own, which would be a second decode and a cache entry under a temporary name."""
    original = read_video_frames(src)
    expected = original.times - original.times[0]
    worst, at, count, first = np.inf, -1, 0, None
    with av.open(str(src)) as a, av.open(str(tmp)) as b:
        sa, sb = a.streams.video[0], b.streams.video[0]
        sa.codec_context.thread_count = sb.codec_context.thread_count = 1
        for fa, fb in itertools.zip_longest(decode_packets(a, sa), decode_packets(b, sb)):
            if fa is None or fb is None:
                count += fb is not None
                continue
            seconds = float(fb.pts * sb.time_base) if fb.pts is not None else None
            first = seconds if first is None else first
            if count < len(expected) and (seconds is None or abs(seconds - first - expected[count]) > 1e-3):
                return f"frame {count} of the copy is not at the original's time ({expected[count]:.3f} s)"
            ref = _luma(_upright_frame(fa, original.rotation), fb.height, fb.width).astype(np.float64)
            mse = float(np.mean((ref - fb.reformat(format="gray").to_ndarray()) ** 2))
            psnr = np.inf if mse == 0 else 10 * np.log10(255.0**2 / mse)
            if psnr < worst:
                worst, at = psnr, count
            count += 1
    if count != len(original):
        return f"the copy has {count} frames, the original {len(original)}"
    if worst < MIN_PSNR_DB:
        return f"frame {at} of the copy differs from the original's (PSNR {worst:.1f} dB < {MIN_PSNR_DB} dB)"
    return None


def prepare_video(root: str, out: str, rel_path: str, settings: PrepareSettings) -> PrepareResult:
    """Re-encode ``root/rel_path`` to ``out/rel_path`` (see the module docstring)."""
    src, dst = Path(root) / rel_path, Path(out) / rel_path
    if dst.is_file():
        return PrepareResult(rel_path, "skipped", src.stat().st_size if src.is_file() else 0, dst.stat().st_size)
    dst.parent.mkdir(parents=True, exist_ok=True)
    for stale in dst.parent.glob(f".{dst.name}.partial-*"):  # left by an interrupted run
        stale.unlink(missing_ok=True)
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    try:
        _encode(src, tmp, settings)
        problem = _verify(src, tmp)
    except VideoDecodeError as err:
        problem = err.reason or str(err)
    except (av.error.FFmpegError, OSError) as err:
        problem = f"cannot be re-encoded ({plain_reason(err)})"
    except BaseException:  # Ctrl-C, a worker stopped: no temporary is left behind
        tmp.unlink(missing_ok=True)
        raise
    if problem is not None:
        tmp.unlink(missing_ok=True)
        return PrepareResult(rel_path, "failed", src.stat().st_size if src.is_file() else 0, 0, problem)
    os.replace(tmp, dst)
    return PrepareResult(rel_path, "done", src.stat().st_size, dst.stat().st_size)


def _prepare_one(job: tuple[str, str, str, PrepareSettings]) -> PrepareResult:
    return prepare_video(*job)


def find_videos(folder: Path, exclude: Path | None = None) -> list[str]:
    """Relative paths of the video files under ``folder`` (by extension), sorted; ``exclude`` is skipped."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file() and not path.name.startswith("."):
            if exclude is not None and exclude in path.parents:
                continue
            found.append(path.relative_to(folder).as_posix())
    return found


def prepare_dataset(
    videos: Sequence[str],
    root: Path,
    out: Path,
    settings: PrepareSettings,
    workers: int = 1,
    on_done: object = None,
) -> list[PrepareResult]:
    """Re-encode ``videos`` (relative to ``root``) into ``out`` in ``workers`` processes; ``on_done(result)``
    is called after each video."""
    jobs = [(str(root), str(out), v, settings) for v in videos]
    results: list[PrepareResult] = []
    if workers <= 1:
        for job in jobs:
            results.append(_prepare_one(job))
            if callable(on_done):
                on_done(results[-1])
        return results
    pool = ProcessPoolExecutor(max_workers=workers)
    try:
        for future in as_completed([pool.submit(_prepare_one, job) for job in jobs]):
            results.append(future.result())
            if callable(on_done):
                on_done(results[-1])
    except BaseException:
        # Ctrl-C: the videos not started are dropped, not re-encoded while the command says it stopped; the ones
        # running finish or remove their temporary, so every file under a final name is whole.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    order = {v: i for i, v in enumerate(videos)}
    return sorted(results, key=lambda r: order[r.path])
