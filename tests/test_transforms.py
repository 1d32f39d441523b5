"""Train/test transforms: geometry, per-video consistency, normalisation, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tcclip.data.transforms import (
    MEAN,
    STD,
    TestTransform,
    TrainTransform,
    crop_grid,
    multi_scale_crop_candidates,
    resize_size,
    short_side_size,
)


def coordinate_frames(num_frames: int, height: int, width: int) -> torch.Tensor:
    """uint8 [T, H, W, 3] with R = column, G = row, B = frame index, so crops and order can be read back."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    frames = torch.stack([xs, ys, torch.zeros_like(xs)], dim=-1).expand(num_frames, -1, -1, -1).clone()
    frames[..., 2] = torch.arange(num_frames).view(-1, 1, 1)
    return frames.to(torch.uint8)


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """float [..., 3, H, W] -> the 0..255 values before normalisation."""
    return x * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)


def no_colour(**kwargs) -> TrainTransform:
    return TrainTransform(jitter_prob=0.0, grayscale_prob=0.0, **kwargs)


def test_sizes():
    assert resize_size(224) == 256 and resize_size(32) == 36
    assert short_side_size(240, 320, 256) == (256, 341)  # 341.33
    assert short_side_size(360, 640, 256) == (256, 455)  # 455.11
    assert short_side_size(200, 301, 100) == (100, 151)  # 150.5 rounds up, as the official resize
    assert short_side_size(320, 240, 256) == (341, 256)


