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
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tcclip.utils.errors import UserError
from tcclip.utils.outputs import atomic_write_texts

__all__ = [
    "Annotation",
    "annotations_text",
    "csv_labels_text",
    "json_labels_text",
    "LabelFileError",
    "check_class_names",
    "class_key",
    "read_annotations",
    "read_class_names",
    "read_csv_labels",
    "read_json_labels",
    "write_annotations",
    "write_csv_labels",
    "write_json_labels",
]


class LabelFileError(UserError, ValueError):
    """A label file or an annotation list is malformed (a `UserError`: the command prints it and exits 2)."""


@dataclass(frozen=True)
class Annotation:
    """One line of an annotation list."""

    path: str
    """Video path relative to the dataset root, exactly as written in the list."""
    label: int
    """Class id, an index into the label file that goes with the list."""
    line: int | None = field(default=None, compare=False)
    """1-based line in the list it was read from (for messages about this video); not part of its identity."""


def class_key(name: str) -> str:
    """What the text encoder sees of a class name: the prompt words, lower-cased, single-spaced.

    Two names with the same key get the same prompt, hence the same text feature: they would split one class's
    probability between them. CLIP's tokenizer lower-cases and collapses white space; the model turns
    ``ApplyEyeMakeup`` and ``apply_eye_makeup`` into the same words.
    """
    from tcclip.model.prompting import process_class_name

    return " ".join(process_class_name(name).lower().split())


def as_class_names(value: object, what: str = "class_names") -> list[str] | None:
    """A class list given through the Python API, checked as the command line checks `--labels`: None stays None;
    a list, tuple or numpy array of strings is checked by `check_class_names` (line breaks, duplicates, also
    after lower-casing). One string is refused (taking its characters as classes is never meant, and splitting it
    on commas would guess); so are numbers (label ids are not class names).

    Raises:
        LabelFileError: naming `what` and the fix.
    """
    if value is None:
        return None
    if isinstance(value, str):
        suggestion = [name.strip() for name in value.split(",") if name.strip()]
        raise LabelFileError(
            f"{what} is one string ({value[:60]!r}), not a list of class names",
            fix=f"Pass a list, e.g. {what}={suggestion[:4]!r} (on the command line, --labels 'a,b' is split on "
            "commas).",
        )
    try:
        items = list(value)  # type: ignore[call-overload]
    except TypeError:
        raise LabelFileError(
            f"{what} must be a list of class names, got {type(value).__name__}", fix=f"Pass {what}=['run', 'jump']."
        ) from None
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise LabelFileError(
                f"{what}[{i}] is {type(item).__name__} {item!r}, not a class name",
                fix="Pass the names of the classes as strings (not label ids).",
            )
    if not items:
        raise LabelFileError(f"{what} is empty", fix="Pass at least one class name.")
    return check_class_names([str(item) for item in items])


def check_class_names(
    names: Sequence[str], path: str | os.PathLike | None = None, lines: Sequence[int | None] | None = None
) -> list[str]:
    """Reject empty names, names with line breaks and duplicates (after `class_key`); returns the names.

    Args:
        names: the class list, in id order.
        path: the file they came from (named in the error), or None for names given on the command line.
        lines: the 1-based line of every name in ``path``, where known.
    """
    source = "" if path is None else " in this file"
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        line = lines[i] if lines is not None else None
        if "\n" in name or "\r" in name:
            raise LabelFileError(
                f"the name of class {i} has a line break: {name!r}" + (" (an unbalanced quote?)" if path else ""),
                path=path,
                line=line,
                fix="Put every class on one line; in a CSV file, close the quote that was opened "
                '(a name with a comma is written 12,"Pushing something, slowly").',
            )
        if not name.strip():
            raise LabelFileError(f"class {i} has an empty name", path=path, line=line, fix="Give every class a name.")
        key = class_key(name)
        if key in seen:
            j = seen[key]
            at = f" (line {lines[j]})" if lines is not None and lines[j] is not None else ""
            if names[j] == name:
                message = f"the class name {name!r} appears twice{source}: classes {j}{at} and {i}"
            else:
                message = f"class {i} {name!r} reads the same to the text encoder as class {j} {names[j]!r}{at}"
            raise LabelFileError(
                message,
                path=path,
                line=line,
                fix="Give every class a distinct name (two classes with the same prompt split one probability).",
            )
        seen[key] = i
    return list(names)


