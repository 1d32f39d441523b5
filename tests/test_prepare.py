"""`tcclip data prepare`: faithful, verified, resumable re-encoding that leaves the originals alone."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from tcclip.cli import main as tcclip_main
from tcclip.data.labels import read_annotations
from tcclip.data.prepare import output_size
from tcclip.data.synth import read_index_stamp
from tcclip.data.video_frames import read_video_frames
from tcclip.data.video_reader import open_video


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture()
def quirk_root(quirk_videos, tmp_path):
    """A copy of the quirk videos with an annotation list, plus one file that is not a video."""
    root = tmp_path / "original"
    root.mkdir()
    for video in quirk_videos.values():
        shutil.copy(video.path, root / video.path.name)
    (root / "garbage.avi").write_bytes(bytes(range(256)) * 20)
    names = [v.path.name for v in quirk_videos.values()]
    (tmp_path / "train.txt").write_text("".join(f"{name} {k % 2}\n" for k, name in enumerate(names)))
    return root, tmp_path / "train.txt"


def test_prepare_keeps_every_frame_in_order_and_the_lists_valid(quirk_root, quirk_videos, tmp_path, capsys):
    root, train = quirk_root
    before = _digest(root)
    out = tmp_path / "prepared"
    args = ["data", "prepare", "--list", str(train), "--root", str(root), "--out", str(out)]
    assert tcclip_main([*args, "--short-side", "32", "--keyframe-interval", "4", "--workers", "2"]) == 0
    err = capsys.readouterr().err
    assert "6 re-encoded, 0 already prepared, 0 failed, of 6 videos" in err
    assert _digest(root) == before  # originals untouched
    assert (out / "train.txt").read_text() == train.read_text()  # same relative paths: the list holds as it is
    for a in read_annotations(out / "train.txt"):
        video = next(v for v in quirk_videos.values() if v.path.name == a.path)
        table = read_video_frames(out / a.path)
        assert (len(table), table.codec, table.rotation) == (video.num_frames, "h264", 0)
        original = read_video_frames(root / a.path)
        seconds = table.times - table.times[0]
        expected = original.times - original.times[0]
        assert np.abs(seconds - expected).max() < 1e-3  # same timestamps, variable frame rates included
        frames = open_video(out / a.path, "pyav").get_frames(range(video.num_frames)).numpy()
        # Rotated videos are stored upright: the copy shows what the original shows, the stamp still on its side.
        assert [read_index_stamp(np.rot90(f, k=-video.rotation // 90)) for f in frames] == list(range(len(frames)))
    assert not list(out.glob(".*partial*"))


def test_prepare_is_resumable_and_reports_failures(quirk_root, tmp_path, capsys):
    root, train = quirk_root
    (train.parent / "all.txt").write_text(train.read_text() + "garbage.avi 0\n")
    out = tmp_path / "prepared"
    args = ["data", "prepare", "--list", str(train.parent / "all.txt"), "--root", str(root), "--out", str(out)]
    args += ["--short-side", "16", "--workers", "1"]
    assert tcclip_main(args) == 1
    err = capsys.readouterr().err
    assert "6 re-encoded, 0 already prepared, 1 failed, of 7 videos" in err and "garbage.avi" in err
    assert not (out / "garbage.avi").exists() and "garbage.avi" in (out / "prepare_failures.txt").read_text()
    # An interrupted run: one output lost, a half-written temporary left behind.
    (out / "vfr_avi.avi").unlink()
    (out / ".vfr_avi.avi.partial-12345").write_bytes(b"half")
    assert tcclip_main(args) == 1
    assert "1 re-encoded, 5 already prepared, 1 failed, of 7 videos" in capsys.readouterr().err
    assert not list(out.glob(".*partial*")) and len(read_video_frames(out / "vfr_avi.avi")) == 68
    assert output_size(48, 32, 16) == (24, 16) and output_size(10, 14, 16) == (10, 14)  # never enlarged
    assert open_video(out / "rotated_mp4.mp4", "pyav").get_frames([0]).shape == (1, 24, 16, 3)  # upright 48x32


def test_prepare_a_folder_and_refuse_to_overwrite_originals(quirk_root, tmp_path, capsys):
    root, _ = quirk_root
    (root / "garbage.avi").unlink()
    assert tcclip_main(["data", "prepare", "--folder", str(root), "--out", str(root)]) == 2
    assert "--out is the dataset root itself" in capsys.readouterr().err
    out = tmp_path / "prepared"
    assert tcclip_main(["data", "prepare", "--folder", str(root), "--out", str(out), "--short-side", "16"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in root.iterdir())


@pytest.mark.slow
def test_dataloader_benchmark_runs_on_a_given_folder(quirk_root, tmp_path):
    """benchmarks/dataloader.py end to end on tiny videos (its numbers belong in the README, not here)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root, _ = quirk_root
    (root / "garbage.avi").unlink()
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench.json"
    args = ["--data", str(root), "--clips", "2", "--frames", "4", "--input-size", "16", "--short-side", "16"]
    proc = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / "dataloader.py"), *args, "--backends", "pyav", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert {(r["pipeline"], r["source"]) for r in rows} == {
        (p, s) for p in ("train", "test") for s in ("original", "prepared", "prepared-k1")
    }
    assert all(r["decode_ms"] > 0 and r["transform_ms"] > 0 for r in rows)


