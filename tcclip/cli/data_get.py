"""The command lines of ``tcclip data download`` and ``tcclip data verify`` (parsers, progress display, output)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from tcclip.data.acquire import DATASETS, Request, Ui, get_dataset

if TYPE_CHECKING:
    import jsonargparse


def download_parser() -> jsonargparse.ArgumentParser:
    from jsonargparse import ArgumentParser

    p = ArgumentParser(
        description="Download, extract and lay out one dataset of the paper so that the official split lists read it "
        "as they are. Rerun the same command after any failure: finished steps are kept, downloads resume."
    )
    p.add_argument("dataset", choices=DATASETS, help="hmdb51, ucf101, k400, k600 or ssv2")
    p.add_argument("--root", type=Path, required=True, help="dataset folder (data.init_args.root of the configs)")
    p.add_argument("--downloads", type=Path, default=None, help="where archives go (default: ROOT/archives)")
    p.add_argument(
        "--url", action="append", default=[], help="source of the archive (hmdb51, ucf101), replaces the built-in "
        "ones; repeat for mirrors, tried in order"
    )  # fmt: skip
    p.add_argument(
        "--mirror", default=None, help="base URL of a copy of the provider's tree, tried before the official "
        "source for every file (e.g. an institutional cache of s3.amazonaws.com/kinetics)"
    )  # fmt: skip
    p.add_argument("--from", type=Path, default=None, dest="source_dir", help="ssv2: folder of the downloaded parts")
    p.add_argument(
        "--splits-dir", type=Path, default=None, help="official split/label files (default: tcclip splits download's "
        "folder); k400's training list is written there"
    )  # fmt: skip
    p.add_argument("--splits", default=None, help="Kinetics splits to get, comma-separated (k400: train,val)")
    p.add_argument("--insecure", action="store_true", help="do not verify TLS certificates (expired ones)")
    p.add_argument("--delete-archives", action="store_true", help="remove each downloaded archive once extracted")
    return p


def verify_parser() -> jsonargparse.ArgumentParser:
    from jsonargparse import ArgumentParser

    p = ArgumentParser(
        description="For every list a config reads: videos listed, present, decodable and exact under the configured "
        "reader; classes losing videos; files no list names. Exit status 1 if a listed video is missing, "
        "unreadable or decodes to other frames."
    )
    p.add_argument("--config", "-c", action="append", default=[], required=True, help="LightningCLI YAML (repeat)")
    p.add_argument("--root", type=Path, default=None, help="dataset root (overrides the config's)")
    p.add_argument("--stage", choices=("fit", "validate", "test", "all"), default="all")
    p.add_argument("--backend", default=None, help="video reader (default: the config's)")
    p.add_argument("--presence-only", action="store_true", help="only count present files (seconds, no decoding)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: up to 8)")
    p.add_argument("--out", type=Path, default=None, help="also write the missing/unreadable videos to this file")
    return p


class RichUi(Ui):
    def __init__(self, console) -> None:
        self.console = console

    @contextmanager
    def download(self, name: str) -> Iterator:
        from tcclip.utils.progress import progress_bar

        with progress_bar(name, unit="bytes", console=self.console) as progress:
            task = progress.add_task(name, total=None)
            yield lambda done, total: progress.update(task, completed=done, total=total)

    @contextmanager
    def extract(self, name: str) -> Iterator:
        from tcclip.utils.progress import progress_bar

        with progress_bar(unit="spinner", eta=False, console=self.console) as p:
            task = p.add_task(f"extracting {name}", total=None)
            count = [0]

            def advance(member: str) -> None:
                count[0] += 1
                p.update(task, description=f"extracting {name}: {count[0]} files")

            yield advance
        self.console.print(f"extracted {name}")

    def note(self, text: str) -> None:
        self.console.print(text)


def run_download(args: jsonargparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    request = Request(
        dataset=args.dataset,
        root=args.root,
        downloads=args.downloads,
        urls=tuple(args.url),
        mirror=args.mirror,
        source_dir=args.source_dir,
        splits_dir=args.splits_dir,
        splits=tuple(s for s in (args.splits or "").split(",") if s),
        insecure=args.insecure,
        delete_archives=args.delete_archives,
    )
    outcome = get_dataset(request, RichUi(console))
    for line in outcome.lines:
        print(line)
    return 0


def run_verify(args: jsonargparse.Namespace, load_datamodule, check_video, parts: dict[str, tuple[str, ...]]) -> int:
    """``tcclip data verify``; ``tcclip.cli.data`` passes its DataModule loader, video check and stage table."""
    import os

    from rich.console import Console

    from tcclip.data.verify import datamodule_lists, kinetics_notes, verify
    from tcclip.data.video_reader import resolve_backend
    from tcclip.utils.progress import progress_bar

    console = Console(stderr=True)
    overrides = {"root": str(args.root)} if args.root else {}
    dm = load_datamodule([Path(c) for c in args.config], overrides)
    backend = resolve_backend(args.backend or dm.backend)
    specs = datamodule_lists(dm, parts[args.stage])
    workers = args.workers or max(1, min(8, os.cpu_count() or 1))
    with progress_bar(console=console) as progress:
        task = progress.add_task(f"decoding videos under {dm.root}", total=None)
        report = verify(
            dm.dataset_name,
            dm.root,
            specs,
            backend,
            dm.num_frames,
            check=None if args.presence_only else check_video,
            workers=workers,
            on_start=lambda n: progress.update(task, total=n),
            on_done=lambda: progress.advance(task),
        )
    if dm.dataset_name == "k400":
        report.notes.extend(kinetics_notes(report, dm.splits_dir))
    if dm.dataset_name == "k600":
        from tcclip.data.kinetics import CASE_ONLY_RENAMING, check_k600_zero_shot

        check = check_k600_zero_shot(dm.splits_dir / "labels")
        report.notes.append(
            f"k600 zero-shot labels: {len(check.new_classes)} K600 classes not in K400 ({CASE_ONLY_RENAMING!r} is "
            f"K400's, not a 221st); the three splits use {', '.join(map(str, check.split_classes.values()))} of them"
        )
    _print_report(report, console, args.out)
    return 0 if report.ok else 1


def _print_report(report, console, out: Path | None) -> None:
    from rich.table import Table

    table = Table("list", "listed", "present", "decodable", "exact", "classes losing videos", title_justify="left")
    table.title = f"{report.dataset} under {report.root} (reader: {report.backend})"
    for r in report.lists:
        losing = ", ".join(f"{name} ({n})" for name, n in list(r.classes_losing.items())[:4])
        if len(r.classes_losing) > 4:
            losing += f", ... ({len(r.classes_losing)} classes)"
        dec = "-" if r.decodable is None else f"{r.decodable:,}"
        exact = "-" if r.exact is None else f"{r.exact:,}"
        table.add_row(r.name, f"{r.listed:,}", f"{r.present:,}", dec, exact, losing or "none")
    console.print(table)
    problems: list[str] = []
    for r in report.lists:
        problems += [f"{p}\t{r.name}\tmissing" for p in r.missing]
        problems += [f"{p}\t{r.name}\tunreadable: {why}" for p, why in r.unreadable]
        problems += [f"{p}\t{r.name}\tother frames: {why}" for p, why in r.inexact]
    for line in problems[:20]:
        console.print(line.replace("\t", "  "))
    if len(problems) > 20:
        console.print(f"... and {len(problems) - 20} more" + (f" (all in {out})" if out else " (--out FILE lists all)"))
    if out is not None:
        from tcclip.utils.outputs import atomic_write_texts

        atomic_write_texts({out: "".join(f"{line}\n" for line in problems)})
    if report.extra:
        shown = ", ".join(report.extra[:3]) + (", ..." if len(report.extra) > 3 else "")
        console.print(f"{len(report.extra):,} video files under the root are in no list of this config ({shown})")
    for note in report.notes:
        console.print(note)
    print(report.summary())
