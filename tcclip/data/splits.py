"""Official split and label files: the manifest that pins them, their download and their verification.

The official TC-CLIP annotation lists and label files are not part of this repository (their licence differs).
``split_manifest.json`` (package data, next to this module) pins every file (path, size, sha256) at one upstream
commit; ``tcclip splits download`` fetches them from GitHub (or copies them from a local mirror), verifies them and
writes them atomically to ``data_splits/files`` (or ``$TCCLIP_SPLITS_DIR``), where the DataModules look for them.

``tcclip splits make`` builds few-shot and base/novel splits of a custom dataset in the same formats
(`tcclip.data.custom_splits`).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tcclip.data.download import file_digest
from tcclip.utils.errors import UserError
from tcclip.utils.outputs import give_usual_mode

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
# Package data, so that an installed tcclip (not only a checkout) can download and verify the split files.
MANIFEST_PATH = Path(__file__).resolve().parent / "split_manifest.json"
SPLITS_DIR_ENV = "TCCLIP_SPLITS_DIR"
# In a checkout the files go to <repo>/data_splits/files (gitignored); an installed package has no repository
# folder, so they go to the user's cache (site-packages is no place for downloads).
_IN_CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "data_splits").is_dir()
_CACHE_HOME = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
DEFAULT_SPLITS_DIR = REPO_ROOT / "data_splits" / "files" if _IN_CHECKOUT else _CACHE_HOME / "tcclip" / "data_splits"
DOWNLOAD_TIMEOUT_S = 60


class SplitFilesError(UserError, FileNotFoundError):
    """An official split/label file is missing or does not match the manifest."""


class SplitsError(UserError, ValueError):
    """A split manifest or an option of `tcclip splits download` cannot be used as given."""


# --------------------------------------------------------------------------------------------------------------------
# Manifest and verification
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    """Path inside the upstream repository (under ``labels/`` or ``datasets_splits/``)."""
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    commit: str
    url_template: str
    """Raw-file URL with ``{commit}`` and ``{path}`` placeholders."""
    files: tuple[ManifestEntry, ...]

    def url(self, entry: ManifestEntry) -> str:
        return self.url_template.format(commit=self.commit, path=entry.path)

    def entry(self, path: str) -> ManifestEntry | None:
        return next((e for e in self.files if e.path == path), None)


def load_manifest(path: str | os.PathLike | None = None) -> Manifest:
    """Load the packaged manifest (or another manifest file)."""
    path = Path(path) if path is not None else MANIFEST_PATH
    if not path.is_file():
        raise SplitsError(
            "split manifest not found" + (" (it is a folder)" if path.is_dir() else ""),
            path=path,
            fix="Reinstall tcclip (it ships the manifest as package data), or pass --manifest pointing to a manifest "
            "file.",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SplitsError(f"not valid JSON ({e.msg})", path=path, line=e.lineno, fix=_MANIFEST_FIX) from None
    except UnicodeDecodeError as e:
        raise SplitsError(f"not UTF-8 text ({e.reason})", path=path, fix=_MANIFEST_FIX) from None
    try:
        files = tuple(ManifestEntry(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in data["files"])
        return Manifest(commit=str(data["commit"]), url_template=str(data["url_template"]), files=files)
    except (KeyError, TypeError, ValueError) as e:
        what = f"the key {e.args[0]!r} is missing" if isinstance(e, KeyError) else f"a value has the wrong type ({e})"
        raise SplitsError(
            f"not a split manifest: {what}; it needs commit, url_template and files [{{path, size, sha256}}, ...]",
            path=path,
            fix=_MANIFEST_FIX,
        ) from None


_MANIFEST_FIX = "Restore the file (git checkout tcclip/data/split_manifest.json, or reinstall tcclip) or fix the JSON."


def sha256_file(path: str | os.PathLike) -> str:
    return file_digest(Path(path), "sha256")


def is_valid(path: Path, entry: ManifestEntry) -> bool:
    """True if ``path`` exists with the manifest's size and sha256."""
    return path.is_file() and path.stat().st_size == entry.size and sha256_file(path) == entry.sha256


def default_splits_dir() -> Path:
    """``$TCCLIP_SPLITS_DIR`` if set, else ``<repo>/data_splits/files`` (installed: ``~/.cache/tcclip/data_splits``)."""
    env = os.environ.get(SPLITS_DIR_ENV)
    return Path(env).expanduser() if env else DEFAULT_SPLITS_DIR


