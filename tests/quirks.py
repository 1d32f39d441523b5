"""Small videos with the quirks of real footage, every frame carrying its index, for decoder tests.

Each writer encodes frames rendered by :func:`tcclip.data.synth.render_video` (with the index stamp of
:func:`tcclip.data.synth.draw_index_stamp`) through PyAV and then, where the quirk needs it, edits the file's
bytes the way real files come damaged. :func:`write_quirk_video` returns the path and the frames a sequential
decode yields, so a test can tell whether a decoder returned exactly the frames it was asked for:

- ``bframes_avi``: MPEG-4 part 2 (Xvid tag) with two B-frames between references and open GOPs, in AVI: the
  format of UCF-101 and HMDB-51, on which key-frame seeking misplaces frames around every key frame.
- ``vfr_avi``: variable frame rate AVI: 68 coded frames spread over 444 ticks, the gaps filled with zero-size
  "repeat the previous frame" chunks (old screen and time-lapse captures). Complete, though the header counts
  444 chunks.
- ``missing_last_frame_mp4``: H.264 MP4 whose last sample is zeroed: the container declares one frame more
  than decodes.
- ``damaged_slice_mp4``: H.264 MP4 with four slices per frame; the bottom slice of one frame is overwritten, so
  that frame decodes with concealed errors (as after a bad sector or a broken transfer).
- ``rotated_mp4``: a phone-style video stored landscape with a display matrix that turns it by 90 degrees.
- ``offset_start_mp4``: an MP4 whose first frame is presented at 1.5 s (a clip cut from a longer recording).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from tcclip.data.synth import render_video


@dataclass(frozen=True)
class QuirkVideo:
    """A written quirk video."""

    path: Path
    num_frames: int
    """Frames that decode, in presentation order; frame i carries stamp i."""
    rotation: int = 0
    """Counter-clockwise degrees the display matrix turns the stored frames by."""


def _frames(num: int, height: int, width: int, seed: int) -> np.ndarray:
    return render_video("MoveRight", num, height, width, np.random.default_rng(seed), stamp=True)


def _encode(
    path: Path,
    frames: np.ndarray,
    codec: str,
    rate: int,
    pts: list[int] | None = None,
    options: dict[str, str] | None = None,
    configure: Callable[[av.video.stream.VideoStream], None] | None = None,
) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, options=options or {})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if configure is not None:
            configure(stream)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i if pts is None else pts[i]
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _video_packets(path: Path) -> list[tuple[int, int, bool]]:
    """(byte offset, size, key frame) of every non-empty video packet, in decode order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [(int(p.pos), int(p.size), p.is_keyframe) for p in container.demux(stream) if p.size > 0]


def _overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _bframes_avi(path: Path, size: int) -> QuirkVideo:
    def configure(stream: av.video.stream.VideoStream) -> None:
        stream.codec_context.gop_size = 12
        stream.codec_context.max_b_frames = 2
        stream.codec_tag = "XVID"
        stream.bit_rate = 400_000

    _encode(path, _frames(200, size, size, 1), "mpeg4", 25, configure=configure)
    return QuirkVideo(path, 200)


def _vfr_avi(path: Path, size: int) -> QuirkVideo:
    # 68 frames at irregular ticks over 444 ticks; the AVI muxer fills each gap with zero-size chunks.
    rng = np.random.default_rng(2)
    ticks = sorted({0, 443, *rng.choice(np.arange(1, 443), size=66, replace=False).tolist()})

    def configure(stream: av.video.stream.VideoStream) -> None:
        stream.codec_context.gop_size = 10
        stream.codec_tag = "XVID"
        stream.bit_rate = 400_000

    _encode(path, _frames(len(ticks), size, size, 2), "mpeg4", 30, pts=ticks, configure=configure)
    return QuirkVideo(path, len(ticks))


def _missing_last_frame_mp4(path: Path, size: int) -> QuirkVideo:
    # No B-frames, so the last sample in the file is the last frame shown; zeroing it leaves the sample table
    # (and so the declared count) intact while the frame no longer decodes.
    options = {"preset": "veryfast", "crf": "18", "bf": "0", "g": "8"}
    _encode(path, _frames(40, size, size, 3), "libx264", 25, options=options)
    offset, length, _ = _video_packets(path)[-1]
    _overwrite(path, offset, bytes(length))
    return QuirkVideo(path, 39)


def _damaged_slice_mp4(path: Path, size: int) -> QuirkVideo:
    options = {"preset": "veryfast", "crf": "18", "g": "12", "x264-params": "slices=4:scenecut=0"}
    _encode(path, _frames(36, size, size, 4), "libx264", 25, options=options)
    packets = _video_packets(path)
    # A frame in the middle of the video that is not a key frame: decoders that start from its key frame conceal
    # the damage the same way, whichever frames they decoded before.
    offset, length, _ = next(p for p in packets[len(packets) // 2 :] if not p[2])
    tail = max(4, length // 5)  # the end of the packet is inside the last (bottom) slice
    _overwrite(path, offset + length - tail, bytes((7 * i + 3) % 256 for i in range(tail)))
    return QuirkVideo(path, 36)


def _rotated_mp4(path: Path, size: int) -> QuirkVideo:
    def configure(stream: av.video.stream.VideoStream) -> None:
        stream.set_display_rotation(90)

    frames = _frames(30, size, size + size // 2, 5)  # stored landscape, shown portrait
    _encode(path, frames, "libx264", 30, options={"preset": "veryfast", "crf": "18", "g": "10"}, configure=configure)
    return QuirkVideo(path, 30, rotation=90)


def _offset_start_mp4(path: Path, size: int) -> QuirkVideo:
    pts = [45 + i for i in range(30)]  # first frame at 45 / 30 = 1.5 s
    _encode(path, _frames(30, size, size, 6), "libx264", 30, pts=pts, options={"preset": "veryfast", "g": "10"})
    return QuirkVideo(path, 30)


QUIRKS: dict[str, tuple[str, Callable[[Path, int], QuirkVideo]]] = {
    "bframes_avi": ("avi", _bframes_avi),
    "vfr_avi": ("avi", _vfr_avi),
    "missing_last_frame_mp4": ("mp4", _missing_last_frame_mp4),
    "damaged_slice_mp4": ("mp4", _damaged_slice_mp4),
    "rotated_mp4": ("mp4", _rotated_mp4),
    "offset_start_mp4": ("mp4", _offset_start_mp4),
}
"""Quirk name -> (container extension, writer)."""


def write_quirk_video(kind: str, folder: str | Path, size: int = 32) -> QuirkVideo:
    """Write the quirk video ``kind`` (see the module docstring) into ``folder``; frames are ``size`` px high."""
    if kind not in QUIRKS:
        raise ValueError(f"unknown quirk {kind!r}; choose one of {', '.join(QUIRKS)}")
    ext, writer = QUIRKS[kind]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return writer(folder / f"{kind}.{ext}", size)
