"""Decode chosen frames of a video file into a uint8 tensor, exactly, with torchcodec or PyAV (or decord on request).

>>> reader = open_video("v_Archery_g01_c01.avi")                  # nothing is decoded yet
>>> frames = reader.get_frames(test_indices(len(reader), 8)[0])   # uint8 RGB [8, H, W, 3], upright

Every backend follows one definition of a video's frames (:mod:`tcclip.data.video_frames`): ``len(reader)``
frames, numbered from 0 in presentation order, the last frame being the last one that decodes, and
``get_frames`` returns exactly the frames asked for, in the order asked (repeats allowed), turned upright when
the file carries a rotation. Anything that prevents that raises :class:`VideoDecodeError` naming the file and the
reason (missing, empty, no video stream, no frames, undecodable, truncated); nothing is returned silently instead.

Backends (``backend=`` of :func:`open_video`, ``data.init_args.backend`` in configs):

- ``auto`` (default): ``torchcodec`` where it works on this machine, else ``pyav``.
- ``torchcodec``: FFmpeg through torchcodec's exact seek mode; needs ``pip install torchcodec`` and FFmpeg's
  shared libraries. Its seeking misplaces frames on some files (MPEG-4 part 2 AVI with B-frames), so the
  timestamps of the frames it returns are checked against the frame table: on a mismatch the file is decoded
  by the ``pyav`` path instead (and, in this process, from then on).
- ``pyav``: FFmpeg through PyAV, no system libraries needed. Seeks to the key frame from which the first
  requested frame decodes and decodes forward, skipping the non-reference frames nobody asked for, frames being
  matched by timestamp (never by counting).
- ``decord``: the decoder of the official TC-CLIP code, kept only for bit-compatibility with published numbers.
  Its random access returns wrong frames on MPEG-4 part 2 files with B-frames (the format of UCF-101 and
  HMDB-51); opening such a file warns. ``tcclip data check --verify-frames`` finds the affected files.

Worker safety: a reader opens its decoder lazily, on first use, and remembers the process that opened it; used
from another process (a forked DataLoader worker) or after unpickling, it opens a fresh decoder there, so decoder
handles are never shared across ``fork``. Datasets should still create readers inside ``__getitem__``.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import av
import numpy as np
import torch

from tcclip.data.video_frames import (
    VideoDecodeError,
    VideoFrames,
    decode_packets,
    plain_reason,
    read_video_frames,
    seek,
    upright,
)
from tcclip.errors import UserError

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "VideoDecodeError",
    "VideoReader",
    "available_backends",
    "decode_exact",
    "decode_sequential",
    "open_video",
    "resolve_backend",
]

log = logging.getLogger(__name__)

DEFAULT_BACKEND = "auto"

FFMPEG_FIX = (
    "Fix: install torchcodec for your torch (`pip install torchcodec`) and FFmpeg's shared libraries (4 to 7; "
    "Debian/Ubuntu: `apt-get install ffmpeg`, conda: `conda install -c conda-forge ffmpeg`), or choose "
    "backend auto or pyav, which need neither."
)

# Decoder handles inherited through fork. Their destructors would tear down threads that exist only in the parent
# (decord aborts the process with std::system_error), so they are kept alive, unused, for the life of the child.
_INHERITED_HANDLES: list[Any] = []
# Files on which torchcodec returned a frame other than the one asked for, in this process: decoded by PyAV.
_TORCHCODEC_MISPLACES: set[str] = set()
_DECORD_WARNED: set[str] = set()


def decode_exact(frames: VideoFrames, indices: Sequence[int], num_threads: int = 1) -> np.ndarray:
    """Frames at sorted, unique ``indices`` of ``frames.path``, upright, as uint8 [n, H, W, 3], with PyAV.

    Each run of requested frames that share a key frame is decoded forward from that key frame; frames are
    recognised by their timestamps. Should a seek land after the key frame it asked for (a container with a
    coarse index), the missing frames are decoded from the start of the file instead.
    """
    pts, seek_pts = frames.pts.tolist(), frames.seek_pts.tolist()
    wanted = {pts[i] for i in indices}
    out: dict[int, np.ndarray] = {}
    runs: list[list[int]] = []
    for i in indices:  # seek_pts never decreases with the frame index
        if runs and seek_pts[runs[-1][-1]] == seek_pts[i]:
            runs[-1].append(i)
        else:
            runs.append([i])

    def collect(container: av.container.InputContainer, stream: Any, until: int) -> None:
        for frame in decode_packets(container, stream, wanted):
            if frame.pts in wanted and frame.pts not in out:
                out[frame.pts] = frame.to_ndarray(format="rgb24")
            if frame.pts is not None and frame.pts >= until:
                return

    def open_stream(container: av.container.InputContainer) -> Any:
        stream = container.streams.video[0]
        # One thread unless asked: PyAV's default slice threading conceals damaged slices differently.
        stream.codec_context.thread_count = num_threads
        if num_threads != 1:
            stream.thread_type = "AUTO"
        return stream

    try:
        with av.open(frames.path) as container:
            stream = open_stream(container)
            for run in runs:
                seek(container, stream, seek_pts[run[0]])
                collect(container, stream, pts[run[-1]])
        if len(out) < len(wanted):
            with av.open(frames.path) as container:
                collect(container, open_stream(container), max(wanted - out.keys()))
    except av.error.FFmpegError as err:
        raise VideoDecodeError(frames.path, f"cannot be decoded ({plain_reason(err)})") from err
    missing = [i for i in indices if pts[i] not in out]
    if missing:
        raise VideoDecodeError(frames.path, f"frame {missing[0]} of {len(frames)} does not decode (damaged file)")
    return upright(np.stack([out[pts[i]] for i in indices]), frames.rotation)


def decode_sequential(frames: VideoFrames, indices: Sequence[int]) -> np.ndarray:
    """Frames at sorted, unique ``indices``, upright, by decoding from the start and counting the frames shown.

    The slow reference that no seeking or timestamp can fool, for cross-checks (``tcclip data check
    --verify-frames``); a packet that does not decode is skipped, as a player does.
    """
    wanted, last = set(indices), max(indices)
    out: dict[int, np.ndarray] = {}
    try:
        with av.open(frames.path) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
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


class VideoReader(ABC):
    """Random access to the frames of one video file; subclasses wrap one decoding library."""

    backend: ClassVar[str]

    def __init__(self, path: str | Path, num_threads: int = 1) -> None:
        """
        Args:
            path: video file.
            num_threads: decoder threads; 1 suits DataLoader workers (the workers are the parallelism).
        """
        self.path = Path(path)
        self.num_threads = num_threads
        if not self.path.is_file():
            raise VideoDecodeError(self.path, "file not found" if not self.path.exists() else "not a regular file")
        if self.path.stat().st_size == 0:
            raise VideoDecodeError(self.path, "file is empty")
        self._handle: Any = None
        self._handle_pid: int | None = None

    # -- public API -------------------------------------------------------------------------------------------
    @property
    def frames(self) -> VideoFrames:
        """The shared frame table (read on first use, cached per process)."""
        return read_video_frames(self.path)

    def __len__(self) -> int:
        """Number of frames."""
        return len(self.frames)

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames at ``indices`` (0-based, any order, repeats allowed) as upright uint8 RGB [len(indices), H, W, 3]."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise ValueError(f"{self.path}: get_frames needs at least one index")
        num = len(self)
        if idx.min() < 0 or idx.max() >= num:
            raise IndexError(f"{self.path}: frame indices must be in [0, {num}), got {idx.min()}..{idx.max()}")
        unique, inverse = np.unique(idx, return_inverse=True)  # decode each frame once, in file order
        try:
            frames = self._decode(unique.tolist())
        except VideoDecodeError:
            raise
        except self._library_errors() as err:
            raise VideoDecodeError(self.path, f"cannot be decoded ({plain_reason(err)})") from err
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
            self._handle = self._open()
            self._handle_pid = os.getpid()
        return self._handle

    # -- backend hooks ----------------------------------------------------------------------------------------
    def _library_errors(self) -> tuple[type[BaseException], ...]:
        """Exceptions of the decoding library that mean "this video cannot be decoded"."""
        return (av.error.FFmpegError,)

    def _open(self) -> Any:
        """Open the decoder in this process (backends that keep one open)."""
        return None

    @abstractmethod
    def _decode(self, indices: list[int]) -> np.ndarray:
        """Upright frames at sorted, unique, in-range ``indices`` as uint8 [n, H, W, 3]."""


class PyAVReader(VideoReader):
    """PyAV: key-frame seek and forward decoding, frames matched by timestamp (:func:`decode_exact`)."""

    backend = "pyav"

    def _decode(self, indices: list[int]) -> np.ndarray:
        return decode_exact(self.frames, indices, self.num_threads)


class TorchCodecReader(VideoReader):
    """torchcodec's VideoDecoder in exact seek mode, its answers checked by timestamp (PyAV where they are wrong)."""

    backend = "torchcodec"

    def _library_errors(self) -> tuple[type[BaseException], ...]:
        return (RuntimeError, ValueError, IndexError, av.error.FFmpegError)

    def _open(self) -> Any:
        from torchcodec.decoders import VideoDecoder

        return VideoDecoder(
            str(self.path), dimension_order="NHWC", seek_mode="exact", num_ffmpeg_threads=self.num_threads
        )

    def _decode(self, indices: list[int]) -> np.ndarray:
        table = self.frames
        if table.path not in _TORCHCODEC_MISPLACES:
            try:
                batch = self._get_handle().get_frames_at(indices)
                got = [round(s / table.time_base) for s in batch.pts_seconds.tolist()]
            except (RuntimeError, ValueError, IndexError):
                got = None  # e.g. a frame it indexes differently: the exact path below decides
            if got == table.pts[indices].tolist():
                frames = batch.data.numpy()
                if table.rotation and getattr(self._get_handle().metadata, "rotation", None) is None:
                    frames = upright(frames, table.rotation)  # a torchcodec too old to apply the display matrix
                return frames
            _TORCHCODEC_MISPLACES.add(table.path)
            log.debug("torchcodec returned other frames than asked for in %s; decoding it with PyAV", table.path)
        return decode_exact(table, indices, self.num_threads)


