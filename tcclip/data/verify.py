"""How complete and how readable a copy of a dataset is, per annotation list of a config (`tcclip data verify`).

For every list: how many videos it names, how many are present under the root, how many decode, and how many give
exactly the frames of a plain sequential decode under the configured reader (the check of ``tcclip data check
--verify-frames``); which classes lose videos; for Kinetics, the count against the gaps CVDF's copy is known to
have; and files under the root that no list names. The report ends with one line to paste into an issue.

Decoding a large dataset takes hours, so results are cached per file (size and modification time) in the user's
cache (``~/.cache/tcclip/verify``; the dataset folder may be read-only). Training and ``tcclip test`` print the
same line at start from a cheap check: presence by reading each folder once, and decode results only from that
cache (a file changed since, or never verified, counts as "not checked").
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tcclip.data.labels import read_annotations, read_class_names
from tcclip.utils.outputs import atomic_write

CACHE_VERSION = 1
SKIPPED_FOLDERS = {"archives"}
"""Folders under a root that hold no videos of the lists (``tcclip data download``'s archives)."""
VIDEO_SUFFIXES = (".avi", ".mp4", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv")


@dataclass(frozen=True)
class ListSpec:
    """One annotation list of a config and the class names of its labels."""

    name: str
    path: Path
    class_names: list[str]


@dataclass
class ListReport:
    name: str
    listed: int
    present: int
    decodable: int | None = None
    """None: not decoded (the start-of-run check without a cached verification)."""
    exact: int | None = None
    missing: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    inexact: list[tuple[str, str]] = field(default_factory=list)
    classes_losing: dict[str, int] = field(default_factory=dict)
    """Class name -> listed videos of that class that are missing or unreadable."""
    unchecked: int = 0
    """Present videos without a (still valid) cached decode result."""

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unreadable and not self.inexact


@dataclass
class DataReport:
    dataset: str
    root: Path
    lists: list[ListReport]
    backend: str
    extra: list[str] = field(default_factory=list)
    """Video files under the root that no list names."""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.lists)

    def summary(self) -> str:
        """The one line to paste into an issue."""
        parts = []
        for r in self.lists:
            text = f"{r.name}: {r.present:,}/{r.listed:,} present"
            if r.decodable is not None:
                text += f", {r.decodable:,} decodable, {r.exact:,} exact"
                if r.unchecked:
                    text += f" ({r.unchecked:,} not checked)"
            else:
                text += ", decoding not checked"
            parts.append(text)
        return f"{self.dataset} ({self.backend}): " + "; ".join(parts)


# -- presence ----------------------------------------------------------------------------------------------------------


def listing(root: Path, rel_paths: Sequence[str]) -> set[str]:
    """The paths among ``rel_paths`` that are files under ``root``: each folder is read once (os.scandir), which is
    far cheaper than one stat per video on a network file system."""
    by_folder: dict[str, list[str]] = {}
    for rel in rel_paths:
        parent = str(PurePosixPath(rel).parent)
        by_folder.setdefault(parent, []).append(rel)
    present = set()
    for parent, rels in by_folder.items():
        try:
            with os.scandir(root / parent) as entries:
                names = {e.name for e in entries if e.is_file()}
        except (FileNotFoundError, NotADirectoryError):
            continue
        present.update(rel for rel in rels if PurePosixPath(rel).name in names)
    return present


def extra_videos(root: Path, listed: set[str]) -> list[str]:
    """Video files under ``root`` that no list names (hidden folders and ``archives`` skipped)."""
    extra = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIPPED_FOLDERS]
        rel_folder = Path(folder).relative_to(root)
        for name in files:
            if name.lower().endswith(VIDEO_SUFFIXES):
                rel = (rel_folder / name).as_posix()
                if rel not in listed:
                    extra.append(rel)
    return sorted(extra)


# -- the decode cache --------------------------------------------------------------------------------------------------


def cache_path(root: Path) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return base / "tcclip" / "verify" / f"{key}.json"


