"""A tiny synthetic action-recognition dataset, written as real encoded videos.

Every class is a kind of motion of one shape over a noisy background (``MoveLeft``,
``RotateClockwise``, ``Grow``, ...). Colours, shape, size, start position, background and
noise are drawn at random for every video, and each class's positions, sizes, angles and
colours have the same distribution when you look at one frame only, so the class can only
be told from how frames change: a model that ignores time is at chance on it. Left and
right, up and down, clockwise and counter-clockwise, grow and shrink are exact time
reversals of each other. For demos that train from random weights, ``class_colours=True``
draws each class's shape in its own colour (:data:`CLASS_COLOURS`), which one frame shows.

The videos are encoded with PyAV the way the real benchmarks store them: H.264 in ``.mp4``
(with B-frames), MPEG-4 part 2 with an Xvid tag in ``.avi`` (HMDB-51, UCF-101) and VP9 in
``.webm`` (SSv2). With ``stamp_index=True`` the top rows of every frame carry the frame
index as an 8-bit code of large black/white blocks (:func:`read_index_stamp` reads it
back), so tests can check that a decoder returns exactly the frames it was asked for.

Layout written by :func:`make_synthetic_dataset`::

    out_dir/labels.csv                      id,name
    out_dir/train.txt, val.txt, test.txt    "<path relative to out_dir> <label>" per line
    out_dir/videos/<ClassName>/<ClassName>_<k>.<ext>
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from tcclip.utils.outputs import atomic_write_texts

logger = logging.getLogger(__name__)

CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "MoveLeft": (230, 40, 40),
    "MoveRight": (40, 90, 235),
    "MoveUp": (250, 220, 30),
    "MoveDown": (30, 190, 60),
    "RotateClockwise": (240, 130, 20),
    "RotateCounterclockwise": (150, 50, 220),
    "Grow": (20, 210, 220),
    "Shrink": (235, 60, 190),
    "StandStill": (245, 245, 245),
    "ChangeColor": (20, 20, 20),
    "BounceHorizontally": (140, 90, 40),
    "BounceVertically": (150, 230, 140),
}
"""Every class, in label order, with its shape colour under ``class_colours=True`` (see
:func:`make_synthetic_dataset`)."""

CLASS_NAMES: tuple[str, ...] = tuple(CLASS_COLOURS)
"""All classes, in label order; ``num_classes=n`` uses the first n."""

# Container extension -> (PyAV encoder, encoder options). Quality is high because the frames are tiny, and the
# fast presets keep generation quick; GOPs are short so that decoders must seek across several key frames.
ENCODERS: dict[str, tuple[str, dict[str, str]]] = {
    "mp4": ("libx264", {"crf": "18", "preset": "veryfast"}),  # veryfast keeps B-frames: decoders must reorder
    "avi": ("mpeg4", {}),  # constant quality via the bit rate set in write_video
    "webm": ("libvpx-vp9", {"crf": "20", "b": "0", "deadline": "realtime", "cpu-used": "8"}),
}
GOP_SIZE = 8

# Index stamp: 8 bits in 2 rows of 4 blocks across the full width of the top rows (bit b at row b // 4, column
# b % 4). Blocks are white for 1 and black for 0; big blocks survive 4:2:0 chroma subsampling and compression.
STAMP_BITS = 8
STAMP_COLUMNS = 4


@dataclass(frozen=True)
class SyntheticDataset:
    """Where :func:`make_synthetic_dataset` wrote things."""

    root: Path
    class_names: list[str]
    labels_csv: Path
    lists: dict[str, Path]
    """Split name ("train", "val", "test") -> annotation list."""
    num_videos: int


# ----------------------------------------------------------------------------------------------------------------
# Rendering


def _stamp_block_height(height: int) -> int:
    return max(4, height // 8)


def draw_index_stamp(frame: np.ndarray, index: int) -> None:
    """Write ``index`` (0..255) into the top rows of ``frame`` [H, W, 3] uint8, in place."""
    if not 0 <= index < 2**STAMP_BITS:
        raise ValueError(f"frame index {index} does not fit the {STAMP_BITS}-bit stamp")
    height, width = frame.shape[:2]
    bh, bw = _stamp_block_height(height), width // STAMP_COLUMNS
    for bit in range(STAMP_BITS):
        row, col = divmod(bit, STAMP_COLUMNS)
        frame[row * bh : (row + 1) * bh, col * bw : (col + 1) * bw] = 255 if (index >> bit) & 1 else 0


def read_index_stamp(frame: np.ndarray) -> int:
    """Read back the index written by :func:`draw_index_stamp` from a decoded frame [H, W, 3] uint8.

    Only the centre of each block is averaged and compared with mid-grey, which is robust to compression.
    """
    height, width = frame.shape[:2]
    bh, bw = _stamp_block_height(height), width // STAMP_COLUMNS
    my, mx = bh // 4, bw // 4
    luma = np.asarray(frame, dtype=np.float32).mean(axis=-1)
    index = 0
    for bit in range(STAMP_BITS):
        row, col = divmod(bit, STAMP_COLUMNS)
        block = luma[row * bh + my : (row + 1) * bh - my, col * bw + mx : (col + 1) * bw - mx]
        index |= int(block.mean() > 127.5) << bit
    return index


def _shape_polygon(kind: str) -> np.ndarray:
    """Convex outline [V, 2] (x, y) of radius ~1, deliberately without rotational symmetry below 180 degrees."""
    if kind == "bar":
        return np.array([[-1.0, -0.35], [1.0, -0.35], [1.0, 0.35], [-1.0, 0.35]])
    if kind == "triangle":  # isosceles, pointing along +x: no 120-degree symmetry
        return np.array([[1.0, 0.0], [-0.7, 0.6], [-0.7, -0.6]])
    if kind == "kite":
        return np.array([[1.0, 0.0], [0.0, 0.5], [-0.6, 0.0], [0.0, -0.5]])
    raise ValueError(f"unknown shape {kind!r}")


SHAPES = ("bar", "triangle", "kite")


def _fill_convex(canvas: np.ndarray, polygon: np.ndarray, colour: np.ndarray) -> None:
    """Paint the convex polygon [V, 2] (pixel x, y; any winding) onto canvas [H, W, 3] float, in place."""
    height, width = canvas.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5  # pixel centres
    inside_pos = np.ones((height, width), dtype=bool)
    inside_neg = np.ones((height, width), dtype=bool)
    for (x0, y0), (x1, y1) in zip(polygon, np.roll(polygon, -1, axis=0), strict=True):
        cross = (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0)
        inside_pos &= cross >= 0
        inside_neg &= cross <= 0
    canvas[inside_pos | inside_neg] = colour


def _random_colour(rng: np.random.Generator, away_from: np.ndarray, min_distance: float = 120.0) -> np.ndarray:
    """A random RGB colour at least ``min_distance`` from ``away_from`` so the shape stays visible."""
    while True:
        colour = rng.uniform(0, 255, size=3)
        if np.linalg.norm(colour - away_from) >= min_distance:
            return colour


def render_video(
    class_name: str,
    num_frames: int,
    height: int,
    width: int,
    rng: np.random.Generator,
    stamp: bool = False,
    colour: Sequence[float] | None = None,
) -> np.ndarray:
    """Render one video of ``class_name`` as uint8 frames [num_frames, height, width, 3].

    ``colour``: the shape's RGB colour (jittered by up to 20 per channel, the background kept away from it) instead
    of a random one: a cue that one frame shows.
    """
    if class_name not in CLASS_NAMES:
        raise ValueError(f"unknown synthetic class {class_name!r}; choose one of {', '.join(CLASS_NAMES)}")
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2 to show any motion, got {num_frames}")
    # With a stamp, the scene lives below the stamp rows so the shape is never hidden by them.
    top = STAMP_BITS // STAMP_COLUMNS * _stamp_block_height(height) if stamp else 0
    short = min(height - top, width)
    t = np.linspace(0.0, 1.0, num_frames)  # normalised time of each frame

    base, fixed, background, noise_std = _background(rng, height, width, colour)
    outline = _shape_polygon(SHAPES[rng.integers(len(SHAPES))])
    colour = _random_colour(rng, base) if fixed is None else fixed
    colours = np.repeat(colour[None], num_frames, axis=0)
    radius = np.full(num_frames, rng.uniform(0.12, 0.2) * short)
    angle = np.full(num_frames, rng.uniform(0, 2 * math.pi))
    margin = float(radius.max())
    cx = np.full(num_frames, rng.uniform(margin, width - margin))
    cy = np.full(num_frames, rng.uniform(top + margin, height - margin))

    # Motion. Every pair (left/right, grow/shrink, ...) is a time reversal, so one frame cannot tell them apart.
    if class_name in ("MoveLeft", "MoveRight", "BounceHorizontally"):
        span = width - 2 * margin
        dist = rng.uniform(0.5, 0.8) * span
        start = margin + rng.uniform(0, span - dist)
        path = {"MoveRight": t, "MoveLeft": 1 - t, "BounceHorizontally": np.sin(math.pi * t)}[class_name]
        if class_name == "BounceHorizontally" and rng.random() < 0.5:  # out to the left and back instead
            start, dist = start + dist, -dist
        cx = start + dist * path
    elif class_name in ("MoveUp", "MoveDown", "BounceVertically"):
        span = height - top - 2 * margin
        dist = rng.uniform(0.5, 0.8) * span
        start = top + margin + rng.uniform(0, span - dist)
        path = {"MoveDown": t, "MoveUp": 1 - t, "BounceVertically": np.sin(math.pi * t)}[class_name]
        if class_name == "BounceVertically" and rng.random() < 0.5:
            start, dist = start + dist, -dist
        cy = start + dist * path
    elif class_name in ("RotateClockwise", "RotateCounterclockwise"):
        # Image y points down, so an increasing angle turns clockwise on screen. At most 150 degrees over the
        # clip keeps every step between sampled frames well below the bar's 180-degree symmetry.
        turn = rng.uniform(0.5, 0.85) * math.pi
        sign = 1.0 if class_name == "RotateClockwise" else -1.0
        angle = angle[0] + sign * turn * t
    elif class_name in ("Grow", "Shrink"):
        factor = rng.uniform(1.6, 2.2)
        small = rng.uniform(0.08, 0.12) * short
        radius = small * factor ** (t if class_name == "Grow" else 1 - t)
        margin = float(radius.max())
        cx = np.full(num_frames, rng.uniform(margin, width - margin))
        cy = np.full(num_frames, rng.uniform(top + margin, height - margin))
    elif class_name == "ChangeColor":
        target = _random_colour(rng, base)
        colours = colour[None] * (1 - t[:, None]) + target[None] * t[:, None]
    # StandStill: nothing moves; only the noise changes.

    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for i in range(num_frames):
        rot = np.array([[math.cos(angle[i]), -math.sin(angle[i])], [math.sin(angle[i]), math.cos(angle[i])]])
        canvas = background.copy()
        _fill_convex(canvas, outline @ rot.T * radius[i] + np.array([cx[i], cy[i]]), colours[i])
        canvas += rng.normal(0.0, noise_std, size=canvas.shape)
        frames[i] = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
        if stamp:
            draw_index_stamp(frames[i], i)
    return frames


def _background(
    rng: np.random.Generator, height: int, width: int, colour: Sequence[float] | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, float]:
    """(base colour, the shape's jittered fixed colour or None, background [H, W, 3] float, noise std) of one video.

    The background is a random colour plus a linear gradient in a random direction (fresh Gaussian noise of the
    returned std is added to every frame); with a fixed shape colour the base colour is kept away from it.
    """
    base = rng.uniform(30, 225, size=3)
    fixed = None
    if colour is not None:
        fixed = np.clip(np.asarray(colour, dtype=np.float64) + rng.uniform(-20, 20, size=3), 0, 255)
        while np.linalg.norm(base - fixed) < 120.0:
            base = rng.uniform(30, 225, size=3)
    direction = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    ramp = (np.cos(direction) * xs / width + np.sin(direction) * ys / height)[..., None]
    background = base + rng.uniform(-30, 30, size=3) * ramp
    return base, fixed, background, float(rng.uniform(2.0, 8.0))


# ----------------------------------------------------------------------------------------------------------------
# Encoding


def write_video(path: str | Path, frames: np.ndarray, fps: int = 12, gop_size: int = GOP_SIZE) -> Path:
    """Encode uint8 frames [N, H, W, 3] (H, W even) to ``path``; the codec follows the extension (see ENCODERS)."""
    path = Path(path)
    ext = path.suffix.lstrip(".").lower()
    if ext not in ENCODERS:
        raise ValueError(f"cannot write {path}: unsupported extension .{ext}; use one of {', '.join(ENCODERS)}")
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    num, height, width = frames.shape[:3]
    if height % 2 or width % 2:
        raise ValueError(f"frame size {height}x{width} must be even for yuv420p; pick an even size")
    codec, options = ENCODERS[ext]
    path.parent.mkdir(parents=True, exist_ok=True)
    # Encoded under a temporary name and renamed when complete: a Ctrl-C or a full disk never leaves a truncated
    # video under a real name (the extension stays last: it chooses the container).
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(3).hex()}.{ext}")
    try:
        _encode(temp, frames, codec, options, ext, fps, gop_size)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def _encode(path: Path, frames: np.ndarray, codec: str, options, ext: str, fps: int, gop_size: int) -> None:
    num, height, width = frames.shape[:3]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps, options=dict(options))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop_size
        if ext == "avi":
            stream.codec_tag = "XVID"  # how HMDB-51 / UCF-101 files identify themselves
            stream.bit_rate = 24 * width * height * fps // 10  # ~2.4 bits/pixel: mpeg4's default 200 kb/s smears
        for i in range(num):
            frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush delayed frames


# ----------------------------------------------------------------------------------------------------------------
# Dataset


def _split_counts(videos_per_class: int) -> tuple[int, int, int]:
    """(train, val, test) videos per class: 60/20/20, with at least one val and one test video when possible."""
    if videos_per_class < 3:
        raise ValueError(f"videos_per_class must be >= 3 (one each for train, val and test), got {videos_per_class}")
    held_out = max(1, round(0.2 * videos_per_class))
    return videos_per_class - 2 * held_out, held_out, held_out


def _class_names(num_classes: int, classes: Sequence[str] | None) -> list[str]:
    """The dataset's classes in label order: `classes` (distinct known names) or the first `num_classes`."""
    if classes is None:
        if not 1 <= num_classes <= len(CLASS_NAMES):
            raise ValueError(f"num_classes must be in 1..{len(CLASS_NAMES)}, got {num_classes}")
        return list(CLASS_NAMES[:num_classes])
    unknown = [c for c in classes if c not in CLASS_NAMES]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise ValueError(
            f"classes {list(classes)} must be distinct names from {', '.join(CLASS_NAMES)}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    return list(classes)


def make_synthetic_dataset(
    out_dir: str | Path,
    num_classes: int = 10,
    videos_per_class: int = 10,
    formats: Sequence[str] = ("mp4", "avi", "webm"),
    num_frames: int | tuple[int, int] = (24, 32),
    size: int | tuple[int, int] = (48, 64),
    seed: int = 0,
    fps: int = 12,
    stamp_index: bool = False,
    classes: Sequence[str] | None = None,
    class_colours: bool = False,
) -> SyntheticDataset:
    """Write a seeded synthetic action dataset of real encoded videos to ``out_dir``.

    Args:
        out_dir: created if needed; existing files of the same names are overwritten.
        num_classes: 1..12; the first ``num_classes`` of :data:`CLASS_NAMES` (ignored when ``classes`` is given).
        videos_per_class: split 60/20/20 into train/val/test per class (at least 3).
        formats: container extensions, used in turn so every class has every format.
        num_frames: frames per video, or an inclusive (min, max) range drawn per video.
        size: frame size as one even int or (height, width).
        seed: the whole dataset (pixels, lengths, splits) is a function of the arguments.
        fps: frame rate written into the containers.
        stamp_index: write every frame's index into its top rows (see :func:`read_index_stamp`).
        classes: the classes by name, in label order, instead of the first ``num_classes``.
        class_colours: draw every class's shape in its own colour (:data:`CLASS_COLOURS`), so that one frame tells
            the class: an easy variant for demos of training from random weights. Off by default, where only the
            motion tells the classes apart.
    """
    class_names = _class_names(num_classes, classes)
    num_classes = len(class_names)
    unknown = [f for f in formats if f not in ENCODERS]
    if unknown or not formats:
        raise ValueError(f"formats {list(formats)} must be a non-empty subset of {list(ENCODERS)}")
    lo, hi = (num_frames, num_frames) if isinstance(num_frames, int) else tuple(num_frames)
    if not 2 <= lo <= hi:
        raise ValueError(f"num_frames must be >= 2 (or a range lo <= hi), got {num_frames}")
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if min(height, width) < MIN_SIZE or height % 2 or width % 2:
        raise ValueError(f"--size must be even and at least {MIN_SIZE} pixels a side, got {height}x{width}")
    if fps < 1:
        raise ValueError(f"--fps must be >= 1, got {fps}")
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise ValueError(f"--out {root}: is a file, not a folder; give a folder (it is created if missing)")
    splits = dict(zip(("train", "val", "test"), _split_counts(videos_per_class), strict=True))

    root.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {name: [] for name in splits}
    started = time.perf_counter()
    for label, name in enumerate(class_names):
        # One independent stream per video, so a video does not change when others are added or removed.
        for k in range(videos_per_class):
            rng = np.random.default_rng([seed, label, k])
            ext = formats[(label + k) % len(formats)]
            count = int(rng.integers(lo, hi + 1))
            rel = Path("videos") / name / f"{name}_{k:03d}.{ext}"
            colour = CLASS_COLOURS[name] if class_colours else None
            frames = render_video(name, count, height, width, rng, stamp=stamp_index, colour=colour)
            write_video(root / rel, frames, fps=fps)
            split = "train" if k < splits["train"] else "val" if k < splits["train"] + splits["val"] else "test"
            lines[split].append(f"{rel.as_posix()} {label}")

    labels_csv = root / "labels.csv"
    lists = {split: root / f"{split}.txt" for split in lines}
    atomic_write_texts(
        {
            labels_csv: "id,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(class_names)),
            **{lists[split]: "".join(row + "\n" for row in rows) for split, rows in lines.items()},
        }
    )
    num_videos = num_classes * videos_per_class
    logger.info("wrote %d synthetic videos to %s in %.1f s", num_videos, root, time.perf_counter() - started)
    return SyntheticDataset(
        root=root, class_names=class_names, labels_csv=labels_csv, lists=lists, num_videos=num_videos
    )


MIN_SIZE = 16
"""Smallest frame side (pixels) of a synthetic video: room for a shape that moves."""
