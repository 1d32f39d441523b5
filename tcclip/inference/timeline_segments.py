"""The timeline's windows turned into segments: a window's result, consecutive windows with the same label merged,
labels smoothed over neighbouring windows, and each change between two segments placed again with shorter windows
(boundary refinement).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


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


def moving_average(x: Tensor, n: int) -> Tensor:
    """Centred mean over n consecutive rows of x [N, C] (fewer at the ends, where the window is cut): [N, C]."""
    if n == 1:
        return x
    half = n // 2
    total = torch.cat([x.new_zeros(1, x.shape[1]), x.double().cumsum(0)])  # [N+1, C] running sums
    idx = torch.arange(x.shape[0])
    lo, hi = (idx - half).clamp(min=0), (idx + half + 1).clamp(max=x.shape[0])
    return ((total[hi] - total[lo]) / (hi - lo)[:, None]).to(x.dtype)
