"""Decode chosen frames of a video file into a uint8 tensor, with decord (default), PyAV or torchcodec.

>>> reader = open_video("v_Archery_g01_c01.avi")                  # nothing is read yet
>>> frames = reader.get_frames(test_indices(len(reader), 8)[0])   # uint8 RGB [8, H, W, 3]

Every backend gives the same answer: ``len(reader)`` frames, numbered from 0 in presentation
order, and ``get_frames`` returns exactly the frames asked for, in the order asked (repeats
allowed). Anything that prevents that raises :class:`VideoDecodeError` naming the file and the
reason: a missing or empty file, no video stream, zero frames, undecodable data, a file cut short
("truncated"), a requested frame the decoder marks corrupt. Nothing is returned silently instead.

Integrity check (``verify=True``, the default): before first use, the container's packets are
demuxed with PyAV, without decoding (about a millisecond for a short clip), and the file is
reported as truncated if it holds fewer packets than its header declares (MP4, AVI) or, when the
header declares no count (WebM), fewer than 90% - 1 of the frames its duration implies. decord
alone would read a cut AVI or WebM as a shorter video whose last frame repeats the one before.

Worker safety: a reader opens its decoder lazily, on first use, and remembers the process that
opened it; used from another process (a forked DataLoader worker) or after unpickling, it opens a
fresh decoder there, so decord handles are never shared across ``fork``. Datasets should still
create readers inside ``__getitem__``; this only makes misuse harmless.

Backends:

- ``decord`` (default, what the official code uses): seeks to the key frame before each requested
  frame, fast for long videos. The frame count is decord's (the container index).
- ``pyav``: frame-exact by construction, correctness first. Each call decodes from the start of
  the file up to the largest requested index and keeps the requested frames: O(max index) decoding
  instead of a seek, which is fine for action clips (2-10 s) and never depends on a container's
  seek accuracy (AVI and WebM seeking is only key-frame accurate). The frame count is the
  container's declared count (MP4 sample table, AVI header), else the number of video packets.
- ``torchcodec``: optional (``pip install torchcodec`` built for your torch, plus FFmpeg 4-8 shared
  libraries on the system), exact seek mode. :func:`available_backends` says whether it works here.
"""

from __future__ import annotations

import functools
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import av
import numpy as np
import torch

DEFAULT_BACKEND = "decord"

# Decoder handles inherited through fork. Their destructors would tear down threads that exist only in the parent
# (decord aborts the process with std::system_error), so they are kept alive, unused, for the life of the child.
_INHERITED_HANDLES: list[Any] = []


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


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__  # decord's messages span several lines


def probe_frame_count(path: str | Path) -> int:
    """Frame count from PyAV's demuxer (no decoding), after the integrity checks of the module docstring.

    Raises:
        VideoDecodeError: unreadable, no video stream, no frames, or truncated.
    """
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(path, "no video stream")
            stream = container.streams.video[0]
            declared = int(stream.frames or 0)
            packets = shown = 0
            for packet in container.demux(stream):
                if packet.dts is None and packet.size == 0:
                    continue  # the demuxer's end-of-stream flush packet
                packets += 1
                shown += packet.size > 0  # zero-size packets stand for dropped frames (AVI)
            rate = float(stream.average_rate or 0)
            duration = container.duration / av.time_base if container.duration else 0.0
    except av.error.FFmpegError as err:
        raise VideoDecodeError(path, _one_line(err)) from err
    if declared > 0:
        if packets < declared:
            raise VideoDecodeError(path, f"truncated: the container declares {declared} frames but holds {packets}")
        return declared
    # No count in the header (WebM/Matroska): one shown packet per frame. The header's duration still tells
    # a file that was cut short; 10% + 1 frame of slack keeps variable frame rates and rounding safe.
    expected = duration * rate
    if shown < 0.9 * expected - 1:
        raise VideoDecodeError(
            path, f"truncated: its duration holds ~{expected:.0f} frames at {rate:g} fps but only {shown} are present"
        )
    if shown == 0:
        raise VideoDecodeError(path, "the video stream has no frames")
    return shown


