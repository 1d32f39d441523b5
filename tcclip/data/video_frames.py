"""What "the frames of a video" are: one definition that every decoding backend follows, and the index that
proves a reader keeps to it.

**Frame i is the i-th picture that a plain sequential FFmpeg decode of the file outputs** (single-threaded,
errors concealed as FFmpeg conceals them), numbered from 0: what ``ffmpeg -i FILE``, OpenCV and video players
show. Nothing else defines a frame: not packet counts, not header counts, not timestamps.

Why not timestamps: in the AVIs of UCF-101 and HMDB-51 (MPEG-4 part 2 written by XviD/DivX with B-frames) a
packet may hold two pictures ("packed bitstream"), placeholder packets of a few bytes (N-VOPs) produce none,
some placeholders are flagged as key frames, and the timestamps the decoder attaches to its pictures are not in
display order (13, 15, 14, 16, ...). H.264 with B-frames in AVI behaves the same way. Any scheme that names a
frame by its packet's timestamp reads the wrong pictures from these files.

The frame index (:class:`VideoFrames`, built by :func:`read_video_frames`) comes from one sequential decode of
the whole file. For every picture it records

- its *label*: the timestamp the decoder attached to it (the pts of the packet that made it come out); labels
  only *name* pictures, so that a decode started elsewhere can recognise them;
- its *digest*: a hash of the decoded picture's pixels (planes as decoded, before any colour conversion);
- whether the decoder flagged it as a key frame (a place where a decode may restart).

Random access (:func:`tcclip.data.checked_decode.decode_exact`) seeks to a key picture, decodes forward, picks the
wanted pictures by label, and **checks every picture it returns against its digest**. A seek is therefore used
only where it is proven, for this file and this FFmpeg, to give the very pictures of the sequential decode;
anything else (a placeholder flagged as key frame, an open GOP, a decoder that behaves differently after a
seek) is caught and that file is decoded from its start. Files whose pictures carry no labels, or repeated
ones, are always decoded from the start.

The index is cached per process and on disk (:func:`cache_dir`), keyed by the file's path, size, modification time
and the FFmpeg version that decoded it, so each file is decoded in full once, not once per worker or epoch.

Also judged here, once per file:

- **Not a video**: FFmpeg "plays" text files, subtitles and single images (its tty, subtitle and image
  demuxers); they are refused, not classified.
- **Truncated**: the file stops early in *time*: its last packet ends short of the duration the container
  declares (for AVI, the header's frame count, which a cut file keeps) by more than two frames and 5%.
  Zero-size "repeat the previous frame" chunks of variable-frame-rate AVIs therefore never look truncated.
- **Decode errors**: packets whose decoding failed or logged an error (damage FFmpeg concealed), and pictures
  flagged as corrupt. Such a file is read, as players read it; ``tcclip data check`` lists it.
- **Rotation** (phones): frames are returned upright (:attr:`VideoFrames.rotation`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
import zlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.logging
import numpy as np

from tcclip.utils.outputs import give_usual_mode

log = logging.getLogger(__name__)

TRUNCATION_SLACK_FRAMES = 2
"""Missing time of up to this many frames is rounding, not truncation (with the relative slack below)."""
TRUNCATION_SLACK_FRACTION = 0.05

NO_LABEL = np.iinfo(np.int64).min
"""Label of a picture the decoder attached no timestamp to."""

INDEX_FORMAT = 2
"""Version of the on-disk index; a change makes earlier cache files unused."""

CACHE_ENV = "TCCLIP_CACHE_DIR"
"""Environment variable: folder of tcclip's caches (``none`` or ``off``: keep frame indices in memory only)."""

