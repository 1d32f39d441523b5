"""Colour jitter: the same uint8 values as torchvision's functional ops (the oracle), op by op and chained."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from tcclip.data import transforms
from tcclip.data.color import brightness_, color_jitter, contrast_, hue_, saturation_
from tcclip.data.transforms import ColorJitterParams, TrainTransform

TV_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
OURS = (brightness_, contrast_, saturation_, hue_)
SHIFTS = (0.0, 0.1, -0.1, 0.0371, -0.0629, 0.5, -0.5, 1e-7, -1e-7, 0.4999, -0.25)


def torchvision_jitter(frames: torch.Tensor, b: float, c: float, s: float, h: float, order) -> torch.Tensor:
    """The reference: torchvision's uint8 ops one after the other."""
    for op in order:
        frames = TV_OPS[op](frames, (b, c, s, h)[op])
    return frames


def ours(op: int, frames: torch.Tensor, value: float) -> torch.Tensor:
    return OURS[op](frames.float(), value).to(torch.uint8)


def sample_frames(seed: int) -> torch.Tensor:
    """uint8 [4, 3, 24, 40]: random colours, then rows of edge cases (grey, black, white, pure and saturated
    colours, one level apart from grey, the six hue-sector boundaries)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (4, 3, 24, 40), dtype=torch.uint8, generator=g)
    edge = torch.tensor(
        [[0, 0, 0], [255, 255, 255], [128, 128, 128], [1, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255],
         [255, 255, 0], [0, 255, 255], [255, 0, 255], [128, 128, 129], [200, 199, 200], [255, 254, 0],
         [254, 255, 0], [0, 1, 255], [10, 250, 10], [255, 128, 0], [0, 128, 255], [37, 37, 36], [254, 254, 255]],
        dtype=torch.uint8,
    )  # fmt: skip
    x[:, :, :2, : len(edge)] = edge.T.reshape(1, 3, 1, -1)
    x[1, :, 4:] = x[1, :1, 4:]  # a mostly grey frame (its own contrast mean)
    x[2] = x[2] // 64 * 85  # few levels: many ties between channels
    return x


@pytest.mark.parametrize("shift", SHIFTS)
def test_hue_matches_torchvision_on_a_grid_of_rgb_triplets(shift):
    levels = torch.tensor(sorted({*range(0, 256, 5), 1, 2, 127, 128, 253, 254, 255}), dtype=torch.uint8)
    grid = torch.stack(torch.meshgrid(levels, levels, levels, indexing="ij")).reshape(3, len(levels), -1)
    assert torch.equal(ours(3, grid, shift), TF.adjust_hue(grid, shift))


@pytest.mark.slow
@pytest.mark.parametrize("shift", (0.1, -0.1, 0.0371, 0.5, -1e-7))
def test_hue_matches_torchvision_on_every_rgb_triplet(shift):
    levels = torch.arange(256, dtype=torch.uint8)
    every = torch.stack(torch.meshgrid(levels, levels, levels, indexing="ij")).reshape(3, 256, 256 * 256)
    assert torch.equal(ours(3, every, shift), TF.adjust_hue(every, shift))


def test_torchvision_hue_shift_keeps_every_max_and_min_level():
    """The property the fast hue relies on, checked on torchvision itself for every (max, min) pair."""
    top, bottom = torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij")
    keep = top >= bottom
    top, bottom = top[keep], bottom[keep]
    for middle_at in (0.0, 0.3, 0.5, 1.0):  # where the third channel sits between them
        middle = (bottom + (top - bottom) * middle_at).round()
        for perm in ((0, 1, 2), (2, 0, 1), (1, 2, 0)):
            pixels = torch.stack([(top, middle, bottom)[i] for i in perm]).to(torch.uint8).view(3, 1, -1)
            for shift in (0.1, -0.1, 0.37, -0.5):
                out = TF.adjust_hue(pixels, shift).int()
                assert torch.equal(out.amax(0).flatten(), top.int())
                assert torch.equal(out.amin(0).flatten(), bottom.int())


@pytest.mark.parametrize("op", range(4))
def test_each_op_matches_torchvision_on_random_and_edge_pixels(op):
    rng = np.random.default_rng(op)
    values = SHIFTS if op == 3 else (0.0, 1.0, 2.0, 0.6, 1.4, 0.8, 1.2, *rng.uniform(0, 2, 8))
    for k, value in enumerate(values):
        x = sample_frames(k)
        assert torch.equal(ours(op, x, value), TV_OPS[op](x, value)), (op, value)


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_jitter_matches_torchvision_in_every_order(order):
    rng = np.random.default_rng(sum(o * 10**i for i, o in enumerate(order)))
    for k in range(3):
        b, c, s = rng.uniform(0.5, 1.5, 3)
        h = float(rng.uniform(-0.5, 0.5))
        x = sample_frames(100 + k)
        if k == 1:
            x = x.contiguous(memory_format=torch.channels_last)  # what resizing the decoded frames gives
        elif k == 2:
            x = x[..., 3:, 5:]  # a non-contiguous crop
        expected = torchvision_jitter(x, b, c, s, h, order)
        assert torch.equal(color_jitter(x, b, c, s, h, order), expected)
        assert torch.equal(color_jitter(x[0], b, c, s, h, order), torchvision_jitter(x[0], b, c, s, h, order))


@pytest.mark.parametrize("per_frame", [False, True])
def test_train_transform_equals_the_one_with_torchvision_jitter(per_frame, monkeypatch):
    g = torch.Generator().manual_seed(5)
    frames = torch.randint(0, 256, (4, 50, 70, 3), dtype=torch.uint8, generator=g)
    transform = TrainTransform(32, jitter_prob=1.0, grayscale_prob=0.0, jitter_per_frame=per_frame)
    fast = [transform(frames, np.random.default_rng(seed)) for seed in range(6)]

    def reference(self: ColorJitterParams, x: torch.Tensor) -> torch.Tensor:
        return torchvision_jitter(x, self.brightness, self.contrast, self.saturation, self.hue, self.order)

    monkeypatch.setattr(transforms.ColorJitterParams, "apply", reference)
    for seed, out in enumerate(fast):
        torch.testing.assert_close(out, transform(frames, np.random.default_rng(seed)), rtol=0, atol=0)


def test_bad_jitter_arguments_are_refused():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        color_jitter(x.float(), 1, 1, 1, 0, (0, 1, 2, 3))
    with pytest.raises(ValueError, match="non-negative"):
        color_jitter(x, -0.1, 1, 1, 0, (0, 1, 2, 3))
    with pytest.raises(ValueError, match="permutation of 0..3"):
        color_jitter(x, 1, 1, 1, 0, (0, 1, 2, 4))
    with pytest.raises(ValueError, match=r"\[-0.5, 0.5\]"):
        color_jitter(x, 1, 1, 1, 0.6, (3,))