class VideoReader(ABC):
    """Random access to the frames of one video file; subclasses wrap one decoding library."""

    backend: ClassVar[str]
    _open_verifies: ClassVar[bool] = False  # True where _open runs probe_frame_count itself

    def __init__(self, path: str | Path, num_threads: int = 1, verify: bool = True) -> None:
        """
        Args:
            path: video file.
            num_threads: decoder threads; 1 suits DataLoader workers (the workers are the parallelism).
            verify: run the integrity check of the module docstring before first use.
        """
        self.path = Path(path)
        self.num_threads = num_threads
        self.verify = verify
        if not self.path.is_file():
            raise VideoDecodeError(self.path, "file not found" if not self.path.exists() else "not a regular file")
        if self.path.stat().st_size == 0:
            raise VideoDecodeError(self.path, "file is empty")
        self._handle: Any = None
        self._handle_pid: int | None = None
        self._num_frames: int | None = None

    # -- public API -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of frames (opens the file on first call)."""
        if self._num_frames is None:
            count = self._call(self._count_frames)
            if count <= 0:
                raise VideoDecodeError(self.path, "the video stream has no frames")
            self._num_frames = count
        return self._num_frames

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames at ``indices`` (0-based, any order, repeats allowed) as uint8 RGB [len(indices), H, W, 3]."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise ValueError(f"{self.path}: get_frames needs at least one index")
        num = len(self)
        if idx.min() < 0 or idx.max() >= num:
            raise IndexError(f"{self.path}: frame indices must be in [0, {num}), got {idx.min()}..{idx.max()}")
        unique, inverse = np.unique(idx, return_inverse=True)  # decode each frame once, in file order
        frames = self._call(lambda: self._decode(unique.tolist()))
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[0] != unique.size or frames.shape[-1] != 3:
            raise VideoDecodeError(self.path, f"the decoder returned {frames.dtype} {tuple(frames.shape)}")
        return torch.from_numpy(np.ascontiguousarray(frames[inverse]))

    def close(self) -> None:
        """Release the decoder; the reader reopens it if used again."""
        self._drop_handle()

    def _drop_handle(self) -> None:
        if self._handle is not None and self._handle_pid != os.getpid():
            _INHERITED_HANDLES.append(self._handle)
        self._handle, self._handle_pid = None, None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"], state["_handle_pid"] = None, None  # decoder handles are neither picklable nor fork-safe
        return state

    # -- lazily opened, per-process decoder -------------------------------------------------------------------
    def _get_handle(self) -> Any:
        if self._handle is None or self._handle_pid != os.getpid():
            self._drop_handle()
            if self.verify and self._num_frames is None and not self._open_verifies:
                probe_frame_count(self.path)
            self._handle = self._open()
            self._handle_pid = os.getpid()
        return self._handle

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn``, turning the library's own errors into VideoDecodeError."""
        try:
            return fn()
        except VideoDecodeError:
            raise
        except self._library_errors() as err:
            raise VideoDecodeError(self.path, _one_line(err)) from err

    # -- backend hooks ----------------------------------------------------------------------------------------
    @abstractmethod
    def _library_errors(self) -> tuple[type[BaseException], ...]:
        """Exceptions of the decoding library that mean "this video cannot be decoded"."""

    @abstractmethod
    def _open(self) -> Any:
        """Open the decoder in this process."""

    @abstractmethod
    def _count_frames(self) -> int:
        """Number of frames."""

    @abstractmethod
    def _decode(self, indices: list[int]) -> np.ndarray:
        """Frames at sorted, unique, in-range ``indices`` as uint8 [n, H, W, 3]."""


class DecordReader(VideoReader):
    """decord's VideoReader on the CPU."""

    backend = "decord"

    def _library_errors(self) -> tuple[type[BaseException], ...]:
        import decord

        return (decord.DECORDError, RuntimeError)

    def _open(self) -> Any:
        import decord

        return decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=self.num_threads)

    def _count_frames(self) -> int:
        return len(self._get_handle())

    def _decode(self, indices: list[int]) -> np.ndarray:
        return self._get_handle().get_batch(indices).asnumpy()


