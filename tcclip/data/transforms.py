"""Video transforms on uint8 frame tensors (the TC-CLIP training and test recipe), vectorised with torch ops.

Input: decoded frames, uint8 RGB [T, H, W, 3] (test: also [num_clips, T, H, W, 3]).
Output: float32 [V, T, 3, S, S], normalised with CLIP's mean/std on the 0..255 scale, where
S = ``input_size`` and V is the number of views (training: 1; testing: clips x crops).

Training (:class:`TrainTransform`), with one set of random parameters per video:

1. resize the short side to ``int(256 / 224 * S)``;
2. multi-scale crop: with ``base`` the short side, the crop height and width are each one of
   ``int(base * s)`` for s in ``scales`` = (1, 0.875, 0.75, 0.66), with their positions in that list
   at most ``max_aspect_gap`` = 1 apart, the pair drawn uniformly among the allowed pairs; a side
   within 3 pixels of S is snapped to S. The crop's top-left corner is drawn uniformly from a fixed
   grid of 5 positions: with ``dy = (H - h) // 4`` and ``dx = (W - w) // 4``, (0, 0), (0, 4 dx),
   (4 dy, 0), (4 dy, 4 dx) (the four corners) and (2 dy, 2 dx) (the centre);
3. resize the crop to S x S;
4. horizontal flip with p = 0.5 if ``flip`` (pass ``flip=False`` for SSv2, where direction is the label);
5. colour jitter with p = 0.8: brightness, contrast, saturation factors uniform in [1 - x, 1 + x] for
   x = 0.4, 0.4, 0.2, hue shift uniform in [-0.1, 0.1], applied in a random order (torchvision's
   ``ColorJitter`` semantics). One draw per video by default so that motion is not confused with
   flicker; ``jitter_per_frame=True`` draws per frame as the official code does. The ops give the values of
   torchvision's tensor versions on uint8 (close to, not bit-identical with, the official PIL ones), computed
   by :mod:`tcclip.data.color` in a fraction of torchvision's time;
6. grayscale (3 equal channels) with p = 0.2;
7. normalise.

Crop, flip and grayscale are the same for every frame of a video.

Testing (:class:`TestTransform`): ``num_crop=1``: resize the short side to ``int(256 / 224 * S)``
and take the centre S x S crop. ``num_crop=3``: resize the short side to S and take three S x S crops
along the long side L, at offsets 0, ``(L - S) // 2`` and ``2 * ((L - S) // 2)``.

Geometry follows the official (mmaction-style) pipeline so that official checkpoints see the
pixels they were evaluated on: a resize keeps the aspect ratio with the long side rounded,
``int(L * size / short + 0.5)``; centre offsets are ``(L - S) // 2``; resizing is bilinear
without antialiasing, as OpenCV's (pass ``antialias=True`` for PIL-like downscaling instead).

Randomness comes from the ``rng`` argument (``np.random.Generator``). Without one, a generator is
seeded from torch's global RNG, which DataLoader seeds differently in every worker and
``lightning.seed_everything`` makes reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from tcclip.data.color import color_jitter

MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
"""Per-channel RGB mean on the 0..255 scale (what the official models were trained with)."""
STD: tuple[float, float, float] = (58.395, 57.12, 57.375)
"""Per-channel RGB standard deviation on the 0..255 scale."""
SCALES: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)
"""Multi-scale crop sides as fractions of the short side."""


def resize_size(input_size: int) -> int:
    """Short side before cropping: ``int(256 / 224 * input_size)`` (256 for 224)."""
    return int(256 / 224 * input_size)


def default_rng() -> np.random.Generator:
    """A numpy generator seeded from torch's global RNG (per-worker and seed_everything-aware)."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))


