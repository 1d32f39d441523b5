"""`tcclip data synth|check`."""

from __future__ import annotations

import shutil

from tcclip.data.cli import main
from tcclip.data.families import Synthetic


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