def test_normalisation_constants():
    frames = torch.full((2, 40, 40, 3), 128, dtype=torch.uint8)
    out = TestTransform(32)(frames)
    assert out.dtype == torch.float32 and out.shape == (1, 2, 3, 32, 32)
    expected = (128 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(out[0, :, :, 5, 5], expected.expand(2, 3))


def test_centre_crop_geometry():
    # Short side 64 == int(256/224 * 56): no resize, so the crop offsets are visible in the coordinates.
    out = denormalize(TestTransform(56)(coordinate_frames(2, 64, 96)))
    assert out.shape == (1, 2, 3, 56, 56)
    assert out[0, 0, 0, 0, 0].round() == (96 - 56) // 2 and out[0, 0, 1, 0, 0].round() == (64 - 56) // 2


@pytest.mark.parametrize(("height", "width"), [(32, 81), (81, 32)])
def test_three_crops_along_the_long_side(height, width):
    out = denormalize(TestTransform(32, num_crop=3)(coordinate_frames(3, height, width)))
    assert out.shape == (3, 3, 3, 32, 32)
    step = (max(height, width) - 32) // 2  # 24: offsets 0, 24, 48 (the end crop stops one pixel short of 81)
    channel = 0 if width > height else 1
    assert [int(out[k, 0, channel, 0, 0].round()) for k in range(3)] == [0, step, 2 * step]


def test_several_clips_are_split_clip_major():
    t = 4
    clips = torch.cat([coordinate_frames(t, 40, 48), coordinate_frames(t, 40, 48) // 2])  # clip 1 is darker
    expected_shape = (2 * 3, t, 3, 32, 32)
    by_frames = TestTransform(32, num_crop=3, num_frames=t)(clips)
    by_argument = TestTransform(32, num_crop=3)(clips, num_clips=2)
    by_shape = TestTransform(32, num_crop=3)(clips.view(2, t, 40, 48, 3))
    assert by_frames.shape == expected_shape
    torch.testing.assert_close(by_frames, by_argument)
    torch.testing.assert_close(by_frames, by_shape)
    blue = denormalize(by_frames)[:, :, 2, 0, 0].round()  # frame index, halved in clip 1
    assert blue[:3].tolist() == [[0, 1, 2, 3]] * 3 and blue[3:].tolist() == [[0, 0, 1, 1]] * 3
    with pytest.raises(ValueError, match="T=4"):
        TestTransform(32, num_frames=t)(clips[:-1])


def test_multi_scale_crop_candidates_and_grid():
    pairs, base = multi_scale_crop_candidates(256, 340, 224)
    sides = [256, 224, 192, 168]  # int(256 * s) for s in (1, .875, .75, .66)
    assert base == 256
    assert pairs == [(sides[i], sides[j]) for i in range(4) for j in range(4) if abs(i - j) <= 1]
    assert multi_scale_crop_candidates(36, 48, 32)[0][:3] == [(36, 36), (36, 32), (32, 36)]  # 31 snapped to 32
    # dy = (256 - 192) // 4 = 16, dx = (340 - 224) // 4 = 29: corners then centre.
    assert crop_grid(256, 340, 192, 224) == [(0, 0), (0, 116), (64, 0), (64, 116), (32, 58)]


def test_train_crops_come_from_the_allowed_sizes_and_grid():
    transform = TrainTransform(224)
    pairs, _ = multi_scale_crop_candidates(256, 341, 224)
    seen_pairs, seen_positions = set(), set()
    rng = np.random.default_rng(0)
    for _ in range(400):
        top, left, h, w = transform.sample_params(8, 256, 341, rng).crop
        assert (h, w) in pairs
        assert (top, left) in crop_grid(256, 341, h, w)
        seen_pairs.add((h, w))
        seen_positions.add(crop_grid(256, 341, h, w).index((top, left)))
    assert seen_pairs == set(pairs) and seen_positions == set(range(5))


def test_train_output_and_same_geometry_for_every_frame():
    frames = coordinate_frames(1, 48, 64).expand(6, -1, -1, -1).clone()
    frames[..., 2] = 100  # a static video: every output frame must be identical
    for seed in range(10):
        out = TrainTransform(32)(frames, np.random.default_rng(seed))
        assert out.shape == (1, 6, 3, 32, 32) and out.dtype == torch.float32
        assert torch.equal(out[0], out[0, :1].expand(6, -1, -1, -1))


def test_per_frame_jitter_differs_between_frames():
    frames = torch.randint(0, 256, (1, 40, 40, 3), dtype=torch.uint8).expand(4, -1, -1, -1).clone()
    out = TrainTransform(32, jitter_prob=1.0, jitter_per_frame=True)(frames, np.random.default_rng(0))
    assert not torch.equal(out[0, 0], out[0, 1])


def test_flip_is_random_and_can_be_turned_off():
    frames = coordinate_frames(2, 40, 40)

    def left_to_right(transform: TrainTransform, seed: int) -> bool:
        red = denormalize(transform(frames, np.random.default_rng(seed)))[0, 0, 0, 0]
        return bool(red[-1] > red[0])

    flips = [not left_to_right(no_colour(input_size=32), seed) for seed in range(40)]
    assert 8 < sum(flips) < 32
    assert all(left_to_right(no_colour(input_size=32, flip=False), seed) for seed in range(40))


def test_grayscale_gives_equal_channels():
    frames = torch.randint(0, 256, (3, 40, 40, 3), dtype=torch.uint8)
    out = denormalize(TrainTransform(32, jitter_prob=0.0, grayscale_prob=1.0)(frames, np.random.default_rng(0)))
    torch.testing.assert_close(out[:, :, 0], out[:, :, 1], atol=1e-3, rtol=0)
    torch.testing.assert_close(out[:, :, 0], out[:, :, 2], atol=1e-3, rtol=0)


def test_jitter_parameters_stay_in_range():
    transform = TrainTransform(224, jitter_prob=1.0)
    rng = np.random.default_rng(0)
    for _ in range(200):
        (jitter,) = transform.sample_params(8, 256, 256, rng).jitter
        assert 0.6 <= jitter.brightness <= 1.4 and 0.6 <= jitter.contrast <= 1.4
        assert 0.8 <= jitter.saturation <= 1.2 and -0.1 <= jitter.hue <= 0.1
        assert sorted(jitter.order) == [0, 1, 2, 3]


def test_reproducible_from_a_generator_or_torch_seed():
    frames = torch.randint(0, 256, (4, 40, 50, 3), dtype=torch.uint8)
    transform = TrainTransform(32)
    a, b = (transform(frames, np.random.default_rng(7)) for _ in range(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        outs.append(transform(frames))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert not torch.equal(transform(frames, np.random.default_rng(8)), a)


def test_rejects_non_uint8_input():
    with pytest.raises(ValueError, match="uint8"):
        TestTransform(32)(torch.zeros(2, 40, 40, 3))
    with pytest.raises(ValueError, match="one clip"):
        TrainTransform(32)(torch.zeros(1, 2, 40, 40, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="num_crop"):
        TestTransform(32, num_crop=2)
