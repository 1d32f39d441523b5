"""Actions along a long video: `tcclip.timeline(model, path, ...)` and `tcclip timeline VIDEO --checkpoint ...`.

A window of `window` seconds slides over the video every `stride` seconds; each window is one clip of the model's
T frames, sampled at the centres of T equal parts of the window (the test sampling, in time instead of frame
indices). The video is decoded once, in order, with PyAV; a frame is converted and transformed only when a window
needs it, and a window is scored and dropped as soon as its T frames are there, so memory depends on the window and
the batch, not on the video's length (docs/open_set.md, "Timelines").

Outputs (`save_timeline`): `windows.csv` and `timeline.json` (per-window top-k, score, accepted label), `segments.csv`
(consecutive windows with the same accepted label merged; rejected windows are gaps) and `timeline.png`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from jsonargparse import ArgumentParser
from torch import Tensor, nn

from tcclip.utils.errors import UserError
from tcclip.utils.outputs import check_output_folder, staged_folder

TIME_SLACK = 1e-6
"""Seconds added to every sample time, so that 0.7 + 0.2 (0.8999...) picks the frame stamped 0.9."""

__all__ = ["Segment", "Timeline", "WindowResult", "merge_segments", "save_timeline", "stream_windows", "timeline"]


@dataclass(frozen=True)
class WindowResult:
    """One window: where it lies (seconds from the first frame), its top-k, and the decision."""

    index: int
    start: float
    end: float
    top_k: list[tuple[str, float]]
    """(label, probability) pairs, most probable first."""
    label: str | None
    """The accepted label (the top-1 unless rejected); None when the window was rejected."""
    score: float | None = None
    """The rejection score (None without rejection)."""


@dataclass(frozen=True)
class Segment:
    """Consecutive windows with the same accepted label.

    `start`/`end` tile the timeline: half-way between window centres, or where `refine` placed the change.
    """

    label: str
    start: float
    end: float
    first_window: int
    last_window: int
    mean_probability: float


@dataclass(frozen=True)
class Timeline:
    video: str
    duration: float
    """Seconds from the first frame to the end of the last one."""
    window: float
    stride: float
    num_frames: int
    windows: list[WindowResult]
    segments: list[Segment]
    rejection: dict | None = None
    """Score name and threshold when rejection was on."""
    class_names: list[str] = field(default_factory=list)
    smooth: int = 1
    refine: int = 0
    """The boundary refinement factor used (0: boundaries half-way between window centres)."""

    def to_json(self) -> dict:
        return {
            "video": self.video,
            "duration": round(self.duration, 6),
            "window": self.window,
            "stride": self.stride,
            "smooth": self.smooth,
            "refine": self.refine,
            "num_frames": self.num_frames,
            "class_names": self.class_names,
            "rejection": self.rejection,
            "windows": [
                {**asdict(w), "top_k": [{"label": lab, "probability": round(p, 6)} for lab, p in w.top_k]}
                for w in self.windows
            ],
            "segments": [asdict(s) for s in self.segments],
        }


# ----------------------------------------------------------------------------------------------- streaming decode


def _frame_index(path: Path):
    """The video's frame index (tcclip.data.video_frames): the same refusals as predict and training (not a video,
    truncated), and the display time of every picture, which B-frame AVIs do not carry in their timestamps."""
    from tcclip.data.video_frames import VideoDecodeError, read_video_frames

    try:
        return read_video_frames(path)
    except VideoDecodeError as err:
        raise UserError(err.reason or str(err), path=path, fix="Give a readable video file.") from err


def _frame_time(frame, index: int, rate: float, table=None, seeking: bool = False) -> float | None:
    """Display time of the picture `frame`, the `index`-th decoded (counted from where decoding started)."""
    if table is not None and table.seekable:
        position = table.index_of_label.get(frame.pts)
        return None if position is None else table.seconds(position)
    if table is not None and not seeking and index < len(table):
        return table.seconds(index)
    return float(frame.time) if frame.time is not None else index / rate


def stream_windows(
    path: str | Path,
    num_frames: int,
    window: float,
    stride: float,
    convert: Callable[[object], Tensor],
    on_time: Callable[[float], None] | None = None,
    *,
    offset: float = 0.0,
    count: int | None = None,
    origin: float | None = None,
) -> Iterator[tuple[int, float, float, list[Tensor]]]:
    """Decode `path` once and yield `(index, start, end, frames)` per complete window, in order.

    Window k covers [offset + k * stride, offset + k * stride + window) seconds from the first frame; its sample i
    is the frame shown at start + (i + 0.5) * window / num_frames (the last frame whose timestamp is <= that time).
    `convert` turns a PyAV frame into what is kept (called once per needed frame). Only windows that fit inside the
    video are yielded; a video shorter than one window gives one window over the whole video (decoded a second
    time).

    A part of the video (boundary refinement): `count` windows from `offset` seconds, decoding stops after the last
    one. With `origin` (the first frame's timestamp in seconds, `first_frame_time`), decoding starts at the key
    frame before `offset` instead of at the beginning.
    """
    import av

    path = Path(path)
    step = window / num_frames
    pending: dict[int, list[Tensor | None]] = {}  # window index -> its samples so far
    next_window = 0
    emitted = 0
    prev_time, prev_frame, prev_converted = None, None, None
    start_time = origin
    index = -1
    table = _frame_index(path)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as err:
        raise UserError(f"cannot open the video ({err})", path=path, fix="check the file (ffprobe)") from err
    with container:
        if not container.streams.video:
            raise UserError("has no video stream", path=path, fix="give a video file")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        seeking = origin is not None and offset > 0 and stream.time_base is not None
        if seeking:
            # the key frame at or before the first sample time; frames before it only move `prev_frame` along
            container.seek(int((origin + offset) / stream.time_base), stream=stream, backward=True)

        def fill(until: float) -> Iterator[tuple[int, float, float, list[Tensor]]]:
            """Give prev_frame to every pending sample time in [prev_time, until); yield completed windows."""
            nonlocal next_window, prev_converted, emitted
            # open the windows whose first sample time comes before `until`
            while offset + next_window * stride + 0.5 * step + TIME_SLACK < until:
                if count is not None and next_window == count:
                    break
                pending[next_window] = [None] * num_frames
                next_window += 1
            for k in sorted(pending):
                samples = pending[k]
                start = offset + k * stride
                for i in range(num_frames):
                    # a microsecond of slack: a sample time that is a frame's timestamp up to rounding gets that frame
                    t = start + (i + 0.5) * step + TIME_SLACK
                    if samples[i] is None and prev_time <= t < until:
                        if prev_converted is None:
                            prev_converted = convert(prev_frame)
                        samples[i] = prev_converted
                if all(s is not None for s in samples):
                    del pending[k]
                    emitted += 1
                    yield k, start, start + window, samples  # type: ignore[misc]

        try:
            for index, frame in enumerate(container.decode(stream)):
                if seeking and frame.time is None:
                    return  # no timestamps to place frames after a seek: no windows rather than wrong ones
                t = _frame_time(frame, index, rate, table, seeking)
                if t is None:
                    continue  # a picture a seek made that the sequential decode does not show
                if start_time is None:
                    start_time = t
                t -= start_time
                if prev_frame is not None:
                    yield from fill(t)
                    if count is not None and emitted == count:
                        return
                prev_time, prev_frame, prev_converted = t, frame, None
                if on_time is not None:
                    on_time(t)
        except av.error.FFmpegError as err:
            raise UserError(f"decoding failed after frame {index} ({err})", path=path, fix="re-encode it") from err
        if prev_frame is None:
            raise UserError("the video has no frames", path=path, fix="give a video with frames")
        end = prev_time + 1.0 / rate  # the last frame is shown for one frame period
        # windows that end inside the video get their last samples from the last frame
        for k in list(pending):
            if offset + k * stride + window > end + 1e-6:
                del pending[k]
        yield from fill(end)
    if emitted == 0 and count is None:  # shorter than one window: one window over the whole video
        yield from stream_windows(path, num_frames, end * (1 - 1e-9), max(stride, end), convert)


# ----------------------------------------------------------------------------------------------- segments


def merge_segments(windows: Sequence[WindowResult], stride: float) -> list[Segment]:
    """Merge consecutive windows with the same accepted label; rejected windows (label None) are gaps.

    A window stands for the stretch of time nearer its centre than its neighbours' centres
    ([centre - stride / 2, centre + stride / 2], within the window; the first window from its start, the last to its
    end), so segments tile the covered time and a boundary lies half-way between the centres of the two windows
    around it.
    """
    segments: list[Segment] = []
    run: list[WindowResult] = []

    def cell(i: int) -> tuple[float, float]:
        w = windows[i]
        centre = 0.5 * (w.start + w.end)
        lo = w.start if i == 0 else max(w.start, centre - 0.5 * stride)
        hi = w.end if i == len(windows) - 1 else min(w.end, centre + 0.5 * stride)
        return lo, hi

    def close() -> None:
        if run and run[0].label is not None:
            first, last = run[0].index, run[-1].index
            probs = [dict(w.top_k).get(run[0].label, 0.0) for w in run]
            segments.append(
                Segment(run[0].label, cell(first)[0], cell(last)[1], first, last, float(sum(probs) / len(probs)))
            )

    for w in windows:
        if run and (w.label != run[-1].label or w.index != run[-1].index + 1):
            close()
            run = []
        run.append(w)
    close()
    return segments


def refinement_intervals(
    segments: Sequence[Segment], windows: Sequence[WindowResult], reach: int = 0
) -> list[tuple[int, float, float]]:
    """Where to look for each change between two touching segments: `(i, lo, hi)` for segments i and i + 1.

    Window a (the last of segment i) and window b (the first of segment i + 1) disagree, so a from-A-to-B change
    lies after a's start (a holds some A) and before b's end (b holds some B), and inside the two segments' cells.
    With labels smoothed over `2 * reach + 1` windows, a label may come from a window up to `reach` away, so the
    stretch runs from the start of window a - reach to the end of window b + reach. Changes next to a gap (a
    rejected window) are not refined.
    """
    by_index = {w.index: w for w in windows}
    first, last = min(by_index, default=0), max(by_index, default=0)
    out = []
    for i, (left, right) in enumerate(zip(segments, segments[1:], strict=False)):
        if right.first_window != left.last_window + 1:
            continue
        lo = max(by_index[max(first, left.last_window - reach)].start, left.start)
        hi = min(by_index[min(last, right.first_window + reach)].end, right.end)
        if hi > lo:
            out.append((i, lo, hi))
    return out


def place_boundary(centres: Sequence[float], left_wins: Sequence[bool], lo: float, hi: float) -> float:
    """The change point in [lo, hi] that agrees with the most probe windows (left of it A wins, right of it B wins).

    Candidates are lo, hi and the midpoints between consecutive probe centres; among equally good candidates the
    middle one is taken.
    """
    order = sorted(range(len(centres)), key=lambda j: centres[j])
    c = [centres[j] for j in order]
    a = [bool(left_wins[j]) for j in order]
    candidates = [lo] + [0.5 * (x + y) for x, y in zip(c, c[1:], strict=False)] + [hi]
    # agreement when the change is before probe j: number of B wins among probes >= j plus A wins among probes < j
    agree = [sum(not w for w in a)]  # change at lo: every probe should be B
    for w in a:
        agree.append(agree[-1] + (1 if w else -1))
    best = max(agree)
    tied = [k for k, v in enumerate(agree) if v == best]
    return min(max(candidates[tied[len(tied) // 2]], lo), hi)


def apply_boundaries(segments: Sequence[Segment], boundaries: dict[int, float]) -> list[Segment]:
    """Move the change between segments i and i + 1 to `boundaries[i]`; drop segments that vanish, merge neighbours.

    A segment whose refined start passes its refined end (a flicker that the finer windows do not confirm) shrinks
    to nothing at the mean of the two; two segments of the same label that then touch become one.
    """
    starts = [s.start for s in segments]
    ends = [s.end for s in segments]
    for i, b in boundaries.items():
        ends[i] = starts[i + 1] = b
    for _ in range(len(segments)):  # a collapse moves its neighbours' edges, which may collapse them in turn
        crossed = [i for i in range(len(segments)) if ends[i] < starts[i]]
        if not crossed:
            break
        for i in crossed:
            mid = 0.5 * (starts[i] + ends[i])
            starts[i] = ends[i] = mid
            if i - 1 in boundaries:
                ends[i - 1] = mid
            if i in boundaries:
                starts[i + 1] = mid
    out: list[Segment] = []
    for seg, lo, hi in zip(segments, starts, ends, strict=True):
        if hi <= lo:
            continue
        seg = Segment(seg.label, lo, hi, seg.first_window, seg.last_window, seg.mean_probability)
        prev = out[-1] if out else None
        if prev is not None and prev.label == seg.label and abs(prev.end - seg.start) < 1e-9:
            n1 = prev.last_window - prev.first_window + 1
            n2 = seg.last_window - seg.first_window + 1
            p = (prev.mean_probability * n1 + seg.mean_probability * n2) / (n1 + n2)
            out[-1] = Segment(seg.label, prev.start, seg.end, prev.first_window, seg.last_window, p)
        else:
            out.append(seg)
    return out


# ----------------------------------------------------------------------------------------------- the model


def timeline(
    model: nn.Module,
    path: str | Path,
    labels: Sequence[str] | None = None,
    window: float = 2.0,
    stride: float | None = None,
    top_k: int = 3,
    reject: bool = False,
    reject_threshold: float | None = None,
    reject_score: str | None = None,
    batch_size: int = 8,
    progress: bool = False,
    smooth: int = 1,
    refine: int = 4,
) -> Timeline:
    """Score a long video window by window.

    Args:
        model: a model from `tcclip.load_model`.
        path: the video file.
        labels: class names (default: the model's).
        window: window length in seconds (each window is one clip of the model's T frames).
        stride: seconds between window starts (default: half the window).
        top_k: classes kept per window.
        reject / reject_threshold / reject_score: "none of the above" per window, as in `tcclip.predict`.
        batch_size: windows per forward pass.
        progress: show a progress bar (rich, on stderr) while decoding.
        smooth: label each window from the mean probabilities of this many windows centred on it (odd; 1: off).
            Removes one-window flickers; the rejection score stays the window's own.
        refine: place each change between two labels with windows `refine` times shorter, `refine` of them per
            window length, over the stretch where the change can lie (a second, partial decode; 0: off, boundaries
            half-way between window centres). The windows themselves keep their labels.
    """
    from tcclip.inference.clips import Views, make_test_transform
    from tcclip.inference.openset import Rejector, calibrated_probabilities
    from tcclip.inference.predictions import top_k_predictions
    from tcclip.inference.scoring import (
        check_views_memory,
        evaluating,
        model_input_size,
        model_num_frames,
        model_temperature,
        use_labels,
        video_view_logits,
    )

    check_window_options(window, stride, top_k, batch_size, smooth, refine)
    stride = window / 2 if stride is None else stride
    from tcclip.inference.openset import check_reject_options

    check_reject_options(reject, reject_threshold, reject_score)
    path = Path(path)
    if not path.is_file():
        raise UserError("no such video file", path=path, fix="give a video file")
    names = use_labels(model, labels)
    rejector = (
        Rejector.for_model(model, reject_threshold, reject_score) if reject or reject_threshold is not None else None
    )
    check_views_memory(model, Views(1, 1), batch_size, timeline=True)  # --batch-size windows in one forward pass
    temperature = model_temperature(model)
    num_frames = model_num_frames(model)
    transform = make_test_transform(model_input_size(model), 1, 1)

    def convert(frame) -> Tensor:
        # one frame through the test transform (every step is per frame): [3, S, S]
        return transform(torch.from_numpy(frame.to_ndarray(format="rgb24"))[None])[0, 0]

    def score(items, keep_rejection: bool) -> list[tuple[int, float, float, Tensor, float | None, bool]]:
        """Per window: (index, start, end, probabilities [C], rejection score, accepted), in batches."""
        scored, batch = [], []

        def flush() -> None:
            clips = torch.stack([torch.stack(frames) for _, _, _, frames in batch])[:, None]  # [B, 1, T, 3, S, S]
            logits = video_view_logits(model, clips)  # [B, 1, C]
            probs = calibrated_probabilities(logits, temperature)
            use = rejector if keep_rejection else None
            scores, accepted = use(logits) if use is not None else (None, None)
            for j, (k, start, end, _) in enumerate(batch):
                ok = True if accepted is None else bool(accepted[j])
                scored.append((k, start, end, probs[j], None if scores is None else float(scores[j]), ok))
            batch.clear()

        for item in items:
            if item[0] >= MAX_WINDOWS:  # a container that declared no duration: the cap, found while decoding
                check_window_count(item[1] + window, window, stride, path)
            batch.append(item)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        return scored

    probed = _probe_duration(path)  # the container's own duration: the progress bar's total and a floor below
    check_window_count(probed, window, stride, path)
    bar, on_time = _progress(probed, progress)
    with bar, evaluating(model):
        scored = score(stream_windows(path, num_frames, window, stride, convert, on_time), keep_rejection=True)
    # C numbers per window are kept until the end (for the smoothing), never frames
    smoothed = moving_average(torch.stack([row[3] for row in scored]), smooth) if scored else []
    results: list[WindowResult] = []
    for (k, start, end, _, score_k, ok), p in zip(scored, smoothed, strict=True):
        ranked = [(pred.label, pred.probability) for pred in top_k_predictions(p, names, top_k)]
        results.append(WindowResult(k, start, end, ranked, ranked[0][0] if ok else None, score_k))
    duration = results[-1].end if results else 0.0
    duration = max(duration, probed)
    segments = merge_segments(results, stride)
    if refine and len(segments) > 1:
        origin = first_frame_time(path)
        probe, boundaries = window / refine, {}
        with evaluating(model):
            for i, lo, hi in refinement_intervals(segments, results, reach=smooth // 2):
                # probe windows centred every probe/2 seconds from lo to hi (inside the video)
                first = max(0.0, lo - 0.5 * probe)
                count = int((min(hi + 0.5 * probe, results[-1].end) - probe - first) / (0.5 * probe) + 1e-9) + 1
                if count < 1:
                    continue
                items = stream_windows(path, num_frames, probe, 0.5 * probe, convert, offset=first, count=count,
                                       origin=origin)  # fmt: skip
                rows = score(items, keep_rejection=False)
                if not rows:
                    continue
                a, b = names.index(segments[i].label), names.index(segments[i + 1].label)
                centres = [0.5 * (r[1] + r[2]) for r in rows]
                boundaries[i] = place_boundary(centres, [bool(r[3][a] >= r[3][b]) for r in rows], lo, hi)
        segments = apply_boundaries(segments, boundaries)
    rejection = None if rejector is None else {"score": rejector.score, "threshold": rejector.threshold}
    return Timeline(
        str(path), duration, window, stride, num_frames, results, segments, rejection, names, smooth, refine
    )


def first_frame_time(path: str | Path) -> float | None:
    """The first frame's display time in seconds (the timeline's zero), or None without timestamps."""
    table = _frame_index(Path(path))
    return table.seconds(0) if table.seekable else None


def moving_average(x: Tensor, n: int) -> Tensor:
    """Centred mean over n consecutive rows of x [N, C] (fewer at the ends, where the window is cut): [N, C]."""
    if n == 1:
        return x
    half = n // 2
    total = torch.cat([x.new_zeros(1, x.shape[1]), x.double().cumsum(0)])  # [N+1, C] running sums
    idx = torch.arange(x.shape[0])
    lo, hi = (idx - half).clamp(min=0), (idx + half + 1).clamp(max=x.shape[0])
    return ((total[hi] - total[lo]) / (hi - lo)[:, None]).to(x.dtype)


MAX_WINDOWS = 100_000
"""The most windows one timeline scores (about 28 hours of video at the default 1 s stride): a stride typed a
thousand times too small would otherwise run for days and hold millions of rows."""
MIN_STRIDE = 1e-3
"""Seconds: no video has two frames closer than a millisecond, so a smaller stride only repeats windows."""


def check_window_options(
    window: float, stride: float | None, top_k: int = 3, batch_size: int = 8, smooth: int = 1, refine: int = 4
) -> None:
    """Refuse window, stride and the other numbers of a timeline before any work (the option named)."""
    if not (math.isfinite(window) and window > 0):
        raise UserError(f"--window (window=) must be positive seconds, got {window}", fix="e.g. --window 2")
    if stride is not None and not (math.isfinite(stride) and stride > 0):
        raise UserError(f"window and stride must be positive seconds, got {window} and {stride}", fix="e.g. 2 and 1")
    if stride is not None and stride < MIN_STRIDE:
        raise UserError(
            f"--stride {stride:g} is under a millisecond: no video has frames that close, so windows would repeat",
            fix=f"Give --stride (stride=) at least {MIN_STRIDE:g} seconds (default: half the window).",
        )
    if smooth < 1 or smooth % 2 == 0:
        raise UserError(
            f"--smooth (smooth=) must be an odd number of windows, got {smooth}", fix="e.g. 1 (off), 3 or 5"
        )
    if top_k < 1 or batch_size < 1:
        raise UserError("--top-k and --batch-size (top_k=, batch_size=) must be >= 1", fix="pass positive numbers")
    if refine < 0 or refine == 1:
        raise UserError(f"--refine (refine=) must be 0 (off) or a factor >= 2, got {refine}", fix="e.g. 4 or 0")


def check_window_count(duration: float, window: float, stride: float | None, path: str | Path) -> int:
    """The number of windows of a video of `duration` seconds; more than `MAX_WINDOWS` is refused up front."""
    stride = window / 2 if stride is None else stride
    count = 1 + max(0, math.floor((duration - window) / stride + 1e-9)) if duration > 0 else 1
    if count > MAX_WINDOWS:
        raise UserError(
            f"{duration:.1f} s with a window of {window:g} s every {stride:g} s makes {count:,} windows, more than "
            f"the {MAX_WINDOWS:,} a timeline scores",
            path=path,
            fix=f"Use a larger --stride: at least {max(duration - window, 0) / (MAX_WINDOWS - 1):.3g} s for this "
            "video.",
        )
    return count


def _probe_duration(path: Path) -> float:
    """The duration the container declares (0 when it declares none or cannot be opened: the decode that follows
    says what is wrong with the file)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return 0.0
            stream = container.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            return float(container.duration or 0) / 1e6
    except (av.error.FFmpegError, OSError):
        return 0.0


def _progress(total: float, enabled: bool):
    from tcclip.utils.progress import progress_bar

    # a container may declare no duration: then the seconds decoded so far, with no total
    bar = progress_bar("timeline", unit="seconds", enabled=enabled)
    task = bar.add_task("video", total=total or None)
    return bar, (lambda t: bar.update(task, completed=t)) if enabled else None


# ----------------------------------------------------------------------------------------------- outputs


def plot_timeline(tl: Timeline):
    """A matplotlib Figure: the segments as coloured bars over time, and every window's top-1 probability."""
    from matplotlib.figure import Figure

    labels = sorted({s.label for s in tl.segments})
    colours = {lab: f"C{i % 10}" for i, lab in enumerate(labels)}
    fig = Figure(figsize=(max(6.0, min(24.0, tl.duration / 10)), 3.2), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(1, 2))
    for seg in tl.segments:
        top.broken_barh([(seg.start, seg.end - seg.start)], (0, 1), color=colours[seg.label])
        if seg.end - seg.start > 0.04 * max(tl.duration, 1e-9):
            top.text(0.5 * (seg.start + seg.end), 0.5, seg.label, ha="center", va="center", fontsize=8, clip_on=True)
    top.set_yticks([])
    top.set_ylabel("segments", fontsize=8)
    centres = [0.5 * (w.start + w.end) for w in tl.windows]
    bottom.plot(centres, [w.top_k[0][1] for w in tl.windows], color="0.3", lw=1, label="top-1 probability")
    for w, c in zip(tl.windows, centres, strict=True):
        bottom.scatter([c], [w.top_k[0][1]], s=10, color=colours.get(w.label, "0.7"), zorder=3)
    bottom.set_ylim(0, 1.02)
    bottom.set_xlim(0, max(tl.duration, 1e-6))
    bottom.set_xlabel("seconds")
    bottom.set_ylabel("top-1 prob.", fontsize=8)
    handles = [bottom.scatter([], [], color=colours[lab], label=lab) for lab in labels]
    if handles:
        bottom.legend(handles=handles, fontsize=7, loc="lower right", ncols=min(4, len(handles)))
    return fig


TIMELINE_FILES = frozenset({"windows.csv", "segments.csv", "timeline.json", "timeline.png"})


def save_timeline(tl: Timeline, out_dir: str | Path) -> list[Path]:
    """windows.csv, segments.csv, timeline.json and timeline.png in `out_dir`, all or nothing: written into a
    temporary folder that then replaces `out_dir` (an earlier timeline's files never survive beside new ones).

    Raises:
        UserError: `out_dir` is a file or holds other files, or cannot be written (full disk, no permission).
    """
    out = Path(out_dir)
    with staged_folder(out, "--out", TIMELINE_FILES, what="timeline") as folder:
        _write_timeline_files(tl, folder)
    return [out / n for n in ("windows.csv", "segments.csv", "timeline.json", "timeline.png")]


def _write_timeline_files(tl: Timeline, out: Path) -> None:
    k = max((len(w.top_k) for w in tl.windows), default=0)
    with open(out / "windows.csv", "w", newline="") as f:
        writer = csv.writer(f)
        header = ["window", "start", "end", "label", "score"]
        for r in range(1, k + 1):
            header += [f"label_{r}", f"probability_{r}"]
        writer.writerow(header)
        for w in tl.windows:
            row = [
                w.index,
                f"{w.start:.3f}",
                f"{w.end:.3f}",
                w.label or "",
                "" if w.score is None else f"{w.score:.6g}",
            ]
            for lab, p in w.top_k:
                row += [lab, f"{p:.6f}"]
            writer.writerow(row)
    with open(out / "segments.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "start", "end", "first_window", "last_window", "mean_probability"])
        for s in tl.segments:
            writer.writerow([s.label, f"{s.start:.3f}", f"{s.end:.3f}", s.first_window, s.last_window,
                             f"{s.mean_probability:.6f}"])  # fmt: skip
    (out / "timeline.json").write_text(json.dumps(tl.to_json(), indent=1) + "\n")
    plot_timeline(tl).savefig(out / "timeline.png", dpi=120)


# ----------------------------------------------------------------------------------------------- command line


def build_parser() -> ArgumentParser:
    from tcclip.inference.openset import add_reject_arguments
    from tcclip.inference.predict import add_model_arguments

    parser = ArgumentParser(
        prog="tcclip timeline",
        description="Slide a window of the model's T frames over a long video: per-window top-k (CSV, JSON), merged "
        "segments and a PNG timeline plot.",
        epilog="Example: tcclip timeline match.mp4 --checkpoint tc_clip.ckpt --labels 'serve,rally,break' --window 3",
    )
    parser.add_argument("video", help="the video file")
    add_model_arguments(parser)
    parser.add_argument("--window", type=float, default=2.0, help="window length in seconds (default 2)")
    parser.add_argument("--stride", type=float, help="seconds between window starts (default: half the window)")
    parser.add_argument("--top-k", type=int, default=3, help="classes kept per window (default 3)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    parser.add_argument(
        "--smooth", type=int, default=1, help="label windows from the mean of this many windows' probabilities (odd)"
    )
    parser.add_argument(
        "--refine",
        type=int,
        default=4,
        help="place each change with windows this many times shorter (default 4; 0: half-way between windows)",
    )
    parser.add_argument("--out", type=Path, help="output folder (default: <video name>_timeline/ next to the video)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_reject_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from tcclip.inference.openset import check_reject_options
    from tcclip.inference.predict import check_model_args, load_model_from_args

    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    out = Console()
    video = Path(args.video)
    out_dir = args.out or video.with_name(video.stem + "_timeline")
    # Every option and the output folder checked before the model is loaded or a frame decoded.
    check_window_options(args.window, args.stride, args.top_k, args.batch_size, args.smooth, args.refine)
    check_reject_options(args.reject, args.reject_threshold, args.reject_score)
    if not video.is_file():
        raise UserError("no such video file" if not video.exists() else "is a folder, not a video file", path=video,
                        fix="Give a video file.")  # fmt: skip
    check_window_count(_probe_duration(video), args.window, args.stride, video)
    check_model_args(args)
    check_output_folder(out_dir, "--out", TIMELINE_FILES)
    model = load_model_from_args(args)
    tl = timeline(
        model,
        args.video,
        window=args.window,
        stride=args.stride,
        top_k=args.top_k,
        reject=args.reject,
        reject_threshold=args.reject_threshold,
        reject_score=args.reject_score,
        batch_size=args.batch_size,
        progress=not args.quiet,
        smooth=args.smooth,
        refine=args.refine,
    )
    files = save_timeline(tl, out_dir)
    table = Table(title=f"{escape(str(video))}: {len(tl.windows)} windows of {tl.window:g} s every {tl.stride:g} s")
    for column in ("start", "end", "label", "mean prob."):
        table.add_column(column, justify="right" if column != "label" else "left")
    for s in tl.segments:
        table.add_row(f"{s.start:.2f}", f"{s.end:.2f}", escape(s.label), f"{s.mean_probability:.3f}")
    out.print(table)
    out.print("wrote " + ", ".join(str(f) for f in files), highlight=False, soft_wrap=True)
    return 0
