"""VideoDataset: items, and broken videos (missing, empty, garbage, truncated) logged, replaced or excluded, counted."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch.utils.data import DataLoader

from tcclip.data.dataset import BrokenVideoLog, BrokenVideosError, EvalCollate, VideoDataset
from tcclip.data.labels import Annotation, read_annotations
from tcclip.data.transforms import TestTransform, TrainTransform

T, S = 4, 32


@pytest.fixture()
def mixed_root(data_synth, tmp_path):
    """A root with 4 good videos and one broken video of each kind, interleaved; returns (root, annotations)."""
    good = read_annotations(data_synth / "train.txt")[:4]
    for a in good:
        (tmp_path / a.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data_synth / a.path, tmp_path / a.path)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "garbage.avi").write_bytes(bytes(range(256)) * 40)
    data = (data_synth / good[0].path).read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    broken = [Annotation("missing.mp4", 1), Annotation("empty.mp4", 2), Annotation("garbage.avi", 0)]
    broken.append(Annotation("truncated.mp4", 1))
    annotations = [good[0], broken[0], good[1], broken[1], broken[2], good[2], broken[3], good[3]]
    return tmp_path, annotations


def _train_set(root, annotations, backend, **kwargs):
    return VideoDataset(annotations, root, T, TrainTransform(S), train=True, backend=backend, split="train", **kwargs)


def test_items_follow_the_contract(data_synth):
    dataset = VideoDataset(data_synth / "test.txt", data_synth, T, TestTransform(S), num_clip=2, backend="pyav")
    item = dataset[1]
    assert item["video"].shape == (2, T, 3, S, S) and item["video"].dtype == torch.float32
    assert (item["label"], item["index"]) == (1, 1) and dataset.path(1).startswith("videos/MoveRight/")


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_broken_training_videos_are_replaced_and_listed(mixed_root, tmp_path, backend):
    root, annotations = mixed_root
    log = BrokenVideoLog(tmp_path / "run")
    dataset = _train_set(root, annotations, backend, broken_log=log, max_broken_fraction=0.5)
    # Index 3 (empty) and 4 (garbage) are broken: both fall through to the next readable video, index 5.
    assert [dataset[i]["index"] for i in range(len(dataset))] == [0, 2, 2, 5, 5, 5, 7, 7]
    entries = log.entries("train")
    assert sorted(path for _, path in entries) == ["empty.mp4", "garbage.avi", "missing.mp4", "truncated.mp4"]
    assert "file not found" in entries[("train", "missing.mp4")]
    assert log.path.read_text().count("\n") == 4


def test_broken_count_is_shared_across_workers(mixed_root, tmp_path):
    root, annotations = mixed_root
    log = BrokenVideoLog(tmp_path / "run")
    dataset = _train_set(root, annotations * 2, "pyav", broken_log=log, max_broken_fraction=0.5)
    loader = DataLoader(dataset, batch_size=2, num_workers=2)
    assert sum(len(batch["index"]) for batch in loader) == 16
    assert log.count("train") == 4  # each broken file once, although both workers met it


def test_the_default_log_is_made_on_the_first_broken_video_and_shared_by_workers(mixed_root, own_tmpdir):
    root, annotations = mixed_root
    good = [annotations[i] for i in (0, 2, 5, 7)]  # the fixture's readable videos
    assert sum(len(b["index"]) for b in DataLoader(_train_set(root, good, "pyav"), batch_size=2)) == 4
    assert list(own_tmpdir.iterdir()) == []  # nothing broken: no folder
    dataset = _train_set(root, annotations * 2, "pyav", max_broken_fraction=0.5)
    assert sum(len(batch["index"]) for batch in DataLoader(dataset, batch_size=2, num_workers=2)) == 16
    (folder,) = own_tmpdir.iterdir()
    assert dataset.broken_log.path == folder / "broken_videos.txt" and dataset.broken_log.count("train") == 4


def test_too_many_broken_videos_stop_the_run(mixed_root, tmp_path):
    root, annotations = mixed_root
    dataset = _train_set(root, annotations, "pyav", broken_log=BrokenVideoLog(tmp_path), max_broken_fraction=0.2)
    loader = DataLoader(dataset, batch_size=8, num_workers=1)
    with pytest.raises(BrokenVideosError, match=r"2 of 8 videos of split 'train' could not be read.*max_broken_fr"):
        next(iter(loader))


def test_broken_eval_videos_are_excluded_not_replaced(mixed_root, tmp_path):
    root, annotations = mixed_root
    log = BrokenVideoLog(tmp_path)
    dataset = VideoDataset(
        annotations, root, T, TestTransform(S), num_clip=2, backend="pyav", split="test/x", broken_log=log,
        max_broken_fraction=0.5,
    )  # fmt: skip
    collate = EvalCollate((2, T, 3, S, S))
    batches = list(DataLoader(dataset, batch_size=2, collate_fn=collate))
    assert [b["index"].tolist() for b in batches] == [[0], [2], [5], [7]]
    assert batches[0]["video"].shape == (1, 2, T, 3, S, S)
    assert log.count("test/x") == 4
    empty = collate([dataset[3], dataset[4]])  # a batch of broken videos only
    assert empty["video"].shape == (0, 2, T, 3, S, S) and empty["label"].shape == (0,)


@pytest.mark.parametrize("backend", ["auto", "pyav", "decord"])
def test_a_last_frame_that_does_not_decode_never_makes_a_video_broken(quirk_videos, tmp_path, backend):
    """The count shrinks before sampling, so no view (40 test views, 30 training draws) can hit the bad frame."""
    if backend == "decord":
        pytest.importorskip("decord")
    video = quirk_videos["missing_last_frame_mp4"]
    annotations = [Annotation(video.path.name, 0)]
    log = BrokenVideoLog(tmp_path)
    test_set = VideoDataset(
        annotations, video.path.parent, T, TestTransform(S), num_clip=40, backend=backend, broken_log=log
    )
    assert test_set[0]["video"].shape == (40, T, 3, S, S)  # the views reach the last frame that decodes
    train_set = VideoDataset(annotations, video.path.parent, T, TrainTransform(S), train=True, backend=backend)
    torch.manual_seed(0)
    assert all(train_set[0]["index"] == 0 for _ in range(30))
    assert log.count("data") == 0 and train_set.broken_log.count("data") == 0
