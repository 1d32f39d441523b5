"""Actions along a long video: `tcclip.timeline(model, path, ...)` and `tcclip timeline VIDEO --checkpoint ...`.

A window of `window` seconds slides over the video every `stride` seconds; each window is one clip of the model's
T frames, sampled at the centres of T equal parts of the window (the test sampling, in time instead of frame
indices). The frames are read through the data reader, as training reads them (`tcclip.inference.timeline_windows`);
a window is scored and dropped as soon as its T frames are there, so memory depends on the window and the batch,
not on the video's length (docs/open_set.md, "Timelines"). Windows become segments in
`tcclip.inference.timeline_segments`; the record and its files are in `tcclip.inference.timeline_outputs`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from tcclip.data.video_reader import declared_duration, resolve_backend
from tcclip.inference.clips import Views, make_test_transform
from tcclip.inference.openset import Rejector, calibrated_probabilities, check_reject_options
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
from tcclip.inference.timeline_outputs import Timeline, save_timeline
from tcclip.inference.timeline_segments import (
    Segment,
    WindowResult,
    apply_boundaries,
    merge_segments,
    moving_average,
    place_boundary,
    refinement_intervals,
)
from tcclip.inference.timeline_windows import WindowFrames, check_window_count, check_window_options, stream_windows
from tcclip.utils.errors import UserError

__all__ = ["Segment", "Timeline", "WindowResult", "merge_segments", "save_timeline", "stream_windows", "timeline"]

ScoredWindow = tuple[int, float, float, Tensor, float | None, bool]
"""Per window: (index, start, end, calibrated probabilities [C], rejection score, accepted)."""


class WindowScorer:
    """Turns frames into the model's input and windows into calibrated probabilities, in batches."""

    def __init__(self, model: nn.Module, rejector: Rejector | None, batch_size: int) -> None:
        self.model, self.rejector, self.batch_size = model, rejector, batch_size
        self.temperature = model_temperature(model)
        self.transform = make_test_transform(model_input_size(model), 1, 1)

    def convert(self, frame: Tensor) -> Tensor:
        """One uint8 frame [H, W, 3] through the test transform (every step is per frame): [3, S, S]."""
        return self.transform(frame[None])[0, 0]

    def score(self, items: Iterable[WindowFrames], keep_rejection: bool) -> list[ScoredWindow]:
        """Every window of `items`, scored `batch_size` at a time (rejected or not only with `keep_rejection`)."""
        scored: list[ScoredWindow] = []
        batch: list[WindowFrames] = []
        for item in items:
            batch.append(item)
            if len(batch) == self.batch_size:
                scored.extend(self._score_batch(batch, keep_rejection))
                batch = []
        if batch:
            scored.extend(self._score_batch(batch, keep_rejection))
        return scored

    def _score_batch(self, batch: list[WindowFrames], keep_rejection: bool) -> list[ScoredWindow]:
        clips = torch.stack([torch.stack(frames) for _, _, _, frames in batch])[:, None]  # [B, 1, T, 3, S, S]
        logits = video_view_logits(self.model, clips)  # [B, 1, C]
        probs = calibrated_probabilities(logits, self.temperature)
        use = self.rejector if keep_rejection else None
        scores, accepted = use(logits) if use is not None else (None, None)
        rows: list[ScoredWindow] = []
        for j, (k, start, end, _) in enumerate(batch):
            ok = True if accepted is None else bool(accepted[j])
            rows.append((k, start, end, probs[j], None if scores is None else float(scores[j]), ok))
        return rows


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
    backend: str | None = None,
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
        backend: video decoder, as for `tcclip.predict` (default auto: torchcodec where it works, else pyav).
    """
    check_window_options(window, stride, top_k, batch_size, smooth, refine)
    stride = window / 2 if stride is None else stride
    check_reject_options(reject, reject_threshold, reject_score)
    resolve_backend(backend)  # an unknown or unusable decoder is named before the video is indexed
    path = Path(path)
    if not path.is_file():
        raise UserError("no such video file", path=path, fix="give a video file")
    names = use_labels(model, labels)
    rejector = (
        Rejector.for_model(model, reject_threshold, reject_score) if reject or reject_threshold is not None else None
    )
    check_views_memory(model, Views(1, 1), batch_size, timeline=True)  # --batch-size windows in one forward pass
    scorer = WindowScorer(model, rejector, batch_size)
    num_frames = model_num_frames(model)
    probed = declared_duration(path)  # the container's own duration: the progress bar's total and a floor below
    check_window_count(probed, window, stride, path)
    bar, on_time = _progress(probed, progress)
    with bar, evaluating(model):
        items = stream_windows(path, num_frames, window, stride, scorer.convert, on_time, backend=backend)
        scored = scorer.score(items, keep_rejection=True)
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
        with evaluating(model):
            boundaries = refined_boundaries(scorer, path, segments, results, names, window / refine, smooth, backend)
        segments = apply_boundaries(segments, boundaries)
    rejection = None if rejector is None else {"score": rejector.score, "threshold": rejector.threshold}
    return Timeline(
        str(path), duration, window, stride, num_frames, results, segments, rejection, names, smooth, refine
    )


def refined_boundaries(
    scorer: WindowScorer,
    path: Path,
    segments: Sequence[Segment],
    results: Sequence[WindowResult],
    names: Sequence[str],
    probe: float,
    smooth: int,
    backend: str | None = None,
) -> dict[int, float]:
    """Where each change between touching segments lies, from windows of `probe` seconds centred every `probe / 2`
    seconds over the stretch where it can lie (`refinement_intervals`): segment i -> its new end."""
    boundaries: dict[int, float] = {}
    num_frames = model_num_frames(scorer.model)
    for i, lo, hi in refinement_intervals(segments, results, reach=smooth // 2):
        # probe windows centred every probe/2 seconds from lo to hi (inside the video)
        first = max(0.0, lo - 0.5 * probe)
        count = int((min(hi + 0.5 * probe, results[-1].end) - probe - first) / (0.5 * probe) + 1e-9) + 1
        if count < 1:
            continue
        items = stream_windows(
            path, num_frames, probe, 0.5 * probe, scorer.convert, offset=first, count=count, backend=backend
        )
        rows = scorer.score(items, keep_rejection=False)
        if not rows:
            continue
        a, b = names.index(segments[i].label), names.index(segments[i + 1].label)
        centres = [0.5 * (r[1] + r[2]) for r in rows]
        boundaries[i] = place_boundary(centres, [bool(r[3][a] >= r[3][b]) for r in rows], lo, hi)
    return boundaries


def _progress(total: float, enabled: bool):
    from tcclip.utils.progress import progress_bar

    # a container may declare no duration: then the seconds decoded so far, with no total
    bar = progress_bar("timeline", unit="seconds", enabled=enabled)
    task = bar.add_task("video", total=total or None)
    return bar, (lambda t: bar.update(task, completed=t)) if enabled else None
