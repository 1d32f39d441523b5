"""Mixup / CutMix on a batch of videos with label-smoothed soft targets, through timm's `Mixup`.

The training recipe of the paper follows the official code, which mixes in timm's batch mode: one coefficient per
batch, video b mixed with video B-1-b (the batch reversed); per batch CutMix with probability `switch_prob`, else Mixup
(only one of them when the other's alpha is 0):

- Mixup: `lam ~ Beta(mixup_alpha, mixup_alpha)`; `x = lam * x + (1 - lam) * x.flip(0)`.
- CutMix: `lam ~ Beta(cutmix_alpha, cutmix_alpha)`; a box of about `(1 - lam)` of the frame, centred at a uniform
  random pixel and clipped to the frame, is pasted from the reversed batch; `lam` is then corrected to the kept area.

Targets: with `off = label_smoothing / C` and `on = 1 - label_smoothing + off`, `y = onehot(label) * (on - off) + off`
and `targets = lam * y + (1 - lam) * y.flip(0)`, so every row sums to 1 and the label weights equal the pixel weights.

What this module adds to timm: videos. The views, frames and channels of a video are folded into timm's channel axis,
so one coefficient and one box apply to every frame of a video; the input is copied (timm mixes in place); batches of
odd size work (the middle video is mixed with itself). Randomness comes from numpy's global generator, as in timm,
which `seed_everything` (and the `EpochSeed` callback on resume) seeds.
"""

from __future__ import annotations

import torch
from timm.data.mixup import Mixup, mixup_target
from torch import Tensor


class MixupCutmix:
    """`(video [B, ..., 3, H, W], labels [B]) -> (mixed video, soft targets float32 [B, C])`."""

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
        self.label_smoothing = label_smoothing
        self.mixer = Mixup(
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            prob=prob,
            switch_prob=switch_prob,
            mode="batch",
            correct_lam=True,
            label_smoothing=label_smoothing,
            num_classes=num_classes,
        )
        self.mixer.mixup_enabled = mixup_alpha > 0 or cutmix_alpha > 0

    def __repr__(self) -> str:
        m = self.mixer
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}, mixup_alpha={m.mixup_alpha}, "
            f"cutmix_alpha={m.cutmix_alpha}, switch_prob={m.switch_prob}, label_smoothing={self.label_smoothing}, "
            f"prob={m.mix_prob})"
        )

    def __call__(self, video: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Mix a batch (the input is not modified)."""
        if video.ndim < 4 or video.shape[-3] != 3 or labels.ndim != 1 or video.shape[0] != labels.shape[0]:
            raise ValueError(
                f"expected video [B, ..., 3, H, W] and labels [B], got {tuple(video.shape)} and {tuple(labels.shape)}"
            )
        if not video.is_floating_point():
            raise ValueError(f"mixup needs a floating-point video, got {video.dtype}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes}), got {labels.min()}..{labels.max()}")
        height, width = video.shape[-2:]
        # [B, V*T*3, H, W]: timm's layout, one box and one coefficient for every view, frame and channel of a video.
        frames = video.reshape(video.shape[0], -1, height, width).clone()
        # Mixup.__call__ insists on an even batch, which batch mode does not need (the batch is mixed with its
        # reverse); _mix_batch is the batch-mode step that __call__ runs after that check.
        lam = self.mixer._mix_batch(frames) if self.mixer.mixup_enabled else 1.0
        targets = mixup_target(labels, self.num_classes, lam, self.label_smoothing)
        return frames.view(video.shape), targets.to(torch.float32)
