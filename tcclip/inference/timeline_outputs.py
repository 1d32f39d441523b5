"""The timeline record (`Timeline`) and its files: `windows.csv` and `timeline.json` (per-window top-k, score,
accepted label), `segments.csv` (consecutive windows with the same accepted label merged; rejected windows are gaps)
and `timeline.png` (`plot_timeline`), written all or nothing (`save_timeline`).
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tcclip.inference.timeline_segments import Segment, WindowResult
from tcclip.utils.outputs import staged_folder


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