# FFmpeg demuxers that open files which are not videos (text rendered as pictures, subtitles, single images).
_NOT_VIDEO_DEMUXERS = {
    "tty",
    "bin",
    "xbin",
    "adf",
    "idf",
    "image2",
    "image2pipe",
    "srt",
    "ass",
    "webvtt",
    "subviewer",
    "subviewer1",
    "microdvd",
    "mpl2",
    "jacosub",
    "sami",
    "realtext",
    "stl",
    "vplayer",
    "pjs",
    "lrc",
    "aqtitle",
    "mcc",
    "scc",
    "lavfi",
    "ffmetadata",
}
_NOT_VIDEO_CODECS = {"ansi", "bintext", "xbin", "idf", "text"}


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
    """The frame index of one video file (see the module docstring). Arrays, not lists of Python ints: a worker
    caches the indices of thousands of videos."""

    path: str
    labels: np.ndarray
    """int64 [frames]: the timestamp the decoder attached to each picture, in output order (:data:`NO_LABEL`
    where none). A name, not a display time: not in order for B-frame AVIs."""
    digests: np.ndarray
    """uint64 [frames]: hash of each decoded picture's pixels (:func:`picture_digest`)."""
    keys: np.ndarray
    """int64: indices of the pictures the decoder flagged as key frames (where a decode may restart)."""
    times: np.ndarray
    """float64 [frames]: presentation time of each frame in seconds, increasing (the i-th smallest label)."""
    time_base: Fraction
    frame_rate: Fraction
    """The stream's average frame rate as the container declares it (else FFmpeg's guess, else 25): how long the
    last frame is shown (:meth:`duration`), and the clock of files whose pictures carry no timestamps."""
    rotation: int
    """Counter-clockwise degrees (a multiple of 90) that turn the stored frames upright."""
    codec: str
    container: str
    declared_frames: int
    """The header's frame count (0 if none): for reports only, it may count ticks or undecodable samples."""
    packets: int
    """Non-empty video packets in the file (a picture count only for simple files)."""
    decode_errors: int
    """Packets whose decoding failed, logged an error (damage the decoder concealed) or gave a corrupt picture."""

    def __len__(self) -> int:
        return len(self.labels)

    def seconds(self, index: int) -> float:
        """Presentation time of frame ``index`` in seconds."""
        return float(self.times[index])

    def duration(self) -> float:
        """Seconds from the first frame's display time to the end of the last frame (shown for one frame period)."""
        return (float(self.times[-1]) - float(self.times[0])) + 1.0 / float(self.frame_rate)

    @functools.cached_property
    def seekable(self) -> bool:
        """Every picture carries a label of its own, so that a decode started at a key frame can recognise them."""
        labels = self.labels
        return bool(len(labels)) and not bool((labels == NO_LABEL).any()) and len(np.unique(labels)) == len(labels)

    @functools.cached_property
    def regular(self) -> bool:
        """Pictures come out with increasing labels (timestamps in display order, one picture per label) and the
        file decoded without errors: readers that number frames by sorted timestamps (torchcodec) agree here."""
        return self.seekable and bool((np.diff(self.labels) > 0).all()) and self.decode_errors == 0

    @functools.cached_property
    def index_of_label(self) -> dict[int, int]:
        """label -> frame index (seekable files)."""
        return {int(label): i for i, label in enumerate(self.labels.tolist())}


