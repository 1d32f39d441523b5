"""Synthetic action videos: layout and lists, seeded, motion-defined classes, readable index stamps, CLI."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tcclip.cli import main as cli_main
from tcclip.cli.commands import run_command
from tcclip.data.synth import (
    CLASS_COLOURS,
    CLASS_NAMES,
    draw_index_stamp,
    make_synthetic_dataset,
    read_index_stamp,
    render_video,
    write_video,
)
from tcclip.data.video_reader import open_video


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return make_synthetic_dataset(
        root, num_classes=4, videos_per_class=3, num_frames=(8, 11), size=32, stamp_index=True
    )


def test_layout_labels_and_lists(small_dataset):
    root = small_dataset.root
    assert small_dataset.class_names == list(CLASS_NAMES[:4])
    assert (root / "labels.csv").read_text().splitlines() == ["id,name"] + [
        f"{i},{n}" for i, n in enumerate(CLASS_NAMES[:4])
    ]
    rows = {
        split: [line.split(" ") for line in path.read_text().splitlines()]
        for split, path in small_dataset.lists.items()
    }
    assert {split: len(lines) for split, lines in rows.items()} == {"train": 4, "val": 4, "test": 4}  # 1/1/1 per class
    all_rows = [row for lines in rows.values() for row in lines]
    assert len({path for path, _ in all_rows}) == small_dataset.num_videos == 12
    for path, label in all_rows:
        assert (root / path).is_file() and path.split("/")[1] == CLASS_NAMES[int(label)]
    assert {path.rsplit(".", 1)[1] for path, _ in all_rows} == {"mp4", "avi", "webm"}
    for lines in rows.values():  # every split has every class
        assert sorted(int(label) for _, label in lines) == [0, 1, 2, 3]


def test_class_names_are_camel_case():
    assert len(CLASS_NAMES) == len(set(CLASS_NAMES)) == 12
    assert all(re.fullmatch(r"(?:[A-Z][a-z]+)+", name) for name in CLASS_NAMES)


def test_every_video_decodes_with_exact_frame_indices(small_dataset):
    for split in small_dataset.lists.values():
        for line in split.read_text().splitlines():
            reader = open_video(small_dataset.root / line.split()[0], "pyav")
            assert 8 <= len(reader) <= 11
            assert [read_index_stamp(f.numpy()) for f in reader.get_frames(range(len(reader)))] == list(
                range(len(reader))
            )


def test_rendering_is_seeded():
    a = render_video("Grow", 10, 32, 48, np.random.default_rng(4))
    b = render_video("Grow", 10, 32, 48, np.random.default_rng(4))
    c = render_video("Grow", 10, 32, 48, np.random.default_rng(5))
    assert a.shape == (10, 32, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_dataset_is_seeded(tmp_path):
    kwargs = {"num_classes": 3, "videos_per_class": 3, "num_frames": (6, 9), "size": 32, "formats": ("avi",)}
    first = make_synthetic_dataset(tmp_path / "a", seed=1, **kwargs)
    second = make_synthetic_dataset(tmp_path / "b", seed=1, **kwargs)
    for split in ("train", "val", "test"):
        assert first.lists[split].read_text() == second.lists[split].read_text()
    for line in first.lists["train"].read_text().splitlines():
        path = line.split()[0]
        a = open_video(first.root / path, "pyav")
        b = open_video(second.root / path, "pyav")
        assert np.array_equal(a.get_frames(range(len(a))), b.get_frames(range(len(b))))


def _shape_mask(frames: np.ndarray) -> np.ndarray:
    """[T, H, W] pixels that differ from the temporal median, i.e. where the moving shape is."""
    f = frames.astype(np.float32)
    return np.abs(f - np.median(f, axis=0)).sum(-1) > 90


@pytest.mark.parametrize(
    ("name", "axis", "sign"), [("MoveRight", 1, 1), ("MoveLeft", 1, -1), ("MoveDown", 0, 1), ("MoveUp", 0, -1)]
)
def test_moves_go_the_named_way(name, axis, sign):
    for seed in range(5):
        mask = _shape_mask(render_video(name, 24, 48, 64, np.random.default_rng(seed)))
        centres = [np.argwhere(m)[:, axis].mean() for m in (mask[0], mask[-1])]
        assert sign * (centres[1] - centres[0]) > 5


@pytest.mark.parametrize(("name", "sign"), [("Grow", 1), ("Shrink", -1)])
def test_grow_and_shrink(name, sign):
    for seed in range(5):
        frames = render_video(name, 24, 48, 64, np.random.default_rng(seed)).astype(np.float32)
        background = np.median(frames.reshape(24, -1, 3), axis=1)[:, None, None]  # the shape covers < 10%
        area = (np.linalg.norm(frames - background, axis=-1) > 60).sum((1, 2))
        assert sign * (area[-1] - area[0]) > 0.25 * max(area[0], area[-1])  # the radius changes by 1.6-2.2x


@pytest.mark.parametrize(("a", "b"), [("MoveLeft", "MoveRight"), ("MoveUp", "MoveDown"), ("Grow", "Shrink")])
def test_opposite_classes_are_time_reversals(a, b):
    """Same seed: the same scene played backwards (up to the per-frame noise), so no frame tells them apart."""
    forward = render_video(a, 16, 32, 48, np.random.default_rng(3)).astype(np.float32)
    backward = render_video(b, 16, 32, 48, np.random.default_rng(3)).astype(np.float32)
    assert np.abs(forward - backward[::-1]).mean() < 12  # noise only
    assert np.abs(forward[0] - backward[0]).max() > 100  # but the scenes differ at any one time


def test_one_frame_does_not_tell_left_from_right():
    """Over many videos, the shape's horizontal position in a random frame has the same distribution."""
    rng = np.random.default_rng(0)
    positions = {}
    for name in ("MoveLeft", "MoveRight"):
        xs = []
        for seed in range(60):
            frames = render_video(name, 12, 32, 48, np.random.default_rng([seed, len(name)]))
            mask = _shape_mask(frames)[rng.integers(12)]
            if mask.any():
                xs.append(np.argwhere(mask)[:, 1].mean() / 48)
        positions[name] = np.array(xs)
    assert abs(positions["MoveLeft"].mean() - positions["MoveRight"].mean()) < 0.08
    assert abs(positions["MoveLeft"].std() - positions["MoveRight"].std()) < 0.08