class DecordReader(VideoReader):
    """decord, as the official code uses it: its own random access, which is wrong on some files (see above)."""

    backend = "decord"

    def _library_errors(self) -> tuple[type[BaseException], ...]:
        import decord

        return (decord.DECORDError, RuntimeError)

    def _open(self) -> Any:
        import decord

        table = self.frames
        if (table.codec == "mpeg4" or table.container == "avi") and "warned" not in _DECORD_WARNED:
            _DECORD_WARNED.add("warned")
            warnings.warn(
                f"{self.path} is an MPEG-4 part 2 / AVI file: backend decord (the official code's decoder, kept for "
                f"bit-compatibility) returns wrong frames from such files when they have B-frames. Use backend auto "
                f"for exact frames, or list the affected files with `tcclip data check --backend decord "
                f"--verify-frames`",
                UserWarning,
                stacklevel=2,
            )
        try:
            handle = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=self.num_threads)
        except decord.DECORDError as err:  # its messages are C++ traces: say it plainly
            raise VideoDecodeError(self.path, "decord cannot open it; backend auto reads it if it is sound") from err
        if len(handle) not in (len(table), len(table) + table.dropped_tail):
            raise VideoDecodeError(
                self.path, f"decord counts {len(handle)} frames where the file has {len(table)}; use backend auto"
            )
        return handle

    def _decode(self, indices: list[int]) -> np.ndarray:
        import decord

        handle = self._get_handle()
        try:
            return handle.get_batch(indices).asnumpy()  # decord turns frames upright itself
        except decord.DECORDError:
            # decord stops at a damaged packet it reads ahead into (a last frame that does not decode); which
            # sampled views touch it is chance, so the frames come from the exact path rather than a broken verdict.
            if str(self.path) not in _DECORD_WARNED:
                _DECORD_WARNED.add(str(self.path))
                log.warning("decord cannot decode frames of %s; they are decoded exactly with PyAV", self.path)
            return decode_exact(self.frames, indices, self.num_threads)


