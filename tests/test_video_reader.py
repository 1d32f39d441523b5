"""Video readers: exact frames from every backend and container, clear errors, safe in DataLoader workers."""

from __future__ import annotations

import os
import pickle

import av
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from tcclip.data.synth import read_index_stamp
from tcclip.data.video_reader import BACKENDS, VideoDecodeError, available_backends, open_video
from tcclip.utils.errors import UserError

EXTS = ("mp4", "avi", "webm")
USABLE = available_backends()


def _backend(name: str) -> str:
    if name not in USABLE:
        pytest.skip(f"video backend {name!r} cannot decode on this machine")
    return name


def _stamps(frames: torch.Tensor) -> list[int]:
    return [read_index_stamp(f.numpy()) for f in frames]


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("ext", EXTS)
def test_every_frame_decodes_with_its_own_index(stamped_videos, backend, ext):
    path, count = stamped_videos[ext]
    reader = open_video(path, _backend(backend))
    assert len(reader) == count
    frames = reader.get_frames(range(count))
    assert frames.dtype == torch.uint8 and frames.shape == (count, 32, 32, 3) and frames.is_contiguous()
    assert _stamps(frames) == list(range(count))


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("ext", EXTS)
def test_frames_come_back_in_the_order_asked_with_repeats(stamped_videos, backend, ext):
    path, count = stamped_videos[ext]
    indices = [count - 1, 0, 9, 9, 2, count // 2, 15, 1, count - 1]  # both ends, across key frames, unsorted
    frames = open_video(path, _backend(backend)).get_frames(indices)
    assert _stamps(frames) == indices


@pytest.mark.parametrize("ext", EXTS)
def test_decord_and_pyav_agree_on_pixels(stamped_videos, ext):
    _backend("decord")
    path, count = stamped_videos[ext]
    a = open_video(path, "decord").get_frames(range(count)).int()
    b = open_video(path, "pyav").get_frames(range(count)).int()
    assert (a - b).abs().max() <= 2  # same FFmpeg decoders; only colour conversion could differ


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_missing_file(tmp_path, backend):
    path = tmp_path / "nope.mp4"
    with pytest.raises(VideoDecodeError, match="file not found") as info:
        open_video(path, backend)
    assert info.value.path == str(path)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
@pytest.mark.parametrize("content", [b"", b"\x00\x01 not a video " * 100], ids=["empty", "garbage"])
def test_unreadable_files(tmp_path, backend, content):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoDecodeError, match="bad.mp4"):
        open_video(path, _backend(backend)).get_frames([0])


@pytest.mark.parametrize("backend", ["decord", "pyav"])
@pytest.mark.parametrize("ext", EXTS)
def test_truncated_files_raise(stamped_videos, tmp_path, backend, ext):
    """A file cut at 60%: MP4 loses its index, AVI and WebM lose frames; never a silently shorter video."""
    data = stamped_videos[ext][0].read_bytes()
    path = tmp_path / f"cut.{ext}"
    path.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(VideoDecodeError, match=f"cut.{ext}"):
        reader = open_video(path, _backend(backend))
        reader.get_frames(range(len(reader)))


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_zero_frames(tmp_path, backend):
    path = tmp_path / "zero.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        container.start_encoding()
    with pytest.raises(VideoDecodeError, match="no frames"):
        len(open_video(path, _backend(backend)))


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_no_video_stream(tmp_path, backend):
    path = tmp_path / "audio.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(VideoDecodeError, match="no video stream"):
        len(open_video(path, _backend(backend)))


def test_bad_indices_and_backend_names(stamped_videos):
    path, count = stamped_videos["mp4"]
    reader = open_video(path, "pyav")
    with pytest.raises(IndexError, match=r"\[0, 17\)"):
        reader.get_frames([0, count])
    with pytest.raises(IndexError):
        reader.get_frames([-1])
    with pytest.raises(ValueError, match="at least one index"):
        reader.get_frames([])
    with pytest.raises(UserError, match="Choose one of auto, torchcodec, pyav, decord"):
        open_video(path, "opencv")


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("ext", EXTS)
def test_iter_frames_gives_the_frames_asked_for_in_order(stamped_videos, backend, ext):
    path, count = stamped_videos[ext]
    indices = [0, 1, 4, 9, 10, count - 1]
    got = list(open_video(path, _backend(backend)).iter_frames(indices))
    assert [i for i, _ in got] == indices
    assert [read_index_stamp(f.numpy()) for _, f in got] == indices
    assert all(f.dtype == torch.uint8 and f.shape == (32, 32, 3) for _, f in got)
    assert list(open_video(path, _backend(backend)).iter_frames([])) == []


def test_iter_frames_refuses_unordered_or_out_of_range_indices(stamped_videos):
    path, count = stamped_videos["mp4"]
    reader = open_video(path, "pyav")
    with pytest.raises(ValueError, match="increasing"):
        list(reader.iter_frames([3, 2]))
    with pytest.raises(ValueError, match="increasing"):
        list(reader.iter_frames([2, 2]))
    with pytest.raises(IndexError, match=r"\[0, 17\)"):
        list(reader.iter_frames([0, count]))


def test_iter_frames_falls_back_to_a_decode_from_the_start_when_seeks_go_wrong(quirk_videos, monkeypatch):
    """A container whose seeks land past the key frame asked for: the digests catch it, the file moves to the next
    access mode and the frames are still the sequential decode's."""
    import tcclip.data.checked_decode as checked_decode

    video = quirk_videos["bframes_avi"]
    original = checked_decode.seek
    monkeypatch.setattr(checked_decode, "seek", lambda container, stream, pts: original(container, stream, pts + 60))
    monkeypatch.setattr(checked_decode, "remember_access", lambda path, mode: None)  # not kept for other tests
    monkeypatch.setattr(checked_decode, "_MODES", {})
    indices = [40, 41, 120, 150, 199]
    got = list(open_video(video.path, "pyav").iter_frames(indices))
    assert [read_index_stamp(f.numpy()) for _, f in got] == indices
    assert checked_decode._MODES[str(video.path)] == checked_decode.FROM_START