def _stamp(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def load_cache(root: Path, backend: str, num_frames: int) -> dict[str, Any]:
    """rel path -> {"stamp": [size, mtime_ns], "error": str|None, "mismatch": str|None} for this reader setting."""
    path = cache_path(root)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if data.get("version") != CACHE_VERSION or data.get("root") != str(root.resolve()):
        return {}
    return data.get("readers", {}).get(f"{backend}/{num_frames}", {})


def save_cache(root: Path, backend: str, num_frames: int, entries: dict[str, Any]) -> None:
    path = cache_path(root)
    try:
        data = json.loads(path.read_text())
        if data.get("version") != CACHE_VERSION:
            raise ValueError
    except (OSError, ValueError):
        data = {"version": CACHE_VERSION, "root": str(root.resolve()), "readers": {}}
    data["readers"].setdefault(f"{backend}/{num_frames}", {}).update(entries)
    data["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(json.dumps(data).encode()), "verification cache")


# -- decoding ----------------------------------------------------------------------------------------------------------


CheckVideo = Callable[..., tuple]
"""``tcclip.cli.data.check_video``: (root, rel, backend, num_frames, verify_with) -> (error, frames, mismatch, dropped).
Passed in (not imported) because the command-line module imports this one."""


def _decode(check: CheckVideo, job: tuple[str, str, str, int]) -> tuple[str | None, str | None]:
    # The reader's own checks: decodes a test view's frames and the last one, then compares them with a plain
    # sequential decode of the same file (tcclip data check --verify-frames with the one backend).
    root, rel, backend, num_frames = job
    error, _count, mismatch, _dropped = check(root, rel, backend, num_frames, verify_with=backend)
    return error, mismatch


def decode_all(
    check: CheckVideo,
    root: Path,
    rels: Sequence[str],
    backend: str,
    num_frames: int,
    workers: int,
    on_done: Callable[[], None] | None,
) -> dict[str, tuple[str | None, str | None]]:
    jobs = [(str(root), rel, backend, num_frames) for rel in rels]
    results: dict[str, tuple[str | None, str | None]] = {}
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            results[job[1]] = _decode(check, job)
            if on_done:
                on_done()
        return results
    with ProcessPoolExecutor(max_workers=workers) as pool:
        chunk = max(1, min(32, len(jobs) // (workers * 8) or 1))
        for job, result in zip(jobs, pool.map(functools.partial(_decode, check), jobs, chunksize=chunk), strict=True):
            results[job[1]] = result
            if on_done:
                on_done()
    return results


# -- the report --------------------------------------------------------------------------------------------------------


def verify(
    dataset: str,
    root: Path,
    lists: Sequence[ListSpec],
    backend: str,
    num_frames: int,
    check: CheckVideo | None = None,
    workers: int = 1,
    on_start: Callable[[int], None] | None = None,
    on_done: Callable[[], None] | None = None,
    find_extra: bool = True,
) -> DataReport:
    """Check ``lists`` against the copy under ``root``.

    Args:
        check: decode present videos not in the cache with this function (``tcclip.cli.data.check_video``); None:
            presence plus cached results only (the start-of-run check).
        on_start: called with the number of videos to decode.
    """
    annotations = {spec.name: read_annotations(spec.path) for spec in lists}
    all_rels = list(dict.fromkeys(a.path for anns in annotations.values() for a in anns))
    present = listing(root, all_rels)
    cache = load_cache(root, backend, num_frames)
    results: dict[str, tuple[str | None, str | None]] = {}
    to_decode = []
    for rel in all_rels:
        if rel not in present:
            continue
        entry = cache.get(rel)
        if entry is not None and entry.get("stamp") == _stamp(root / rel):
            results[rel] = (entry.get("error"), entry.get("mismatch"))
        else:
            to_decode.append(rel)
    decode = check is not None
    if decode and to_decode:
        if on_start:
            on_start(len(to_decode))
        fresh = decode_all(check, root, to_decode, backend, num_frames, workers, on_done)
        results.update(fresh)
        save_cache(
            root,
            backend,
            num_frames,
            {rel: {"stamp": _stamp(root / rel), "error": e, "mismatch": m} for rel, (e, m) in fresh.items()},
        )
    reports = []
    for spec in lists:
        anns = annotations[spec.name]
        report = ListReport(spec.name, listed=len(anns), present=0)
        losing: Counter[str] = Counter()
        decodable = exact = unchecked = 0
        for a in anns:
            name = spec.class_names[a.label] if 0 <= a.label < len(spec.class_names) else f"class {a.label}"
            if a.path not in present:
                report.missing.append(a.path)
                losing[name] += 1
                continue
            report.present += 1
            if a.path not in results:
                unchecked += 1
                continue
            error, mismatch = results[a.path]
            if error is not None:
                report.unreadable.append((a.path, error))
                losing[name] += 1
                continue
            decodable += 1
            if mismatch is not None:
                report.inexact.append((a.path, mismatch))
            else:
                exact += 1
        if decode or unchecked < report.present:
            report.decodable, report.exact = decodable, exact
        report.unchecked = unchecked
        report.classes_losing = dict(losing.most_common())
        reports.append(report)
    extra = extra_videos(root, set(all_rels)) if find_extra else []
    return DataReport(dataset, root, reports, backend, extra)


def kinetics_notes(report: DataReport, splits_dir: Path) -> list[str]:
    """For K400 copies: the missing count against what a complete CVDF copy lacks (only counts are published)."""
    from tcclip.data.sources import CVDF_K400_GAPS

    notes = []
    for r in report.lists:
        split = "train" if r.name == "train" else "val" if r.name.endswith("/val") else None
        if split is None:
            continue
        gaps = CVDF_K400_GAPS[split]
        if split == "train":
            missing_file = splits_dir / "datasets_splits" / "k400_splits" / "train_missing.txt"
            if missing_file.is_file():
                left_out = sum(1 for line in missing_file.read_text().splitlines() if line.strip())
                notes.append(
                    f"k400 train: the list leaves out {left_out:,} annotated videos absent from this copy "
                    f"(train_missing.txt); a complete CVDF copy lacks {gaps.annotated - gaps.in_copy:,} of "
                    f"{gaps.annotated:,}"
                )
            continue
        notes.append(
            f"k400 {split}: {len(r.missing):,} listed videos missing; a complete CVDF copy has {gaps.in_copy:,} of "
            f"{gaps.annotated:,} annotated {split} videos (CVDF publishes the counts, not which ones)"
        )
    return notes


def datamodule_lists(dm: Any, parts: Sequence[str]) -> list[ListSpec]:
    """The lists a DataModule reads for ``parts`` ("train", "val", "test"), with their class names."""
    specs = []
    splits = dm.splits
    if "train" in parts and splits.train is not None:
        specs.append(
            ListSpec("train", dm._file(splits.train.annotations), read_class_names(dm._file(splits.train.labels)))
        )
    for part, sets in (("val", splits.val), ("test", splits.test)):
        if part in parts:
            for s in sets:
                name = f"{part}/{s.name}"
                if any(existing.path == dm._file(s.annotations) for existing in specs):
                    continue  # the same list as validation and test: checked once
                specs.append(ListSpec(name, dm._file(s.annotations), read_class_names(dm._file(s.labels))))
    return specs


def start_of_run_summary(dm: Any, stage: str) -> str:
    """The summary line for the lists ``stage`` reads, from presence and cached decode results (no decoding)."""
    from tcclip.data.video_reader import resolve_backend

    parts = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}.get(
        stage, ("train", "val", "test")
    )
    try:
        backend = resolve_backend(dm.backend)
    except Exception:  # noqa: BLE001 - the data loaders report an unusable backend themselves
        backend = dm.backend
    report = verify(dm.dataset_name, dm.root, datamodule_lists(dm, parts), backend, dm.num_frames, find_extra=False)
    return report.summary()