class PyAVReader(VideoReader):
    """PyAV (FFmpeg) with sequential, frame-exact decoding; see the module docstring for the trade-off."""

    backend = "pyav"
    _open_verifies = True

    def _library_errors(self) -> tuple[type[BaseException], ...]:
        return (av.error.FFmpegError,)

    def _open(self) -> int:
        # The container is reopened for every call (see _decode), so the only state is the frame count, which
        # the probe computes together with its integrity checks (always on for this backend).
        return probe_frame_count(self.path)

    def _count_frames(self) -> int:
        return self._get_handle()

    def _decode(self, indices: list[int]) -> np.ndarray:
        wanted, last = set(indices), indices[-1]
        out: dict[int, np.ndarray] = {}
        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            if self.num_threads != 1:
                stream.thread_type = "AUTO"
                stream.codec_context.thread_count = self.num_threads
            decoded = 0  # frames seen so far; frames are numbered in the decoder's (presentation) order
            for frame in container.decode(stream):
                index, decoded = decoded, decoded + 1
                if index in wanted:
                    if frame.is_corrupt:
                        raise VideoDecodeError(self.path, f"frame {index} is corrupt (the file may be truncated)")
                    out[index] = frame.to_ndarray(format="rgb24")
                if index == last:
                    break
            else:
                raise VideoDecodeError(
                    self.path, f"truncated: frame {last} of {len(self)} requested but only {decoded} frames decode"
                )
        return np.stack([out[i] for i in indices])


class TorchCodecReader(VideoReader):
    """torchcodec's VideoDecoder in exact seek mode (optional dependency)."""

    backend = "torchcodec"

    def _library_errors(self) -> tuple[type[BaseException], ...]:
        return (RuntimeError, ValueError)

    def _open(self) -> Any:
        if not _torchcodec_available():
            raise ModuleNotFoundError(
                "video backend 'torchcodec' needs `pip install torchcodec` (built for your torch) and FFmpeg "
                "shared libraries on the system; or use backend='decord' or 'pyav'"
            )
        from torchcodec.decoders import VideoDecoder

        return VideoDecoder(
            str(self.path), dimension_order="NHWC", seek_mode="exact", num_ffmpeg_threads=self.num_threads
        )

    def _count_frames(self) -> int:
        return len(self._get_handle())

    def _decode(self, indices: list[int]) -> np.ndarray:
        return self._get_handle().get_frames_at(indices).data.numpy()


BACKENDS: dict[str, type[VideoReader]] = {cls.backend: cls for cls in (DecordReader, PyAVReader, TorchCodecReader)}


@functools.cache
def _torchcodec_available() -> bool:
    try:
        from torchcodec._core import ops  # loading the C++ core needs FFmpeg's shared libraries
    except (ImportError, OSError, RuntimeError):
        return False
    return getattr(ops, "ffmpeg_major_version", None) is not None


@functools.cache
def _decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def available_backends() -> list[str]:
    """Backends that can decode on this machine, in order of preference."""
    usable = {"decord": _decord_available(), "pyav": True, "torchcodec": _torchcodec_available()}
    return [name for name in BACKENDS if usable[name]]


def open_video(
    path: str | Path, backend: str = DEFAULT_BACKEND, num_threads: int = 1, verify: bool = True
) -> VideoReader:
    """A reader for ``path`` with the named backend ("decord", "pyav" or "torchcodec"); opens lazily.

    Args:
        path: video file.
        backend: decoding library.
        num_threads: decoder threads (1 inside DataLoader workers).
        verify: check the container for truncation before first use (see the module docstring).

    Raises:
        VideoDecodeError: the file is missing or empty (other problems surface on first use).
        ValueError: unknown backend name.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[backend](path, num_threads=num_threads, verify=verify)