BACKENDS: dict[str, type[VideoReader]] = {cls.backend: cls for cls in (TorchCodecReader, PyAVReader, DecordReader)}
"""Backend name -> reader, in order of preference."""


@functools.cache
def _torchcodec_problem() -> str | None:
    """Why torchcodec cannot decode here, or None when it can."""
    try:
        import torchcodec  # noqa: F401
    except ImportError:
        return "torchcodec is not installed"
    except (OSError, RuntimeError):
        return "torchcodec cannot load FFmpeg's shared libraries"
    try:
        from torchcodec._core import ops  # loading the C++ core needs FFmpeg's shared libraries
    except (ImportError, OSError, RuntimeError):
        return "torchcodec cannot load FFmpeg's shared libraries"
    if getattr(ops, "ffmpeg_major_version", None) is None:
        return "torchcodec cannot load FFmpeg's shared libraries"
    return None


@functools.cache
def _decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def available_backends() -> list[str]:
    """Backends that can decode on this machine, in order of preference (the first is what ``auto`` picks)."""
    usable = {"torchcodec": _torchcodec_problem() is None, "pyav": True, "decord": _decord_available()}
    return [name for name in BACKENDS if usable[name]]


def resolve_backend(backend: str | None) -> str:
    """The backend ``backend`` names (``auto`` or None: the first of :func:`available_backends`).

    Raises:
        UserError: an unknown name, or a backend that cannot run here (with the fix).
    """
    if backend in (None, DEFAULT_BACKEND):
        return available_backends()[0]
    if backend not in BACKENDS:
        raise UserError(
            f"unknown video backend {backend!r}", fix=f"Choose one of {DEFAULT_BACKEND}, {', '.join(BACKENDS)}."
        )
    if backend == "torchcodec" and (problem := _torchcodec_problem()) is not None:
        raise UserError(f"video backend torchcodec cannot run here: {problem}", fix=FFMPEG_FIX)
    if backend == "decord" and not _decord_available():
        raise UserError(
            "video backend decord is not installed",
            fix="Fix: `pip install decord` (x86-64 only), or choose backend auto for exact frames.",
        )
    return backend


def open_video(path: str | Path, backend: str | None = DEFAULT_BACKEND, num_threads: int = 1) -> VideoReader:
    """A reader for ``path`` with the named backend (see the module docstring); decodes lazily.

    Args:
        path: video file.
        backend: ``auto`` (default), ``torchcodec``, ``pyav`` or ``decord``.
        num_threads: decoder threads (1 inside DataLoader workers).

    Raises:
        VideoDecodeError: the file is missing or empty (other problems surface on first use).
        UserError: an unknown backend, or one that cannot run here.
    """
    return BACKENDS[resolve_backend(backend)](path, num_threads=num_threads)
