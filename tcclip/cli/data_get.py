"""``tcclip data download`` and ``tcclip data verify``: typed functions over `tcclip.data.acquire` and
`tcclip.data.verify` (progress display, output)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

from tcclip.cli.types import Spelling
from tcclip.data.acquire import Request, Ui, get_dataset

Dataset = Literal["hmdb51", "ucf101", "k400", "k600", "ssv2"]
"""`tcclip.data.acquire.DATASETS` (a test keeps the two equal)."""


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


def download(
    dataset: Dataset,
    *,
    root: Path,
    downloads: Path | None = None,
    url: list[str] = (),
    mirror: str | None = None,
    source_dir: Annotated[Path | None, Spelling("--from")] = None,
    splits_dir: Path | None = None,
    splits: str | None = None,
    insecure: bool = False,
    delete_archives: bool = False,
) -> int:
    """Download, extract and lay out one dataset of the paper so that the official split lists read it as they are.

    Rerun the same command after any failure: finished steps are kept, downloads resume.

    Args:
        dataset: hmdb51, ucf101, k400, k600 or ssv2
        root: dataset folder (data.init_args.root of the configs)
        downloads: where archives go (default: ROOT/archives)
        url: source of the archive (hmdb51, ucf101), replaces the built-in ones; repeat for mirrors, tried in order
        mirror: base URL of a copy of the provider's tree, tried before the official source for every file (e.g. an
            institutional cache of s3.amazonaws.com/kinetics)
        source_dir: ssv2: folder of the downloaded parts
        splits_dir: official split/label files (default: tcclip splits download's folder); k400's training list is
            written there
        splits: Kinetics splits to get, comma-separated (k400: train,val)
        insecure: do not verify TLS certificates (expired ones)
        delete_archives: remove each downloaded archive once extracted
    """
    from rich.console import Console

    console = Console(stderr=True)
    request = Request(
        dataset=dataset,
        root=root,
        downloads=downloads,
        urls=tuple(url),
        mirror=mirror,
        source_dir=source_dir,
        splits_dir=splits_dir,
        splits=tuple(s for s in (splits or "").split(",") if s),
        insecure=insecure,
        delete_archives=delete_archives,
    )
    outcome = get_dataset(request, RichUi(console))
    for line in outcome.lines:
        print(line)
    return 0


def verify(
    *,
    config: Annotated[list[str], Spelling("--config", "-c")],
    root: Path | None = None,
    stage: Literal["fit", "validate", "test", "all"] = "all",
    backend: str | None = None,
    presence_only: bool = False,
    workers: int | None = None,
    out: Path | None = None,
) -> int:
    """For every list a config reads: videos listed, present, decodable and exact under the configured reader;
    classes losing videos; files no list names.

    Exit status 1 if a listed video is missing, unreadable or decodes to other frames.

    Args:
        config: LightningCLI YAML (repeat)
        root: dataset root (overrides the config's)
        stage: which lists of the config
        backend: video reader (default: the config's)
        presence_only: only count present files (seconds, no decoding)
        workers: decoding processes (default: up to 8)
        out: also write the missing/unreadable videos to this file
    """
    import os

    from rich.console import Console

    from tcclip.cli.data import PARTS, check_video, load_datamodule
    from tcclip.data.verify import datamodule_lists, kinetics_notes
    from tcclip.data.verify import verify as verify_lists
    from tcclip.data.video_reader import resolve_backend
    from tcclip.utils.progress import progress_bar

    console = Console(stderr=True)
    dm = load_datamodule([Path(c) for c in config], {"root": str(root)} if root else {})
    backend = resolve_backend(backend or dm.backend)
    specs = datamodule_lists(dm, PARTS[stage])
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    with progress_bar(console=console) as progress:
        task = progress.add_task(f"decoding videos under {dm.root}", total=None)
        report = verify_lists(dm.dataset_name, dm.root, specs, backend, dm.num_frames,
                              check=None if presence_only else check_video, workers=workers,
                              on_start=lambda n: progress.update(task, total=n),
                              on_done=lambda: progress.advance(task))  # fmt: skip
    if dm.dataset_name == "k400":
        report.notes.extend(kinetics_notes(report, dm.splits_dir))
    if dm.dataset_name == "k600":
        from tcclip.data.kinetics import CASE_ONLY_RENAMING, check_k600_zero_shot

        check = check_k600_zero_shot(dm.splits_dir / "labels")
        report.notes.append(
            f"k600 zero-shot labels: {len(check.new_classes)} K600 classes not in K400 ({CASE_ONLY_RENAMING!r} is "
            f"K400's, not a 221st); the three splits use {', '.join(map(str, check.split_classes.values()))} of them"
        )
    _print_report(report, console, out)
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