def test_prepare_refuses_an_unknown_preset_before_any_work(quirk_root, tmp_path, capsys):
    root, train = quirk_root
    out = tmp_path / "prepared"
    args = ["data", "prepare", "--list", str(train), "--root", str(root), "--out", str(out), "--preset", "warp9"]
    assert tcclip_main(args) == 2
    err = capsys.readouterr().err
    assert "--preset 'warp9' is not an x264 preset" in err and "veryfast" in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_ctrl_c_stops_prepare_with_whole_files_only(quirk_videos, tmp_path):
    """SIGINT to `tcclip data prepare` (the parent only, as `kill -INT` does; a terminal signals the workers too):
    exit 130 and one line; the videos not started are not re-encoded; every file under a final name is complete and
    no temporary is left; a rerun finishes the rest."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from stop_helpers import default_sigint

    root = tmp_path / "original"
    root.mkdir()
    for k in range(40):  # enough work that Ctrl-C lands in the middle
        video = list(quirk_videos.values())[k % len(quirk_videos)]
        shutil.copy(video.path, root / f"{k:02d}_{video.path.name}")
    out = tmp_path / "prepared"
    tcclip = [sys.executable, "-c", "import sys; from tcclip.cli import main; sys.exit(main())"]
    command = [*tcclip, "data", "prepare", "--folder", str(root), "--out", str(out), "--workers", "2"]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        out.is_dir() and any(p.suffix for p in out.iterdir() if p.name[0] != ".")
    ):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert not list(out.glob(".*partial*"))
    done = [p for p in out.iterdir() if p.suffix in (".avi", ".mp4")]
    assert 0 < len(done) < 40
    for p in done:  # whole files only
        original = read_video_frames(root / p.name)
        assert len(read_video_frames(p)) == len(original)
    assert subprocess.run(command, capture_output=True, text=True, timeout=600).returncode == 0
    assert len([p for p in out.iterdir() if p.suffix in (".avi", ".mp4")]) == 40
    assert Path(out / "prepare_failures.txt").exists() is False


def test_verify_refuses_a_copy_with_a_frame_missing_or_shifted(quirk_videos, tmp_path):
    """The check `data prepare` runs before renaming: one frame fewer, or every frame one step late, is refused."""
    import av

    from tcclip.data.prepare import _verify

    src = quirk_videos["offset_start_mp4"].path
    frames = open_video(src, "pyav").get_frames(range(30)).numpy()

    def write(path, images):
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=30, options={"crf": "10"})
            stream.height, stream.width = images.shape[1:3]
            stream.pix_fmt = "yuv420p"
            for i, image in enumerate(images):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = i
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        return path

    assert _verify(src, write(tmp_path / "same.mp4", frames)) is None
    assert "the copy has 29 frames, the original 30" in _verify(src, write(tmp_path / "short.mp4", frames[:29]))
    shifted = np.concatenate([frames[:1], frames[:-1]])
    assert "differs from the original's" in _verify(src, write(tmp_path / "shifted.mp4", shifted))
