"""Official split files: manifest, download (mirror and mocked URL), verification; `splits make` for custom data."""

from __future__ import annotations

import hashlib
import io
import os
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from tcclip.cli import commands as cli
from tcclip.data import custom_splits, splits
from tcclip.data.labels import read_annotations, read_class_names

COMMIT = "8728fe4ca2b27f00e7235ed8f81f59cb933c8ed9"
HMDB_ONLY = "datasets_splits/hmdb_splits/*"


def _mirror_files(mirror: Path) -> list[tuple[str, int, str]]:
    """(path, size, sha256) of every file under labels/ and datasets_splits/ of a mirror, in the manifest's order."""
    return [
        (p.relative_to(mirror).as_posix(), p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        for top in ("datasets_splits", "labels")
        for p in sorted((mirror / top).rglob("*"))
        if p.is_file()
    ]


def test_manifest_lists_every_mirror_file(upstream_mirror):
    manifest = splits.load_manifest()
    assert manifest.commit == COMMIT
    assert _mirror_files(upstream_mirror) == [(e.path, e.size, e.sha256) for e in manifest.files]
    assert manifest.url(manifest.files[0]).startswith(f"https://raw.githubusercontent.com/naver-ai/tc-clip/{COMMIT}/")


def test_download_from_mirror_then_skip_valid(upstream_mirror, tmp_path):
    assert cli.run_command("splits", ["download", "--mirror", str(upstream_mirror), "--dest", str(tmp_path)]) == 0
    manifest = splits.load_manifest()
    assert all(splits.is_valid(tmp_path / e.path, e) for e in manifest.files)
    report = splits.download_splits(tmp_path, mirror=upstream_mirror)
    assert (report.fetched, report.failed, len(report.skipped)) == ([], [], len(manifest.files))


def test_downloaded_split_files_are_readable_by_everyone_the_umask_allows(upstream_mirror, tmp_path):
    old = os.umask(0o022)
    try:
        splits.download_splits(tmp_path, mirror=upstream_mirror, only=[HMDB_ONLY])
    finally:
        os.umask(old)
    modes = {oct(p.stat().st_mode & 0o777) for p in (tmp_path / "datasets_splits").rglob("*.txt")}
    assert modes == {"0o644"}  # not mkstemp's 0600


def test_corrupted_file_is_fetched_again(upstream_mirror, tmp_path):
    splits.download_splits(tmp_path, mirror=upstream_mirror, only=[HMDB_ONLY])
    target = tmp_path / "datasets_splits/hmdb_splits/val1.txt"
    target.write_text("truncated.avi 0\n")
    report = splits.download_splits(tmp_path, mirror=upstream_mirror, only=[HMDB_ONLY])
    assert report.fetched == ["datasets_splits/hmdb_splits/val1.txt"]
    assert target.read_bytes() == (upstream_mirror / "datasets_splits/hmdb_splits/val1.txt").read_bytes()


def test_missing_mirror_file_fails_with_its_name(upstream_mirror, tmp_path, capsys):
    mirror = tmp_path / "mirror"
    (mirror / "datasets_splits/hmdb_splits").mkdir(parents=True)
    source = upstream_mirror / "datasets_splits/hmdb_splits/val1.txt"
    (mirror / "datasets_splits/hmdb_splits/val1.txt").write_bytes(source.read_bytes())
    code = cli.run_command(
        "splits", ["download", "--mirror", str(mirror), "--dest", str(tmp_path / "out"), "--only", HMDB_ONLY]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "failed datasets_splits/hmdb_splits/val2.txt" in err and "not in the mirror folder" in err
    assert (tmp_path / "out/datasets_splits/hmdb_splits/val1.txt").is_file()
    assert not list((tmp_path / "out").rglob("*.part"))  # nothing half-written left behind


def test_download_from_url_with_mocked_urllib(upstream_mirror, tmp_path, monkeypatch):
    urls = []

    def fake_urlopen(url, timeout):
        urls.append(url)
        rel = url.split(f"/{COMMIT}/", 1)[1]
        data = b"tampered" if rel.endswith("val3.txt") else (upstream_mirror / rel).read_bytes()
        return io.BytesIO(data)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    report = splits.download_splits(tmp_path, only=[HMDB_ONLY])
    assert len(urls) == 7 and all(
        u.startswith(f"https://raw.githubusercontent.com/naver-ai/tc-clip/{COMMIT}/") for u in urls
    )
    assert [p for p, _ in report.failed] == ["datasets_splits/hmdb_splits/val3.txt"]
    assert "checksum mismatch" in report.failed[0][1]
    assert not (tmp_path / "datasets_splits/hmdb_splits/val3.txt").exists()


def test_missing_split_file_error_names_the_command(tmp_path):
    with pytest.raises(splits.SplitFilesError, match=rf"tcclip splits download --dest {tmp_path}"):
        splits.require_split_file(tmp_path, "labels/hmdb_51_labels.csv")


def test_modified_split_file_is_refused(upstream_mirror, tmp_path):
    splits.download_splits(tmp_path, mirror=upstream_mirror, only=["labels/hmdb_51_labels.csv"])
    (tmp_path / "labels/hmdb_51_labels.csv").write_text("id,name\n0,x\n")
    with pytest.raises(splits.SplitFilesError, match="does not match the pinned checksum"):
        splits.require_split_file(tmp_path, "labels/hmdb_51_labels.csv")


@pytest.fixture()
def custom_list(tmp_path):
    names = [f"class{c}" for c in range(5)]
    (tmp_path / "labels.csv").write_text("id,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(names)))
    (tmp_path / "full.txt").write_text("".join(f"v/{c}_{k}.mp4 {c}\n" for c in range(5) for k in range(6)))
    (tmp_path / "test.txt").write_text("".join(f"t/{c}_{k}.mp4 {c}\n" for c in range(5) for k in range(2)))
    return tmp_path


def test_make_few_shot_and_base_novel(custom_list):
    out = custom_list / "out"
    args = ["make", "--list", str(custom_list / "full.txt"), "--labels", str(custom_list / "labels.csv")]
    args += ["--out", str(out), "--shots", "2,4", "--base-novel", "--eval-list", str(custom_list / "test.txt")]
    assert cli.run_command("splits", [*args, "--base-shots", "3"]) == 0
    for k in (2, 4):
        few = read_annotations(out / f"train_few_shot_{k}.txt")
        assert Counter(a.label for a in few) == dict.fromkeys(range(5), k)
    # Base = first ceil(5/2) classes; lists use the position in the base/novel label files, as the official ones do.
    assert read_class_names(out / "base2novel/base_labels.csv") == ["class0", "class1", "class2"]
    assert read_class_names(out / "base2novel/novel_labels.csv") == ["class3", "class4"]
    novel = read_annotations(out / "base2novel/novel_val.txt")
    assert {(a.path[2], a.label) for a in novel} == {("3", 0), ("4", 1)}
    for n in (1, 2, 3):
        train = read_annotations(out / f"base2novel/fs_base_s{n}_train.txt")
        assert Counter(a.label for a in train) == {0: 3, 1: 3, 2: 3}
    first = (out / "train_few_shot_2.txt").read_text()
    cli.run_command("splits", [*args, "--base-shots", "3"])
    assert (out / "train_few_shot_2.txt").read_text() == first  # seeded: same files again


def test_make_refuses_more_shots_than_videos(custom_list, capsys):
    code = cli.main(
        ["splits", "make", "--list", str(custom_list / "full.txt"), "--labels", str(custom_list / "labels.csv")]
        + ["--out", str(custom_list / "o"), "--shots", "8"]
    )
    assert code == 2
    assert "class 0 has 6 videos, fewer than the 8 shots" in capsys.readouterr().err


def test_seeded_class_split_is_a_partition():
    base, novel = custom_splits.split_classes(11, "seeded", seed=3)
    assert len(base) == 6 and sorted(base + novel) == list(range(11))
    assert (base, novel) == custom_splits.split_classes(11, "seeded", seed=3)
    assert base != list(range(6))
