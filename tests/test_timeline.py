"""Timelines: window sampling from the stream, segments with known boundaries, outputs and the command."""

from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import tcclip.utils.errors
from tcclip.cli import main as cli_main
from tcclip.data.synth import draw_index_stamp, read_index_stamp, write_video
from tcclip.data.transforms import MEAN, STD
from tcclip.data.video_reader import declared_duration
from tcclip.inference.timeline import WindowResult, merge_segments, save_timeline, stream_windows, timeline
from tcclip.inference.timeline_segments import moving_average

FPS = 10
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
PALETTE = {**COLOURS, "grey": (128, 128, 128)}  # grey is no class: "none of the above"


class ColourModel(nn.Module):
    """A stand-in classifier that names the colour of the frames: logits = -10 x distance to each class colour.

    It has the interface the timeline uses (cfg, class names, logit scale), so the test knows the right answer of
    every window from the video it wrote, independently of any trained network.
    """

    def __init__(self, num_frames: int = 4, size: int = 32) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(num_frames=num_frames, clip=SimpleNamespace(vision=SimpleNamespace(image_size=size)))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(100.0)))
        self.class_names = list(COLOURS)
        self.seen_frames = 0

    def set_class_names(self, names):
        self.class_names = list(names)

    def forward(self, video: torch.Tensor) -> torch.Tensor:  # [B, T, 3, S, S] normalised
        self.seen_frames = video.shape[1]
        mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
        rgb = (video * std + mean).mean(dim=(1, 3, 4))  # [B, 3] in 0..255
        targets = torch.tensor([COLOURS[n] for n in self.class_names], dtype=torch.float32)  # [C, 3]
        return -10.0 * torch.cdist(rgb / 255.0, targets / 255.0)


def colour_video(path, parts: list[tuple[str, float]]):
    """Solid-colour stretches (name, seconds) at FPS, with a little noise; returns the boundaries in seconds."""
    rng = np.random.default_rng(0)
    frames, bounds, t = [], [], 0.0
    for name, seconds in parts:
        n = round(seconds * FPS)
        block = np.broadcast_to(np.array(PALETTE[name], dtype=np.float64), (n, 32, 32, 3))
        frames.append(np.clip(block + rng.normal(0, 4, block.shape), 0, 255).astype(np.uint8))
        t += n / FPS
        bounds.append(t)
    write_video(path, np.concatenate(frames), fps=FPS)
    return bounds[:-1]


def test_windows_sample_the_frames_shown_at_their_times(tmp_path):
    n = 57
    frames = np.zeros((n, 32, 32, 3), dtype=np.uint8)
    for i in range(n):
        draw_index_stamp(frames[i], i)
    path = write_video(tmp_path / "stamped.mp4", frames, fps=FPS)
    window, stride, t = 1.6, 0.7, 4

    def convert(frame):
        return torch.tensor(read_index_stamp(frame.numpy()))

    got = list(stream_windows(path, t, window, stride, convert))
    duration = n / FPS
    expected_count = math.floor((duration - window) / stride + 1e-9) + 1
    assert [k for k, *_ in got] == list(range(expected_count))
    for k, start, end, samples in got:
        assert start == pytest.approx(k * stride) and end == pytest.approx(start + window)
        # frame i is shown during [i / FPS, (i + 1) / FPS)
        want = [math.floor((start + (i + 0.5) * window / t) * FPS + 1e-9) for i in range(t)]
        assert [int(s) for s in samples] == want


def test_a_video_shorter_than_the_window_is_one_window(tmp_path):
    path = write_video(tmp_path / "short.mp4", np.zeros((7, 32, 32, 3), dtype=np.uint8), fps=FPS)
    got = list(stream_windows(path, 4, 5.0, 2.0, lambda frame: torch.zeros(1)))
    assert len(got) == 1 and got[0][1] == 0.0 and got[0][2] == pytest.approx(0.7)


def test_windows_hold_only_the_frames_later_windows_need(tmp_path):
    """Memory does not grow with the video: a converted frame is dropped once no later window samples it."""
    import weakref

    class Kept:
        def __init__(self, stamp: int) -> None:
            self.stamp = stamp

    n = 250  # the stamps count to 255
    frames = np.zeros((n, 32, 32, 3), dtype=np.uint8)
    for i in range(n):
        draw_index_stamp(frames[i], i)
    path = write_video(tmp_path / "long.mp4", frames, fps=FPS)
    alive: weakref.WeakSet = weakref.WeakSet()

    def convert(frame):
        kept = Kept(read_index_stamp(frame.numpy()))
        alive.add(kept)
        return kept

    most, count = 0, 0
    for _, start, _, samples in stream_windows(path, 4, 1.0, 0.5, convert):
        assert [s.stamp for s in samples] == [math.floor((start + (i + 0.5) * 0.25) * FPS + 1e-9) for i in range(4)]
        count += 1
        del samples
        most = max(most, len(alive))
    assert count == 49 and most <= 2 * 4  # 99 different frames sampled in all


