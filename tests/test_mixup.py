"""Mixup / CutMix: pixel weights and label weights agree, one mix per video, CutMix area correction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tcclip.data.mixup import MixupCutmix, cutmix_box, smooth_one_hot

B, V, T, C, H, W = 6, 2, 3, 10, 16, 20


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.rand(B, V, T, 3, H, W), torch.tensor([0, 3, 5, 7, 8, 9])


def own_label_weight(targets: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Recover lam from the targets: target[b, label_b] = lam * on + (1 - lam) * off (labels of pairs differ)."""
    off = smoothing / C
    on = 1 - smoothing + off
    return (targets[torch.arange(B), labels] - off) / (on - off)


def test_smooth_one_hot():
    y = smooth_one_hot(torch.tensor([2, 0]), 4, smoothing=0.1)
    torch.testing.assert_close(y, torch.tensor([[0.025, 0.025, 0.925, 0.025], [0.925, 0.025, 0.025, 0.025]]))


def test_mixup_pixels_and_targets_use_the_same_lambda():
    video, labels = batch()
    mixed, targets = MixupCutmix(C, cutmix_alpha=0.0)(video, labels, np.random.default_rng(0))
    lam = own_label_weight(targets, labels, 0.1)
    assert torch.allclose(lam, lam[0]) and 0 < lam[0] < 1  # one lambda for the whole batch
    torch.testing.assert_close(mixed, lam[0] * video + (1 - lam[0]) * video.flip(0))
    torch.testing.assert_close(targets.sum(1), torch.ones(B))
    partner = targets[torch.arange(B), labels.flip(0)]
    torch.testing.assert_close(partner, (1 - lam) * (0.9 + 0.01) + lam * 0.01)


def test_cutmix_box_is_shared_by_all_frames_and_lambda_is_the_kept_area():
    video, labels = batch()
    mixer = MixupCutmix(C, mixup_alpha=0.0)
    for seed in range(20):
        mixed, targets = mixer(video, labels, np.random.default_rng(seed))
        pasted = (mixed != video).any(dim=(0, 1, 2, 3))  # [H, W]: pixels taken from the partner video
        rows, cols = pasted.any(1).nonzero().ravel(), pasted.any(0).nonzero().ravel()
        if pasted.any():  # a rectangle, identical for every video, view, frame and channel
            top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
            assert pasted[top:bottom, left:right].all() and pasted.sum() == (bottom - top) * (right - left)
            box = (slice(None),) * 4 + (slice(top, bottom), slice(left, right))
            torch.testing.assert_close(mixed[box], video.flip(0)[box])
        kept = 1 - pasted.float().mean()
        torch.testing.assert_close(own_label_weight(targets, labels, 0.1), kept.expand(B))


def test_cutmix_lambda_is_corrected_for_clipping():
    mixer = MixupCutmix(C, mixup_alpha=0.0)
    rng = np.random.default_rng(0)
    for _ in range(200):
        params = mixer.sample(H, W, rng)
        top, left, bottom, right = params.box
        assert params.lam == 1 - (bottom - top) * (right - left) / (H * W)
    clipped = 0
    for _ in range(200):
        lam = float(rng.uniform(0.05, 0.95))
        top, left, bottom, right = cutmix_box(H, W, lam, rng)
        assert 0 <= top <= bottom <= H and 0 <= left <= right <= W
        half_h, half_w = int(H * np.sqrt(1 - lam)) // 2, int(W * np.sqrt(1 - lam)) // 2
        clipped += (bottom - top) * (right - left) < (2 * half_h) * (2 * half_w)
    assert clipped > 0  # boxes near the border lose area, which is why lam is recomputed from the box


@pytest.mark.parametrize(("switch_prob", "low", "high"), [(0.0, 0, 0), (0.5, 0.35, 0.65), (1.0, 1, 1)])
def test_switch_probability(switch_prob, low, high):
    mixer = MixupCutmix(C, switch_prob=switch_prob)
    rng = np.random.default_rng(0)
    cutmix = np.mean([mixer.sample(H, W, rng).box is not None for _ in range(300)])
    assert low <= cutmix <= high


def test_no_mixing_gives_label_smoothing_only():
    video, labels = batch()
    for mixer in (MixupCutmix(C, prob=0.0), MixupCutmix(C, mixup_alpha=0.0, cutmix_alpha=0.0)):
        mixed, targets = mixer(video, labels, np.random.default_rng(0))
        assert torch.equal(mixed, video)
        torch.testing.assert_close(targets, smooth_one_hot(labels, C, 0.1))


def test_input_is_not_modified_and_torch_seed_reproduces():
    video, labels = batch()
    copy = video.clone()
    outs = []
    for _ in range(2):
        torch.manual_seed(5)
        outs.append(MixupCutmix(C)(video, labels))
    assert torch.equal(video, copy)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_works_on_frames_without_views():
    video, labels = batch()
    mixed, targets = MixupCutmix(C)(video[:, 0], labels, np.random.default_rng(1))  # [B, T, 3, H, W]
    assert mixed.shape == (B, T, 3, H, W) and targets.shape == (B, C)


def test_invalid_input():
    video, labels = batch()
    with pytest.raises(ValueError, match="labels must be in"):
        MixupCutmix(C)(video, labels + 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="floating-point"):
        MixupCutmix(C)(video.to(torch.uint8), labels)
    with pytest.raises(ValueError, match=r"\[B, \.\.\., 3, H, W\]"):
        MixupCutmix(C)(video, labels[:3])
