"""The K400 training list from an annotation CSV, and the K600 zero-shot class check."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcclip.data.kinetics import (
    CASE_ONLY_RENAMING,
    K400_RENAMED_IN_K600,
    KineticsListError,
    check_k600_zero_shot,
    k600_new_classes,
    make_kinetics_list,
)
from tcclip.data.labels import read_class_names

CSV = """label,youtube_id,time_start,time_end,split,is_cc
"passing American football (in game)",aaaaaaaaaaa,5,15,train,0
abseiling,bbbbbbbbbbb,0,10,train,0
abseiling,ccccccccccc,100,110,val,0
abseiling,ddddddddddd,7,17,train,0
"""
LABELS = 'id,name\n0,abseiling\n1,"passing American football (in game)"\n'


def test_training_list_in_official_format(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text(CSV)
    (tmp_path / "labels.csv").write_text(LABELS)
    (tmp_path / "root" / "train").mkdir(parents=True)
    for name in ("bbbbbbbbbbb_000000_000010.mp4", "aaaaaaaaaaa_000005_000015.mp4"):
        (tmp_path / "root" / "train" / name).write_bytes(b"x")
    made = make_kinetics_list(tmp_path / "train.csv", tmp_path / "labels.csv", tmp_path / "root")
    # Grouped by class id, the CSV's order within a class; the val row left out; the absent video set aside.
    assert made.lines == ["train/bbbbbbbbbbb_000000_000010.mp4 0", "train/aaaaaaaaaaa_000005_000015.mp4 1"]
    assert made.missing == ["train/ddddddddddd_000007_000017.mp4 0"]
    assert made.classes_losing == {"abseiling": 1}


def test_unknown_class_and_bad_header(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("id,name\n0,abseiling\n")
    (tmp_path / "train.csv").write_text(CSV)
    with pytest.raises(KineticsListError, match="not in the label file.*passing American football"):
        make_kinetics_list(tmp_path / "train.csv", tmp_path / "labels.csv", tmp_path)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(KineticsListError, match="not a Kinetics annotation CSV"):
        make_kinetics_list(tmp_path / "bad.csv", tmp_path / "labels.csv", tmp_path)


def test_k600_zero_shot_classes_are_220(upstream_mirror: Path) -> None:
    labels = upstream_mirror / "labels"
    check = check_k600_zero_shot(labels)
    assert len(check.new_classes) == 220
    assert check.split_classes == {f"ZS_split{n}_K600.csv": 160 for n in (1, 2, 3)}
    k400 = read_class_names(labels / "kinetics_400_labels.csv")
    k600 = read_class_names(labels / "kinetics_600_labels.csv")
    # Independently: K600 minus K400 by exact name, minus the renamed classes' new names compared exactly, leaves
    # the one class whose only change is its case: the 221st.
    exact = [
        n for n in k600 if n not in set(k400) and n not in set(K400_RENAMED_IN_K600.values()) - {CASE_ONLY_RENAMING}
    ]
    assert len(exact) == 221 and CASE_ONLY_RENAMING in exact and CASE_ONLY_RENAMING not in check.new_classes
    assert len([n for n in k600 if n not in set(k400)]) == 232
    used = set()
    for n in (1, 2, 3):
        names = read_class_names(labels / f"ZS_split{n}_K600.csv")
        assert not {c.casefold() for c in names} & {c.casefold() for c in k400}
        used |= set(names)
    assert sorted(set(check.new_classes) - used) == sorted(check.unused) and len(check.unused) == 3
    # Every renamed class exists under its old name in K400 and its new one in K600.
    assert set(K400_RENAMED_IN_K600) <= set(k400) and set(K400_RENAMED_IN_K600.values()) <= set(k600)


def test_k600_new_classes_on_a_toy_release() -> None:
    k400 = ["hugging", "abseiling", "passing American football (not in game)"]
    k600 = ["abseiling", "hugging (not baby)", "passing american football (not in game)", "acting in play"]
    assert k600_new_classes(k400, k600) == ["acting in play"]
