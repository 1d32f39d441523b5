"""`tcclip data synth|check`."""

from __future__ import annotations

import shutil

import pytest

from tcclip.cli.commands import run_command
from tcclip.data.families import Synthetic


def main(argv: list[str]) -> int:
    return run_command("data", argv)


def test_synth_writes_videos_and_protocol_splits(tmp_path):
    out = tmp_path / "synth"
    args = ["synth", "--out", str(out), "--num-classes", "2", "--videos-per-class", "3", "--num-frames", "6"]
    assert main([*args, "--size", "16", "--formats", "mp4"]) == 0
    assert (out / "labels.csv").is_file() and (out / "splits/base2novel/fs_base_s1_train.txt").is_file()
    assert Synthetic(root=str(out), protocol="few_shot", shots=2).train_class_names == ["MoveLeft", "MoveRight"]


def test_check_a_list_in_parallel(data_synth, capsys):
    code = main(["check", "--list", str(data_synth / "test.txt"), "--root", str(data_synth), "--workers", "2"])
    assert code == 0
    assert "3 of 3 videos readable" in capsys.readouterr().err


def test_check_a_config_reports_broken_videos(data_synth, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # keep rich's table rows on one line
    root = tmp_path / "root"
    shutil.copytree(data_synth / "videos", root / "videos")
    lines = (data_synth / "test.txt").read_text() + "videos/missing.mp4 0\nvideos/bad.avi 1\n"
    (root / "videos/bad.avi").write_bytes(b"not a video" * 50)
    (tmp_path / "test.txt").write_text(lines)
    config = tmp_path / "config.yaml"
    config.write_text(
        "model: {class_path: x}\n"  # other sections are ignored
        "data:\n  class_path: tcclip.data.datamodule.VideoListDataModule\n"
        f"  init_args: {{labels: {data_synth / 'labels.csv'}, val_lists: [{tmp_path / 'test.txt'}], "
        f"root: {root}, backend: pyav, num_frames: 4}}\n"
    )
    report = tmp_path / "broken.tsv"
    assert main(["check", "--config", str(config), "--workers", "1", "--out", str(report)]) == 1
    err = capsys.readouterr().err
    assert "2 unreadable videos" in err and "file not found" in err and "3 of 5 videos readable" in err
    assert [line.split("\t")[0] for line in report.read_text().splitlines()] == ["videos/missing.mp4", "videos/bad.avi"]


def test_check_without_data_section(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("trainer: {max_epochs: 1}\n")
    assert main(["check", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "no 'data:' section" in capsys.readouterr().err


def _quirk_list(quirk_videos, tmp_path):
    lines = "".join(f"{video.path.name} 0\n" for video in quirk_videos.values())
    (tmp_path / "quirks.txt").write_text(lines)
    return ["--list", str(tmp_path / "quirks.txt"), "--root", str(next(iter(quirk_videos.values())).path.parent)]


def test_verify_frames_flags_the_bframe_avi_under_decord(quirk_videos, tmp_path, capsys, monkeypatch):
    pytest.importorskip("decord")
    monkeypatch.setenv("COLUMNS", "250")
    args = ["check", *_quirk_list(quirk_videos, tmp_path), "--workers", "1", "--num-frames", "8"]
    assert main([*args, "--backend", "decord", "--verify-frames"]) == 1
    err = capsys.readouterr().err
    assert "1 videos decode differently" in err and "bframes_avi.avi" in err
    assert "decord returns other frames than a sequential decode" in err
    assert "6 of 6 videos readable" in err and "5 of 6 readable videos give the same frames" in err


def test_verify_frames_passes_every_quirk_with_the_default_backend(quirk_videos, tmp_path, capsys):
    args = ["check", *_quirk_list(quirk_videos, tmp_path), "--workers", "1", "--num-frames", "8", "--verify-frames"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "6 of 6 readable videos give the same frames" in err
    # the zeroed last sample: read as players show it (39 pictures), and listed (the overwritten slice is listed too
    # where the decoder reports the damage, which depends on where the bytes land)
    assert "video(s) with decode errors" in err and "missing_last_frame_mp4.mp4 (1)" in err


def test_unavailable_backend_is_one_error_line_with_the_fix(quirk_videos, tmp_path, capsys, monkeypatch):
    import tcclip.data.video_reader as video_reader
    from tcclip.cli import main as tcclip_main

    monkeypatch.setattr(video_reader, "_torchcodec_problem", lambda: "torchcodec cannot load FFmpeg's shared libraries")
    assert tcclip_main(["data", "check", *_quirk_list(quirk_videos, tmp_path), "--backend", "torchcodec"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tcclip data: error: video backend torchcodec cannot run here") and "Traceback" not in err
    assert "apt-get install ffmpeg" in err
