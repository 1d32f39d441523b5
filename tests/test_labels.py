"""Label files and annotation lists: the official formats parse, bad lines name file, line and fix."""

from __future__ import annotations

import json

import pytest

from tcclip.data.labels import (
    Annotation,
    LabelFileError,
    read_annotations,
    read_class_names,
    write_annotations,
    write_csv_labels,
)


def test_csv_labels_with_quotes_and_commas(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text('id,name\n0,"Pushing something, slowly"\n1,abseiling\n')
    assert read_class_names(path) == ["Pushing something, slowly", "abseiling"]


def test_csv_labels_ids_must_be_in_order(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("id,name\n0,a\n2,b\n")
    with pytest.raises(LabelFileError, match=r"labels\.csv:3: class id '2' where 1 was expected\. List"):
        read_class_names(path)


def test_csv_labels_need_header(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("0,a\n1,b\n")
    with pytest.raises(LabelFileError, match=r"labels\.csv:1: expected the header 'id,name'"):
        read_class_names(path)


def test_json_labels_in_id_order(tmp_path):
    path = tmp_path / "llm.json"
    path.write_text(json.dumps({str(i): f"description {i}" for i in reversed(range(12))}))
    assert read_class_names(path) == [f"description {i}" for i in range(12)]


def test_json_labels_with_gap(tmp_path):
    path = tmp_path / "llm.json"
    path.write_text(json.dumps({"0": "a", "2": "b"}))
    with pytest.raises(LabelFileError, match=r"missing \['1'\]"):
        read_class_names(path)


def test_annotations_split_on_last_space_and_accept_crlf(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(b"train/a b.mp4 3\r\nc.avi 0\r\n\r\nd.webm 1")
    assert read_annotations(path) == [Annotation("train/a b.mp4", 3), Annotation("c.avi", 0), Annotation("d.webm", 1)]


@pytest.mark.parametrize(
    ("line", "message"),
    [("video.mp4", "expected '<relative video path> <label>'"), ("video.mp4 x", "'x' is not an integer")],
)
def test_bad_annotation_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "list.txt"
    path.write_text(f"ok.mp4 0\n{line}\n")
    with pytest.raises(LabelFileError, match=rf"list\.txt:2: .*{message}"):
        read_annotations(path)


def test_annotation_label_out_of_range(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("a.mp4 0\nb.mp4 5\n")
    with pytest.raises(LabelFileError, match=r"list\.txt:2: label 5 is outside 0\.\.4"):
        read_annotations(path, num_classes=5)


def test_write_then_read_round_trip(tmp_path):
    annotations = [Annotation("x/y z.mp4", 2), Annotation("a.avi", 0)]
    write_annotations(tmp_path / "l.txt", annotations)
    write_csv_labels(tmp_path / "l.csv", ["a", "b, c", "d"])
    assert read_annotations(tmp_path / "l.txt") == annotations
    assert read_class_names(tmp_path / "l.csv") == ["a", "b, c", "d"]


def test_every_official_file_parses(upstream_mirror):
    """Every label file and list of the official release reads, and every list's labels fit some label file."""
    sizes = {len(read_class_names(p)) for p in (upstream_mirror / "labels").rglob("*.*")}
    for path in (upstream_mirror / "datasets_splits").rglob("*.txt"):
        annotations = read_annotations(path)
        assert max(a.label for a in annotations) + 1 in sizes, path