def read_csv_labels(path: str | os.PathLike) -> list[str]:
    """Read a ``id,name`` label CSV and return the class names in id order."""
    path = Path(path)
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text))
    rows: list[tuple[int, list[str]]] = []  # (line where the row starts, fields)
    try:
        line_no = 1
        for row in reader:
            rows.append((line_no, row))
            line_no = reader.line_num + 1
    except csv.Error as e:
        raise LabelFileError(f"not a valid CSV file ({e})", path=path, line=reader.line_num,
                             fix="Write one class a line as '<id>,<name>'.") from None  # fmt: skip
    header = rows[0][1] if rows else []
    if [c.strip() for c in header] != ["id", "name"]:
        raise LabelFileError(
            f"expected the header 'id,name', found {','.join(header) if rows else 'nothing'!r}",
            path=path,
            line=1,
            fix="Make the first line exactly 'id,name' and list one class a line as '<id>,<name>'.",
        )
    names: list[str] = []
    lines: list[int | None] = []
    for line_no, row in rows[1:]:
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2:
            raise LabelFileError(
                f"expected 2 fields '<id>,<name>', found {len(row)}: {row!r}",
                path=path,
                line=line_no,
                fix='Quote names that contain commas, e.g. 12,"Pushing something, slowly".',
            )
        class_id, name = row[0].strip(), row[1].strip()
        if class_id != str(len(names)):
            hint = " (a line break inside quotes?)" if "\n" in class_id else ""
            raise LabelFileError(
                f"class id {class_id!r} where {len(names)} was expected{hint}",
                path=path,
                line=line_no,
                fix="List the classes with ids 0, 1, 2, ... in order, without gaps.",
            )
        if not name:
            raise LabelFileError(f"class {class_id} has an empty name", path=path, line=line_no, fix="Give it a name.")
        names.append(name)
        lines.append(line_no)
    if not names:
        raise LabelFileError("no classes after the header", path=path, fix="Add lines '<id>,<name>'.")
    return check_class_names(names, path, lines)


def read_json_labels(path: str | os.PathLike) -> list[str]:
    """Read a ``{"id": "description"}`` label JSON and return the descriptions in id order."""
    path = Path(path)
    text = _read_text(path)
    duplicates: list[str] = []

    def no_duplicates(pairs: list[tuple[str, object]]) -> dict:
        # json keeps the last of two equal keys; a class would vanish without a word.
        counts = Counter(k for k, _ in pairs)
        duplicates.extend(k for k, n in counts.items() if n > 1)
        return dict(pairs)

    try:
        data = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise LabelFileError(f"not valid JSON ({e.msg})", path=path, line=e.lineno, fix="Fix the JSON syntax.") from e
    if duplicates:
        key = duplicates[0]
        raise LabelFileError(
            f"the key {key!r} appears more than once (JSON keeps only the last one, so a class would be lost)",
            path=path,
            line=_json_key_line(text, key, occurrence=2),
            fix="Give every class its own key 0, 1, 2, ...",
        )
    if not isinstance(data, dict) or not data:
        raise LabelFileError(
            'expected a non-empty JSON object {"0": "description", ...}',
            path=path,
            fix="Map each class id to a text.",
        )
    expected = [str(i) for i in range(len(data))]
    if sorted(data, key=lambda k: (len(k), k)) != expected:
        missing = sorted(set(expected) - set(data), key=int)[:5]
        extra = sorted(set(data) - set(expected))[:5]
        raise LabelFileError(
            f"keys must be the class ids 0..{len(data) - 1}; missing {missing}, unexpected {extra}",
            path=path,
            fix="Use one key per class id, as strings, without gaps.",
        )
    bad = [k for k in expected if not isinstance(data[k], str) or not data[k].strip()]
    if bad:
        raise LabelFileError(
            f"class {bad[0]} has no text description",
            path=path,
            line=_json_key_line(text, bad[0]),
            fix="Give every class a string.",
        )
    names = [data[k].strip() for k in expected]
    return check_class_names(names, path, [_json_key_line(text, k) for k in expected])


