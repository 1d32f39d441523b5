"""Data-loading throughput: decoded + sampled + transformed clips per second, per backend and worker count.

    python benchmarks/dataloader.py                          # synthetic 240x320 videos in a temporary folder
    python benchmarks/dataloader.py --data DIR --list test.txt --workers 0,2,4,8 --input-size 224

Each cell runs a DataLoader over the videos of an annotation list (cycled to --clips clips) through the
train pipeline (TSN sampling, multi-scale crop, flip, jitter) or the test pipeline (centre sampling,
resize + centre crop; --num-clip / --num-crop for multi-view), and reports steady-state clips/s: the
clock starts after the first batch, so worker start-up is not counted. workers=0 decodes in the main
process (with --threads torch threads, default 1, as in a worker). Without --data, a synthetic
dataset (``tcclip data synth``) is written first, at UCF-101 / HMDB-51 resolution.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Dataset

from tcclip.data.sampling import test_indices, train_indices
from tcclip.data.synth import make_synthetic_dataset
from tcclip.data.transforms import TestTransform, TrainTransform, default_rng
from tcclip.data.video_reader import available_backends, open_video


class ClipDataset(Dataset):
    """The data path of training/evaluation without the bookkeeping: read, sample, decode, transform."""

    def __init__(self, root: Path, paths: list[str], length: int, backend: str, train: bool, args) -> None:
        self.root, self.paths, self.length, self.backend, self.train = root, paths, length, backend, train
        self.num_frames, self.num_clip = args.num_frames, args.num_clip
        if train:
            self.transform = TrainTransform(args.input_size)
        else:
            self.transform = TestTransform(args.input_size, num_crop=args.num_crop, num_frames=args.num_frames)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        reader = open_video(self.root / self.paths[index % len(self.paths)], self.backend)  # opened in the worker
        if self.train:
            rng = default_rng()
            return self.transform(reader.get_frames(train_indices(len(reader), self.num_frames, rng)), rng)
        views = test_indices(len(reader), self.num_frames, self.num_clip)
        return self.transform(reader.get_frames([i for view in views for i in view]))


def measure(dataset: ClipDataset, workers: int, batch_size: int) -> float:
    """Steady-state clips per second (after the first batch)."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    batches = iter(loader)
    next(batches)
    start, clips = time.perf_counter(), 0
    for batch in batches:
        clips += batch.shape[0]
    return clips / (time.perf_counter() - start) if clips else float("nan")


def read_list(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="dataset root (default: synthetic videos in a temporary folder)")
    parser.add_argument("--list", default="train.txt", help="annotation list under --data (default train.txt)")
    parser.add_argument("--backends", default=",".join(b for b in available_backends() if b != "torchcodec"))
    parser.add_argument("--workers", default="0,1,2", help="comma-separated DataLoader worker counts")
    parser.add_argument("--pipelines", default="train,test", help="train, test or both")
    parser.add_argument("--clips", type=int, default=96, help="clips per measurement (the list is cycled)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-frames", type=int, default=8, help="T, frames per clip")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--num-clip", type=int, default=1, help="test: temporal views")
    parser.add_argument("--num-crop", type=int, default=1, choices=(1, 3), help="test: spatial crops")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the main process (workers always use 1)"
    )
    parser.add_argument("--synth-size", default="240x320", help="synthetic frame size HxW (default 240x320)")
    parser.add_argument("--synth-frames", default="64-96", help="synthetic frames per video MIN-MAX")
    parser.add_argument("--synth-videos", type=int, default=24, help="synthetic videos (4 classes)")
    args = parser.parse_args(argv)
    console = Console()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)  # like the workers; more threads on a busy machine mostly add contention

    with tempfile.TemporaryDirectory(prefix="tcclip_bench_") as tmp:
        root = args.data
        if root is None:
            height, width = (int(x) for x in args.synth_size.lower().split("x"))
            lo, hi = (int(x) for x in args.synth_frames.split("-"))
            start = time.perf_counter()
            synth = make_synthetic_dataset(
                tmp,
                num_classes=4,
                videos_per_class=max(3, args.synth_videos // 4),
                num_frames=(lo, hi),
                size=(height, width),
            )
            root = synth.root
            console.print(
                f"synthetic data: {synth.num_videos} videos, {height}x{width}, {lo}-{hi} frames, mp4/avi/webm "
                f"({time.perf_counter() - start:.1f} s to write)"
            )
        paths = [
            p
            for name in ("train.txt", "val.txt", "test.txt")
            if (root / name).is_file()
            for p in read_list(root / name)
        ]
        if args.data is not None:
            paths = read_list(root / args.list)
        frames = [len(open_video(root / p, "pyav")) for p in paths[:50]]
        console.print(
            f"{len(paths)} videos, {np.mean(frames):.0f} frames on average; torch threads: {torch.get_num_threads()}"
        )

        table = Table(title=f"clips/s (T={args.num_frames}, {args.input_size}px, batch {args.batch_size})")
        for column in ("pipeline", "backend", "workers", "clips/s", "ms/clip"):
            table.add_column(column, justify="right" if column in ("workers", "clips/s", "ms/clip") else "left")
        for pipeline in args.pipelines.split(","):
            views = "1 view" if pipeline == "train" else f"{args.num_clip}x{args.num_crop} views"
            for backend in args.backends.split(","):
                for workers in (int(w) for w in args.workers.split(",")):
                    dataset = ClipDataset(root, paths, args.clips, backend, pipeline == "train", args)
                    rate = measure(dataset, workers, args.batch_size)
                    table.add_row(f"{pipeline} ({views})", backend, str(workers), f"{rate:.1f}", f"{1000 / rate:.1f}")
                    console.print(f"  {pipeline:5s} {backend:7s} workers={workers}: {rate:.1f} clips/s")
        console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
