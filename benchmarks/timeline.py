"""`tcclip.timeline` on long synthetic videos: segment boundaries, window accuracy, and memory against length.

    python benchmarks/timeline.py --ckpt runs/os/.../last.ckpt [--out DIR] [--json out.json]

Accuracy: a video made of stretches of the checkpoint's classes (`tcclip data synth` classes drawn with their class
colours, 32 px, as the demo model was trained), each stretch several rendered clips of one class, with known
boundaries. Reported: every true boundary's distance to the nearest segment boundary found (target: within one
stride), extra boundaries, and top-1 accuracy over the windows that do not straddle a boundary (target: >= 90%).

Memory: the same timeline over a 1-minute and a 10-minute 320x240 video, each in a fresh process; peak resident
memory (VmHWM) and its growth over the resident memory before the timeline started. Target: flat.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from rich.console import Console
from rich.table import Table

from tcclip.data.synth import CLASS_COLOURS, render_video, write_video

FPS = 12


def long_video(path: Path, classes: list[str], stretches: int, seed: int) -> list[tuple[str, float, float]]:
    """Write stretches of 4-8 s, each of one class (consecutive clips of 16-24 frames); returns (class, start, end)."""
    rng = np.random.default_rng(seed)
    frames, parts, t = [], [], 0.0
    previous = None
    for _ in range(stretches):
        name = rng.choice([c for c in classes if c != previous])
        previous = name
        target = rng.uniform(4.0, 8.0) * FPS
        count = 0
        while count < target:
            n = int(rng.integers(16, 25))
            frames.append(render_video(name, n, 32, 32, rng, colour=CLASS_COLOURS[name]))
            count += n
        parts.append((str(name), t, t + count / FPS))
        t += count / FPS
    write_video(path, np.concatenate(frames), fps=FPS)
    return parts


def accuracy(
    ckpt: Path, out: Path, window: float, stride: float, stretches: int, smooth: int = 1, refine: int = 4
) -> dict:
    import tcclip
    from tcclip.inference.timeline import save_timeline

    model = tcclip.load_model(ckpt)
    parts = long_video(out / "long.mp4", list(model.class_names), stretches, seed=0)
    start = time.perf_counter()
    tl = tcclip.timeline(model, out / "long.mp4", window=window, stride=stride, top_k=3, smooth=smooth, refine=refine)
    seconds = time.perf_counter() - start
    save_timeline(tl, out / "timeline")
    bounds = [end for _, _, end in parts[:-1]]
    found = [s.end for s in tl.segments[:-1]]
    errors = [min((abs(f - b) for f in found), default=float("inf")) for b in bounds]
    matched = {min(found, key=lambda f, b=b: abs(f - b)) for b in bounds if found}
    clean = [w for w in tl.windows if not any(w.start < b < w.end for b in bounds)]

    def truth(t: float) -> str:
        return next(name for name, s, e in parts if s <= t < e)

    right = sum(w.top_k[0][0] == truth(0.5 * (w.start + w.end)) for w in clean)
    return {
        "duration_s": tl.duration,
        "window_s": window,
        "stride_s": stride,
        "smooth": smooth,
        "refine": refine,
        "boundaries": len(bounds),
        "boundaries_within_one_stride": sum(e <= stride for e in errors),
        "max_boundary_error_s": max(errors) if errors else 0.0,
        "extra_boundaries": len(found) - len(matched),
        "windows": len(tl.windows),
        "non_straddling_windows": len(clean),
        "non_straddling_top1": right / max(1, len(clean)),
        "seconds": seconds,
    }


CHILD = """
import sys, time, tcclip
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
model = tcclip.load_model(sys.argv[1])
before = status('VmRSS')
t = time.perf_counter()
tl = tcclip.timeline(model, sys.argv[2], window=float(sys.argv[3]), stride=float(sys.argv[4]))
print(len(tl.windows), before, status('VmHWM'), time.perf_counter() - t)
"""


def memory(ckpt: Path, out: Path, window: float, stride: float, minutes: list[float]) -> list[dict]:
    rng = np.random.default_rng(1)
    names = list(CLASS_COLOURS)[:4]
    clips = [render_video(n, 24, 240, 320, rng, colour=CLASS_COLOURS[n]) for n in names]
    rows = []
    for m in minutes:
        path = out / f"long_{m:g}min.mp4"
        count = int(m * 60 * FPS)
        reps = -(-count // (24 * len(clips)))
        write_video(path, np.concatenate(clips * reps)[:count], fps=FPS)
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(ckpt), str(path), str(window), str(stride)],
            check=True,
            capture_output=True,
            text=True,
        )
        windows, before, peak, seconds = result.stdout.split()[-4:]
        rows.append({
            "minutes": m,
            "frames": count,
            "windows": int(windows),
            "rss_before_mb": float(before),
            "peak_rss_mb": float(peak),
            "growth_mb": float(peak) - float(before),
            "seconds": float(seconds),
        })  # fmt: skip
        path.unlink()
    return rows


@dataclass(frozen=True)
class Options:
    """What to measure.

    Args:
        ckpt: the trained checkpoint
        window: window length in seconds (the demo clips last 1.3-2 s)
        stride: seconds between window starts
        stretches: clips stitched into the long test video
        smooth: windows averaged for each label (tcclip timeline)
        refine: boundary refinement factor (tcclip timeline; 0: off)
        minutes: lengths of the memory test videos, comma-separated
        only: run one part
        out: working folder (default: a temporary one)
        json: also write every number to this file
    """

    ckpt: Path
    window: float = 1.0
    stride: float = 0.5
    stretches: int = 16
    smooth: int = 1
    refine: int = 4
    minutes: str = "1,10"
    only: Literal["accuracy", "memory"] | None = None
    out: Path | None = None
    json: Path | None = None


def main(args: Options) -> None:
    """Accuracy of `tcclip timeline`'s segments and its memory on long videos.

    Args:
        args: the options
    """
    out = args.out or Path(tempfile.mkdtemp(prefix="tcclip-timeline-"))
    out.mkdir(parents=True, exist_ok=True)
    console = Console()

    acc, rows = None, None
    if args.only != "memory":
        acc = accuracy(args.ckpt, out, args.window, args.stride, args.stretches, args.smooth, args.refine)
        print_accuracy(console, acc, args)
    if args.only != "accuracy":
        rows = memory(args.ckpt, out, args.window, args.stride, [float(m) for m in args.minutes.split(",")])
        print_memory(console, rows)
    if args.json:
        args.json.write_text(json.dumps({"accuracy": acc, "memory": rows}, indent=2) + "\n")


def print_accuracy(console: Console, acc: dict, args) -> None:
    table = Table(title=f"timeline accuracy: {acc['duration_s']:.0f} s of synthetic video, {acc['boundaries']} "
                  f"boundaries, window {args.window:g} s, stride {args.stride:g} s, smooth {args.smooth}, "
                  f"refine {args.refine}")  # fmt: skip
    table.add_column("measurement")
    table.add_column("value", justify="right")
    table.add_row("boundaries found within one stride", f"{acc['boundaries_within_one_stride']} / {acc['boundaries']}")
    table.add_row("largest boundary error (s)", f"{acc['max_boundary_error_s']:.2f}")
    table.add_row("extra boundaries", str(acc["extra_boundaries"]))
    table.add_row("top-1 of non-straddling windows", f"{100 * acc['non_straddling_top1']:.1f}% of "
                  f"{acc['non_straddling_windows']}")  # fmt: skip
    console.print(table)


def print_memory(console: Console, rows: list[dict]) -> None:
    table = Table(title="timeline memory, 320x240 H.264 at 12 fps, one fresh process per length")
    for column in ("minutes", "frames", "windows", "RSS before (MB)", "peak RSS (MB)", "growth (MB)", "seconds"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(f"{r['minutes']:g}", str(r["frames"]), str(r["windows"]), f"{r['rss_before_mb']:.0f}",
                      f"{r['peak_rss_mb']:.0f}", f"{r['growth_mb']:.1f}", f"{r['seconds']:.1f}")  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    from tcclip.cli.typed import run

    sys.exit(run(main, sys.argv[1:], "python benchmarks/timeline.py", epilog=__doc__.split("\n", 1)[1]))
