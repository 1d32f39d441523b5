"""Mixup / CutMix on a batch of videos with label-smoothed soft targets (spec section 5).

Batch mode, as in the official recipe: one mixing coefficient per batch, and video b is mixed with
video B-1-b (the batch reversed). Per batch, with probability ``switch_prob`` CutMix is used,
otherwise Mixup (when only one of the alphas is positive, only that one is used):

- Mixup: ``lam ~ Beta(mixup_alpha, mixup_alpha)``; ``x = lam * x + (1 - lam) * x.flip(0)``.
- CutMix: ``lam ~ Beta(cutmix_alpha, cutmix_alpha)``; a box of sides ``int(H * sqrt(1 - lam))`` x
  ``int(W * sqrt(1 - lam))`` centred at a uniform random pixel, clipped to the frame, is pasted from
  the reversed batch; ``lam`` is then corrected to the kept area, ``1 - box_area / (H * W)``.

The same coefficient and box apply to every frame (and view) of a video. Targets: with
``off = label_smoothing / C`` and ``on = 1 - label_smoothing + off``, ``y = onehot(label) * (on - off) + off``
and ``targets = lam * y + (1 - lam) * y.flip(0)``, so every row sums to 1 and the label weights
equal the pixel weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tcclip.data.transforms import default_rng


def smooth_one_hot(labels: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """Label-smoothed one-hot targets float32 [B, C]: ``1 - smoothing + smoothing / C`` on the label."""
    if labels.ndim != 1:
        raise ValueError(f"labels must be [B], got {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    off = smoothing / num_classes
    targets = torch.full((labels.numel(), num_classes), off, dtype=torch.float32, device=labels.device)
    return targets.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)


def mixed_targets(labels: Tensor, num_classes: int, lam: float, smoothing: float = 0.0) -> Tensor:
    """``lam * y + (1 - lam) * y.flip(0)`` with ``y`` the smoothed one-hot targets: float32 [B, C]."""
    y = smooth_one_hot(labels, num_classes, smoothing)
    return y * lam + y.flip(0) * (1.0 - lam)


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of a CutMix box holding ~``1 - lam`` of the frame, clipped to it."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
    left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
    return int(top), int(left), int(bottom), int(right)


@dataclass(frozen=True)
class MixParams:
    """One batch's draw: the label weight of each video's own label and, for CutMix, the pasted box."""

    lam: float
    box: tuple[int, int, int, int] | None = None
    """(top, left, bottom, right), or None for Mixup."""


class MixupCutmix:
    """``(video [B, ..., 3, H, W], labels [B]) -> (mixed video, soft targets float32 [B, C])``."""

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        prob: float = 1.0,
    ) -> None:
        """
        Args:
            num_classes: C.
            mixup_alpha: Beta(alpha, alpha) of Mixup; 0 turns Mixup off.
            cutmix_alpha: Beta(alpha, alpha) of CutMix; 0 turns CutMix off.
            switch_prob: probability of CutMix rather than Mixup when both are on.
            label_smoothing: smoothing of the one-hot targets before mixing.
            prob: probability of mixing a batch at all (otherwise only label smoothing).
        """
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"alphas must be >= 0, got mixup_alpha={mixup_alpha}, cutmix_alpha={cutmix_alpha}")
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.switch_prob = switch_prob
        self.label_smoothing = label_smoothing
        self.prob = prob

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}, mixup_alpha={self.mixup_alpha}, "
            f"cutmix_alpha={self.cutmix_alpha}, switch_prob={self.switch_prob}, "
            f"label_smoothing={self.label_smoothing}, prob={self.prob})"
        )

    def sample(self, height: int, width: int, rng: np.random.Generator) -> MixParams:
        """Draw the mixing of one batch of frames of size (height, width)."""
        use_mixup, use_cutmix = self.mixup_alpha > 0, self.cutmix_alpha > 0
        if not (use_mixup or use_cutmix) or rng.random() >= self.prob:
            return MixParams(lam=1.0)
        if use_mixup and use_cutmix:
            use_cutmix = bool(rng.random() < self.switch_prob)
        if use_cutmix:
            lam = float(rng.beta(self.cutmix_alpha, self.cutmix_alpha))
            box = cutmix_box(height, width, lam, rng)
            top, left, bottom, right = box
            return MixParams(lam=1.0 - (bottom - top) * (right - left) / (height * width), box=box)
        return MixParams(lam=float(rng.beta(self.mixup_alpha, self.mixup_alpha)))

    def apply(self, video: Tensor, labels: Tensor, params: MixParams) -> tuple[Tensor, Tensor]:
        """Mix ``video`` [B, ..., 3, H, W] and its labels [B] with fixed ``params``; the input is not modified."""
        targets = mixed_targets(labels, self.num_classes, params.lam, self.label_smoothing)
        if params.box is not None:
            top, left, bottom, right = params.box
            mixed = video.clone()
            mixed[..., top:bottom, left:right] = video.flip(0)[..., top:bottom, left:right]
        elif params.lam != 1.0:
            mixed = video * params.lam + video.flip(0) * (1.0 - params.lam)
        else:
            mixed = video
        return mixed, targets

    def __call__(self, video: Tensor, labels: Tensor, rng: np.random.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Mix a batch; randomness from ``rng`` or, without one, from torch's global RNG."""
        if video.ndim < 4 or video.shape[-3] != 3 or video.shape[0] != labels.shape[0]:
            raise ValueError(
                f"expected video [B, ..., 3, H, W] and labels [B], got {tuple(video.shape)} and {tuple(labels.shape)}"
            )
        if not video.is_floating_point():
            raise ValueError(f"mixup needs a floating-point video, got {video.dtype}")
        params = self.sample(video.shape[-2], video.shape[-1], default_rng() if rng is None else rng)
        return self.apply(video, labels, params)
