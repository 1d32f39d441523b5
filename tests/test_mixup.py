"""Mixup / CutMix (timm's batch mode on videos): pixel weights and label weights agree, one mix per video, CutMix
area correction, and the Mixup branch equals the plain formula it replaced."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tcclip.data.mixup import MixupCutmix

B, V, T, C, H, W = 6, 2, 3, 10, 16, 20
SMOOTHING = 0.1


def batch(size: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.rand(size, V, T, 3, H, W), torch.tensor([0, 3, 5, 7, 8, 9, 1])[:size]


def smooth_one_hot(labels: torch.Tensor, smoothing: float = SMOOTHING) -> torch.Tensor:
    """Written out independently: 1 - smoothing + smoothing / C on the label, smoothing / C elsewhere."""
    y = torch.full((len(labels), C), smoothing / C)
    y[torch.arange(len(labels)), labels] = 1 - smoothing + smoothing / C
    return y


def own_label_weight(targets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Recover lam from the targets: target[b, label_b] = lam * on + (1 - lam) * off (labels of pairs differ)."""
    off = SMOOTHING / C
    on = 1 - SMOOTHING + off
    return (targets[torch.arange(len(labels)), labels] - off) / (on - off)


def test_mixup_equals_the_plain_formula_with_the_same_draws() -> None:
    video, labels = batch()
    for seed in range(5):
        np.random.seed(seed)
        mixed, targets = MixupCutmix(C, cutmix_alpha=0.0)(video, labels)
        np.random.seed(seed)  # replay the draws: mix or not, then lam ~ Beta(0.8, 0.8)
        assert np.random.rand() < 1.0
        lam = float(np.random.beta(0.8, 0.8))
        torch.testing.assert_close(mixed, lam * video + (1 - lam) * video.flip(0))
        y = smooth_one_hot(labels)
        torch.testing.assert_close(targets, lam * y + (1 - lam) * y.flip(0))
        assert targets.dtype == torch.float32
        torch.testing.assert_close(targets.sum(1), torch.ones(B))


def test_cutmix_box_is_shared_by_all_frames_and_lambda_is_the_kept_area() -> None:
    video, labels = batch()
    mixer = MixupCutmix(C, mixup_alpha=0.0)
    inside = 0
    for seed in range(30):
        np.random.seed(seed)
        mixed, targets = mixer(video, labels)
        np.random.seed(seed)
        np.random.rand()  # replay: mix or not, then lam ~ Beta(1, 1)
        ratio = math.sqrt(1 - np.random.beta(1.0, 1.0))
        side_h, side_w = int(H * ratio), int(W * ratio)
        pasted = (mixed != video).any(dim=(0, 1, 2, 3))  # [H, W]: pixels taken from the partner video
        rows, cols = pasted.any(1).nonzero().ravel(), pasted.any(0).nonzero().ravel()
        if pasted.any():  # a rectangle, identical for every video, view, frame and channel
            top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
            assert pasted[top:bottom, left:right].all() and pasted.sum() == (bottom - top) * (right - left)
            box = (slice(None),) * 4 + (slice(top, bottom), slice(left, right))
            torch.testing.assert_close(mixed[box], video.flip(0)[box])
            assert bottom - top <= side_h and right - left <= side_w
            if 0 < top and bottom < H and 0 < left and right < W:  # not clipped: the sides the definition gives
                assert (bottom - top, right - left) == (side_h, side_w)
                inside += 1
        kept = 1 - pasted.float().mean()
        torch.testing.assert_close(own_label_weight(targets, labels), kept.expand(B))
    assert inside > 0


@pytest.mark.parametrize(("switch_prob", "low", "high"), [(0.0, 0, 0), (0.5, 0.35, 0.65), (1.0, 1, 1)])
def test_switch_probability(switch_prob: float, low: float, high: float) -> None:
    video, labels = batch()
    mixer = MixupCutmix(C, switch_prob=switch_prob)
    np.random.seed(0)
    cutmix = []
    for _ in range(200):
        mixed, _ = mixer(video, labels)
        # CutMix takes every pixel from one of the two videos; Mixup (0 < lam < 1) blends them.
        cutmix.append(bool(((mixed == video) | (mixed == video.flip(0))).all()))
    assert low <= np.mean(cutmix) <= high


def test_no_mixing_gives_label_smoothing_only() -> None:
    video, labels = batch()
    for mixer in (MixupCutmix(C, prob=0.0), MixupCutmix(C, mixup_alpha=0.0, cutmix_alpha=0.0)):
        mixed, targets = mixer(video, labels)
        assert torch.equal(mixed, video)
        torch.testing.assert_close(targets, smooth_one_hot(labels))


def test_input_is_not_modified_and_the_numpy_seed_reproduces() -> None:
    video, labels = batch()
    copy = video.clone()
    outs = []
    for _ in range(2):
        np.random.seed(5)
        outs.append(MixupCutmix(C)(video, labels))
    assert torch.equal(video, copy)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_odd_batches_and_frames_without_views() -> None:
    video, labels = batch(7)  # timm's own entry point refuses odd batches; batch mode does not need them even
    np.random.seed(0)
    mixed, targets = MixupCutmix(C, cutmix_alpha=0.0)(video[:, 0], labels)  # [B, T, 3, H, W]
    assert mixed.shape == (7, T, 3, H, W) and targets.shape == (7, C)
    torch.testing.assert_close(mixed[3], video[3, 0])  # the middle video is mixed with itself


def test_invalid_input() -> None:
    video, labels = batch()
    with pytest.raises(ValueError, match="labels must be in"):
        MixupCutmix(C)(video, labels + 5)
    with pytest.raises(ValueError, match="floating-point"):
        MixupCutmix(C)(video.to(torch.uint8), labels)
    with pytest.raises(ValueError, match=r"\[B, \.\.\., 3, H, W\]"):
        MixupCutmix(C)(video, labels[:3])
    with pytest.raises(ValueError, match="alphas"):
        MixupCutmix(C, mixup_alpha=-1.0)
