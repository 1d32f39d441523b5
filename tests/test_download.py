"""Resumable downloads and safe extraction, against a local HTTP server and archives made here (no internet)."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
from local_server import LocalServer
from rar_writer import rar_bytes, write_rar

from tcclip.data import archives, download
from tcclip.data.archives import ArchiveError, extract, flatten
from tcclip.data.download import DiskFullError, DownloadError, RemoteFile, fetch


@pytest.fixture(autouse=True)
def no_retry_wait(monkeypatch):
    monkeypatch.setattr(download, "RETRY_WAIT_S", 0.0)


DATA = bytes(range(256)) * 4096  # 1 MiB, every byte position distinguishable
SHA = hashlib.sha256(DATA).hexdigest()


def test_fetch_whole_file_and_skip_when_present(tmp_path: Path) -> None:
    with LocalServer({"/a.bin": DATA}) as server:
        remote = RemoteFile("a.bin", (server.url("/a.bin"),), size=len(DATA), sha256=SHA)
        seen = []
        report = fetch(remote, tmp_path, progress=lambda done, total: seen.append((done, total)))
        assert report.path.read_bytes() == DATA and report.source == server.url("/a.bin")
        assert seen[-1] == (len(DATA), len(DATA))
        assert fetch(remote, tmp_path).source is None  # present: not fetched again
        assert len(server.served.requests) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_resume_after_a_cut_uses_range(tmp_path: Path) -> None:
    with LocalServer({"/a.bin": DATA}) as server:
        server.served.cuts["/a.bin"] = [300_000, 200_000]  # two cut connections, then the rest
        remote = RemoteFile("a.bin", (server.url("/a.bin"),), size=len(DATA), sha256=SHA)
        report = fetch(remote, tmp_path, retries=3)
        assert report.path.read_bytes() == DATA
        ranges = [r for _, r in server.served.requests]
        assert ranges == [None, "bytes=300000-", "bytes=500000-"]
        assert len(report.failures) == 2 and "connection cut" in report.failures[0]


def test_resume_across_runs_and_server_without_range(tmp_path: Path) -> None:
    with LocalServer({"/a.bin": DATA}) as server:
        server.served.cuts["/a.bin"] = [100_000]
        remote = RemoteFile("a.bin", (server.url("/a.bin"),), size=len(DATA), sha256=SHA)
        with pytest.raises(DownloadError, match="Run the same command again"):
            fetch(remote, tmp_path, retries=1)  # a killed or failed run: the .part stays, no final name
        assert (tmp_path / "a.bin.part").stat().st_size == 100_000 and not (tmp_path / "a.bin").exists()
        server.served.honour_range = False  # a server that ignores Range: the file starts again from zero
        assert fetch(remote, tmp_path).path.read_bytes() == DATA
        assert server.served.requests[-1] == ("/a.bin", "bytes=100000-")


def test_wrong_checksum_is_kept_aside_and_the_mirror_used(tmp_path: Path) -> None:
    bad = DATA[:-1] + b"\x00"
    with LocalServer({"/official/a.bin": bad, "/mirror/a.bin": DATA}) as server:
        remote = RemoteFile("a.bin", (server.url("/official/a.bin"), server.url("/mirror/a.bin")), sha256=SHA)
        report = fetch(remote, tmp_path)
        assert report.path.read_bytes() == DATA and report.source.endswith("/mirror/a.bin")
        assert "sha256" in report.failures[0] and (tmp_path / "a.bin.corrupt").read_bytes() == bad


def test_wrong_checksum_everywhere_is_a_clear_error(tmp_path: Path) -> None:
    with LocalServer({"/a.bin": DATA}) as server:
        remote = RemoteFile("a.bin", (server.url("/a.bin"),), md5="0" * 32)
        with pytest.raises(DownloadError) as info:
            fetch(remote, tmp_path)
        message = str(info.value)
        assert "md5" in message and hashlib.md5(DATA).hexdigest() in message and "--url" in message
        assert not (tmp_path / "a.bin").exists()


def test_dead_first_source_falls_back_to_mirror(tmp_path: Path) -> None:
    with LocalServer({"/mirror/a.bin": DATA}) as server:
        dead_port = "http://127.0.0.1:9/a.bin"  # discard port: connection refused
        remote = RemoteFile("a.bin", (dead_port, server.url("/gone.bin"), server.url("/mirror/a.bin")), len(DATA))
        report = fetch(remote, tmp_path)
        assert report.path.read_bytes() == DATA
        assert "cannot connect" in report.failures[0] and "HTTP 404" in report.failures[1]


def test_url_override_and_size_mismatch(tmp_path: Path) -> None:
    with LocalServer({"/other.bin": DATA[:1000], "/right.bin": DATA}) as server:
        remote = RemoteFile("a.bin", ("http://127.0.0.1:9/a.bin",), size=len(DATA))
        with pytest.raises(DownloadError, match="serves 1000 bytes"):
            fetch(remote, tmp_path, urls=[server.url("/other.bin")])
        assert fetch(remote, tmp_path, urls=[server.url("/right.bin")]).path.read_bytes() == DATA


def test_part_from_another_source_is_not_spliced(tmp_path: Path) -> None:
    other = bytes(reversed(DATA))
    with LocalServer({"/one.bin": other, "/two.bin": DATA}) as server:
        server.served.cuts["/one.bin"] = [5000, 5000]
        remote = RemoteFile("a.bin", (server.url("/one.bin"), server.url("/two.bin")), size=len(DATA))
        assert fetch(remote, tmp_path, retries=2).path.read_bytes() == DATA  # not other[:5000] + DATA[5000:]


def test_not_enough_space_for_download(tmp_path: Path, monkeypatch) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(download.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with LocalServer({"/a.bin": DATA}) as server:
        with pytest.raises(DiskFullError, match="needs 1.0 MiB free"):
            fetch(RemoteFile("a.bin", (server.url("/a.bin"),), size=len(DATA)), tmp_path)


def test_disk_full_during_download_keeps_the_part(tmp_path: Path, monkeypatch) -> None:
    real_open = open
    written = {"n": 0}

    class FullFile(io.FileIO):
        def write(self, b):
            room = 400_000 - written["n"]  # the disk holds 400,000 bytes of this file
            if len(b) > room:
                written["n"] += super().write(bytes(b[:room]))
                raise OSError(errno.ENOSPC, "No space left on device")
            written["n"] += len(b)
            return super().write(b)

    def fake_open(path, mode="r", *args, **kwargs):
        if str(path).endswith(".part") and "a" in mode or str(path).endswith(".part") and "w" in mode:
            return FullFile(path, mode.replace("b", ""))
        return real_open(path, mode, *args, **kwargs)

    with LocalServer({"/a.bin": DATA}) as server:
        remote = RemoteFile("a.bin", (server.url("/a.bin"),), size=len(DATA), sha256=SHA)
        monkeypatch.setattr("builtins.open", fake_open)
        with pytest.raises(DiskFullError, match="resumes"):
            fetch(remote, tmp_path)
        monkeypatch.setattr("builtins.open", real_open)
        kept = (tmp_path / "a.bin.part").stat().st_size
        assert kept > 0 and not (tmp_path / "a.bin").exists()
        assert fetch(remote, tmp_path).path.read_bytes() == DATA
        assert server.served.requests[-1][1] == f"bytes={kept}-"


# -- archives ---------------------------------------------------------------------------------------------------------

FILES = {"UCF-101/Jump/v_Jump_g01_c01.avi": b"jump" * 1000, "UCF-101/Run/v_Run_g01_c01.avi": b"run" * 999}


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["rar", "tar", "zip"])
def test_extract_each_format(tmp_path: Path, kind: str) -> None:
    make = {"rar": rar_bytes, "tar": _tar_gz, "zip": _zip}[kind]
    archive = tmp_path / f"a.{kind}"
    archive.write_bytes(make(FILES))
    placed = extract(archive, tmp_path / "out", place=flatten)
    assert sorted(placed) == ["v_Jump_g01_c01.avi", "v_Run_g01_c01.avi"]
    for name, data in FILES.items():
        assert (tmp_path / "out" / Path(name).name).read_bytes() == data
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []


def test_nested_rar(tmp_path: Path) -> None:
    inner = {f"{c}.rar": rar_bytes({f"{c}/{c}_{i}.avi": bytes([i]) * 50 for i in range(2)}) for c in ("run", "hug")}
    outer = write_rar(tmp_path / "outer.rar", inner)
    rars = extract(outer, tmp_path / "rars", place=flatten)
    for name in rars:
        extract(tmp_path / "rars" / name, tmp_path / "videos", place=flatten)
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["hug_0.avi", "hug_1.avi", "run_0.avi",
                                                                       "run_1.avi"]  # fmt: skip


def test_split_tar_parts_read_as_one_stream(tmp_path: Path) -> None:
    data = _tar_gz({f"20bn/{i}.webm": bytes([i]) * 3000 for i in range(5)})
    parts = []
    for i in range(3):
        part = tmp_path / f"part-{i:02d}"
        part.write_bytes(data[i * len(data) // 3 : (i + 1) * len(data) // 3])
        parts.append(part)
    assert sorted(extract(parts, tmp_path / "out", place=flatten)) == [f"{i}.webm" for i in range(5)]


def test_interrupted_extraction_leaves_no_file_and_reruns(tmp_path: Path) -> None:
    archive = tmp_path / "a.rar"
    archive.write_bytes(rar_bytes(FILES))
    out = tmp_path / "out"

    def kill_after_first(name: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(archive, out, place=flatten, progress=kill_after_first)
    assert list(out.iterdir()) == []  # nothing under a final name, staging removed
    # A SIGKILL leaves the staging folder behind: the rerun wipes it and extracts everything.
    stale = archives.staging_folder(out, archive) / "v_Jump_g01_c01.avi"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    assert len(extract(archive, out, place=flatten)) == 2
    assert sorted(p.name for p in out.iterdir()) == ["v_Jump_g01_c01.avi", "v_Run_g01_c01.avi"]


def test_truncated_archives_are_clear_errors(tmp_path: Path) -> None:
    for kind, data in (("rar", rar_bytes(FILES)), ("tar", _tar_gz(FILES)), ("zip", _zip(FILES))):
        archive = tmp_path / f"cut.{kind}"
        archive.write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(ArchiveError, match="truncated or damaged.*download it afresh"):
            extract(archive, tmp_path / f"out-{kind}")
        assert not any((tmp_path / f"out-{kind}").iterdir())


def test_html_page_instead_of_archive(tmp_path: Path) -> None:
    page = tmp_path / "UCF101.rar"
    page.write_text("<html><body>503 Service Unavailable</body></html>")
    with pytest.raises(ArchiveError, match="not a tar, zip or RAR archive.*HTML"):
        extract(page, tmp_path / "out")


def test_unsafe_member_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip({"../escape.avi": b"x"}))
    with pytest.raises(ArchiveError, match="outside the destination"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "escape.avi").exists()


def test_extraction_checks_space_first_and_survives_a_full_disk(tmp_path: Path, monkeypatch) -> None:
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip(FILES))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(download.shutil, "disk_usage", lambda p: usage._replace(free=100))
    with pytest.raises(DiskFullError, match="extracting a.zip"):
        extract(archive, tmp_path / "out")
    monkeypatch.undo()

    real_copy = shutil.copyfileobj

    def full(src, dst, length=0):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archives.shutil, "copyfileobj", full)
    with pytest.raises(DiskFullError, match="filled up during extraction"):
        extract(archive, tmp_path / "out")
    assert archive.is_file() and list((tmp_path / "out").iterdir()) == []
    monkeypatch.setattr(archives.shutil, "copyfileobj", real_copy)
    assert len(extract(archive, tmp_path / "out")) == 2


def test_missing_libarchive_names_the_os_package(tmp_path: Path, monkeypatch) -> None:
    import sys

    archive = tmp_path / "a.rar"
    archive.write_bytes(rar_bytes(FILES))
    monkeypatch.setitem(sys.modules, "libarchive", None)  # import fails as without the package
    with pytest.raises(ArchiveError, match="libarchive-tools.*libarchive-c"):
        extract(archive, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == []


def test_whole_part_left_by_a_kill_before_the_rename(tmp_path: Path) -> None:
    with LocalServer({"/a.bin": DATA}) as server:
        (tmp_path / "a.bin.part").write_bytes(DATA)
        (tmp_path / "a.bin.part.url").write_text(server.url("/a.bin") + "\n")
        report = fetch(RemoteFile("a.bin", (server.url("/a.bin"),), sha256=SHA), tmp_path)  # size not known
        assert report.path.read_bytes() == DATA
        assert server.served.requests == [("/a.bin", f"bytes={len(DATA)}-")]  # answered 416: nothing sent again


def test_certificate_that_does_not_verify(tmp_path: Path) -> None:
    """A server whose certificate fails verification (UCF-101's, for many users): skipped with the hint, and
    --insecure downloads it (the size and checksum checks still apply)."""
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    with LocalServer({"/a.bin": DATA}, tls=(str(cert), str(key))) as server:
        remote = RemoteFile("a.bin", (server.url("/a.bin"),), size=len(DATA), sha256=SHA)
        with pytest.raises(DownloadError, match="TLS certificate does not verify.*--insecure"):
            fetch(remote, tmp_path / "strict")
        assert fetch(remote, tmp_path / "insecure", insecure=True).path.read_bytes() == DATA
