"""`tcclip data download DATASET --root DIR`: from nothing to the layout the official split lists read as they are.

One recipe per dataset, each a sequence of steps that are skipped once done, so a killed run continues where it
stopped: downloads resume (``tcclip.data.download``), an archive whose extraction was cut is extracted again from
the start and never leaves a half-written file under a final name (``tcclip.data.archives``), and every finished
extraction leaves a marker in ``<root>/.tcclip-download/``. Layouts (docs/datasets.md):

- hmdb51: ``<root>/<video>.avi`` (all 6,766 clips in one folder, as the lists name them), from the RAR of 51 RARs;
- ucf101: ``<root>/v_<Class>_gNN_cNN.avi`` (13,320 clips, one folder), from ``UCF101.rar``;
- k400: ``<root>/{train,val}/<youtube id>_<start>_<end>.mp4`` from the CVDF tarballs, CVDF's replacements for its
  corrupted training videos applied, and the full training list written from the annotation CSV;
- k600: ``<root>/{train,val,test}/...mp4`` (the zero-shot lists take their videos from all three CVDF splits);
- ssv2: ``<root>/<id>.webm`` from the 20 parts the user downloaded after logging in (``--from DIR``).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tcclip.data import kinetics, sources
from tcclip.data.archives import extract, flatten
from tcclip.data.download import RemoteFile, fetch, format_bytes
from tcclip.utils.errors import UserError
from tcclip.utils.outputs import atomic_write_texts, check_writable_folder

DATASETS = ("hmdb51", "ucf101", "k400", "k600", "ssv2")
MARKERS = ".tcclip-download"
VIDEO_SUFFIXES = (".avi", ".mp4", ".webm", ".mkv")
EXAMPLE_CONFIG = {
    "hmdb51": "configs/few_shot_hmdb_k8.yaml",
    "ucf101": "configs/few_shot_ucf_k8.yaml",
    "k400": "configs/zero_shot_k400.yaml",
    "k600": "configs/zero_shot_eval_k600.yaml",
    "ssv2": "configs/few_shot_ssv2_k8.yaml",
}


@dataclass(frozen=True)
class Request:
    """What to get and where (the options of ``tcclip data download``)."""

    dataset: str
    root: Path
    downloads: Path | None = None
    """Archives go here (default ``<root>/archives``)."""
    urls: tuple[str, ...] = ()
    """Replace the sources of the dataset's one archive (hmdb51, ucf101)."""
    mirror: str | None = None
    """A copy of the providers' trees: tried first for every file."""
    source_dir: Path | None = None
    """SSv2: the folder with the downloaded parts."""
    splits_dir: Path | None = None
    """Where k400's training list goes and the official label files are (default: tcclip splits download's)."""
    splits: tuple[str, ...] = ()
    """Kinetics splits to get (default k400: train, val; k600: train, val, test)."""
    insecure: bool = False
    delete_archives: bool = False

    @property
    def archive_dir(self) -> Path:
        return self.downloads or self.root / "archives"


class Ui:
    """Progress display; the default shows nothing (tests), ``tcclip.cli.data`` passes a rich one."""

    def download(self, name: str) -> AbstractContextManager[Callable[[int, int | None], None]]:
        return nullcontext(lambda done, total: None)

    def extract(self, name: str) -> AbstractContextManager[Callable[[str], None]]:
        return nullcontext(lambda member: None)

    def note(self, text: str) -> None:
        pass


@dataclass
class Outcome:
    lines: list[str] = field(default_factory=list)
    """What was done and found, one line each."""