def picture_digest(frame: av.VideoFrame) -> int:
    """A 64-bit checksum of a decoded picture's pixels, plane by plane in the format it was decoded to (no colour
    conversion; the padding at the end of each row, which holds whatever the allocator left, is left out).

    CRC-32 and Adler-32 side by side: a few times cheaper than a cryptographic hash, and it only has to tell the
    picture asked for from another picture of the same video, not resist an adversary.
    """
    crc = zlib.crc32(f"{frame.format.name} {frame.width}x{frame.height}".encode())
    adler = 1
    for index, plane in enumerate(frame.planes):
        components = [c for c in frame.format.components if c.plane == index]
        pixel_bytes = sum((c.bits + 7) // 8 for c in components) or 1
        rows = np.frombuffer(plane, np.uint8)[: plane.line_size * plane.height].reshape(plane.height, -1)
        data = np.ascontiguousarray(rows[:, : min(plane.width * pixel_bytes, plane.line_size)]).data
        crc, adler = zlib.crc32(data, crc), zlib.adler32(data, adler)
    return crc << 32 | adler


def _stream_end(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int | None:
    """The end time the container declares for the video stream, in stream time-base units (None if unknown).

    For AVI the header's frame count (in ticks of the stream's time base) is what a cut file keeps: the demuxer
    derives the stream's duration from the index it finds, which a cut file lacks.
    """
    ends = []
    if container.format.name.split(",")[0] == "avi" and stream.frames:
        ends.append(int(stream.start_time or 0) + int(stream.frames))
    if stream.duration:
        ends.append(int(stream.start_time or 0) + int(stream.duration))
    elif container.duration:
        start = container.start_time or 0
        ends.append(int(Fraction(start + container.duration, av.time_base) / stream.time_base))
    return max(ends) if ends else None


def _display_rotation(frame: av.VideoFrame) -> int:
    rotation = int(round(getattr(frame, "rotation", 0) or 0))
    return (rotation // 90 * 90) % 360 if rotation % 90 == 0 else 0  # odd angles are not turned (rare, skew)


def decode_packets(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    needed: set[int] | None = None,
):
    """Decoded pictures from the stream's current position to its end; a packet the decoder reports an error
    for is passed over, as ffmpeg does (its picture, if any, comes out concealed with a later packet).

    With ``needed`` (labels), the decoder skips the non-reference pictures of packets whose label is not
    needed: no other picture is predicted from them, so the needed pictures come out the same (the digest
    check of the caller proves it), and B-frames cost nothing.
    """
    context = stream.codec_context
    for packet in container.demux(stream):
        if needed is not None:
            context.skip_frame = "DEFAULT" if packet.pts is None or packet.pts in needed else "NONREF"
        try:
            yield from packet.decode()
        except av.error.FFmpegError:
            continue


def seek(container: av.container.InputContainer, stream: av.video.stream.VideoStream, label: int) -> None:
    """Position the demuxer at the key packet at or before timestamp ``label`` (the index of some containers is in
    decode timestamps, which are smaller: then an earlier one)."""
    container.seek(label, stream=stream, backward=True, any_frame=False)


def _refuse_non_video(path: str, container: av.container.InputContainer) -> av.video.stream.VideoStream:
    demuxer = container.format.name.split(",")[0]
    if not container.streams.video:
        raise VideoDecodeError(path, "no video stream (not a video file?)")
    stream = container.streams.video[0]
    codec = stream.codec_context.name
    if demuxer in _NOT_VIDEO_DEMUXERS or demuxer.endswith("_pipe") or codec in _NOT_VIDEO_CODECS:
        what = "an image" if demuxer.startswith("image2") or demuxer.endswith("_pipe") else "text or subtitles"
        raise VideoDecodeError(
            path, f"not a video: FFmpeg reads it as {what} (format {demuxer}, codec {codec}); give a video file"
        )
    return stream


def _read(path: str) -> VideoFrames:
    level = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)  # the decoder's error messages count damaged pictures (see below)
    try:
        with av.logging.Capture(local=True) as messages:
            return _index(path, messages)
    finally:
        av.logging.set_level(level)


def _index(path: str, messages: list[Any]) -> VideoFrames:
    """One sequential decode of ``path``; ``messages`` fills with FFmpeg's log lines of this thread as it goes (a
    decoder that conceals damage says so there, without failing)."""
    try:
        with av.open(path) as container:
            stream = _refuse_non_video(path, container)
            stream.codec_context.thread_count = 1  # pictures must not depend on threading (slices conceal apart)
            labels: list[int] = []
            digests: list[int] = []
            keys: list[int] = []
            damaged = 0
            packets, last_end, step = 0, None, None
            rotation = None
            for packet in container.demux(stream):
                if packet.size:
                    packets += 1
                    stamp = packet.pts if packet.pts is not None else packet.dts
                    if stamp is not None:
                        end = stamp + int(packet.duration or 0)
                        last_end = end if last_end is None else max(last_end, end)
                        if packet.duration:
                            step = int(packet.duration) if step is None else min(step, int(packet.duration))
                logged = len(messages)
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError:
                    damaged += 1
                    continue
                damaged += len(messages) > logged or any(getattr(f, "is_corrupt", False) for f in decoded)
                for frame in decoded:
                    if rotation is None:
                        rotation = _display_rotation(frame)
                    if frame.key_frame:
                        keys.append(len(labels))
                    labels.append(NO_LABEL if frame.pts is None else int(frame.pts))
                    digests.append(picture_digest(frame))
            time_base = Fraction(stream.time_base) if stream.time_base else Fraction(1, 25)
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            codec, fmt = stream.codec_context.name, container.format.name.split(",")[0]
            declared = int(stream.frames or 0)
            declared_end = _stream_end(container, stream)
    except av.error.FFmpegError as err:
        raise VideoDecodeError(path, f"cannot be read as a video ({plain_reason(err)})") from err
    if not labels:
        raise VideoDecodeError(path, "no frames: no picture decodes (an empty or damaged video stream)")
    label_array = np.array(labels, dtype=np.int64)
    if (label_array == NO_LABEL).any():
        times = np.arange(len(labels), dtype=np.float64) / float(rate)
    else:
        times = np.sort(label_array).astype(np.float64) * float(time_base)
    if declared_end is not None and last_end is not None:
        ordered = np.sort(label_array[label_array != NO_LABEL])
        gaps = np.diff(ordered)
        tick = int(np.median(gaps)) if gaps.size else (step or 1)
        length = declared_end - (int(ordered[0]) if ordered.size else 0)
        missing = declared_end - last_end
        if missing > max(TRUNCATION_SLACK_FRAMES * max(tick, 1), TRUNCATION_SLACK_FRACTION * length):
            end_s, declared_s = float(last_end * time_base), float(declared_end * time_base)
            raise VideoDecodeError(
                path,
                f"truncated: its data ends at {end_s:.2f} s but the file declares {declared_s:.2f} s "
                "(an interrupted download or copy: fetch the file again)",
            )
    return VideoFrames(
        path=path,
        labels=label_array,
        digests=np.array(digests, dtype=np.uint64),
        keys=np.array(keys, dtype=np.int64),
        times=times,
        time_base=time_base,
        frame_rate=Fraction(rate),
        rotation=rotation or 0,
        codec=codec,
        container=fmt,
        declared_frames=declared,
        packets=packets,
        decode_errors=damaged,
    )


# ----------------------------------------------------------------------------------------------------- caching


def cache_dir() -> Path | None:
    """Folder of the on-disk frame indices: ``$TCCLIP_CACHE_DIR/frame-index`` (``none``/``off``: no disk cache),
    else ``$XDG_CACHE_HOME/tcclip/frame-index`` or ``~/.cache/tcclip/frame-index``."""
    value = os.environ.get(CACHE_ENV)
    if value is not None and value.strip().lower() in {"", "none", "off", "0"}:
        return None
    if value:
        return Path(value) / "frame-index"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tcclip" / "frame-index"


def _cache_file(path: str, size: int, mtime_ns: int) -> Path | None:
    folder = cache_dir()
    if folder is None:
        return None
    codec_version = ".".join(map(str, av.library_versions.get("libavcodec", ())))
    key = f"{INDEX_FORMAT}\0{os.path.realpath(path)}\0{size}\0{mtime_ns}\0{codec_version}"
    return folder / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.npz"


_ARRAYS = ("labels", "digests", "keys", "times")
_FIELDS = ("rotation", "codec", "container", "declared_frames", "packets", "decode_errors")


def _load(file: Path, path: str) -> VideoFrames | None:
    try:
        with np.load(file, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {name: data[name] for name in _ARRAYS}
        fractions = {name: Fraction(meta[name]) for name in ("time_base", "frame_rate")}
        return VideoFrames(path=path, **fractions, **arrays, **{k: meta[k] for k in _FIELDS})
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError, ZeroDivisionError):
        return None  # unreadable or from another version: index again (and overwrite it)


_CACHE_WARNED: list[str] = []


def _store(file: Path, frames: VideoFrames) -> None:
    meta = {k: getattr(frames, k) for k in _FIELDS} | {k: str(getattr(frames, k)) for k in ("time_base", "frame_rate")}
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=".", suffix=".npz.partial")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, meta=np.array(json.dumps(meta)), **{name: getattr(frames, name) for name in _ARRAYS})
            give_usual_mode(tmp)  # mkstemp's file is private; a cache shared on a cluster is read by everyone
            os.replace(tmp, file)  # workers indexing the same file at once each write whole files
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        if not _CACHE_WARNED:
            _CACHE_WARNED.append(str(file.parent))
            log.warning(
                "frame indices cannot be cached in %s (%s); each process decodes every file once more. "
                "Set %s to a writable folder (or to 'none' to silence this)",
                file.parent,
                plain_reason(err),
                CACHE_ENV,
            )


