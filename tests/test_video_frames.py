"""Real-footage quirks: every backend returns exactly the frames a sequential decode shows, on every quirk video.

The videos come from ``quirks`` (each frame carries its index, ``read_index_stamp``); the oracle is the
plain sequential PyAV decode of conftest's ``sequential_decode``.
"""

from __future__ import annotations

import av
import numpy as np
import pytest
from quirks import QUIRKS

import tcclip.data.checked_decode as checked_decode
import tcclip.data.video_reader as video_reader
from tcclip.data.synth import read_index_stamp
from tcclip.data.video_frames import read_video_frames
from tcclip.data.video_reader import BACKENDS, available_backends, open_video
from tcclip.utils.errors import UserError

USABLE = available_backends()
# decord's own random access misplaces frames of MPEG-4 part 2 with B-frames: the reason it is not the default.
DECORD_WRONG = {"bframes_avi"}


def _backend(name: str) -> str:
    if name not in USABLE:
        pytest.skip(f"video backend {name!r} cannot decode on this machine")
    return name


def _stamps(frames: np.ndarray, rotation: int = 0) -> list[int]:
    return [read_index_stamp(np.rot90(f, k=-rotation // 90)) for f in np.asarray(frames)]


def _index_sets(count: int) -> list[list[int]]:
    """Whole video, a test-style spread, both ends, unsorted repeats, and random draws."""
    rng = np.random.default_rng(0)
    sets = [list(range(count)), [count // 7 * k for k in range(7)], [count - 1, 0, count // 2, count // 2, 1]]
    sets += [rng.choice(count, size=min(count, 8), replace=False).tolist() for _ in range(3)]
    return sets


@pytest.mark.parametrize("quirk", list(QUIRKS))
def test_quirk_videos_have_their_quirk(quirk_videos, sequential_decode, quirk):
    """Each fixture really shows the quirk, and its frames carry their indices in a sequential decode."""
    video = quirk_videos[quirk]
    oracle = sequential_decode(video.path)
    assert len(oracle) == video.num_frames
    assert _stamps(oracle, video.rotation) == list(range(video.num_frames))
    with av.open(str(video.path)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size > 0]
        declared, start = stream.frames, stream.start_time
        codec = stream.codec_context.name
    if quirk == "bframes_avi":
        assert codec == "mpeg4" and len(oracle) == 200
        assert any(p.pts != p.dts for p in packets)  # frames are reordered: there are B-frames
    elif quirk == "vfr_avi":
        assert declared == 444 and len(packets) == 68  # the header counts ticks, not frames
    elif quirk == "missing_last_frame_mp4":
        assert declared == len(packets) == video.num_frames + 1
    elif quirk == "rotated_mp4":
        assert oracle.shape[1:3] == (48, 32)  # stored 32x48, shown portrait
    elif quirk == "offset_start_mp4":
        assert start * stream.time_base == 1.5


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("quirk", list(QUIRKS))
def test_every_backend_is_frame_exact_on_real_footage_quirks(quirk_videos, sequential_decode, backend, quirk):
    if backend == "decord" and quirk in DECORD_WRONG:
        pytest.skip("decord's known misplacement; test_decord_misplaces_frames_of_bframe_avi checks it")
    video = quirk_videos[quirk]
    oracle = sequential_decode(video.path).astype(np.int16)
    assert len(open_video(video.path, _backend(backend))) == video.num_frames
    for indices in _index_sets(video.num_frames):
        frames = open_video(video.path, backend).get_frames(indices).numpy()  # a fresh reader: fresh seeks
        assert _stamps(frames, video.rotation) == indices
        assert np.abs(frames.astype(np.int16) - oracle[indices]).max() <= 2  # colour conversion only


def test_decord_misplaces_frames_of_bframe_avi(quirk_videos, sequential_decode):
    """The failure that makes decord opt-in: it warns, and its random access returns other frames."""
    video = quirk_videos["bframes_avi"]
    video_reader._DECORD_WARNED.clear()
    with pytest.warns(UserWarning, match="MPEG-4 part 2 / AVI"):
        frames = open_video(video.path, _backend("decord")).get_frames([5, 50, 100, 150, 190]).numpy()
    assert _stamps(frames) != [5, 50, 100, 150, 190]


def test_torchcodec_is_asked_only_where_its_numbering_is_the_definition(quirk_videos, monkeypatch):
    """torchcodec numbers frames by sorted timestamps; where that is the definition it is asked, and where it
    answers with other timestamps (its seeking in this B-frame AVI, or a stand-in off by one) the check catches it
    and the exact PyAV path answers. (XviD files, whose labels are out of order, never reach it: see
    test_video_matrix.)"""
    video = quirk_videos["bframes_avi"]
    reader = open_video(video.path, _backend("torchcodec"))
    indices = [5, 50, 100, 150, 190]
    assert _stamps(reader.get_frames(indices).numpy()) == indices
    assert str(video.path) in video_reader._TORCHCODEC_MISPLACES
    mp4 = quirk_videos["offset_start_mp4"]
    assert read_video_frames(mp4.path).regular
    reader = open_video(mp4.path, "torchcodec")
    real = reader._get_handle()

    class OffByOne:  # a torchcodec that answers with the next frames
        metadata = real.metadata

        def get_frames_at(self, indices):
            return real.get_frames_at([i + 1 for i in indices])

    monkeypatch.setattr(reader, "_get_handle", lambda: OffByOne())
    assert _stamps(reader.get_frames([0, 10, 20]).numpy()) == [0, 10, 20]
    assert str(mp4.path) in video_reader._TORCHCODEC_MISPLACES


def test_frame_table_follows_the_definition(quirk_videos):
    vfr = read_video_frames(quirk_videos["vfr_avi"].path)
    assert (len(vfr), vfr.declared_frames) == (68, 444)  # complete, not "truncated"
    cut = read_video_frames(quirk_videos["missing_last_frame_mp4"].path)
    assert (len(cut), cut.declared_frames, cut.packets) == (39, 40, 40)  # the zeroed last sample is no picture
    assert read_video_frames(quirk_videos["rotated_mp4"].path).rotation == 90
    offset = read_video_frames(quirk_videos["offset_start_mp4"].path)
    assert offset.seconds(0) == 1.5 and len(offset) == 30


def test_pyav_seeks_instead_of_decoding_from_the_start(quirk_videos, monkeypatch):
    """Asking for the last frames of a 200-frame video decodes at most two groups of pictures (12 frames each),
    less the B-frames that are not asked for, not 200 frames."""
    video = quirk_videos["bframes_avi"]
    decoded = []
    original = checked_decode.decode_packets

    def counting(container, stream, needed=None):
        for frame in original(container, stream, needed):
            decoded.append(frame.pts)
            yield frame

    monkeypatch.setattr(checked_decode, "decode_packets", counting)
    frames = open_video(video.path, "pyav").get_frames([190, 199])
    assert _stamps(frames.numpy()) == [190, 199]
    assert 0 < len(decoded) <= 24


def test_unavailable_torchcodec_is_a_user_error_with_the_fix(quirk_videos, monkeypatch):
    monkeypatch.setattr(video_reader, "_torchcodec_problem", lambda: "torchcodec is not installed")
    with pytest.raises(UserError, match="torchcodec is not installed") as info:
        open_video(quirk_videos["vfr_avi"].path, "torchcodec")
    assert "pip install torchcodec" in str(info.value) and "apt-get install ffmpeg" in str(info.value)
    assert video_reader.resolve_backend("auto") == "pyav"  # the default falls back, no error


def test_default_backend_is_torchcodec_where_it_works_else_pyav():
    """torchcodec is the faster exact reader where FFmpeg's shared libraries load (README, data-loading table); PyAV
    needs none."""
    assert video_reader.DEFAULT_BACKEND == "auto"
    assert video_reader.resolve_backend("auto") == ("torchcodec" if "torchcodec" in USABLE else "pyav")


def test_torchcodec_is_usable_where_ci_installed_ffmpeg():
    """CI installs FFmpeg's shared libraries (.ci/run) and sets TCCLIP_REQUIRE_TORCHCODEC: torchcodec must work."""
    import os

    if os.environ.get("TCCLIP_REQUIRE_TORCHCODEC") != "1":
        pytest.skip("FFmpeg's shared libraries are not required here")
    assert video_reader._torchcodec_problem() is None
    assert "torchcodec" in USABLE


def test_a_seek_that_lands_too_late_falls_back_to_decoding_from_the_start(quirk_videos, monkeypatch):
    """A container whose index sends every seek past the key frame asked for still yields the exact frames."""
    video = quirk_videos["bframes_avi"]
    original = checked_decode.seek
    monkeypatch.setattr(checked_decode, "seek", lambda container, stream, pts: original(container, stream, pts + 60))
    indices = [3, 40, 41, 120, 199]
    assert _stamps(open_video(video.path, "pyav").get_frames(indices).numpy()) == indices
