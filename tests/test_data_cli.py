"""`tcclip data synth|check`: `check --list` is a typed command, `check --config` reads the experiment config through
LightningCLI and builds its data module alone."""

from __future__ import annotations

import shutil
import sys

import pytest

from tcclip.cli.commands import main as tcclip_main
from tcclip.data.families import Synthetic


def main(argv: list[str]) -> int:
    """`tcclip data ARGV...` as the console script runs it (its errors are exit codes and one line)."""
    return tcclip_main(["data", *argv])


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


@pytest.fixture
def no_network(monkeypatch):
    """Checking videos builds no network and reads no CLIP weights: building the LightningModule fails the test."""
    import tcclip.training.module

    def refuse(*args, **kwargs):
        raise AssertionError("tcclip data check built the network")

    monkeypatch.setattr(tcclip.training.module, "build_network", refuse)
    monkeypatch.setattr(sys, "argv", ["tcclip"])  # LightningCLI warns when it sees pytest's arguments too


def test_check_a_config_reports_broken_videos(data_synth, tmp_path, capsys, monkeypatch, no_network):
    monkeypatch.setenv("COLUMNS", "200")  # keep rich's table rows on one line
    root = tmp_path / "root"
    shutil.copytree(data_synth / "videos", root / "videos")
    lines = (data_synth / "test.txt").read_text() + "videos/missing.mp4 0\nvideos/bad.avi 1\n"
    (root / "videos/bad.avi").write_bytes(b"not a video" * 50)
    (tmp_path / "test.txt").write_text(lines)
    config = tmp_path / "config.yaml"
    config.write_text(
        "data:\n  class_path: tcclip.data.datamodule.VideoListDataModule\n"
        f"  init_args: {{labels: {data_synth / 'labels.csv'}, val_lists: [{tmp_path / 'test.txt'}], "
        f"root: {root}, backend: pyav, num_frames: 4}}\n"
    )
    report = tmp_path / "broken.tsv"
    assert main(["check", "--config", str(config), "--workers", "1", "--out", str(report)]) == 1
    err = capsys.readouterr().err
    assert "2 unreadable videos" in err and "file not found" in err and "3 of 5 videos readable" in err
    assert "backend pyav" in err
    assert [line.split("\t")[0] for line in report.read_text().splitlines()] == ["videos/missing.mp4", "videos/bad.avi"]


def test_check_a_real_experiment_config_builds_no_network(data_synth, capsys, no_network):
    # configs/demo.yaml has model, trainer and data sections; the shared defaults add model.clip_weights: openai
    argv = ["check", "--config", "configs/demo.yaml", "--root", str(data_synth), "--workers", "1"]
    assert main([*argv, "--stage", "test"]) == 0
    test_videos = len((data_synth / "test.txt").read_text().splitlines())
    assert f"{test_videos} of {test_videos} videos readable (test/split1; backend" in capsys.readouterr().err
    assert main(argv) == 0  # every list of the config (train, val, test), each video once
    assert "(train, val/val, test/split1; backend" in capsys.readouterr().err


def test_check_a_config_takes_lightning_cli_settings_and_the_earlier_spellings(
    data_synth, tmp_path, capsys, monkeypatch, no_network
):
    from tcclip.cli import data as check_module

    seen = []
    monkeypatch.setattr(check_module, "report", lambda *args: seen.append(args) or 0)
    config = tmp_path / "short.yaml"  # a short class name, as LightningCLI allows for the families
    config.write_text("data:\n  class_path: Synthetic\n  init_args: {root: /nowhere, protocol: fully_supervised}\n")
    lightning = [
        "--data.init_args.root",
        str(data_synth),
        "--data.init_args.num_frames",
        "4",
        "--verify_frames",
        "true",
    ]
    earlier = ["--root", str(data_synth), "--num-frames", "4", "--verify-frames", "--backend", "pyav"]
    # LightningCLI reads its words in order, so its settings come after the config; the earlier --root, --backend and
    # --num-frames override the config wherever they are, as they did
    assert main(["check", "--config", str(config), *lightning, "--stage", "fit", "--workers", "1"]) == 0
    assert main(["check", *earlier, "--config", str(config), "--stage", "fit", "--workers", "1"]) == 0
    (lists, root, *_, backend_l, frames_l, verify_l, workers_l, out_l), (*_, backend_e, frames_e, verify_e, _, _) = seen
    assert [name for name, _ in lists] == ["train", "val/val"] and root == data_synth
    assert (backend_l, frames_l, verify_l, workers_l, out_l) == ("auto", 4, True, 1, None)
    assert (backend_e, frames_e, verify_e) == ("pyav", 4, True)


def test_check_a_config_is_a_whole_experiment_config(data_synth, tmp_path, capsys, monkeypatch, no_network):
    # The config is read as `tcclip fit` reads it: a section it would refuse is refused here too, before any decoding.
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model: {{class_path: x}}\ndata:\n  class_path: Synthetic\n  init_args: {{root: {data_synth}, "
        "protocol: fully_supervised}\n"
    )
    with pytest.raises(SystemExit) as done:
        main(["check", "--config", str(config)])
    assert done.value.code == 2
    assert "Group 'model' does not accept option 'class_path'" in capsys.readouterr().err


def test_check_without_data_section(tmp_path, capsys, no_network):
    (tmp_path / "c.yaml").write_text("trainer: {max_epochs: 1}\n")
    assert main(["check", "--config", str(tmp_path / "c.yaml")]) == 2
    assert f"no 'data:' section in {tmp_path / 'c.yaml'}. Pass the run's config file(s)" in capsys.readouterr().err
    # a setting of the data module alone does not name a dataset either
    assert main(["check", "--config", str(tmp_path / "c.yaml"), "--root", str(tmp_path)]) == 2
    assert "no 'data:' section" in capsys.readouterr().err


def test_check_a_config_with_a_missing_list_is_an_error(tmp_path, capsys, no_network):
    config = tmp_path / "c.yaml"
    config.write_text(
        "data:\n  class_path: tcclip.data.datamodule.VideoListDataModule\n"
        f"  init_args: {{labels: {tmp_path / 'labels.csv'}, val_lists: [{tmp_path / 'gone.txt'}], root: {tmp_path}}}\n"
    )
    assert main(["check", "--config", str(config)]) == 2
    assert "gone.txt" in capsys.readouterr().err


def test_check_without_config_or_list(capsys):
    assert main(["check"]) == 2
    assert "give --config CONFIG.yaml, or --list FILE --root DIR" in capsys.readouterr().err


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

    monkeypatch.setattr(video_reader, "_torchcodec_problem", lambda: "torchcodec cannot load FFmpeg's shared libraries")
    assert tcclip_main(["data", "check", *_quirk_list(quirk_videos, tmp_path), "--backend", "torchcodec"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tcclip data: error: video backend torchcodec cannot run here") and "Traceback" not in err
    assert "apt-get install ffmpeg" in err
