"""Frame sampling against the segment-sampling formulas (tcclip.data.sampling), written out plainly here."""

from __future__ import annotations

import numpy as np
import pytest

from tcclip.data import sampling

VIDEO_FRAMES = (1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 100, 301)
CLIP_FRAMES = (1, 2, 3, 4, 8, 16, 32)
CASES = [(f, t) for f in VIDEO_FRAMES for t in CLIP_FRAMES]  # F < T, F == T and F > T all included


@pytest.mark.parametrize(("F", "T"), CASES)
def test_test_indices_are_the_spec_formula(F, T):
    interval = F / T
    expected = [int(i * interval + interval / 2) % F for i in range(T)]
    assert sampling.test_indices(F, T) == [expected]
    assert sampling.test_indices(F, T, num_clip=1) == [expected]


@pytest.mark.parametrize(("F", "T"), CASES)
def test_multi_view_indices_are_evenly_shifted(F, T):
    num_clip = 4
    interval = F / T
    views = sampling.test_indices(F, T, num_clip=num_clip)
    for v, view in enumerate(views):
        assert view == [int(i * interval + (v + 0.5) / num_clip * interval) % F for i in range(T)]


def test_multi_view_examples():
    # 16 frames, 4 segments of 4 frames: 2 views at 1/4 and 3/4 of each segment, 4 views at 1/8, 3/8, 5/8, 7/8.
    assert sampling.test_indices(16, 4, num_clip=2) == [[1, 5, 9, 13], [3, 7, 11, 15]]
    assert sampling.test_indices(16, 4, num_clip=4) == [[0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10, 14], [3, 7, 11, 15]]
    assert sampling.test_indices(16, 4) == [[2, 6, 10, 14]]


@pytest.mark.parametrize(("F", "T"), [(f, t) for f, t in CASES if f >= t])
def test_train_indices_take_one_frame_per_segment(F, T):
    interval = F // T
    rng = np.random.default_rng(0)
    for _ in range(20):
        indices = sampling.train_indices(F, T, rng)
        assert len(indices) == T
        assert all(i * interval <= x < (i + 1) * interval for i, x in enumerate(indices))


def test_train_offsets_are_uniform_over_the_segment():
    rng = np.random.default_rng(0)
    offsets = np.array([sampling.train_indices(40, 8, rng) for _ in range(2000)]) - np.arange(8) * 5
    counts = np.bincount(offsets.ravel(), minlength=5)
    assert offsets.min() == 0 and offsets.max() == 4
    assert np.all(np.abs(counts / counts.sum() - 0.2) < 0.02)


@pytest.mark.parametrize(("F", "T"), [(f, t) for f, t in CASES if f < t])
def test_train_indices_with_fewer_frames_than_segments(F, T):
    # Python's round() rounds halves to even, like numpy's; indices wrap modulo F like the official code.
    expected = [round(i * F / T) % F for i in range(T)]
    assert sampling.train_indices(F, T, np.random.default_rng(0)) == expected


def test_train_rounding_examples():
    rng = np.random.default_rng(0)
    assert sampling.train_indices(3, 4, rng) == [0, 1, 2, 2]  # 0, .75, 1.5 -> 2 (even), 2.25
    assert sampling.train_indices(5, 8, rng) == [0, 1, 1, 2, 2, 3, 4, 4]  # 2.5 -> 2 (even)
    assert sampling.train_indices(3, 8, rng) == [0, 0, 1, 1, 2, 2, 2, 0]  # 2.625 -> 3 wraps to 0
    assert sampling.train_indices(1, 8, rng) == [0] * 8


@pytest.mark.parametrize("T", CLIP_FRAMES)
def test_as_many_frames_as_segments_takes_every_frame(T):
    assert sampling.train_indices(T, T, np.random.default_rng(0)) == list(range(T))
    assert sampling.test_indices(T, T) == [list(range(T))]


def test_random_views_use_the_training_rule():
    views = sampling.test_indices(64, 8, num_clip=3, random_views=True, rng=np.random.default_rng(1))
    rng = np.random.default_rng(1)
    assert views == [sampling.train_indices(64, 8, rng) for _ in range(3)]
    assert len({tuple(v) for v in views}) == 3


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: sampling.train_indices(0, 8, np.random.default_rng(0)), "no frames"),
        (lambda: sampling.test_indices(10, 0), "num_frames must be positive"),
        (lambda: sampling.test_indices(10, 8, num_clip=0), "num_clip must be positive"),
        (lambda: sampling.test_indices(10, 8, random_views=True), "needs an rng"),
    ],
)
def test_invalid_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