def to_channels_first(frames: Tensor) -> Tensor:
    """uint8 [..., H, W, 3] -> uint8 [..., 3, H, W] (a view)."""
    if frames.dtype != torch.uint8 or frames.ndim < 3 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB frames [..., H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    return frames.movedim(-1, -3)


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after resizing the short side to ``size``; the long side is rounded half up."""
    scale = size / min(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_short_side(frames: Tensor, size: int, antialias: bool = False) -> Tensor:
    """Resize [N, 3, H, W] so that min(H, W) == size, keeping the aspect ratio (bilinear)."""
    new_size = short_side_size(frames.shape[-2], frames.shape[-1], size)
    if new_size == tuple(frames.shape[-2:]):
        return frames
    return TF.resize(frames, list(new_size), antialias=antialias)


def normalize(frames: Tensor, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> Tensor:
    """uint8 [..., 3, H, W] on 0..255 -> float32 ``(x - mean) / std``."""
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (frames.float() - m) / s


@dataclass(frozen=True)
class ColorJitterParams:
    """One draw of colour jitter: factors, hue shift, and the order of the four operations."""

    brightness: float
    contrast: float
    saturation: float
    hue: float
    order: tuple[int, ...]
    """Permutation of (0 brightness, 1 contrast, 2 saturation, 3 hue)."""

    def apply(self, frames: Tensor) -> Tensor:
        """Apply to uint8 [..., 3, H, W]: torchvision's ``adjust_*`` in ``order``, the same values, faster
        (:func:`tcclip.data.color.color_jitter`). Contrast uses each frame's own mean grey."""
        return color_jitter(frames, self.brightness, self.contrast, self.saturation, self.hue, self.order)


@dataclass(frozen=True)
class TrainParams:
    """The random choices of one :class:`TrainTransform` call."""

    crop: tuple[int, int, int, int]
    """(top, left, height, width) in the short-side-resized frame."""
    flip: bool
    jitter: tuple[ColorJitterParams, ...]
    """Empty: no jitter; one entry: the same for all frames; T entries: one per frame."""
    grayscale: bool


def multi_scale_crop_candidates(
    height: int, width: int, input_size: int, scales: Sequence[float] = SCALES, max_aspect_gap: int = 1
) -> tuple[list[tuple[int, int]], int]:
    """All allowed (crop height, crop width) pairs, and the base (short side) they derive from."""
    base = min(height, width)
    sides = [int(base * s) for s in scales]
    sides = [input_size if abs(x - input_size) < 3 else x for x in sides]  # snap near-S sides to S
    pairs = [(sides[i], sides[j]) for i in range(len(sides)) for j in range(len(sides)) if abs(i - j) <= max_aspect_gap]
    return pairs, base


def crop_grid(height: int, width: int, crop_h: int, crop_w: int) -> list[tuple[int, int]]:
    """The 5 fixed (top, left) crop positions: the four corners, then the centre (see the module docstring)."""
    dy, dx = (height - crop_h) // 4, (width - crop_w) // 4
    return [(0, 0), (0, 4 * dx), (4 * dy, 0), (4 * dy, 4 * dx), (2 * dy, 2 * dx)]


class TrainTransform:
    """Training augmentation of one clip: uint8 [T, H, W, 3] -> float [1, T, 3, S, S]."""

    def __init__(
        self,
        input_size: int = 224,
        flip: bool = True,
        scales: Sequence[float] = SCALES,
        max_aspect_gap: int = 1,
        jitter_prob: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.2,
        hue: float = 0.1,
        jitter_per_frame: bool = False,
        grayscale_prob: float = 0.2,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
        antialias: bool = False,
    ) -> None:
        """
        Args:
            input_size: S, side of the square output.
            flip: random horizontal flip (off for direction-sensitive datasets such as SSv2).
            scales: multi-scale crop sides as fractions of the short side.
            max_aspect_gap: how many steps of ``scales`` crop height and width may differ.
            jitter_prob: probability of colour jitter.
            brightness: brightness factor drawn in [max(0, 1 - b), 1 + b].
            contrast: contrast factor drawn in [max(0, 1 - c), 1 + c].
            saturation: saturation factor drawn in [max(0, 1 - s), 1 + s].
            hue: hue shift drawn in [-hue, hue] (at most 0.5).
            jitter_per_frame: new jitter parameters for every frame (official) instead of one set per video.
            grayscale_prob: probability of turning the clip grey.
            mean: normalisation mean (0..255 scale).
            std: normalisation std (0..255 scale).
            antialias: antialiased resizing (PIL-like) instead of the official OpenCV-like bilinear.
        """
        if input_size <= 0:
            raise ValueError(f"input_size must be positive, got {input_size}")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue}")
        self.input_size = input_size
        self.resize = resize_size(input_size)
        self.flip = flip
        self.scales = tuple(scales)
        self.max_aspect_gap = max_aspect_gap
        self.jitter_prob = jitter_prob
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.jitter_per_frame = jitter_per_frame
        self.grayscale_prob = grayscale_prob
        self.mean, self.std = tuple(mean), tuple(std)
        self.antialias = antialias

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(input_size={self.input_size}, flip={self.flip}, "
            f"jitter_per_frame={self.jitter_per_frame})"
        )

    def _sample_jitter(self, rng: np.random.Generator) -> ColorJitterParams:
        def factor(x: float) -> float:
            return float(rng.uniform(max(0.0, 1.0 - x), 1.0 + x))

        # Draw all four values in a fixed order, then the order of operations, as torchvision's ColorJitter.
        order = tuple(int(i) for i in rng.permutation(4))
        b, c, s = factor(self.brightness), factor(self.contrast), factor(self.saturation)
        h = float(rng.uniform(-self.hue, self.hue))
        return ColorJitterParams(brightness=b, contrast=c, saturation=s, hue=h, order=order)

    def sample_params(self, num_frames: int, height: int, width: int, rng: np.random.Generator) -> TrainParams:
        """Draw the random choices for a clip of ``num_frames`` frames whose resized size is (height, width)."""
        pairs, _ = multi_scale_crop_candidates(height, width, self.input_size, self.scales, self.max_aspect_gap)
        crop_h, crop_w = pairs[rng.integers(len(pairs))]
        positions = crop_grid(height, width, crop_h, crop_w)
        top, left = positions[rng.integers(len(positions))]
        flip = bool(self.flip and rng.random() < 0.5)
        jitter: tuple[ColorJitterParams, ...] = ()
        if rng.random() < self.jitter_prob:
            count = num_frames if self.jitter_per_frame else 1
            jitter = tuple(self._sample_jitter(rng) for _ in range(count))
        grayscale = bool(rng.random() < self.grayscale_prob)
        return TrainParams(crop=(top, left, crop_h, crop_w), flip=flip, jitter=jitter, grayscale=grayscale)

    def apply(self, frames: Tensor, params: TrainParams) -> Tensor:
        """Apply fixed ``params`` to uint8 [T, 3, H', W'] already resized to the short side; returns uint8."""
        top, left, h, w = params.crop
        size = [self.input_size, self.input_size]
        x = TF.resized_crop(frames, top, left, h, w, size, antialias=self.antialias)
        if params.flip:
            x = TF.horizontal_flip(x)
        if len(params.jitter) == 1:
            x = params.jitter[0].apply(x)
        elif params.jitter:
            x = torch.stack([p.apply(frame) for p, frame in zip(params.jitter, x, strict=True)])
        if params.grayscale:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        return x

    def __call__(self, frames: Tensor, rng: np.random.Generator | None = None) -> Tensor:
        """uint8 [T, H, W, 3] -> float32 [1, T, 3, S, S]."""
        if frames.ndim != 4:
            raise ValueError(f"TrainTransform expects one clip uint8 [T, H, W, 3], got {tuple(frames.shape)}")
        rng = default_rng() if rng is None else rng
        x = resize_short_side(to_channels_first(frames), self.resize, self.antialias)  # [T, 3, H', W']
        params = self.sample_params(x.shape[0], x.shape[-2], x.shape[-1], rng)
        return normalize(self.apply(x, params), self.mean, self.std).unsqueeze(0)


