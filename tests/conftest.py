"""Shared pytest fixtures: official split files, synthetic datasets and videos, the tiny `tcclip` run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_configure(config):
    """Frame indices of the test videos go to a folder of this run, not the user's cache (subprocesses inherit it)."""
    import tempfile

    if "TCCLIP_CACHE_DIR" not in os.environ:
        os.environ["TCCLIP_CACHE_DIR"] = tempfile.mkdtemp(prefix="tcclip-test-cache-")


UPSTREAM_MIRROR_ENV = "TCCLIP_UPSTREAM_MIRROR"
"""A local copy of the official TC-CLIP repository (its labels/ and datasets_splits/); `make test` sets it when one
sits beside the checkout."""


@pytest.fixture(scope="session")
def upstream_mirror() -> Path:
    """Byte-for-byte copy of the official split and label files, from $TCCLIP_UPSTREAM_MIRROR (skipped without it)."""
    value = os.environ.get(UPSTREAM_MIRROR_ENV, "")
    if not value:
        pytest.skip(f"${UPSTREAM_MIRROR_ENV} is not set (a copy of the official repository's labels/ and splits)")
    mirror = Path(value)
    if not (mirror / "labels").is_dir():
        pytest.skip(f"${UPSTREAM_MIRROR_ENV}={mirror} has no labels/ folder")
    return mirror


OFFICIAL_TENSORS_ENV = "TCCLIP_OFFICIAL_TENSORS"
"""A JSON file listing the tensors of an official TC-CLIP checkpoint (`{"tensors": {name: shape}}`); `make test` sets
it when one sits beside the checkout."""


@pytest.fixture(scope="session")
def official_tensors() -> dict[str, list[int]]:
    """Name -> shape of every tensor of the official checkpoint, from $TCCLIP_OFFICIAL_TENSORS (skipped without it)."""
    import json

    value = os.environ.get(OFFICIAL_TENSORS_ENV, "")
    if not value:
        pytest.skip(f"${OFFICIAL_TENSORS_ENV} is not set (the tensor list of an official checkpoint)")
    if not Path(value).is_file():
        pytest.skip(f"${OFFICIAL_TENSORS_ENV}={value} is not a file")
    return json.loads(Path(value).read_text())["tensors"]


@pytest.fixture(scope="session")
def data_synth(tmp_path_factory) -> Path:
    """A tiny synthetic dataset (3 classes x 5 videos, 32 px, 8-12 frames, mp4/avi/webm) with protocol splits."""
    from tcclip.data.custom_splits import make_synthetic_protocol_splits
    from tcclip.data.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("data_synth")
    make_synthetic_dataset(root, num_classes=3, videos_per_class=5, num_frames=(8, 12), size=32, seed=0)
    make_synthetic_protocol_splits(root)
    return root


@pytest.fixture
def own_tmpdir(tmp_path, monkeypatch) -> Path:
    """A temporary directory of this test alone (``tempfile``'s and $TMPDIR), to see what a run leaves in it."""
    import tempfile

    import lightning.pytorch  # noqa: F401  (importing it once makes torch's compile cache folder in the temp dir)

    folder = tmp_path / "own_tmpdir"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


# Videos whose frames carry their index (decoding and sampling tests).

STAMPED_FRAME_COUNTS = {"mp4": 17, "avi": 20, "webm": 23}
"""Frames of each stamped test video: different, odd-ish counts so off-by-one errors show."""


@pytest.fixture(scope="session")
def stamped_videos(tmp_path_factory) -> dict[str, tuple[Path, int]]:
    """One 32x32 synthetic video per container, every frame carrying its index (``read_index_stamp``).

    Returns ``{"mp4" | "avi" | "webm": (path, number of frames)}``; H.264 with B-frames, MPEG-4 part 2
    (Xvid tag), VP9 with hidden alt-ref frames, key frames every 8 frames.
    """
    import numpy as np

    from tcclip.data.synth import render_video, write_video

    root = tmp_path_factory.mktemp("stamped_videos")
    videos = {}
    for k, (ext, count) in enumerate(STAMPED_FRAME_COUNTS.items()):
        frames = render_video("MoveRight", count, 32, 32, np.random.default_rng(k), stamp=True)
        videos[ext] = (write_video(root / f"stamped.{ext}", frames), count)
    return videos


@pytest.fixture(scope="session")
def quirk_videos(tmp_path_factory) -> dict:
    """Every video of ``quirks`` (real-footage quirks, frames stamped with their index), 32 px high.

    Returns ``{quirk name: QuirkVideo}``.
    """
    from quirks import QUIRKS, write_quirk_video

    root = tmp_path_factory.mktemp("quirk_videos")
    return {kind: write_quirk_video(kind, root) for kind in QUIRKS}


REQUIRE_FFMPEG_ENV = "TCCLIP_REQUIRE_FFMPEG"
"""Set to 1 (CI does) to fail, not skip, where the ffmpeg command line or one of its encoders is missing."""


@pytest.fixture(scope="session")
def matrix_videos(tmp_path_factory) -> dict:
    """Every video of ``tests/video_matrix.py`` (the datasets' own encoders), made by the ffmpeg command line.

    Returns ``{entry name: (MatrixEntry, path)}``; skipped, saying why, where ffmpeg or an encoder is missing
    (failed instead with $TCCLIP_REQUIRE_FFMPEG=1).
    """
    from video_matrix import MATRIX, ffmpeg_problem, write_matrix_video

    problem = ffmpeg_problem({entry.encoder for entry in MATRIX})
    if problem is not None:
        if os.environ.get(REQUIRE_FFMPEG_ENV) == "1":
            pytest.fail(f"{problem}, and ${REQUIRE_FFMPEG_ENV}=1")
        pytest.skip(problem)
    root = tmp_path_factory.mktemp("matrix_videos")
    return {entry.name: (entry, write_matrix_video(entry, root)) for entry in MATRIX}


def decoded_pictures(path):
    """Every picture a plain, single-threaded PyAV decode from the start yields (PyAV frames), in order; a packet
    that fails to decode is skipped, as a player does. Written independently of tcclip's readers."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except av.error.FFmpegError:
                continue
            yield from decoded


def _sequential_decode(path):
    """The oracle: the pictures of :func:`decoded_pictures`, upright, as uint8 RGB [N, H, W, 3]."""
    import numpy as np

    frames = []
    for frame in decoded_pictures(path):
        image = frame.to_ndarray(format="rgb24")
        frames.append(np.rot90(image, k=int(frame.rotation) // 90) if frame.rotation else image)
    return np.stack(frames)


@pytest.fixture(scope="session")
def sequential_decode():
    """``sequential_decode(path)``: the oracle every video backend is checked against (see ``_sequential_decode``)."""
    return _sequential_decode


# Runs of the `tcclip` CLI on the tiny data (test_e2e, test_resume, test_ddp).

REPO = Path(__file__).resolve().parents[1]


def _tiny_run_args(data_root: Path, run_dir: Path) -> list[str]:
    return [
        "--config",
        str(REPO / "configs" / "demo.yaml"),
        f"--data.init_args.root={data_root}",
        "--data.init_args.protocol=fully_supervised",
        "--data.init_args.num_frames=4",
        "--data.init_args.num_workers=0",
        # The paper's x10 rate for the new parts (the demo turns it off: it trains everything from random weights).
        "--model.optim.lr_10x=true",
        "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={run_dir}",
    ]


@pytest.fixture(scope="session")
def tiny_run_args():
    """`tiny_run_args(data_root, run_dir)`: configs/demo.yaml on tiny data, 4 frames, CPU; tests add their own."""
    return _tiny_run_args
