"""Data-loading throughput on realistic clips: clips/s per worker, per backend, on originals and prepared copies.

    python benchmarks/dataloader.py                        # generated clips like each dataset's (see below)
    python benchmarks/dataloader.py --data DIR --list val.txt --clips 32
    python benchmarks/dataloader.py --json out.json        # also save the numbers

One run measures, side by side, every cell of: dataset x pipeline (train: TSN random sampling, multi-scale crop,
flip, jitter; test: centre sampling, resize, centre crop) x backend x source (the original files, and copies
written by `tcclip data prepare` with its defaults). Each cell decodes --clips clips in this process with one
thread, which is what one DataLoader worker does, and times decoding (opening the file and decoding the sampled
frames) apart from the transforms; the cells of one dataset and pipeline take turns clip by clip, and medians are
reported. The frame index of every file (one sequential decode, cached on disk) is built
before the clock starts, as after a first epoch; its one-off cost per file is reported separately.

Without --data, clips are generated (a camera panning over a textured scene with moving objects, sensor grain and
flicker) and encoded by the ffmpeg command line with the encoders and sizes of the datasets:

- ucf101: XviD (libxvid, XVID tag), 2 B-frames, XviD's 300-frame key-frame interval, 320x240, 25 fps, 7 s;
- hmdb51: DivX 5 (libxvid, DX50 tag), 1 B-frame, 320x240, 30 fps, 4 s;
- kinetics: H.264 (x264 defaults) in MP4, 340x256, 30 fps, 10 s;
- ssv2: VP9 in WebM, 427x240, 12 fps, 4 s.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from tcclip.data.prepare import PrepareSettings, prepare_dataset
from tcclip.data.sampling import test_indices, train_indices
from tcclip.data.transforms import TestTransform, TrainTransform
from tcclip.data.video_frames import _read, read_video_frames
from tcclip.data.video_reader import available_backends, open_video

# ------------------------------------------------------------------------------------------------ realistic clips


def _texture(height: int, width: int, rng: np.random.Generator) -> torch.Tensor:
    """A coloured multi-scale (roughly 1/f) texture, float [3, height, width] in 0..255."""
    image = torch.zeros(3, height, width)
    for octave in range(2, 10):  # from 4 to 512 cells across
        cells = 2**octave
        field = torch.from_numpy(rng.normal(size=(1, 3, cells * height // width + 2, cells + 2)).astype(np.float32))
        mix = torch.from_numpy(rng.uniform(0.6, 1.0, size=(3, 1, 1)).astype(np.float32))
        up = F.interpolate(field, size=(height, width), mode="bicubic", align_corners=False)[0]
        image += up.mean(0, keepdim=True) * mix * 36 / octave**0.7 + up * 8 / octave**0.7
    base = torch.from_numpy(rng.uniform(70, 180, size=(3, 1, 1)).astype(np.float32))
    return (image + base).clamp(0, 255)


def render_clip(height: int, width: int, num_frames: int, seed: int) -> np.ndarray:
    """uint8 [num_frames, height, width, 3]: a slow camera pan over a textured scene with moving objects."""
    rng = np.random.default_rng(seed)
    pad_y, pad_x = height // 4, width // 3
    scene = _texture(height + pad_y, width + pad_x, rng)
    for _ in range(40):  # hard edges, as buildings, furniture and people give real scenes
        h, w = (rng.uniform(0.03, 0.3, size=2) * [height, width]).astype(int) + 2
        y, x = int(rng.integers(0, height + pad_y - h)), int(rng.integers(0, width + pad_x - w))
        shade = torch.from_numpy(rng.uniform(0.55, 1.45, size=(3, 1, 1)).astype(np.float32))
        scene[:, y : y + h, x : x + w] = (scene[:, y : y + h, x : x + w] * shade).clamp(0, 255)
    objects = []
    for _ in range(3):
        size = int(rng.uniform(0.15, 0.3) * height)
        patch = _texture(size, size, rng)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        mask = ((yy**2 + (xx * rng.uniform(0.6, 1.0)) ** 2) < 1).float()
        start = rng.uniform(0, 1, size=2) * [height - size, width - size]
        velocity = rng.uniform(-1, 1, size=2) * [height, width] / num_frames * 0.8
        objects.append((patch, mask, start, velocity, size))
    grain = [torch.from_numpy(rng.normal(0, 3, size=(3, height, width)).astype(np.float32)) for _ in range(7)]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    for t in range(num_frames):
        oy = int((np.sin(2 * np.pi * t / num_frames + phase[0]) + 1) / 2 * pad_y)
        ox = int((np.sin(np.pi * t / num_frames + phase[1]) + 1) / 2 * pad_x)
        frame = scene[:, oy : oy + height, ox : ox + width].clone()
        for patch, mask, start, velocity, size in objects:
            y, x = (start + velocity * t).astype(int)
            y, x = int(np.clip(y, 0, height - size)), int(np.clip(x, 0, width - size))
            region = frame[:, y : y + size, x : x + size]
            frame[:, y : y + size, x : x + size] = region * (1 - mask) + patch * mask
        frame = frame * float(1 + 0.02 * np.sin(t / 3)) + grain[t % len(grain)]
        frames[t] = frame.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return frames


SETS: dict[str, tuple[str, int, int, int, float, tuple[str, ...]]] = {
    # name: (extension, height, width, fps, seconds, ffmpeg output options)
    "ucf101": ("avi", 240, 320, 25, 7.0, ("-c:v", "libxvid", "-bf", "2", "-g", "300", "-q:v", "4", "-vtag", "XVID")),
    "hmdb51": ("avi", 240, 320, 30, 4.0, ("-c:v", "libxvid", "-bf", "1", "-g", "300", "-q:v", "4", "-vtag", "DX50")),
    "kinetics": ("mp4", 256, 340, 30, 10.0, ("-c:v", "libx264", "-preset", "medium", "-pix_fmt", "yuv420p")),
    "ssv2": ("webm", 240, 427, 12, 4.0, ("-c:v", "libvpx-vp9", "-b:v", "400k", "-pix_fmt", "yuv420p")),
}
CLIPS_PER_SET = 3


def write_with_ffmpeg(path: Path, frames: np.ndarray, fps: int, options: Sequence[str]) -> None:
    """Encode uint8 RGB frames with the ffmpeg command line (the datasets' own encoders: libxvid, libx264, ...)."""
    import subprocess

    height, width = frames.shape[1:3]
    command = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24"]
    command += ["-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0", *options, str(path)]
    subprocess.run(command, input=frames.tobytes(), check=True, capture_output=True)


def generate(root: Path) -> dict[str, list[str]]:
    """Clips like each dataset's (see the module docstring): {set: relative paths}."""
    sets: dict[str, list[str]] = {}
    for k, (name, (ext, height, width, fps, seconds, options)) in enumerate(SETS.items()):
        sets[name] = []
        for j in range(CLIPS_PER_SET):
            rel = f"{name}_{j}.{ext}"
            write_with_ffmpeg(root / rel, render_clip(height, width, int(seconds * fps), 10 * k + j), fps, options)
            sets[name].append(rel)
    return sets


# ------------------------------------------------------------------------------------------------------ timing


def time_cells(
    sources: dict[str, Path], paths: list[str], backends: list[str], train: bool, args: Options
) -> dict[tuple[str, str], dict]:
    """Decode and transform --clips clips (cycling over the videos) in every (source, backend) cell, the cells taking
    turns clip by clip (so that a busy moment of a shared machine falls on all of them alike); median per-clip
    decode and transform times in ms per cell."""
    transform = TrainTransform(args.input_size) if train else TestTransform(args.input_size, num_frames=args.frames)
    cells = [(source, backend) for source in sources for backend in backends]
    times: dict[tuple[str, str], tuple[list[float], list[float]]] = {cell: ([], []) for cell in cells}
    for k in range(args.clips + 1):  # the first clip warms the decoder libraries up and is not counted
        seed = int(np.random.default_rng(k).integers(2**31))
        for cell in cells:
            rng = np.random.default_rng(seed)  # the same frames in every cell
            start = time.perf_counter()
            reader = open_video(sources[cell[0]] / paths[k % len(paths)], cell[1])  # one reader per item
            count = len(reader)
            indices = train_indices(count, args.frames, rng) if train else test_indices(count, args.frames)[0]
            frames = reader.get_frames(indices)
            middle = time.perf_counter()
            clip = transform(frames)
            end = time.perf_counter()
            assert clip.shape[-1] == args.input_size
            if k:
                times[cell][0].append(1000 * (middle - start))
                times[cell][1].append(1000 * (end - middle))
    out = {}
    for cell, (decode_ms, transform_ms) in times.items():
        decode, tf = statistics.median(decode_ms), statistics.median(transform_ms)
        out[cell] = {"decode_ms": decode, "transform_ms": tf, "clips_per_s": 1000 / (decode + tf)}
    return out


def _ratio(rows: list[dict], row: dict) -> str:
    ref = next(
        (
            r
            for r in rows
            if (r["set"], r["pipeline"], r["source"], r["backend"])
            == (row["set"], row["pipeline"], "original", "decord")
        ),
        None,
    )
    return f"{row['clips_per_s'] / ref['clips_per_s']:.2f}" if ref else "-"


@dataclass(frozen=True)
class Options:
    """What to measure.

    Args:
        data: dataset root (default: generated clips in a temporary folder)
        list: annotation list under --data (default: every video)
        backends: comma-separated backends (default: every one available)
        pipelines: comma-separated pipelines: train, test
        clips: clips per cell (the videos are cycled)
        frames: T, frames per clip
        input_size: the network's input size
        short_side: prepared copies (tcclip data prepare)
        keyframe_interval: prepared copies
        json: also write the results here
    """

    data: Path | None = None
    list: str | None = None
    backends: str | None = None
    pipelines: str = "train,test"
    clips: int = 8
    frames: int = 16
    input_size: int = 224
    short_side: int = 320
    keyframe_interval: int = 16
    json: Path | None = None


def measure(args: Options) -> int:
    """Clips per second of every video reader and pipeline, on the originals and on prepared copies.

    Args:
        args: the options
    """
    if args.backends is None:
        args = replace(args, backends=",".join(available_backends()))
    torch.set_num_threads(1)  # one DataLoader worker
    console = Console()

    with tempfile.TemporaryDirectory(prefix="tcclip_bench_data_") as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("TCCLIP_CACHE_DIR", str(tmp / "cache"))  # frame indices of this run only
        if args.data is None:
            root = tmp / "original"
            root.mkdir()
            start = time.perf_counter()
            sets = generate(root)
            console.print(f"generated {sum(map(len, sets.values()))} clips in {time.perf_counter() - start:.0f} s")
        else:
            root = args.data
            if args.list:
                paths = [line.split()[0] for line in (root / args.list).read_text().splitlines() if line.strip()]
            else:
                from tcclip.data.prepare import find_videos

                paths = find_videos(root)
            sets = {"data": paths}
        paths = [p for group in sets.values() for p in group]
        # `data prepare`'s defaults, and all-intra copies (a key frame every frame), which small frames afford
        sources = {"original": root}
        sizes = {"original": sum((root / p).stat().st_size for p in paths)}
        prepare_s = {}
        for source, interval in (("prepared", args.keyframe_interval), ("prepared-k1", 1)):
            settings = PrepareSettings(short_side=args.short_side, keyframe_interval=interval)
            start = time.perf_counter()
            results = prepare_dataset(paths, root, tmp / source, settings, workers=1)
            prepare_s[source] = time.perf_counter() - start
            failed = [r for r in results if r.status == "failed"]
            if failed:
                console.print(f"[red]prepare failed:[/red] {failed}")
                return 1
            sources[source] = tmp / source
            sizes[source] = sum(r.size_out for r in results)

        index_ms: dict[str, dict[str, float]] = {}
        for source, folder in sources.items():
            for name, group in sets.items():
                start = time.perf_counter()
                for p in group:  # the one-off sequential decode of each file (no cache: a cold first epoch)
                    _read(str(folder / p))
                index_ms.setdefault(name, {})[source] = 1000 * (time.perf_counter() - start) / len(group)
                for p in group:
                    read_video_frames(folder / p)  # cached, as after the first epoch
        info = []
        for name, group in sets.items():
            t = read_video_frames(root / group[0])
            with av.open(str(root / group[0])) as c:
                st = c.streams.video[0]
                info.append(f"{name}: {st.codec_context.name} {st.width}x{st.height}, {len(t)} frames")
        console.print("; ".join(info))
        console.print(
            f"{len(paths)} videos: "
            + ", ".join(f"{s} {sizes[s] / 2**20:.1f} MiB" for s in sources)
            + "; prepared in "
            + ", ".join(f"{v:.1f} s ({s})" for s, v in prepare_s.items())
            + "; frame index, once per file: "
            + ", ".join(f"{n} {v['original']:.0f} ms (prepared {v['prepared']:.0f} ms)" for n, v in index_ms.items())
        )

        rows = []
        backends = args.backends.split(",")
        for name, group in sets.items():
            for pipeline in args.pipelines.split(","):
                cells = time_cells(sources, group, backends, pipeline == "train", args)
                for (source, backend), cell in cells.items():
                    cell |= {"set": name, "pipeline": pipeline, "source": source, "backend": backend}
                    rows.append(cell)
                    console.print(
                        f"  {name:8s} {pipeline:5s} {source:11s} {backend:10s} decode {cell['decode_ms']:7.1f} ms"
                        f"  transforms {cell['transform_ms']:5.1f} ms  {cell['clips_per_s']:6.2f} clips/s"
                    )

    title = f"clips/s per worker (1 thread), T={args.frames}, {args.input_size} px, {args.clips} clips per cell"
    table = Table(title=title)
    for column in ("set", "pipeline", "source", "backend", "decode ms", "transforms ms", "clips/s", "x decord orig."):
        table.add_column(column, justify="left" if column in ("set", "pipeline", "source", "backend") else "right")
    for row in rows:
        table.add_row(
            row["set"],
            row["pipeline"],
            row["source"],
            row["backend"],
            f"{row['decode_ms']:.1f}",
            f"{row['transform_ms']:.1f}",
            f"{row['clips_per_s']:.2f}",
            _ratio(rows, row),
        )
    console.print(table)
    if args.json:
        record = {"rows": rows, "index_ms": index_ms, "prepare_s": prepare_s, "sizes": sizes}
        args.json.write_text(json.dumps(record, indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python benchmarks/dataloader.py [options]` (`--help`)."""
    from tcclip.cli.typed import run

    return run(measure, sys.argv[1:] if argv is None else argv, "python benchmarks/dataloader.py",
               epilog=__doc__.split("\n", 1)[1])  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