class TestTransform:
    """Deterministic test views: uint8 [T, H, W, 3] or [C, T, H, W, 3] -> float [C * num_crop, T, 3, S, S]."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        input_size: int = 224,
        num_crop: int = 1,
        num_frames: int | None = None,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
        antialias: bool = False,
    ) -> None:
        """
        Args:
            input_size: S, side of the square output.
            num_crop: 1 (centre crop after resizing the short side to int(256/224 S)) or 3 (three crops along
                the long side after resizing the short side to S).
            num_frames: T, frames per clip. Lets flattened input [C*T, H, W, 3] of several clips be split into
                its C clips; without it, flattened input is one clip unless ``num_clips`` is passed to the call.
            mean: normalisation mean (0..255 scale).
            std: normalisation std (0..255 scale).
            antialias: antialiased resizing (PIL-like) instead of the official OpenCV-like bilinear.
        """
        if num_crop not in (1, 3):
            raise ValueError(f"num_crop must be 1 or 3, got {num_crop}")
        if input_size <= 0:
            raise ValueError(f"input_size must be positive, got {input_size}")
        if num_frames is not None and num_frames <= 0:
            raise ValueError(f"num_frames must be positive, got {num_frames}")
        self.input_size = input_size
        self.num_crop = num_crop
        self.num_frames = num_frames
        self.mean, self.std = tuple(mean), tuple(std)
        self.antialias = antialias

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(input_size={self.input_size}, num_crop={self.num_crop}, "
            f"num_frames={self.num_frames})"
        )

    def crop_boxes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(top, left) of each S x S crop in a frame already resized to (height, width)."""
        s = self.input_size
        dy, dx = (height - s) // 2, (width - s) // 2
        if self.num_crop == 1:
            return [(dy, dx)]
        if width >= height:  # landscape: crops go left to right
            return [(dy, k * dx) for k in range(3)]
        return [(k * dy, dx) for k in range(3)]

    def __call__(self, frames: Tensor, num_clips: int | None = None) -> Tensor:
        """Frames of C clips, [C, T, H, W, 3] or flattened [C * T, H, W, 3] -> [C * num_crop, T, 3, S, S].

        For flattened input, C is ``num_clips`` if given, else ``len(frames) // num_frames`` if the transform was
        built with ``num_frames``, else 1. Views are ordered clip-major: view ``c * num_crop + k`` is crop k of
        clip c.
        """
        if frames.ndim == 5:
            num_clips = frames.shape[0]
            frames = frames.flatten(0, 1)
        elif num_clips is None:
            num_clips = 1 if self.num_frames is None else max(1, frames.shape[0] // self.num_frames)
        if (
            frames.ndim != 4
            or frames.shape[0] % num_clips
            or (self.num_frames is not None and frames.shape[0] != num_clips * self.num_frames)
        ):
            raise ValueError(
                f"expected uint8 [C, T, H, W, 3] or [C*T, H, W, 3] with C={num_clips}, T={self.num_frames}, "
                f"got {tuple(frames.shape)}"
            )
        s = self.input_size
        short = resize_size(s) if self.num_crop == 1 else s
        x = resize_short_side(to_channels_first(frames), short, self.antialias)  # [C*T, 3, H', W']
        height, width = x.shape[-2:]
        crops = torch.stack([x[..., t : t + s, l : l + s] for t, l in self.crop_boxes(height, width)], dim=1)
        crops = crops.unflatten(0, (num_clips, -1))  # [C, T, K, 3, S, S]
        crops = crops.transpose(1, 2).flatten(0, 1)  # [C*K, T, 3, S, S], clip-major
        return normalize(crops, self.mean, self.std)
