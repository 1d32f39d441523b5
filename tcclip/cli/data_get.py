"""``tcclip data download``: a typed function over `tcclip.data.acquire` (progress display, output). Its
counterpart after the download, ``tcclip data verify``, reads a config: `tcclip.cli.data_config`."""

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
