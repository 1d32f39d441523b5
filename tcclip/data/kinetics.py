"""Kinetics lists the official release leaves out, made from the Kinetics annotation CSVs, and the K600 class check.

- The K400 training list of the full zero-shot / fully-supervised setting (``k400_splits/train.txt``): one line
  ``train/<youtube_id>_<start:06d>_<end:06d>.mp4 <class id>`` per annotated training video, the file name the CVDF
  tarballs use, class ids from the official label file (``labels/kinetics_400_labels.csv``), grouped by class id in
  the annotation file's order. Videos absent from the copy are left out (a list of files that do not exist would stop
  training at its broken-video limit) and written to a second file, so the count is never silent.
- The K600 zero-shot classes: the 220 classes of Kinetics-600 that are not in Kinetics-400. Twelve K400 classes
  carry another name in K600 (``K400_RENAMED_IN_K600``); removing K400's classes by exact name leaves 232, and a
  comparison that knows the renamings but not the change of case in "passing american football (not in game)"
  (K400 writes "American") leaves 221, the number users report: that class is in K400, not new.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tcclip.data.labels import read_class_names
from tcclip.utils.errors import UserError

K400_RENAMED_IN_K600 = {
    "baby waking up": "waking up",
    "balloon blowing": "inflating balloons",
    "changing wheel": "changing wheel (not on bike)",
    "cooking sausages": "cooking sausages (not on barbeque)",
    "dying hair": "dyeing hair",
    "garbage collecting": "person collecting garbage",
    "hugging": "hugging (not baby)",
    "making bed": "making the bed",
    "opening bottle": "opening bottle (not wine)",
    "passing American football (not in game)": "passing american football (not in game)",
    "throwing ball": "throwing ball (not baseball or American football)",
    "tying tie": "tying necktie",
}
"""K400 class -> its name in K600 (380 K400 classes are in K600: 368 under the same name, these 12 renamed)."""
K600_NEW_CLASSES = 220
CASE_ONLY_RENAMING = "passing american football (not in game)"
"""The class a comparison that ignores the change of case counts as new: the 221st."""


class KineticsListError(UserError, ValueError):
    """An annotation CSV or label file cannot be turned into a list."""


def video_name(youtube_id: str, start: int, end: int) -> str:
    """File name of a Kinetics clip in the CVDF tarballs (and in the official lists)."""
    return f"{youtube_id}_{start:06d}_{end:06d}.mp4"


@dataclass(frozen=True)
class KineticsList:
    lines: list[str]
    """``<split>/<file> <class id>`` of the videos present."""
    missing: list[str]
    """The same lines for annotated videos absent from the copy."""
    classes_losing: dict[str, int]
    """Class name -> annotated videos of that class absent from the copy."""


def _key(name: str) -> str:
    return " ".join(name.replace('"', "").replace("_", " ").split()).casefold()


def read_annotations_csv(path: Path, split: str) -> list[tuple[str, str, int, int]]:
    """(label, youtube_id, start, end) of every row of a Kinetics annotation CSV whose split column is ``split``."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        needed = {"label", "youtube_id", "time_start", "time_end"}
        if reader.fieldnames is None or not needed <= set(reader.fieldnames):
            raise KineticsListError(
                f"not a Kinetics annotation CSV: the header needs {', '.join(sorted(needed))} "
                f"(it has {', '.join(reader.fieldnames or [])})",
                path=path,
                fix="Use the annotations/<split>.csv of the CVDF copy (tcclip data download k400 fetches it).",
            )
        for line, row in enumerate(reader, start=2):
            if row.get("split", split) != split:
                continue
            try:
                rows.append((row["label"], row["youtube_id"], int(row["time_start"]), int(row["time_end"])))
            except (TypeError, ValueError):
                raise KineticsListError(
                    "time_start/time_end are not whole seconds", path=path, line=line, fix="Restore the CSV."
                ) from None
    return rows


