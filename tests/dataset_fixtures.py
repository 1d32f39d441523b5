"""Fixture copies of the five datasets as their providers package them, made from one tiny video per container.

Each builder returns ``{URL path: bytes}`` for `local_server.LocalServer` (Kinetics under the CVDF tree
``/kinetics/...``, which ``tcclip data download --mirror`` maps the official URLs onto), or writes the SSv2 parts
into a folder (SSv2 is downloaded by the user after logging in). Every video named in the given lists is in the
archives, under the name and folder the provider uses.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Iterable
from functools import cache
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import numpy as np
from rar_writer import rar_bytes

S3 = "https://s3.amazonaws.com"


@cache
def tiny_video(ext: str) -> bytes:
    """A valid 4-frame 32x32 video (avi: MPEG-4 part 2, mp4: H.264, webm: VP9)."""
    import tempfile

    from tcclip.data.synth import render_video, write_video

    with tempfile.TemporaryDirectory() as folder:
        path = write_video(Path(folder) / f"v.{ext}", render_video("MoveRight", 4, 32, 32, np.random.default_rng(0)))
        return path.read_bytes()


def read_list(path: Path) -> list[tuple[str, int]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            name, label = line.rsplit(maxsplit=1)
            rows.append((name, int(label)))
    return rows


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def hmdb51(videos: Iterable[tuple[str, int]]) -> dict[str, bytes]:
    """hmdb51_org.rar: one RAR per class, each with ``<class>/<clip>.avi``."""
    by_class: dict[str, dict[str, bytes]] = {}
    for name, label in videos:
        by_class.setdefault(f"class_{label:02d}", {})[f"class_{label:02d}/{name}"] = tiny_video("avi")
    inner = {f"{c}.rar": rar_bytes(files) for c, files in sorted(by_class.items())}
    return {"/hmdb51_org.rar": rar_bytes(inner)}


def ucf101(videos: Iterable[tuple[str, int]]) -> dict[str, bytes]:
    """UCF101.rar: ``UCF-101/<Class>/v_<Class>_gNN_cNN.avi``."""
    files = {f"UCF-101/{name.split('_')[1]}/{name}": tiny_video("avi") for name, _ in videos}
    return {"/UCF101.rar": rar_bytes(files)}


def kinetics(version: str, by_split: dict[str, list[dict[str, bytes]]], extra: dict[str, bytes] | None = None):
    """The CVDF tree: per split a path list of tarball URLs and the tarballs (``{tarball name: {member: bytes}}``
    per entry of ``by_split[split]``, a dict of one name each)."""
    served = dict(extra or {})
    for split, tarballs in by_split.items():
        urls = []
        for tarball in tarballs:
            ((name, members),) = tarball.items()
            path = f"/kinetics/{version}/{split}/{quote(name)}"
            served[path] = tar_gz(members)
            urls.append(S3 + path)
        served[f"/kinetics/{version}/{split}/k{version}_{split}_path.txt"] = ("\n".join(urls) + "\n").encode()
    return served


def chunks(items: list, n: int) -> list[list]:
    return [items[i::n] for i in range(n)]


def ssv2_parts(folder: Path, names: Iterable[str], parts: int = 20, zipped: Iterable[int] = ()) -> Path:
    """The SSv2 download: a tar.gz of ``20bn-something-something-v2/<id>.webm`` cut into numbered parts, some
    wrapped in a zip of their own."""
    data = tar_gz({f"20bn-something-something-v2/{PurePosixPath(n).name}": tiny_video("webm") for n in names})
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(data) // parts)
    zipped = set(zipped)
    for i in range(parts):
        name = f"20bn-something-something-v2-{i:02d}"
        chunk = data[i * size : (i + 1) * size]
        if i in zipped:
            with zipfile.ZipFile(folder / f"{name}.zip", "w") as z:
                z.writestr(name, chunk)
        else:
            (folder / name).write_bytes(chunk)
    return folder
