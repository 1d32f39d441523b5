"""Decode chosen frames of a video file into a uint8 tensor, exactly, with torchcodec or PyAV (or decord on request).

>>> reader = open_video("v_Archery_g01_c01.avi")                  # nothing is decoded yet
>>> frames = reader.get_frames(test_indices(len(reader), 8)[0])   # uint8 RGB [8, H, W, 3], upright
>>> for index, frame in reader.iter_frames(range(0, len(reader), 5)):  # long footage: one frame at a time
...     ...

Every backend follows one definition of a video's frames (:mod:`tcclip.data.video_frames`): frame i is the i-th
picture of a sequential FFmpeg decode; ``len(reader)`` counts them, and ``get_frames`` returns exactly the frames
asked for, in the order asked (repeats allowed), turned upright when the file carries a rotation. Anything that
prevents that raises :class:`VideoDecodeError` naming the file and the reason (missing, empty, not a video, no
video stream, no picture, truncated); nothing is returned silently instead.

Backends (``backend=`` of :func:`open_video`, ``data.init_args.backend`` in configs):

- ``auto`` (default): ``torchcodec`` where it works on this machine, else ``pyav``: the faster exact reader (the
  README's data-loading table; both read the AVIs of UCF-101 and HMDB-51 by the same ``pyav`` path).
- ``pyav``: FFmpeg through PyAV (:mod:`tcclip.data.checked_decode`). Seeks to a key picture, decodes forward
  (skipping the pictures nobody asked for where that is proven harmless) and checks every returned picture against
  the digest of the sequential decode; a file where seeking does not give the same pictures is decoded from its
  start.
- ``torchcodec``: torchcodec's exact seek mode, used where the frame index shows that its numbering (by sorted
  timestamps) is the sequential decode's, with every returned timestamp checked; other files go to the ``pyav``
  path. Needs ``pip install torchcodec`` and FFmpeg's shared libraries.
- ``decord``: the decoder of the official TC-CLIP code, kept only for bit-compatibility with published numbers.
  Its random access returns wrong frames from AVIs with B-frames (the files of UCF-101 and HMDB-51); opening an
  AVI or MPEG-4 part 2 file warns. ``tcclip data check --verify-frames`` finds the affected files.

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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import av
import numpy as np
import torch

from tcclip.data.checked_decode import decode_exact, decode_sequential, stream_exact
from tcclip.data.video_frames import VideoDecodeError, VideoFrames, plain_reason, read_video_frames, upright
from tcclip.utils.errors import UserError

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "VideoDecodeError",
    "VideoReader",
    "available_backends",
    "declared_duration",
    "decode_exact",
    "decode_sequential",
    "open_video",
    "resolve_backend",
    "stream_exact",
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

CHUNK_FRAMES = 16
"""Frames decoded per call by :meth:`VideoReader.iter_frames` where a backend decodes in batches (torchcodec,
decord): a bound on memory, large enough for batched decoding to pay."""


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

    def iter_frames(self, indices: Sequence[int]) -> Iterator[tuple[int, torch.Tensor]]:
        """Frames at increasing ``indices``, one at a time and in order, as ``(index, uint8 RGB [H, W, 3])``, upright.

        For long footage (``tcclip timeline``): memory holds one chunk of decoded frames (:data:`CHUNK_FRAMES`),
        never the whole selection, and the file is decoded forward once instead of once per chunk where the backend
        allows it. The frames are exactly those ``get_frames`` returns.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            return
        if (np.diff(idx) <= 0).any():
            raise ValueError(f"{self.path}: iter_frames needs increasing indices")
        num = len(self)
        if idx[0] < 0 or idx[-1] >= num:
            raise IndexError(f"{self.path}: frame indices must be in [0, {num}), got {idx[0]}..{idx[-1]}")
        try:
            for index, frame in self._stream(idx.tolist()):
                yield index, torch.from_numpy(np.ascontiguousarray(frame))
        except VideoDecodeError:
            raise
        except self._library_errors() as err:
            raise VideoDecodeError(self.path, f"cannot be decoded ({plain_reason(err)})") from err

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

    def _stream(self, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        """Upright frames at sorted, unique, in-range ``indices``, in order; by default ``_decode`` by chunks."""
        for start in range(0, len(indices), CHUNK_FRAMES):
            chunk = indices[start : start + CHUNK_FRAMES]
            yield from zip(chunk, self._decode(chunk), strict=True)


class PyAVReader(VideoReader):
    """PyAV: key-frame seek and forward decoding, frames matched by timestamp (:func:`decode_exact`)."""

    backend = "pyav"

    def _decode(self, indices: list[int]) -> np.ndarray:
        return decode_exact(self.frames, indices, self.num_threads)

    def _stream(self, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        return stream_exact(self.frames, indices, self.num_threads)


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
        # torchcodec numbers frames by sorted timestamps: the same pictures only where labels are in display order.
        if table.regular and table.path not in _TORCHCODEC_MISPLACES:
            try:
                batch = self._get_handle().get_frames_at(indices)
                got = [round(s / table.time_base) for s in batch.pts_seconds.tolist()]
            except (RuntimeError, ValueError, IndexError):
                got = None  # e.g. a frame it indexes differently: the exact path below decides
            if got == table.labels[indices].tolist():
                frames = batch.data.numpy()
                if table.rotation and getattr(self._get_handle().metadata, "rotation", None) is None:
                    frames = upright(frames, table.rotation)  # a torchcodec too old to apply the display matrix
                return frames
            _TORCHCODEC_MISPLACES.add(table.path)
            log.debug("torchcodec returned other frames than asked for in %s; decoding it with PyAV", table.path)
        return decode_exact(table, indices, self.num_threads)

    def _stream(self, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        table = self.frames
        if table.regular and table.path not in _TORCHCODEC_MISPLACES:
            return super()._stream(indices)  # chunks; torchcodec keeps decoding forward between them
        return stream_exact(table, indices, self.num_threads)


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
        if len(handle) < len(table):
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


def declared_duration(path: str | Path) -> float:
    """Seconds of video the container declares, read from its header without decoding (0 when it declares none or
    cannot be opened: the frame index says what is wrong with such a file). For estimates before the index is
    built, such as a progress bar's total; the frame index is the truth."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return 0.0
            stream = container.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            return float(container.duration or 0) / 1e6
    except (av.error.FFmpegError, OSError):
        return 0.0