def present_files(folder: Path) -> set[str]:
    """Names of the files in ``folder`` (one directory read: cheap even for 240,000 files)."""
    try:
        with os.scandir(folder) as entries:
            return {e.name for e in entries if e.is_file()}
    except FileNotFoundError:
        return set()


def make_kinetics_list(annotations: Path, labels: Path, root: Path, split: str = "train") -> KineticsList:
    """The official-format list of one split of a Kinetics copy under ``root`` (videos in ``root/<split>/``)."""
    class_ids = {_key(name): i for i, name in enumerate(read_class_names(labels))}
    by_class: dict[int, list[str]] = defaultdict(list)
    unknown: set[str] = set()
    rows = read_annotations_csv(annotations, split)
    for label, youtube_id, start, end in rows:
        class_id = class_ids.get(_key(label))
        if class_id is None:
            unknown.add(label)
            continue
        by_class[class_id].append(f"{split}/{video_name(youtube_id, start, end)} {class_id}")
    if unknown:
        shown = ", ".join(sorted(unknown)[:5])
        raise KineticsListError(
            f"{len(unknown)} class names of the annotations are not in the label file {labels} ({shown})",
            path=annotations,
            fix="Use the annotation CSV and label file of the same Kinetics version (K400: "
            "labels/kinetics_400_labels.csv).",
        )
    if not rows:
        raise KineticsListError(f"no row of split {split!r}", path=annotations, fix="Check the file and --split.")
    names = read_class_names(labels)
    present = present_files(root / split)
    lines, missing, losing = [], [], defaultdict(int)
    for class_id in sorted(by_class):
        for line in by_class[class_id]:
            if line.split(" ", 1)[0].split("/", 1)[1] in present:
                lines.append(line)
            else:
                missing.append(line)
                losing[names[class_id]] += 1
    return KineticsList(lines, missing, dict(losing))


@dataclass(frozen=True)
class K600ClassCheck:
    new_classes: list[str]
    """K600 classes not in K400 (220)."""
    split_classes: dict[str, int]
    """Zero-shot label file -> its number of classes (all among ``new_classes``)."""
    unused: list[str]
    """New classes in none of the zero-shot splits."""


def k600_new_classes(k400_names: list[str], k600_names: list[str]) -> list[str]:
    """The K600 classes that are not K400 classes (renamed ones count as K400's), in K600's order."""
    in_k400 = {_key(K400_RENAMED_IN_K600.get(n, n)) for n in k400_names}
    return [n for n in k600_names if _key(n) not in in_k400]


def check_k600_zero_shot(labels_dir: Path) -> K600ClassCheck:
    """Check that the three official K600 zero-shot label files hold only the 220 new classes.

    Raises:
        KineticsListError: a label file has a K400 class, or the new classes are not 220.
    """
    k400 = read_class_names(labels_dir / "kinetics_400_labels.csv")
    k600 = read_class_names(labels_dir / "kinetics_600_labels.csv")
    new = k600_new_classes(k400, k600)
    if len(new) != K600_NEW_CLASSES:
        raise KineticsListError(
            f"{len(new)} K600 classes are not in K400, expected {K600_NEW_CLASSES}",
            path=labels_dir,
            fix="Fetch the official label files again: tcclip splits download --only labels/.",
        )
    new_keys = {_key(n) for n in new}
    counts, used = {}, set()
    for n in (1, 2, 3):
        path = labels_dir / f"ZS_split{n}_K600.csv"
        names = read_class_names(path)
        overlap = [c for c in names if _key(c) not in new_keys]
        if overlap:
            raise KineticsListError(
                f"{len(overlap)} classes of this zero-shot split are K400 classes ({', '.join(overlap[:5])})",
                path=path,
                fix="Use the official label files (tcclip splits download --only labels/).",
            )
        counts[path.name] = len(names)
        used |= {_key(c) for c in names}
    return K600ClassCheck(new, counts, [c for c in new if _key(c) not in used])
