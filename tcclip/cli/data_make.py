"""`tcclip data synth` and `tcclip data prepare`: typed functions over `tcclip.data.synth` and
`tcclip.data.prepare` (write a synthetic dataset; re-encode a dataset for fast training)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated

from tcclip.cli.types import Spelling, WordParser
from tcclip.utils.errors import UserError


def _number_or_pair(separator: str):
    def parse(text: str) -> int | tuple[int, int]:
        if separator in text.lower():
            first, second = text.lower().split(separator)
            return int(first), int(second)
        return int(text)

    return parse


FRAMES = WordParser("N|MIN-MAX", _number_or_pair("-"))
SIZE = WordParser("S|HxW", _number_or_pair("x"))


def synth(
    *,
    out: Path,
    num_classes: int = 10,
    classes: str | None = None,
    class_colours: bool = False,
    videos_per_class: int = 10,
    formats: str = "mp4,avi,webm",
    num_frames: Annotated[int, FRAMES] = (24, 32),
    size: Annotated[int, SIZE] = (48, 64),
    fps: int = 12,
    seed: int = 0,
    stamp_index: bool = False,
) -> int:
    """Write a seeded synthetic action dataset of real encoded videos, with the split lists of every protocol.

    Args:
        out: output directory
        num_classes: how many of the built-in classes (1..12)
        classes: comma-separated class names instead of --num-classes
        class_colours: each class's shape in its own colour (one frame tells the class)
        videos_per_class: split 60/20/20 into train/val/test
        formats: comma-separated containers
        num_frames: frames per video: N, or MIN-MAX drawn per video
        size: frame size: S or HxW, even
        fps: frame rate of the containers
        seed: the whole dataset is a function of the options and this seed
        stamp_index: write each frame's index into its top rows
    """
    from tcclip.data.custom_splits import make_synthetic_protocol_splits
    from tcclip.data.synth import make_synthetic_dataset

    try:
        result = make_synthetic_dataset(
            out,
            num_classes=num_classes,
            videos_per_class=videos_per_class,
            formats=tuple(f.strip() for f in formats.split(",") if f.strip()),
            num_frames=num_frames,
            size=size,
            seed=seed,
            fps=fps,
            stamp_index=stamp_index,
            classes=None if classes is None else [c.strip() for c in classes.split(",") if c.strip()],
            class_colours=class_colours,
        )
    except UserError:
        raise
    except ValueError as err:  # the library names the argument; the options spell it with dashes
        raise UserError(str(err), fix="See `tcclip data synth --help` for what each option takes.") from None
    print(f"wrote {result.num_videos} videos of {len(result.class_names)} classes to {result.root}")
    for split, path in result.lists.items():
        print(f"  {split}: {path}")
    print(f"  labels: {result.labels_csv}")
    make_synthetic_protocol_splits(out)  # so the Synthetic DataModule can run every protocol
    return 0


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**30:.2f} GiB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.1f} MiB"


def _videos_to_prepare(lists: list[Path], root: Path | None, folder: Path | None, out: Path) -> tuple[Path, list]:
    from tcclip.data.labels import read_annotations
    from tcclip.data.prepare import find_videos

    if folder is not None:
        if lists:
            raise UserError("give either --folder or --list/--root, not both")
        if not folder.is_dir():
            raise UserError("folder not found", path=folder)
        return folder, find_videos(folder, exclude=out.resolve() if out.resolve() != folder.resolve() else None)
    if lists and root is not None:
        return root, list(dict.fromkeys(a.path for lst in lists for a in read_annotations(lst)))
    raise UserError("nothing to prepare", fix="Give --list FILE --root DIR (repeat --list), or --folder DIR.")


def prepare(
    *,
    out: Path,
    lists: Annotated[list[str], Spelling("--list")] = (),
    root: Path | None = None,
    folder: Path | None = None,
    short_side: int = 320,
    keyframe_interval: int = 16,
    crf: int = 23,
    preset: str = "veryfast",
    fast_decode: bool = True,
    workers: int | None = None,
) -> int:
    """Re-encode a dataset so that training is no longer bound by video decoding (originals untouched).

    Exit code 1 when a video failed (all failures are listed in the new root; rerun the same command to retry).

    Args:
        out: new dataset root (created)
        lists: annotation list (repeat); the lists are copied to the new root
        root: dataset root of the lists' paths
        folder: re-encode every video under this folder instead
        short_side: pixels of the shorter side (never enlarged; 256 is the other common choice)
        keyframe_interval: frames between key frames
        crf: x264 quality, lower is better
        preset: x264 preset
        fast_decode: no B-frames, x264 tune fastdecode: faster training reads, larger files
        workers: processes (default: up to 8)
    """
    from rich.console import Console

    from tcclip.data.prepare import FAILURES_FILE, PrepareSettings, prepare_dataset
    from tcclip.utils.progress import progress_bar

    paths = [Path(p) for p in lists]
    settings = PrepareSettings(short_side, keyframe_interval, crf, preset, fast_decode)
    root, videos = _videos_to_prepare(paths, root, folder, out)
    if out.resolve() == root.resolve():
        raise UserError("--out is the dataset root itself", path=out, fix="Choose a new folder: originals are kept.")
    out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    with progress_bar(console=console, transient=False) as progress:
        task = progress.add_task(f"re-encoding into {out}", total=len(videos))
        results = prepare_dataset(videos, root, out, settings, workers or max(1, min(8, os.cpu_count() or 1)),
                                  lambda _: progress.advance(task))  # fmt: skip
    for lst in paths:  # the same relative paths: the lists hold for the new root as they are
        if not (out / lst.name).exists() or (out / lst.name).resolve() != lst.resolve():
            shutil.copyfile(lst, out / lst.name)
    done, skipped, failed = ([r for r in results if r.status == s] for s in ("done", "skipped", "failed"))
    size_in = sum(r.size_in for r in done + skipped)
    size_out = sum(r.size_out for r in done + skipped)
    console.print(
        f"{len(done)} re-encoded, {len(skipped)} already prepared, {len(failed)} failed, of {len(results)} videos; "
        f"{_size(size_in)} -> {_size(size_out)}"
        + (f" ({size_out / size_in:.0%})" if size_in else "")
        + f"; short side {settings.short_side}, a key frame every {settings.keyframe_interval} frames"
    )
    failures = out / FAILURES_FILE
    if failed:
        failures.write_text("".join(f"{r.path}\t{r.reason}\n" for r in failed))
        for r in failed[:10]:
            console.print(f"  failed: {r.path}: {r.reason}")
        console.print(f"all failures listed in {failures}; rerun the same command to retry them")
        return 1
    failures.unlink(missing_ok=True)
    console.print(f"new dataset root: {out}")
    return 0
