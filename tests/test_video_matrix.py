"""The datasets' own encodings (tests/video_matrix.py): every backend but decord returns exactly the pictures of a
sequential decode, on many random draws of training and test views; `data prepare` converts every file faithfully;
the training dataset reads every file.

The oracle is conftest's ``sequential_decode`` (a plain PyAV decode from the start, written independently of
tcclip's readers); the ffmpeg command line itself agrees with it picture for picture (checked below by MD5).
"""

from __future__ import annotations

import hashlib
import subprocess

import numpy as np
import pytest
from conftest import decoded_pictures
from video_matrix import MATRIX

from tcclip.data.sampling import test_indices, train_indices
from tcclip.data.video_frames import read_video_frames
from tcclip.data.video_reader import BACKENDS, available_backends, open_video

NAMES = [entry.name for entry in MATRIX]
DRAWS = 24

DECORD_WRONG = {
    "xvid_xvid_bf1_25fps",
    "xvid_xvid_bf1_30fps",
    "xvid_xvid_bf2_25fps",
    "xvid_xvid_bf2_30fps",
    "xvid_dx50_bf1_25fps",
    "xvid_dx50_bf1_30fps",
    "xvid_dx50_bf2_25fps",
    "xvid_dx50_bf2_30fps",
    "mpeg4_bf2_avi",
    "x264_bf3_avi",
    "x264_pyramid_opengop_mp4",
    "x264_pyramid_opengop_mkv",
    "x265_mp4",
    "xvid_damaged_avi",
}
"""Files on which decord's random access returns other pictures than the sequential decode (docs/decoding.md)."""
DECORD_UNSTABLE = {
    "xvid_xvid_bf2_25fps_g300": "decord reads this one-GOP file from its start and is mostly right, but now and then "
    "returns another picture for the last frame: not deterministic, so neither 'exact' nor 'wrong' can be asserted"
}


@pytest.fixture(scope="module")
def oracles(matrix_videos, sequential_decode) -> dict[str, np.ndarray]:
    return {name: sequential_decode(path) for name, (_, path) in matrix_videos.items()}


