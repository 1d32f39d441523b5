"""Label files (class names) and annotation lists (videos and their labels).

Formats (the official TC-CLIP release uses exactly these):

- label CSV: header ``id,name``, then one class a line with ids 0..N-1 in order; names may be quoted.
- label JSON: ``{"0": "description", "1": ...}`` with keys 0..N-1 (the LLM-rephrased class descriptions).
- annotation list: one video a line, ``<path relative to the dataset root> <integer label>``. The label is
  everything after the *last* space, so paths may contain spaces. Windows line ends and a missing final newline
  are accepted; blank lines are skipped.

Every error names the file, the line and what to do about it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Annotation",
    "LabelFileError",
    "read_annotations",
    "read_class_names",
    "read_csv_labels",
    "read_json_labels",
    "write_annotations",
    "write_csv_labels",
    "write_json_labels",
]


class LabelFileError(ValueError):
    """A label file or an annotation list is malformed."""


@dataclass(frozen=True)
class Annotation:
    """One line of an annotation list."""

    path: str
    """Video path relative to the dataset root, exactly as written in the list."""
    label: int
    """Class id, an index into the label file that goes with the list."""


def _where(path: Path, line: int | None = None) -> str:
    return f"{path}:{line}" if line is not None else str(path)


def read_csv_labels(path: str | os.PathLike) -> list[str]:
    """Read a ``id,name`` label CSV and return the class names in id order."""
    path = Path(path)
    text = _read_text(path)
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [c.strip() for c in rows[0]] != ["id", "name"]:
        raise LabelFileError(
            f"{_where(path, 1)}: expected the header 'id,name', found {','.join(rows[0]) if rows else 'nothing'!r}. "
            "Fix: make the first line exactly 'id,name' and list one class a line as '<id>,<name>'."
        )
    names: list[str] = []
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2:
            raise LabelFileError(
                f"{_where(path, line_no)}: expected 2 fields '<id>,<name>', found {len(row)}: {row!r}. "
                'Fix: quote names that contain commas, e.g. 12,"Pushing something, slowly".'
            )
        class_id, name = row[0].strip(), row[1].strip()
        if class_id != str(len(names)):
            raise LabelFileError(
                f"{_where(path, line_no)}: class id {class_id!r} where {len(names)} was expected. "
                "Fix: list the classes with ids 0, 1, 2, ... in order, without gaps."
            )
        if not name:
            raise LabelFileError(f"{_where(path, line_no)}: class {class_id} has an empty name. Fix: give it a name.")
        names.append(name)
    if not names:
        raise LabelFileError(f"{path}: no classes after the header. Fix: add lines '<id>,<name>'.")
    return names


def read_json_labels(path: str | os.PathLike) -> list[str]:
    """Read a ``{"id": "description"}`` label JSON and return the descriptions in id order."""
    path = Path(path)
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise LabelFileError(f"{_where(path, e.lineno)}: not valid JSON ({e.msg}). Fix the JSON syntax.") from e
    if not isinstance(data, dict) or not data:
        raise LabelFileError(
            f'{path}: expected a non-empty JSON object {{"0": "description", ...}}. Fix: map each class id to a text.'
        )
    expected = [str(i) for i in range(len(data))]
    if sorted(data, key=lambda k: (len(k), k)) != expected:
        missing = sorted(set(expected) - set(data), key=int)[:5]
        extra = sorted(set(data) - set(expected))[:5]
        raise LabelFileError(
            f"{path}: keys must be the class ids 0..{len(data) - 1}; missing {missing}, unexpected {extra}. "
            "Fix: use one key per class id, as strings, without gaps."
        )
    bad = [k for k in expected if not isinstance(data[k], str) or not data[k].strip()]
    if bad:
        raise LabelFileError(f"{path}: class {bad[0]} has no text description. Fix: give every class a string.")
    return [data[k].strip() for k in expected]


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Read class names from a label CSV or JSON file (chosen by the suffix)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return read_json_labels(path)
    if path.suffix.lower() == ".csv":
        return read_csv_labels(path)
    raise LabelFileError(f"{path}: unknown label file type {path.suffix!r}. Fix: use a '.csv' (id,name) or '.json'.")


def read_annotations(path: str | os.PathLike, num_classes: int | None = None) -> list[Annotation]:
    """Read an annotation list ``<relative path> <label>``.

    Args:
        path: the list file.
        num_classes: when given, every label must be in 0..num_classes-1 (the label file that goes with the list).
    """
    path = Path(path)
    annotations: list[Annotation] = []
    for line_no, raw in enumerate(_read_text(path).splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        video, sep, label_text = line.rpartition(" ")
        video = video.rstrip()
        if not sep or not video:
            raise LabelFileError(
                f"{_where(path, line_no)}: expected '<relative video path> <label>', found {line!r}. "
                "Fix: write the path, one space, then the integer class id."
            )
        try:
            label = int(label_text)
        except ValueError:
            raise LabelFileError(
                f"{_where(path, line_no)}: the label {label_text!r} is not an integer. "
                "Fix: end the line with the integer class id, separated from the path by one space."
            ) from None
        if label < 0 or (num_classes is not None and label >= num_classes):
            bound = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
            raise LabelFileError(
                f"{_where(path, line_no)}: label {label} is outside {bound}. "
                "Fix: use the label file that goes with this list, or correct the class id."
            )
        annotations.append(Annotation(video, label))
    if not annotations:
        raise LabelFileError(f"{path}: the list has no videos. Fix: add lines '<relative video path> <label>'.")
    return annotations


def write_annotations(path: str | os.PathLike, annotations: Iterable[Annotation]) -> None:
    """Write an annotation list in the official format (Unix line ends, final newline)."""
    lines = [f"{a.path} {a.label}\n" for a in annotations]
    _write_text(Path(path), "".join(lines))


def write_csv_labels(path: str | os.PathLike, names: Sequence[str]) -> None:
    """Write a ``id,name`` label CSV (names quoted only where CSV needs it)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "name"])
    writer.writerows([i, name] for i, name in enumerate(names))
    _write_text(Path(path), buf.getvalue())


def write_json_labels(path: str | os.PathLike, descriptions: Sequence[str]) -> None:
    """Write a ``{"id": "description"}`` label JSON."""
    _write_text(Path(path), json.dumps({str(i): d for i, d in enumerate(descriptions)}, indent=1) + "\n")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: tolerate a byte-order mark from spreadsheet exports
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found. Fix: check the path (and the splits directory).") from None
    except UnicodeDecodeError as e:
        raise LabelFileError(f"{path}: not UTF-8 text ({e.reason}). Fix: save the file as UTF-8.") from e


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