class _Steps:
    """Markers of finished steps under ``<root>/.tcclip-download`` (a step is redone until its marker exists)."""

    def __init__(self, root: Path) -> None:
        self.folder = root / MARKERS

    def _path(self, step: str) -> Path:
        return self.folder / re.sub(r"[^A-Za-z0-9._-]+", "_", step)

    def done(self, step: str) -> bool:
        return self._path(step).is_file()

    def mark(self, step: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._path(step).touch()


def get_dataset(request: Request, ui: Ui | None = None) -> Outcome:
    """Download, extract and lay out ``request.dataset`` under ``request.root``; return what was done."""
    ui = ui or Ui()
    if request.dataset not in DATASETS:
        raise UserError(f"unknown dataset {request.dataset!r}", fix=f"Choose one of {', '.join(DATASETS)}.")
    if request.urls and request.dataset not in ("hmdb51", "ucf101"):
        raise UserError(
            f"--url replaces the one archive of hmdb51 / ucf101; {request.dataset} has many files",
            fix="Use --mirror BASE_URL (a copy of the provider's tree)"
            + (" or --from DIR" if request.dataset == "ssv2" else "")
            + ".",
        )
    check_writable_folder(request.root, "--root")
    check_writable_folder(request.archive_dir, "--downloads")
    recipe = {"hmdb51": _hmdb51, "ucf101": _ucf101, "k400": _k400, "k600": _k600, "ssv2": _ssv2}[request.dataset]
    outcome = Outcome()
    recipe(request, ui, _Steps(request.root), outcome)
    outcome.lines.append(
        f"next: tcclip data verify --config {EXAMPLE_CONFIG[request.dataset]} --root {request.root}"
        " (lists present, decodable and exact videos)"
    )
    return outcome


def _fetch(request: Request, remote: RemoteFile, ui: Ui, urls: Sequence[str] = ()) -> Path:
    with ui.download(remote.name) as progress:
        report = fetch(
            remote,
            request.archive_dir,
            urls=urls or sources.sources(remote, request.mirror, request.urls),
            progress=progress,
            insecure=request.insecure,
        )
    if report.source:
        failed = f" after {len(report.failures)} failed attempts" if report.failures else ""
        ui.note(f"downloaded {remote.name} from {report.source}{failed}")
    return report.path


def _videos_only(name: str) -> str | None:
    return flatten(name) if name.lower().endswith(VIDEO_SUFFIXES) else None


def _extract_once(
    request: Request,
    steps: _Steps,
    ui: Ui,
    archive: Path | list[Path],
    dest: Path,
    place,
    step: str,
    deletable: bool = True,
) -> list[str] | None:
    """Extract unless ``step`` is done; the placed paths (None when skipped). With --delete-archives a deletable
    archive (one this command downloaded, never the user's own files) is removed once extracted."""
    if steps.done(step):
        return None
    first = archive[0] if isinstance(archive, list) else archive
    with ui.extract(first.name) as progress:
        placed = extract(archive, dest, place=place, progress=progress)
    steps.mark(step)
    if request.delete_archives and deletable:
        for part in archive if isinstance(archive, list) else [archive]:
            part.unlink(missing_ok=True)
    return placed


def _count(folder: Path) -> int:
    return sum(1 for name in kinetics.present_files(folder) if name.lower().endswith(VIDEO_SUFFIXES))


def _count_line(dataset: str, folder: Path, released: int) -> str:
    found = _count(folder)
    differs = "" if found == released else f" (the release has {released:,}; data verify says which the lists miss)"
    return f"{dataset}: {found:,} videos in {folder}{differs}"


def _hmdb51(request: Request, ui: Ui, steps: _Steps, outcome: Outcome) -> None:
    # hmdb51_org.rar holds one RAR per class (brush_hair.rar, ...), each holding that class's clips.
    inner_dir = request.archive_dir / "hmdb51_rars"
    if not steps.done("hmdb51_org.rar"):
        outer = _fetch(request, sources.HMDB51_RAR, ui)
        rars = _extract_once(request, steps, ui, outer, inner_dir, _rars_only, "hmdb51_org.rar")
        if not rars:
            raise UserError(
                "hmdb51_org.rar holds no class RAR files", path=outer, fix="Delete it and run the command again."
            )
    for inner in sorted(inner_dir.glob("*.rar")):
        _extract_once(request, steps, ui, inner, request.root, _videos_only, f"hmdb51_rars/{inner.name}")
    outcome.lines.append(_count_line("hmdb51", request.root, sources.HMDB51_VIDEOS))


def _rars_only(name: str) -> str | None:
    return flatten(name) if name.lower().endswith(".rar") else None


def _ucf101(request: Request, ui: Ui, steps: _Steps, outcome: Outcome) -> None:
    if not steps.done("UCF101.rar"):
        archive = _fetch(request, sources.UCF101_RAR, ui)
        _extract_once(request, steps, ui, archive, request.root, _videos_only, "UCF101.rar")
    outcome.lines.append(_count_line("ucf101", request.root, sources.UCF101_VIDEOS))


def _tarball_urls(request: Request, version: str, split: str, ui: Ui) -> list[str]:
    path_list = _fetch(request, sources.kinetics_path_list(version, split), ui)
    urls = [line.strip() for line in path_list.read_text().splitlines() if line.strip()]
    if not urls or not all(u.startswith(("http://", "https://")) for u in urls):
        path_list.unlink()  # an error page saved under the list's name: fetch it again next time
        raise UserError(
            "not a list of tarball URLs (removed; it is fetched again on the next run)",
            path=path_list,
            fix="Run the same command again; if it persists, the CVDF layout changed: give --mirror.",
        )
    return urls


def _archive_name(version: str, split: str, url: str) -> str:
    # Tarball names repeat across splits (part_0.tar.gz) and some hold spaces (class names).
    return f"k{version}_{split}_" + unquote(Path(urlsplit(url).path).name).replace(" ", "_")


def _get_kinetics_split(
    request: Request, ui: Ui, steps: _Steps, version: str, split: str, keep: Callable[[str], bool] | None = None
) -> int:
    urls = _tarball_urls(request, version, split, ui)
    chosen = [u for u in urls if keep is None or keep(u)]
    dest = request.root / split
    for i, url in enumerate(chosen):
        name = _archive_name(version, split, url)
        step = f"k{version}/{split}/{name}"
        if steps.done(step):
            continue
        ui.note(f"k{version} {split}: tarball {i + 1} of {len(chosen)}")
        archive = _fetch(request, RemoteFile(name, (url,)), ui, urls=sources.sources(RemoteFile(name, (url,)),
                                                                                     request.mirror))  # fmt: skip
        _extract_once(request, steps, ui, archive, dest, _videos_only, step)
    return len(chosen)


def _official_labels(request: Request, *names: str) -> Path:
    """The splits folder, once the official label files the recipe needs are there (checked before any download)."""
    from tcclip.data.splits import default_splits_dir, require_split_file

    splits_dir = request.splits_dir or default_splits_dir()
    for name in names:
        require_split_file(splits_dir, f"labels/{name}")
    return splits_dir


def _k400(request: Request, ui: Ui, steps: _Steps, outcome: Outcome) -> None:
    splits_dir = _official_labels(request, "kinetics_400_labels.csv")
    for split in request.splits or ("train", "val"):
        if split not in ("train", "val", "test"):
            raise UserError(f"k400 has no split {split!r}", fix="Use --splits train,val (and test).")
        tarballs = _get_kinetics_split(request, ui, steps, "400", split)
        if split == "train":
            _apply_k400_replacement(request, ui, steps, outcome)
        found, gaps = _count(request.root / split), sources.CVDF_K400_GAPS.get(split)
        known = f" (a complete CVDF copy has {gaps.in_copy:,} of {gaps.annotated:,} annotated)" if gaps else ""
        outcome.lines.append(f"k400 {split}: {found:,} videos from {tarballs} tarballs{known}")
    if "train" in (request.splits or ("train", "val")):
        annotations = _fetch(request, sources.kinetics_annotations("400", "train"), ui)
        outcome.lines.extend(write_k400_train_list(annotations, splits_dir, request.root))


def write_k400_train_list(annotations: Path, splits_dir: Path, root: Path) -> list[str]:
    """Write ``datasets_splits/k400_splits/train.txt`` (present videos) and ``train_missing.txt`` in ``splits_dir``."""
    from tcclip.data.splits import require_split_file

    labels = require_split_file(splits_dir, "labels/kinetics_400_labels.csv")
    made = kinetics.make_kinetics_list(annotations, labels, root, "train")
    folder = splits_dir / "datasets_splits" / "k400_splits"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_texts(
        {folder / "train.txt": "".join(f"{line}\n" for line in made.lines),
         folder / "train_missing.txt": "".join(f"{line}\n" for line in made.missing)}
    )  # fmt: skip
    total = len(made.lines) + len(made.missing)
    lines = [f"k400 training list: {len(made.lines):,} of {total:,} annotated videos -> {folder / 'train.txt'}"]
    if made.missing:
        worst = sorted(made.classes_losing.items(), key=lambda kv: -kv[1])[:5]
        lines.append(
            f"  {len(made.missing):,} annotated videos are not in the copy (listed in train_missing.txt); most in: "
            + ", ".join(f"{name} ({n})" for name, n in worst)
        )
    return lines


def _apply_k400_replacement(request: Request, ui: Ui, steps: _Steps, outcome: Outcome) -> None:
    """Put CVDF's re-encoded copies in place of its corrupted training videos (matched by YouTube id, as CVDF's own
    script does); the replaced originals are kept under ``<downloads>/k400_replaced_originals``."""
    if steps.done("k400/replacement-applied"):
        return
    staging = request.archive_dir / "k400_replacement"
    archive = _fetch(request, sources.K400_REPLACEMENT, ui)
    _extract_once(request, steps, ui, archive, staging, _videos_only, "k400/replacement")
    train = request.root / "train"
    by_id = {name[:11]: name for name in kinetics.present_files(train)}
    originals = request.archive_dir / "k400_replaced_originals"
    originals.mkdir(parents=True, exist_ok=True)
    replaced = added = 0
    for video in sorted(staging.glob("*.mp4")):
        target = by_id.get(video.name[:11], video.name)
        if (train / target).exists():
            os.replace(train / target, originals / target)
            replaced += 1
        else:
            added += 1
        os.replace(video, train / target)
    steps.mark("k400/replacement-applied")
    outcome.lines.append(f"k400 train: {replaced} corrupted videos replaced, {added} added from CVDF's replacements")


def _k600(request: Request, ui: Ui, steps: _Steps, outcome: Outcome) -> None:
    zero_shot = [f"ZS_split{n}_K600.csv" for n in (1, 2, 3)]
    splits_dir = _official_labels(request, "kinetics_400_labels.csv", "kinetics_600_labels.csv", *zero_shot)
    labels = splits_dir / "labels"
    check = kinetics.check_k600_zero_shot(labels)
    outcome.lines.append(
        f"k600 zero-shot classes: {len(check.new_classes)} K600 classes not in K400 (the 221st that a "
        f"case-sensitive comparison finds, {kinetics.CASE_ONLY_RENAMING!r}, is K400's); the splits use "
        + ", ".join(f"{n} ({k})" for n, k in check.split_classes.items())
    )
    needed = {kinetics._key(c) for c in check.new_classes}
    for split in request.splits or ("train", "val", "test"):
        # Where CVDF packs K600 per class (tarballs named after classes), only the 220 new classes are fetched.
        def keep(url: str) -> bool:
            stem = unquote(Path(urlsplit(url).path).name).removesuffix(".tar.gz").replace("_", " ")
            return not _is_class_name(stem, labels) or kinetics._key(stem) in needed

        tarballs = _get_kinetics_split(request, ui, steps, "600", split, keep)
        outcome.lines.append(f"k600 {split}: {_count(request.root / split):,} videos from {tarballs} tarballs")


def _is_class_name(stem: str, labels: Path) -> bool:
    return kinetics._key(stem) in _k600_keys(labels)


@functools.cache
def _k600_keys(labels: Path) -> frozenset[str]:
    from tcclip.data.labels import read_class_names

    return frozenset(kinetics._key(n) for n in read_class_names(labels / "kinetics_600_labels.csv"))


SSV2_PART = re.compile(re.escape(sources.SSV2_PART_PREFIX) + r"(\d\d)(\.zip)?$")


def ssv2_parts(folder: Path) -> list[Path]:
    """The numbered parts in ``folder`` in order (``...-00`` to ``...-NN``, or the same names with ``.zip``)."""
    if not folder.is_dir():
        raise UserError(
            "folder of SSv2 parts not found",
            path=folder,
            fix="Log in at the dataset's page (Qualcomm AI datasets, 'Something-Something V2'), download the parts "
            f"{sources.SSV2_PART_PREFIX}00 ... 19 into one folder and pass it with --from.",
        )
    found: dict[int, Path] = {}
    for path in folder.iterdir():
        match = SSV2_PART.match(path.name)
        if match and path.is_file():
            number = int(match.group(1))
            if number in found and found[number].suffix != ".zip":
                continue  # both the zip and its content: the content is the part
            found[number] = path
    if not found:
        raise UserError(
            f"no SSv2 part ({sources.SSV2_PART_PREFIX}00 ...) in this folder",
            path=folder,
            fix="Pass the folder that holds the downloaded parts with --from.",
        )
    gaps = [f"{n:02d}" for n in range(max(found) + 1) if n not in found]
    if gaps:
        raise UserError(
            f"SSv2 parts {', '.join(gaps)} are missing (found {len(found)} up to {max(found):02d}); the archive is "
            "the parts concatenated in order, so every one is needed",
            path=folder,
            fix="Download the missing parts into this folder and run the same command again.",
        )
    return [found[n] for n in sorted(found)]


def _ssv2(request: Request, ui: Ui, steps: _Steps, outcome: Outcome) -> None:
    if request.source_dir is None:
        raise UserError(
            "ssv2 cannot be downloaded without logging in",
            fix="Log in at the dataset's page (Qualcomm AI datasets, 'Something-Something V2'), download its 20 "
            f"parts ({sources.SSV2_PART_PREFIX}00 to 19) into one folder, then run "
            f"tcclip data download ssv2 --root {request.root} --from THAT_FOLDER.",
        )
    if not steps.done("ssv2/videos"):
        parts = []
        for part in ssv2_parts(request.source_dir):
            if part.suffix == ".zip":  # the download wraps each raw part in a zip of its own
                unwrapped = request.archive_dir / part.stem
                _extract_once(
                    request, steps, ui, part, request.archive_dir, _flat, f"ssv2/{part.name}", deletable=False
                )
                part = unwrapped
                if not part.is_file():
                    raise UserError(f"{part.name} is not inside {part.name}.zip", path=request.source_dir)
            parts.append(part)
        total = sum(p.stat().st_size for p in parts)
        ui.note(f"ssv2: extracting {len(parts)} parts ({format_bytes(total)}) as one archive")
        placed = _extract_once(request, steps, ui, parts, request.root, _videos_only, "ssv2/videos", deletable=False)
        for part in parts:
            if part.parent == request.archive_dir and request.delete_archives:
                part.unlink(missing_ok=True)
        if placed is not None and len(placed) != sources.SSV2_VIDEOS:
            ui.note(f"ssv2: {len(placed):,} videos extracted, the release has {sources.SSV2_VIDEOS:,}")
    outcome.lines.append(_count_line("ssv2", request.root, sources.SSV2_VIDEOS))


def _flat(name: str) -> str:
    return flatten(name)
