"""`tcclip splits download|make`: typed functions over `tcclip.data.splits` (fetch the official split files; make
few-shot and base/novel splits of a custom dataset)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Annotated, Literal

from tcclip.cli.types import Spelling, WordParser, at_least
from tcclip.utils.errors import UserError


def _positive(text: str) -> int:
    try:
        return at_least(1)(text)
    except argparse.ArgumentTypeError as error:
        zero = text.strip() == "0"
        raise argparse.ArgumentTypeError(f"{error}" + (" (that would write empty lists)" if zero else "")) from None


def _shot_list(text: str) -> list[int]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected shots per class such as 2,4,8,16, got {text!r}")
    try:
        return [_positive(part) for part in parts]
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"every shot count {error}") from None


SHOTS = WordParser("K,K,...", _shot_list)
POSITIVE = WordParser("int >= 1", _positive)


def download(
    *,
    dest: Path | None = None,
    mirror: Path | None = None,
    only: list[str] = (),
    manifest: Path | None = None,
) -> int:
    """Fetch and verify the official split and label files.

    Exit code 1 when a file could not be fetched (valid files are kept: run the same command again).

    Args:
        dest: target folder (default: $TCCLIP_SPLITS_DIR or data_splits/files)
        mirror: copy from this local folder instead of GitHub
        only: glob/substring of paths (repeat)
        manifest: manifest file (default: the one shipped with tcclip)
    """
    from rich.console import Console

    from tcclip.data.splits import (
        MANIFEST_PATH,
        SPLITS_DIR_ENV,
        default_splits_dir,
        download_splits,
        load_manifest,
        select_entries,
    )
    from tcclip.utils.outputs import check_writable_folder
    from tcclip.utils.progress import progress_bar

    console = Console(stderr=True)
    loaded = load_manifest(manifest)
    folder = dest if dest is not None else default_splits_dir()
    entries = select_entries(loaded, list(only))
    if not entries:
        raise UserError(
            f"no file of the manifest matches --only {' '.join(only)}",
            path=manifest or MANIFEST_PATH,
            fix="Use a glob or a part of a path listed in the manifest, e.g. --only 'labels/*'.",
        )
    check_writable_folder(folder, "--dest" if dest is not None else f"the splits folder (${SPLITS_DIR_ENV})")
    source = f"mirror {mirror}" if mirror else f"naver-ai/tc-clip@{loaded.commit[:10]}"
    with progress_bar(console=console, eta=False) as progress:
        task = progress.add_task(f"split files from {source}", total=len(entries))
        report = download_splits(folder, mirror, list(only), loaded, on_file=lambda e, o: progress.advance(task))
    console.print(
        f"{len(report.fetched)} fetched, {len(report.skipped)} already valid, {len(report.failed)} failed -> {folder}"
    )
    for path, reason in report.failed:
        console.print(f"[red]failed[/red] {path}: {reason}")
    if report.failed:
        hint = "check the network or the --mirror folder" if mirror is None else "check the --mirror folder"
        console.print(f"Fix: {hint}, then run the same command again (valid files are kept).")
        return 1
    return 0


def make(
    *,
    full_list: Annotated[Path, Spelling("--list")],
    labels: Path,
    out: Path,
    shots: Annotated[list[int], SHOTS] = (2, 4, 8, 16),
    seed: Annotated[int, at_least(0)] = 0,
    base_novel: bool = False,
    eval_list: Path | None = None,
    class_split: Literal["first-half", "seeded"] = "first-half",
    base_shots: Annotated[int, POSITIVE] = 16,
    allow_fewer: bool = False,
) -> int:
    """Make few-shot and base/novel splits of a custom dataset.

    Args:
        full_list: full training annotation list
        labels: label CSV (id,name) of that list
        out: output folder
        shots: comma-separated shots per class
        seed: seed of the draws
        base_novel: also write base/novel splits
        eval_list: test list to split into base_val/novel_val
        class_split: which classes are base: the first half of the label file, or a seeded draw
        base_shots: videos per base class in fs_base_s{n}_train.txt
        allow_fewer: classes with too few videos give all they have
    """
    from tcclip.data.custom_splits import make_splits

    files = make_splits(full_list, labels, out, shots=shots, seed=seed, base_novel=base_novel, eval_list=eval_list,
                        class_split=class_split, base_shots=base_shots, allow_fewer=allow_fewer)  # fmt: skip
    for f in files:
        print(f"wrote {f}", file=sys.stderr)
    return 0