@pytest.mark.parametrize("backend", ["pyav", "torchcodec", "auto"])
def test_windows_are_the_readers_upright_frames(tmp_path, backend):
    """A phone video (display matrix: 90 degrees) is scored upright, as training and predict read it: each sample
    is the independent sequential decode's picture, turned by the display matrix."""
    from conftest import decoded_pictures
    from quirks import write_quirk_video

    from tcclip.data.video_reader import available_backends

    if backend not in (*available_backends(), "auto"):
        pytest.skip(f"video backend {backend} cannot decode here")
    video = write_quirk_video("rotated_mp4", tmp_path)
    oracle = [np.rot90(p.to_ndarray(format="rgb24"), k=video.rotation // 90) for p in decoded_pictures(video.path)]
    windows = list(stream_windows(video.path, 4, 0.4, 0.2, lambda frame: frame, backend=backend))
    assert len(windows) == 4  # 30 frames at 30 fps
    for _, start, _, samples in windows:
        for i, sample in enumerate(samples):
            assert np.array_equal(sample.numpy(), oracle[math.floor((start + (i + 0.5) * 0.1) * 30 + 1e-6)])


def test_segments_find_known_boundaries(tmp_path):
    bounds = colour_video(tmp_path / "long.mp4", [("red", 6), ("green", 4.5), ("blue", 5), ("red", 3.5)])
    model = ColourModel()
    stride = 0.5
    tl = timeline(model, tmp_path / "long.mp4", window=2.0, stride=stride, top_k=2, batch_size=5)
    assert model.seen_frames == 4  # windows are clips of the model's T frames
    assert [s.label for s in tl.segments] == ["red", "green", "blue", "red"]
    found = [s.end for s in tl.segments[:-1]]
    assert all(abs(f - b) <= stride for f, b in zip(found, bounds, strict=True))
    clean = [w for w in tl.windows if not any(w.start < b < w.end for b in bounds)]
    colour_at = lambda t: ["red", "green", "blue", "red"][sum(t >= b for b in bounds)]  # noqa: E731
    assert all(w.label == colour_at(w.start) for w in clean)
    assert tl.segments[0].start == 0.0 and tl.segments[-1].end == pytest.approx(tl.windows[-1].end)
    for a, b in zip(tl.segments, tl.segments[1:], strict=False):
        assert a.end == pytest.approx(b.start)  # segments tile the time


def test_rejected_windows_are_gaps():
    def w(i, label):
        return WindowResult(i, i * 1.0, i * 1.0 + 2.0, [(label or "x", 0.5)], label, 0.1)

    windows = [w(0, "a"), w(1, "a"), w(2, None), w(3, "a"), w(4, "b"), w(5, "b")]
    segs = merge_segments(windows, stride=1.0)
    assert [(s.label, s.first_window, s.last_window) for s in segs] == [("a", 0, 1), ("a", 3, 3), ("b", 4, 5)]
    # window i spans [i, i + 2] with centre i + 1; a segment runs half-way to the neighbouring centres
    assert (segs[0].start, segs[0].end) == (0.0, 2.5)  # the first window from its start
    assert (segs[1].start, segs[1].end) == (3.5, 4.5)  # the gap of window 2 is [2.5, 3.5]
    assert (segs[2].start, segs[2].end) == (4.5, 7.0)  # the last window to its end


def test_outputs_and_rejection(tmp_path):
    colour_video(tmp_path / "v.mp4", [("red", 2), ("grey", 2), ("green", 2)])
    tl = timeline(ColourModel(), tmp_path / "v.mp4", window=1.0, stride=1.0, reject_threshold=-2.0,
                  reject_score="max_logit")  # fmt: skip
    assert tl.rejection == {"score": "max_logit", "threshold": -2.0}
    assert [w.label for w in tl.windows] == ["red", "red", None, None, "green", "green"]
    assert [s.label for s in tl.segments] == ["red", "green"] and tl.segments[0].end == 2.0
    files = save_timeline(tl, tmp_path / "out")
    assert all(f.is_file() and f.stat().st_size > 0 for f in files)
    rows = list(csv.DictReader(open(tmp_path / "out" / "windows.csv")))
    assert len(rows) == len(tl.windows) == 6
    assert [r["label"] for r in rows] == [w.label or "" for w in tl.windows]
    record = json.loads((tmp_path / "out" / "timeline.json").read_text())
    assert len(record["segments"]) == len(tl.segments) and record["windows"][0]["top_k"][0]["label"] == "red"
    assert (record["smooth"], record["refine"]) == (1, 4)


def test_timeline_command(tmp_path, capsys):
    from tcclip.model.config import TCCLIPConfig
    from tcclip.model.factory import create_model
    from tcclip.training.checkpoints import save_model

    colour_video(tmp_path / "v.mp4", [("red", 2), ("blue", 2)])
    cfg = TCCLIPConfig(
        arch="test-tiny", num_frames=4, positional_embedding_type="joint", context_token_k=8, tome_r=4,
        prompt_generation_layer_level=(2,),
    )  # fmt: skip
    torch.manual_seed(0)
    ckpt = save_model(create_model(cfg, ["red", "blue"], clip_weights=None), tmp_path / "tiny.pt")
    args = ["timeline", str(tmp_path / "v.mp4"), "--checkpoint", str(ckpt), "--window", "1", "--quiet"]
    assert cli_main([*args, "--out", str(tmp_path / "tl")]) == 0
    assert (tmp_path / "tl" / "timeline.png").is_file() and "wrote" in capsys.readouterr().out
    assert len(list(csv.reader(open(tmp_path / "tl" / "windows.csv")))) == 1 + 7  # windows at 0, 0.5, ..., 3 s
    assert cli_main([*args, "--stride", "0"]) == 2
    assert "stride" in capsys.readouterr().err
    assert cli_main(["timeline", str(tmp_path / "nope.mp4"), "--checkpoint", str(ckpt)]) == 2


def test_python_api_names():
    import tcclip
    import tcclip.inference.export
    import tcclip.inference.timeline  # importing the modules must not shadow the functions

    assert tcclip.timeline is timeline
    from tcclip.training.checkpoints import load_model

    assert tcclip.load_model is load_model


def test_smoothing(tmp_path):
    x = torch.rand(9, 4)
    for n in (1, 3, 5):
        naive = torch.stack([x[max(0, i - n // 2) : i + n // 2 + 1].mean(0) for i in range(9)])
        torch.testing.assert_close(moving_average(x, n), naive)
    colour_video(tmp_path / "v.mp4", [("red", 3), ("blue", 3)])
    tl = timeline(ColourModel(), tmp_path / "v.mp4", window=1.0, stride=0.5, smooth=3)
    assert [s.label for s in tl.segments] == ["red", "blue"] and abs(tl.segments[0].end - 3.0) <= 0.5
    with pytest.raises(tcclip.utils.errors.UserError, match="odd"):
        timeline(ColourModel(), tmp_path / "v.mp4", smooth=2)
    with pytest.raises(tcclip.utils.errors.UserError, match="unknown video backend 'opencv'"):
        timeline(ColourModel(), tmp_path / "v.mp4", backend="opencv")


# ----------------------------------------------------------------------------------------------- boundary refinement


@pytest.mark.parametrize("kind", ["stamped_gop8", "offset_start_mp4", "vfr_avi", "bframes_avi"])
def test_a_part_decoded_after_a_seek_equals_the_same_windows_of_a_full_decode(tmp_path, kind):
    from quirks import write_quirk_video

    if kind == "stamped_gop8":  # key frames every 8 frames: the seek lands well inside the video
        frames = np.zeros((90, 32, 32, 3), dtype=np.uint8)
        for i in range(90):
            draw_index_stamp(frames[i], i)
        path = write_video(tmp_path / "stamped.mp4", frames, fps=FPS)
    else:
        path = write_quirk_video(kind, tmp_path).path

    def convert(frame):
        return torch.tensor(read_index_stamp(frame.numpy()))

    duration = declared_duration(path)
    window, stride, t = duration / 6, duration / 40, 4
    full = {
        k: (start, [int(x) for x in samples])
        for k, start, _, samples in stream_windows(path, t, window, stride, convert)
    }
    assert len(full) > 12
    for first in (3, len(full) // 2, len(full) - 4):
        part = list(stream_windows(path, t, window, stride, convert, offset=first * stride, count=4))
        assert [k for k, *_ in part] == [0, 1, 2, 3]
        for k, start, _, samples in part:
            assert start == pytest.approx(full[first + k][0])
            assert [int(x) for x in samples] == full[first + k][1], (kind, first, k)


def test_place_boundary():
    from tcclip.inference.timeline_segments import place_boundary

    centres = [0.25 * j for j in range(10)]  # 0 .. 2.25
    assert place_boundary(centres, [True] * 4 + [False] * 6, 0.0, 2.5) == pytest.approx(0.875)  # between 0.75 and 1
    # one stray vote on each side does not move it
    assert place_boundary(centres, [True, True, False, True, False, False, True, False, False, False], 0.0, 2.5) == (
        pytest.approx(0.875)
    )
    assert place_boundary(centres, [True] * 10, 0.0, 2.5) == 2.5  # A everywhere: the change is at the far end
    assert place_boundary(centres, [False] * 10, 0.0, 2.5) == 0.0
    assert place_boundary(centres[::-1], ([True] * 4 + [False] * 6)[::-1], 0.0, 2.5) == pytest.approx(0.875)


def test_apply_boundaries_drops_an_unconfirmed_flicker_and_merges():
    from tcclip.inference.timeline_segments import Segment, apply_boundaries

    segs = [Segment("a", 0, 2, 0, 3, 0.9), Segment("b", 2, 2.5, 4, 4, 0.6), Segment("a", 2.5, 5, 5, 9, 0.8)]
    # the finer windows put a -> b at 2.4 and b -> a at 2.2: b does not exist
    out = apply_boundaries(segs, {0: 2.4, 1: 2.2})
    assert [(s.label, s.start, s.end, s.first_window, s.last_window) for s in out] == [("a", 0, 5, 0, 9)]
    assert out[0].mean_probability == pytest.approx((0.9 * 4 + 0.8 * 5) / 9)
    out = apply_boundaries(segs, {0: 2.1, 1: 2.3})  # confirmed, narrower
    assert [(s.label, s.start, s.end) for s in out] == [("a", 0, 2.1), ("b", 2.1, 2.3), ("a", 2.3, 5)]


class LateColourModel(ColourModel):
    """Names the colour of the last quarter of a window's frames: it switches as soon as a window's end reaches the
    next colour, like a model that names a window after a minority of its frames (the trained demo model does so
    for some class pairs)."""

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return super().forward(video[:, -max(1, video.shape[1] // 4) :])


def test_refinement_places_the_changes_of_a_biased_model(tmp_path):
    parts = [("red", 6.3), ("green", 4.4), ("blue", 5.2), ("red", 3.7), ("green", 4.1)]
    bounds = colour_video(tmp_path / "long.mp4", parts)
    stride = 0.5
    for refine in (0, 4):
        model = LateColourModel(num_frames=8)
        tl = timeline(model, tmp_path / "long.mp4", window=2.0, stride=stride, refine=refine, batch_size=7)
        assert [s.label for s in tl.segments] == [name for name, _ in parts]
        errors = [abs(s.end - b) for s, b in zip(tl.segments, bounds, strict=False)]
        for a, b in zip(tl.segments, tl.segments[1:], strict=False):
            assert a.end == pytest.approx(b.start)  # still a tiling
        if refine:
            assert max(errors) <= stride, errors
        else:  # half-way between window centres is up to most of a window early for this model
            assert max(errors) > stride, errors
    # the windows themselves are the same with and without refinement
    plain = timeline(LateColourModel(num_frames=8), tmp_path / "long.mp4", window=2.0, stride=stride, refine=0)
    assert [w.top_k for w in plain.windows] == [w.top_k for w in tl.windows]
    with pytest.raises(tcclip.utils.errors.UserError, match="refine"):
        timeline(ColourModel(), tmp_path / "long.mp4", refine=1)


def test_refinement_intervals_reach_further_with_smoothing_and_skip_gaps():
    from tcclip.inference.timeline_segments import refinement_intervals

    def w(i, label):
        return WindowResult(i, i * 0.5, i * 0.5 + 1.0, [(label or "x", 0.9)], label)

    labels = ["a", "a", "a", "b", "b", "b", None, "c", "c"]
    windows = [w(i, lab) for i, lab in enumerate(labels)]
    segs = merge_segments(windows, stride=0.5)
    # a -> b between windows 2 ([1, 2]) and 3 ([1.5, 2.5]); b -> c is next to a gap: not refined
    assert refinement_intervals(segs, windows) == [(0, 1.0, 2.5)]
    # labels smoothed over 3 windows: from window 1's start to window 4's end, inside the segments' cells
    assert refinement_intervals(segs, windows, reach=1) == [(0, 0.5, 3.0)]
    assert refinement_intervals(segs, windows, reach=5) == [(0, 0.0, segs[1].end)]


def test_a_file_that_is_not_a_video_is_a_clear_error(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video\n")
    with pytest.raises(tcclip.utils.errors.UserError, match="cannot be read as a video"):
        timeline(ColourModel(), bad, progress=True)
