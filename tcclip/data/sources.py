"""Where each dataset of the paper comes from: official sources first, then known mirrors, and what is known of them.

No provider publishes a checksum of these archives (HMDB-51, UCF-101, the CVDF Kinetics tarballs, SSv2's parts):
downloads are checked for completeness against the size the server announces, archives for readability by reading
them to the end, and videos by ``tcclip data verify``. Where a checksum becomes known, ``RemoteFile.sha256`` /
``md5`` takes it and every download is checked against it. Sizes and counts below are the providers' own figures
(see docs/datasets.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from tcclip.data.download import RemoteFile

HMDB51_RAR = RemoteFile(
    "hmdb51_org.rar",
    (
        "https://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/hmdb51_org.rar",
        # The same server over plain HTTP: its TLS setup has failed at times.
        "http://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/hmdb51_org.rar",
    ),
)
UCF101_RAR = RemoteFile(
    "UCF101.rar",
    (
        "https://www.crcv.ucf.edu/data/UCF101/UCF101.rar",
        # The same archive under the site's newer path (public download scripts use both).
        "https://www.crcv.ucf.edu/datasets/human-actions/ucf101/UCF101.rar",
        # The certificate of www.crcv.ucf.edu has failed verification for many users; the plain-HTTP host serves the
        # same file (there is no checksum to check it against either way).
        "http://crcv.ucf.edu/data/UCF101/UCF101.rar",
    ),
)

KINETICS_S3 = "https://s3.amazonaws.com/kinetics"
"""The CVDF copy of Kinetics (github.com/cvdfoundation/kinetics-dataset): per split, a text file listing the URLs of
its tarballs (``{version}/{split}/k{version}_{split}_path.txt``), and the annotation CSVs."""


def kinetics_path_list(version: str, split: str) -> RemoteFile:
    """The list of tarball URLs of one split of one Kinetics version ("400", "600")."""
    name = f"k{version}_{split}_path.txt"
    return RemoteFile(f"{version}_{split}_{name}", (f"{KINETICS_S3}/{version}/{split}/{name}",))


def kinetics_annotations(version: str, split: str) -> RemoteFile:
    return RemoteFile(f"k{version}_{split}.csv", (f"{KINETICS_S3}/{version}/annotations/{split}.csv",))


K400_REPLACEMENT = RemoteFile(
    "replacement_for_corrupted_k400.tgz", (f"{KINETICS_S3}/400/replacement_for_corrupted_k400.tgz",)
)
"""About 1,400 re-encoded training videos for CVDF files that do not decode ("moov atom not found")."""


@dataclass(frozen=True)
class KnownGaps:
    """How many videos a complete CVDF copy of a Kinetics split has, against its annotation CSV (CVDF's figures)."""

    annotated: int
    in_copy: int


CVDF_K400_GAPS = {"train": KnownGaps(246_534, 240_258), "val": KnownGaps(19_906, 19_881)}
"""No list of which videos are missing is published, only these counts (the CVDF repository's
arrange_by_classes.py), so `data verify` compares counts."""

HMDB51_VIDEOS = 6_766
"""Clips in hmdb51_org.rar (the HMDB paper counts 6,849; the released archive holds 6,766)."""
UCF101_VIDEOS = 13_320

SSV2_PART_PREFIX = "20bn-something-something-v2-"
SSV2_VIDEOS = 220_847
"""Videos in the SSv2 archive (train 168,913 + validation 24,777 + test 27,157, the dataset's own figures)."""


def with_mirror(url: str, mirror: str | None) -> str:
    """``url`` served by ``mirror`` instead: the mirror's scheme, host and path prefix, then the URL's own path (a
    local copy of a provider's tree, e.g. ``--mirror http://cache.example/`` for ``https://s3.amazonaws.com/...``)."""
    if not mirror:
        return url
    return mirror.rstrip("/") + urlsplit(url).path


def sources(remote: RemoteFile, mirror: str | None = None, urls: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Sources to try for ``remote``: ``urls`` if given; else the mirror's copy first, then the file's own."""
    if urls:
        return urls
    if mirror:
        return tuple(dict.fromkeys([with_mirror(remote.urls[0], mirror), *remote.urls]))
    return remote.urls