@pytest.mark.parametrize(("height", "width"), [(32, 32), (48, 64)])
def test_index_stamp_round_trips_through_noise(height, width):
    rng = np.random.default_rng(0)
    for index in range(256):
        frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        draw_index_stamp(frame, index)
        noisy = np.clip(frame + rng.normal(0, 25, frame.shape), 0, 255).astype(np.uint8)
        assert read_index_stamp(noisy) == index
    with pytest.raises(ValueError, match="does not fit"):
        draw_index_stamp(frame, 256)


def test_named_classes_in_the_given_order(tmp_path):
    data = make_synthetic_dataset(tmp_path, classes=["Grow", "MoveLeft"], videos_per_class=3, num_frames=4, size=32)
    assert data.class_names == ["Grow", "MoveLeft"]
    assert (tmp_path / "labels.csv").read_text() == "id,name\n0,Grow\n1,MoveLeft\n"
    rows = [line.split() for line in (tmp_path / "train.txt").read_text().splitlines()]
    assert {(path.split("/")[1], label) for path, label in rows} == {("Grow", "0"), ("MoveLeft", "1")}


@pytest.mark.parametrize("classes", [["MoveLeft", "Jump"], ["Grow", "Grow"], []])
def test_bad_class_lists(tmp_path, classes):
    with pytest.raises(ValueError, match="must be distinct names from MoveLeft"):
        make_synthetic_dataset(tmp_path, classes=classes)


@pytest.mark.parametrize("name", ["MoveUp", "StandStill", "ChangeColor"])
def test_class_colour_paints_the_shape(name):
    """With a colour, the shape's first-frame pixels are within the jitter (20) plus noise of it, in every video."""
    colour = np.array(CLASS_COLOURS[name], dtype=np.float32)
    for seed in range(5):
        frames = render_video(name, 12, 48, 64, np.random.default_rng(seed), colour=colour).astype(np.float32)
        near = np.abs(frames[0] - colour).max(-1) < 20 + 3 * 8  # 8: the largest noise std
        assert 10 < near.sum() < 0.2 * 48 * 64  # the shape is there, the background is far from its colour


def test_class_colours_differ():
    colours = np.array(list(CLASS_COLOURS.values()), dtype=np.float32)
    distances = np.linalg.norm(colours[:, None] - colours[None], axis=-1) + 1e9 * np.eye(len(colours))
    assert distances.min() > 60  # apart by more than the per-video jitter of 20 per channel can close


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 31, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="unsupported extension"):
        write_video(tmp_path / "x.mkv", np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="num_classes"):
        make_synthetic_dataset(tmp_path, num_classes=13)
    with pytest.raises(ValueError, match="videos_per_class"):
        make_synthetic_dataset(tmp_path, videos_per_class=2)
    with pytest.raises(ValueError, match="unknown synthetic class"):
        render_video("Jump", 8, 32, 32, np.random.default_rng(0))


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = [
        "--out",
        str(out),
        "--num-classes",
        "3",
        "--videos-per-class",
        "3",
        "--num-frames",
        "6-8",
        "--size",
        "32x48",
    ]
    assert run_command("data", ["synth", *argv]) == 0
    assert "wrote 9 videos of 3 classes" in capsys.readouterr().out
    first = (out / "train.txt").read_text().split()[0]
    assert open_video(out / first, "pyav").get_frames([0]).shape == (1, 32, 48, 3)
    assert run_command("data", ["synth", "--out", str(out / "named"), "--classes", "Grow,Shrink", "--class-colours",
                       "--videos-per-class", "3", "--num-frames", "4", "--size", "32"]) == 0  # fmt: skip
    assert (out / "named" / "labels.csv").read_text() == "id,name\n0,Grow\n1,Shrink\n"
    assert cli_main(["data", "synth", "--out", str(out), "--num-classes", "99"]) == 2