def test_decode_error_pickles_with_path_and_reason():
    err = pickle.loads(pickle.dumps(VideoDecodeError("/data/a.avi", "truncated")))
    assert (err.path, err.reason, str(err)) == (
        "/data/a.avi",
        "truncated",
        "cannot decode video /data/a.avi: truncated",
    )
    assert str(VideoDecodeError("/data/b.avi: no frames")) == "/data/b.avi: no frames"  # one-argument form


class _Stamps(Dataset):
    """Holds readers created (and used) in the parent process, the misuse the readers must survive."""

    def __init__(self, videos: dict, backend: str) -> None:
        self.readers = [open_video(path, backend) for path, _ in videos.values()]
        self.lengths = [len(r) for r in self.readers]  # opens the decoders in the parent

    def __len__(self) -> int:
        return 2 * len(self.readers)

    def __getitem__(self, i: int) -> torch.Tensor:
        reader = self.readers[i % len(self.readers)]
        indices = [(3 * i + k) % len(reader) for k in range(4)]
        return torch.tensor(_stamps(reader.get_frames(indices))) - torch.tensor(indices)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_readers_work_in_forked_dataloader_workers(stamped_videos, backend):
    dataset = _Stamps(stamped_videos, _backend(backend))
    loader = DataLoader(dataset, batch_size=2, num_workers=2, multiprocessing_context="fork")
    errors = torch.cat(list(loader))
    assert errors.shape == (len(dataset), 4) and not errors.any()


def test_reader_pickles_and_reopens(stamped_videos):
    path, count = stamped_videos["webm"]
    reader = open_video(path, USABLE[0])
    reader.get_frames([0])
    clone = pickle.loads(pickle.dumps(reader))
    assert len(clone) == count and _stamps(clone.get_frames([count - 1])) == [count - 1]


def _not_videos(folder):
    """Files FFmpeg opens and "plays" though they are not videos: text (rendered by its tty demuxer), a PNG and a
    JPEG (image demuxers), a PNG renamed .avi, subtitles."""
    from PIL import Image

    text = folder / "README.txt"
    text.write_text("# tcclip\n\nA text file that FFmpeg would render as a video of its characters.\n" * 20)
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(image).save(folder / "photo.png")
    Image.fromarray(image).save(folder / "photo.jpg")
    (folder / "photo_png.avi").write_bytes((folder / "photo.png").read_bytes())
    (folder / "subtitles.srt").write_text("1\n00:00:01,000 --> 00:00:02,000\nhello\n")
    return sorted(folder.iterdir())


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_files_that_are_not_videos_are_refused(tmp_path, backend):
    _backend(backend)
    for path in _not_videos(tmp_path):
        with pytest.raises(VideoDecodeError, match="not a video") as info:
            len(open_video(path, backend))
        assert info.value.path == str(path)


def test_frame_index_is_cached_on_disk_and_follows_the_file(stamped_videos, tmp_path, monkeypatch, caplog):
    """The index of a file is decoded once: a new process (here: the in-memory cache cleared) reads it from
    $TCCLIP_CACHE_DIR; a rewritten file is indexed again; a damaged cache file is ignored and replaced; an
    unwritable cache folder costs a warning, not a failure."""
    import shutil

    import tcclip.data.video_frames as vf

    monkeypatch.setenv("TCCLIP_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "clip.mp4"
    shutil.copy(stamped_videos["mp4"][0], path)
    vf._read_cached.cache_clear()
    umask = os.umask(0o002)  # a group-shared cache on a cluster
    try:
        first = vf.read_video_frames(path)
    finally:
        os.umask(umask)
    files = list((tmp_path / "cache" / "frame-index").glob("*.npz"))
    assert len(files) == 1
    assert files[0].stat().st_mode & 0o777 == 0o664  # the group can read it (not mkstemp's 0600)
    vf._read_cached.cache_clear()
    monkeypatch.setattr(vf, "_read", lambda p: pytest.fail("decoded again"))
    again = vf.read_video_frames(path)
    assert np.array_equal(again.digests, first.digests) and again.time_base == first.time_base
    monkeypatch.undo()
    monkeypatch.setenv("TCCLIP_CACHE_DIR", str(tmp_path / "cache"))
    files[0].write_bytes(b"not an index")
    vf._read_cached.cache_clear()
    assert np.array_equal(vf.read_video_frames(path).labels, first.labels)
    assert np.load(files[0])["labels"].shape == first.labels.shape  # rewritten
    shutil.copy(stamped_videos["avi"][0], path)  # a new file under the same name: indexed again
    vf._read_cached.cache_clear()
    assert len(vf.read_video_frames(path)) == stamped_videos["avi"][1]
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("TCCLIP_CACHE_DIR", str(blocked))
    vf._read_cached.cache_clear()
    vf._CACHE_WARNED.clear()
    with caplog.at_level("WARNING"):
        assert len(vf.read_video_frames(path)) == stamped_videos["avi"][1]
    assert "cannot be cached" in caplog.text and "TCCLIP_CACHE_DIR" in caplog.text
    monkeypatch.setenv("TCCLIP_CACHE_DIR", "none")
    assert vf.cache_dir() is None