def _mode_file(path: str) -> Path | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    file = _cache_file(path, stat.st_size, stat.st_mtime_ns)
    return None if file is None else file.with_suffix(".mode")


def recall_access(path: str) -> str | None:
    """How an earlier process found this file's pictures are reached (see ``checked_decode.decode_exact``), if any."""
    file = _mode_file(path)
    try:
        return None if file is None else file.read_text().strip() or None
    except OSError:
        return None


def remember_access(path: str, mode: str) -> None:
    """Keep beside the file's index how its pictures are reached, so that other workers and runs need not learn it
    again (best effort: an unwritable cache only costs that)."""
    file = _mode_file(path)
    if file is None:
        return
    try:
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=".", suffix=".mode.partial")
        with os.fdopen(fd, "w") as f:
            f.write(mode)
        os.replace(tmp, file)
    except OSError:
        pass


@functools.lru_cache(maxsize=16384)
def _read_cached(path: str, size: int, mtime_ns: int) -> VideoFrames:
    file = _cache_file(path, size, mtime_ns)
    if file is not None and file.is_file():
        frames = _load(file, path)
        if frames is not None:
            return frames
    frames = _read(path)
    if file is not None:
        _store(file, frames)
    return frames


def read_video_frames(path: str | Path) -> VideoFrames:
    """The frame index of ``path`` (see the module docstring); cached while the file is unchanged.

    Raises:
        VideoDecodeError: missing, empty or unreadable file, not a video, no video stream, no picture, truncated.
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