def download_command(splits_dir: Path) -> str:
    """The one command that puts the official files into ``splits_dir``."""
    same = Path(splits_dir).resolve() == default_splits_dir().resolve()
    return "tcclip splits download" + ("" if same else f" --dest {splits_dir}")


def require_split_file(splits_dir: str | os.PathLike, rel_path: str, manifest: Manifest | None = None) -> Path:
    """Path of an official file inside ``splits_dir``; a clear error (with the command to fix it) if absent or bad.

    Files named in the manifest are checked against their sha256 so that a half-written or edited file never
    silently changes an experiment; other files (custom lists) only need to exist.
    """
    splits_dir = Path(splits_dir)
    path = splits_dir / rel_path
    if manifest is None and MANIFEST_PATH.is_file():
        manifest = load_manifest()
    entry = manifest.entry(rel_path) if manifest is not None else None
    if not path.is_file() and manifest is not None and entry is None:
        raise SplitFilesError(
            f"{path}: list not found, and it is not one of the official files (`tcclip splits download` cannot fetch "
            "it). Fix: write it yourself ('<relative video path> <label>' per line) or choose another list "
            "(e.g. data.train_list)."
        )
    if not path.is_file():
        raise SplitFilesError(
            f"{path}: split file not found. Fix: run `{download_command(splits_dir)}` to fetch the official split "
            f"and label files (or set data.splits_dir / ${SPLITS_DIR_ENV} to the folder that has them)."
        )
    if entry is not None and not is_valid(path, entry):
        raise SplitFilesError(
            f"{path}: does not match the pinned checksum (modified or partly downloaded). "
            f"Fix: run `{download_command(splits_dir)}` to fetch it again."
        )
    return path


# --------------------------------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class DownloadReport:
    fetched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Already present and valid."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason)."""


def select_entries(manifest: Manifest, only: Sequence[str] = ()) -> list[ManifestEntry]:
    """Manifest entries whose path matches any of the glob patterns ``only`` (all if empty)."""
    if not only:
        return list(manifest.files)
    return [e for e in manifest.files if any(fnmatch.fnmatch(e.path, pat) or pat in e.path for pat in only)]


def download_splits(
    dest: str | os.PathLike,
    mirror: str | os.PathLike | None = None,
    only: Sequence[str] = (),
    manifest: Manifest | None = None,
    on_file: Callable[[ManifestEntry, str], None] | None = None,
) -> DownloadReport:
    """Fetch (or copy from ``mirror``) every selected manifest file into ``dest`` and verify it.

    Files already valid are skipped; each file is written to a temporary file and moved into place only once its
    checksum matches, so an interrupted run never leaves a bad file behind.

    Args:
        on_file: called after each file with its entry and the outcome ("fetched", "skipped" or "failed").
    """
    manifest = manifest or load_manifest()
    dest = Path(dest)
    report = DownloadReport()
    for entry in select_entries(manifest, only):
        target = dest / entry.path
        outcome = "skipped"
        if is_valid(target, entry):
            report.skipped.append(entry.path)
        else:
            try:
                _fetch_one(entry, target, manifest, mirror)
                report.fetched.append(entry.path)
                outcome = "fetched"
            except (OSError, ValueError) as e:  # network, file system and checksum errors; reported, not raised
                report.failed.append((entry.path, str(e)))
                outcome = "failed"
        if on_file is not None:
            on_file(entry, outcome)
    return report


def _fetch_one(entry: ManifestEntry, target: Path, manifest: Manifest, mirror: str | os.PathLike | None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            if mirror is not None:
                source = Path(mirror) / entry.path
                if not source.is_file():
                    raise FileNotFoundError(f"not in the mirror folder ({source})")
                with open(source, "rb") as src:
                    shutil.copyfileobj(src, out)
            else:
                with urllib.request.urlopen(manifest.url(entry), timeout=DOWNLOAD_TIMEOUT_S) as response:
                    shutil.copyfileobj(response, out)
        got = sha256_file(tmp)
        if got != entry.sha256:
            raise ValueError(f"checksum mismatch (sha256 {got[:12]}..., expected {entry.sha256[:12]}...)")
        give_usual_mode(tmp)  # mkstemp's file is private; a split file is read by everyone who runs the lists
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
