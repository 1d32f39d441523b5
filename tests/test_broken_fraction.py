"""The broken-video limit stops a run as soon as the videos tried show it will be exceeded, and names the right key."""

from __future__ import annotations

import pytest

from tcclip.data.dataset import BrokenVideoLog, BrokenVideosError, VideoDataset, surely_above
from tcclip.data.labels import Annotation, read_annotations
from tcclip.data.transforms import TestTransform

T, S = 4, 32


def eval_set(data_synth, tmp_path, annotations, limit):
    return VideoDataset(
        annotations, data_synth, T, TestTransform(S), backend="pyav", split="val/x",
        broken_log=BrokenVideoLog(tmp_path), max_broken_fraction=limit,
    )  # fmt: skip


def test_a_mostly_broken_list_stops_after_a_few_videos(data_synth, tmp_path):
    good = read_annotations(data_synth / "test.txt")[0]
    # 400 videos, 4 in 5 missing (a half-copied dataset), limit 30%: the count alone would pass 120 only after
    # about 150 videos; the first handful already show it.
    annotations = [good if i % 5 == 0 else Annotation(f"missing/{i}.mp4", 0) for i in range(400)]
    dataset = eval_set(data_synth, tmp_path, annotations, limit=0.3)
    with pytest.raises(BrokenVideosError) as info:
        for i in range(len(dataset)):
            dataset[i]
    assert i < 20
    message = info.value.format()
    assert f"of the first {i + 1} tried" in message and "of 400 videos of split 'val/x' could not be read" in message
    assert "raise data.init_args.max_broken_fraction" in message and "data.max_broken" not in message


def test_a_list_under_the_limit_is_never_stopped_early(data_synth, tmp_path):
    good = read_annotations(data_synth / "test.txt")[0]
    # 1 in 10 broken, limit 20%: no early stop anywhere along the list (and the count stays under the limit).
    annotations = [Annotation(f"missing/{i}.mp4", 0) if i % 10 == 3 else good for i in range(60)]
    dataset = eval_set(data_synth, tmp_path, annotations, limit=0.2)
    assert sum(dataset[i]["video"] is None for i in range(len(dataset))) == 6


def test_surely_above_needs_evidence():
    assert not surely_above(2, 2, 0.01)  # two broken files are bad luck, not yet proof
    assert surely_above(4, 4, 0.01) and surely_above(10, 20, 0.1)
    assert not surely_above(10, 100, 0.1) and not surely_above(5, 5, 1.0)
