"""`tcclip data verify` on a copy with missing, corrupt and extra files, and the start-of-run summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcclip.cli.commands import run_command


def data_main(argv: list[str]) -> int:
    return run_command("data", argv)


@pytest.fixture
def copy(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    from tcclip.data.custom_splits import make_synthetic_protocol_splits
    from tcclip.data.synth import make_synthetic_dataset

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "data"
    make_synthetic_dataset(root, num_classes=3, videos_per_class=4, num_frames=(8, 10), size=32, seed=0)
    make_synthetic_protocol_splits(root)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"data:\n  class_path: tcclip.data.families.Synthetic\n  init_args:\n    root: {root}\n"
        "    protocol: fully_supervised\n    num_frames: 4\n"
    )
    return root, config


def _list(root: Path, name: str) -> list[tuple[str, int]]:
    return [(line.rsplit(" ", 1)[0], int(line.rsplit(" ", 1)[1])) for line in (root / name).read_text().splitlines()]


def _summary(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_complete_copy(copy, capsys) -> None:
    root, config = copy
    assert data_main(["verify", "--config", str(config), "--workers", "1"]) == 0
    n = {name: len(_list(root, f"{name}.txt")) for name in ("train", "val", "test")}
    summary = _summary(capsys)
    assert summary.startswith("synthetic (")
    assert f"train: {n['train']}/{n['train']} present, {n['train']} decodable, {n['train']} exact" in summary
    assert f"test/split1: {n['test']}/{n['test']} present, {n['test']} decodable, {n['test']} exact" in summary


def test_missing_corrupt_and_extra_files(copy, capsys, tmp_path: Path) -> None:
    root, config = copy
    train, test = _list(root, "train.txt"), _list(root, "test.txt")
    classes = (root / "labels.csv").read_text().splitlines()[1:]
    (root / train[0][0]).unlink()
    (root / test[1][0]).write_bytes(b"not a video")
    (root / "videos" / "stray.mp4").write_bytes(b"x")
    out = tmp_path / "problems.txt"
    assert data_main(["verify", "--config", str(config), "--workers", "2", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    summary = captured.out.strip().splitlines()[-1]
    assert f"train: {len(train) - 1}/{len(train)} present, {len(train) - 1} decodable" in summary
    assert f"test/split1: {len(test)}/{len(test)} present, {len(test) - 1} decodable, {len(test) - 1} exact" in summary
    assert "1 video files under the root are in no list" in captured.err and "stray.mp4" in captured.err
    lost = classes[train[0][1]].split(",", 1)[1]
    assert f"{lost} (1)" in captured.err
    lines = out.read_text().splitlines()
    assert f"{train[0][0]}\ttrain\tmissing" in lines
    assert any(line.startswith(f"{test[1][0]}\ttest/split1\tunreadable") for line in lines)


def test_presence_only_and_start_of_run_summary_from_cache(copy, capsys) -> None:
    from tcclip.cli.data_config import datamodule_from_config
    from tcclip.data.verify import start_of_run_summary

    root, config = copy
    dm = datamodule_from_config([config])
    assert "decoding not checked" in start_of_run_summary(dm, "test")  # nothing verified yet: no decoding at start
    assert data_main(["verify", "--config", str(config), "--presence-only"]) == 0
    assert "decoding not checked" in _summary(capsys)
    assert data_main(["verify", "--config", str(config), "--workers", "1"]) == 0
    n = len(_list(root, "test.txt"))
    assert start_of_run_summary(dm, "test").endswith(f"test/split1: {n}/{n} present, {n} decodable, {n} exact")
    video = root / _list(root, "test.txt")[0][0]
    video.write_bytes(video.read_bytes())  # rewritten: its cached result no longer counts
    assert f"{n - 1} exact ({1} not checked)" in start_of_run_summary(dm, "test")