def _json_key_line(text: str, key: str, occurrence: int = 1) -> int | None:
    """1-based line of the ``occurrence``-th ``"key":`` in a JSON text (None if not found; for messages only)."""
    pattern = re.compile(re.escape(json.dumps(key)) + r"\s*:")
    for n, match in enumerate(pattern.finditer(text), start=1):
        if n == occurrence:
            return text.count("\n", 0, match.start()) + 1
    return None


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Read class names from a label CSV or JSON file (chosen by the suffix)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return read_json_labels(path)
    if path.suffix.lower() == ".csv":
        return read_csv_labels(path)
    raise LabelFileError(
        f"unknown label file type {path.suffix!r}", path=path, fix="Use a '.csv' (id,name) or a '.json' file."
    )


def read_annotations(path: str | os.PathLike, num_classes: int | None = None) -> list[Annotation]:
    """Read an annotation list ``<relative path> <label>``.

    Args:
        path: the list file.
        num_classes: when given, every label must be in 0..num_classes-1 (the label file that goes with the list).
    """
    path = Path(path)
    annotations: list[Annotation] = []
    # str.splitlines would also split at form feeds, U+2028 and other characters that may be part of a file name.
    for line_no, raw in enumerate(_read_text(path).split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        video, sep, label_text = line.rpartition(" ")
        video = video.rstrip()
        if not sep or not video:
            raise LabelFileError(
                f"expected '<relative video path> <label>', found {line!r}",
                path=path,
                line=line_no,
                fix="Write the path, one space, then the integer class id.",
            )
        try:
            label = int(label_text)
        except ValueError:
            raise LabelFileError(
                f"the label {label_text!r} is not an integer",
                path=path,
                line=line_no,
                fix="End the line with the integer class id, separated from the path by one space.",
            ) from None
        if label < 0 or (num_classes is not None and label >= num_classes):
            bound = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
            raise LabelFileError(
                f"label {label} is outside {bound}",
                path=path,
                line=line_no,
                fix="Use the label file that goes with this list, or correct the class id.",
            )
        annotations.append(Annotation(video, label, line_no))
    if not annotations:
        raise LabelFileError("the list has no videos", path=path, fix="Add lines '<relative video path> <label>'.")
    return annotations


def annotations_text(annotations: Iterable[Annotation]) -> str:
    """An annotation list in the official format (Unix line ends, final newline)."""
    return "".join(f"{a.path} {a.label}\n" for a in annotations)


def csv_labels_text(names: Sequence[str]) -> str:
    """A ``id,name`` label CSV (names quoted only where CSV needs it)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "name"])
    writer.writerows([i, name] for i, name in enumerate(names))
    return buf.getvalue()


def json_labels_text(descriptions: Sequence[str]) -> str:
    """A ``{"id": "description"}`` label JSON."""
    return json.dumps({str(i): d for i, d in enumerate(descriptions)}, indent=1, ensure_ascii=False) + "\n"


def write_annotations(path: str | os.PathLike, annotations: Iterable[Annotation]) -> None:
    """Write an annotation list in the official format (Unix line ends, final newline)."""
    atomic_write_texts({Path(path): annotations_text(annotations)})


def write_csv_labels(path: str | os.PathLike, names: Sequence[str]) -> None:
    """Write a ``id,name`` label CSV (names quoted only where CSV needs it)."""
    atomic_write_texts({Path(path): csv_labels_text(names)})


def write_json_labels(path: str | os.PathLike, descriptions: Sequence[str]) -> None:
    """Write a ``{"id": "description"}`` label JSON."""
    atomic_write_texts({Path(path): json_labels_text(descriptions)})


def _read_text(path: Path) -> str:
    if path.is_dir():
        raise LabelFileError("is a folder, not a file", path=path, fix="Give the path of the file itself.")
    try:
        # -sig: tolerate a byte-order mark from spreadsheet exports; newline=None turns Windows line ends into "\n".
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except FileNotFoundError:
        raise LabelFileError("file not found", path=path, fix="Check the path (and the splits directory).") from None
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise LabelFileError(
            f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})",
            path=path,
            line=line,
            fix="Save the file as UTF-8.",
        ) from None
    except OSError as e:
        raise LabelFileError(f"cannot read the file ({e.strerror or e})", path=path) from None