def _draws(count: int, seed: int) -> list[list[int]]:
    """Training views (one random frame per segment, 8 and 16 frames), test views (3 clips, spread), random sets
    with repeats in any order, and the two ends."""
    rng = np.random.default_rng(seed)
    draws = [[0, count - 1], [count - 1, 0, count // 2, count // 2]]
    for k in range(DRAWS):
        kind = k % 4
        if kind == 0:
            draws.append(train_indices(count, 8, rng))
        elif kind == 1:
            draws.append(train_indices(count, 16, rng))
        elif kind == 2:
            draws.extend(test_indices(count, 8, 3))
        else:
            draws.append(rng.integers(0, count, size=int(rng.integers(1, 12))).tolist())
    return draws


def _usable(backend: str) -> str:
    if backend not in available_backends():
        pytest.skip(f"video backend {backend!r} cannot decode on this machine")
    return backend


def test_the_matrix_has_the_encodings_it_names(matrix_videos, oracles):
    """Each file has its codec and the structure that breaks readers: XviD's placeholder packets with B-frames,
    reordered H.264/HEVC pictures, VP9's hidden frames, a damaged packet; every picture differs from the next."""
    import av

    for name, (entry, path) in matrix_videos.items():
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            packets = [p for p in container.demux(stream) if p.size > 0]
            codec = stream.codec_context.name
        expected = {"libxvid": "mpeg4", "mpeg4": "mpeg4", "msmpeg4": "msmpeg4", "mjpeg": "mjpeg"}
        expected |= {"libx264": "h264", "libx265": "hevc", "libvpx-vp9": "vp9"}
        assert codec == expected[entry.encoder], name
        frames = oracles[name]
        assert len(frames) > 25, name
        moving = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
        assert (moving > 0).all(), name  # frame identity is observable: no two neighbours are equal
        placeholders = sum(1 for p in packets if p.size < 20)
        if name.startswith("xvid_") and "_bf0_" not in name:
            assert placeholders > 0, name  # N-VOPs: packets that are not pictures
        if name in {"x264_bf3_avi", "x264_pyramid_opengop_mp4", "x265_mp4"}:
            assert any(p.pts != p.dts for p in packets), name


def test_ffmpeg_command_line_shows_the_same_pictures_as_the_oracle(matrix_videos):
    """The definition is FFmpeg's sequential decode: ffmpeg's framemd5 equals the oracle's decode, picture for
    picture, in number and order (raw planes, so that no colour conversion enters)."""
    for name in ("xvid_xvid_bf2_25fps", "xvid_dx50_bf1_30fps", "x264_bf3_avi", "xvid_damaged_avi"):
        path = matrix_videos[name][1]
        command = ["ffmpeg", "-v", "error", "-threads", "1", "-i", str(path), "-fps_mode", "passthrough"]
        listed = subprocess.run(
            [*command, "-pix_fmt", "yuv420p", "-f", "framemd5", "-"], capture_output=True, text=True, check=True
        ).stdout
        reference = [line.rsplit(",", 1)[-1].strip() for line in listed.splitlines() if not line.startswith("#")]
        ours = [hashlib.md5(f.to_ndarray(format="yuv420p").tobytes()).hexdigest() for f in decoded_pictures(path)]
        assert ours == reference, name


@pytest.mark.parametrize("backend", ["auto", "pyav", "torchcodec"])
@pytest.mark.parametrize("name", NAMES)
def test_every_exact_backend_matches_the_sequential_decode(matrix_videos, oracles, backend, name):
    if backend != "auto":
        _usable(backend)
    path = matrix_videos[name][1]
    oracle = oracles[name]
    assert len(open_video(path, backend)) == len(oracle)
    shared = open_video(path, backend)  # one reader across draws, as a worker uses it, and fresh ones
    for k, indices in enumerate(_draws(len(oracle), seed=hash(name) % 2**16)):
        reader = shared if k % 2 else open_video(path, backend)
        frames = reader.get_frames(indices).numpy()
        assert np.array_equal(frames, oracle[indices]), (name, backend, indices)


@pytest.mark.parametrize("backend", ["auto", "pyav", "torchcodec"])
@pytest.mark.parametrize("name", NAMES)
def test_reading_long_footage_frame_by_frame_gives_the_sequential_pictures(matrix_videos, oracles, backend, name):
    """`iter_frames` (the timeline's reader: one forward decode, one frame held at a time) returns the sequential
    decode's pictures: every frame, every third, and a stretch from the middle (the decode starts at a seek)."""
    if backend != "auto":
        _usable(backend)
    path = matrix_videos[name][1]
    oracle = oracles[name]
    n = len(oracle)
    for indices in (list(range(n)), list(range(1, n, 3)), list(range(n // 2, min(n, n // 2 + 20)))):
        got = list(open_video(path, backend).iter_frames(indices))
        assert [i for i, _ in got] == indices, (name, backend)
        for i, frame in got:
            assert np.array_equal(frame.numpy(), oracle[i]), (name, backend, i)


@pytest.mark.parametrize("name", NAMES)
def test_decord_misses_are_the_documented_ones(matrix_videos, oracles, name):
    """decord is exact where docs/decoding.md says so, and wrong (or unable) where it says so."""
    _usable("decord")
    if name in DECORD_UNSTABLE:
        pytest.skip(DECORD_UNSTABLE[name])
    import warnings

    path = matrix_videos[name][1]
    oracle = oracles[name].astype(np.int16)
    wrong = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            for indices in _draws(len(oracle), seed=1):
                frames = open_video(path, "decord").get_frames(indices).numpy().astype(np.int16)
                # decord converts colours its own way: a level here and there; another picture differs by far more
                if np.abs(frames - oracle[indices]).mean(axis=(1, 2, 3)).max() > 1.0:
                    wrong = True
                    break
        except Exception:  # noqa: BLE001 - a refusal is a miss as well
            wrong = True
    assert wrong == (name in DECORD_WRONG)


def test_frame_index_of_the_damaged_file_reads_it_and_counts_its_errors(matrix_videos, oracles):
    """A file FFmpeg decodes with concealment is read (every picture), and its decode errors are counted."""
    table = read_video_frames(matrix_videos["xvid_damaged_avi"][1])
    assert len(table) == len(oracles["xvid_damaged_avi"]) and table.decode_errors > 0
    assert read_video_frames(matrix_videos["xvid_xvid_bf2_25fps"][1]).decode_errors == 0


def test_prepare_converts_every_matrix_file_frame_for_frame(matrix_videos, oracles, tmp_path):
    """`data prepare` writes every picture in order: the copy's frame i is close to the original's frame i (PSNR
    above 25 dB, the bound `data prepare` checks) and further from its neighbours (so nothing shifted), with the
    same number of frames at the same times."""
    from tcclip.data.prepare import PrepareSettings, prepare_dataset

    root = next(iter(matrix_videos.values()))[1].parent
    out = tmp_path / "prepared"
    names = [path.name for _, path in matrix_videos.values()]
    results = prepare_dataset(names, root, out, PrepareSettings(short_side=160, keyframe_interval=8), workers=2)
    assert [r.status for r in results] == ["done"] * len(names), [r.reason for r in results if r.reason]
    for name, (_, path) in matrix_videos.items():
        original = oracles[name].astype(np.float64)
        copy = open_video(out / path.name).get_frames(range(len(original))).numpy().astype(np.float64)
        assert copy.shape == original.shape, name
        mse = ((copy - original) ** 2).mean(axis=(1, 2, 3))
        psnr = 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12))
        assert psnr.min() > 25, (name, float(psnr.min()))
        shifted = ((copy[1:] - original[:-1]) ** 2).mean(axis=(1, 2, 3))
        assert (mse[1:] < shifted).all(), name
        copy_table, original_table = read_video_frames(out / path.name), read_video_frames(path)
        assert copy_table.codec == "h264" and copy_table.regular
        assert (
            np.abs((copy_table.times - copy_table.times[0]) - (original_table.times - original_table.times[0])).max()
            < 1e-3
        )


def test_training_dataset_reads_every_matrix_file(matrix_videos, tmp_path):
    """Training and test sampling through VideoDataset: no file is broken, every clip has its frames."""
    from tcclip.data.dataset import VideoDataset

    root = next(iter(matrix_videos.values()))[1].parent
    listing = tmp_path / "all.txt"
    listing.write_text("".join(f"{path.name} {k % 3}\n" for k, (_, path) in enumerate(matrix_videos.values())))
    for train in (True, False):
        dataset = VideoDataset(listing, root, num_frames=8, transform=lambda f: f, train=train, num_clip=2)
        for k in range(len(dataset)):
            item = dataset[k]
            assert item["index"] == k and item["video"] is not None, NAMES[k]
            assert item["video"].shape == ((8, 120, 160, 3) if train else (2, 8, 120, 160, 3))
        assert dataset.broken_log.count(dataset.split) == 0


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_truncated_avi_is_refused_like_a_truncated_mp4(matrix_videos, tmp_path, backend):
    """The first third of an XviD AVI (its header still counts every frame) is truncated, as a cut MP4 is."""
    from tcclip.data.video_frames import VideoDecodeError

    _usable(backend)
    data = matrix_videos["xvid_xvid_bf2_25fps_g300"][1].read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoDecodeError, match="truncated"):
        len(open_video(cut, backend))


@pytest.mark.parametrize("name", ["xvid_dx50_bf2_30fps", "xvid_xvid_bf1_25fps", "x264_bf3_avi"])
def test_timeline_windows_show_the_sequential_pictures(matrix_videos, oracles, name):
    """`tcclip timeline` reads its windows through the data reader: on B-frame AVIs (timestamps out of display
    order) each window's sample at time t is the sequential decode's picture shown at t (frame floor(t * fps) of
    these constant-rate files)."""
    from tcclip.inference.timeline import stream_windows

    entry, path = matrix_videos[name]
    oracle = oracles[name]
    windows = list(stream_windows(path, num_frames=4, window=0.8, stride=0.4, convert=lambda frame: frame))
    assert len(windows) >= 4
    for _, start, end, samples in windows:
        for i, sample in enumerate(samples):
            t = start + (i + 0.5) * (end - start) / 4
            assert np.array_equal(sample.numpy(), oracle[int(np.floor(t * entry.rate + 1e-6))]), (name, t)


def test_predict_reads_every_matrix_file(matrix_videos, oracles):
    """`tcclip predict`'s input path (sample_frames, the default backend) gives the sequential decode's pictures."""
    from tcclip.inference.predict import sample_frames

    for name, (_, path) in matrix_videos.items():
        frames, indices = sample_frames(path, num_frames=8, clips=2)
        assert np.array_equal(frames.numpy(), oracles[name][indices]), name


def test_data_check_reads_the_matrix_and_flags_decord(matrix_videos, tmp_path):
    """`tcclip data check --verify-frames`: every matrix file readable and exact with the default backend (none
    called damaged); with decord, the XviD files with B-frames are listed as decoding differently."""
    from tcclip.cli.data import check_lists

    root = next(iter(matrix_videos.values()))[1].parent
    listing = tmp_path / "all.txt"
    listing.write_text("".join(f"{path.name} 0\n" for _, path in matrix_videos.values()))
    results = check_lists([("all", listing)], root, "pyav", 8, workers=1, verify_with="torchcodec")
    assert [r.error for r in results if r.error] == []
    assert [r.mismatch for r in results if r.mismatch] == []
    assert {r.path for r in results if r.decode_errors} == {"xvid_damaged_avi.avi"}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flagged = {
            r.path
            for r in check_lists([("all", listing)], root, "decord", 8, workers=1, verify_with="pyav")
            if r.mismatch or r.error
        }
    assert {"xvid_xvid_bf2_25fps.avi", "xvid_dx50_bf1_30fps.avi"} <= flagged
    assert flagged <= {f"{name}.{matrix_videos[name][0].ext}" for name in DECORD_WRONG}


def test_a_learnt_access_mode_is_kept_for_other_processes(matrix_videos, oracles):
    """XviD with two B-frames cannot skip B-frames after a seek (its placeholders shift the pictures): the first
    read learns it, proven by the digests, and keeps it beside the index, where another process finds it."""
    import tcclip.data.checked_decode as vr
    from tcclip.data.video_frames import _mode_file, recall_access

    path = matrix_videos["xvid_xvid_bf2_25fps"][1]
    frames = read_video_frames(path)
    _mode_file(frames.path).unlink(missing_ok=True)  # learnt afresh
    vr._MODES.pop(frames.path, None)
    assert vr.access_mode(frames) == vr.SEEK_SKIP
    indices = list(range(0, len(frames), 3))
    assert np.array_equal(open_video(path).get_frames(indices).numpy(), oracles["xvid_xvid_bf2_25fps"][indices])
    assert vr.access_mode(frames) == vr.SEEK and recall_access(frames.path) == vr.SEEK
    vr._MODES.pop(frames.path)  # as in a new process
    assert vr.access_mode(frames) == vr.SEEK
