"""`VideoDataset`: decode, sample and transform the videos of one annotation list.

Broken input (a missing, truncated, zero-frame or undecodable file) never stops a run by itself:

- every broken video is logged with its path and reason, and recorded in ``<run_dir>/broken_videos.txt``
  (one line ``<split>\\t<relative path>\\t<reason>``; the file is shared by all DataLoader workers and DDP ranks,
  appended under a file lock, so the count is exact across processes);
- in training the item is replaced by the next readable video of the same list (index + 1, + 2, ... wrapping), so
  the choice is deterministic;
- in evaluation the item is *excluded*: it comes back with ``video=None`` and :func:`eval_collate` drops it from the
  batch, so accuracies are computed over the readable videos only and their count (``num_videos``) is honest.
  Replacing it would silently count another video twice;
- the run stops with :class:`BrokenVideosError` only when the broken videos of one split exceed
  ``max_broken_fraction`` of that split (a wrong root or a half-extracted dataset, not bad luck), or as soon as the
  videos tried so far show beyond reasonable doubt that they will (:func:`surely_above`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tcclip.data.labels import Annotation, read_annotations
from tcclip.utils.errors import UserError

try:  # POSIX file locks make the shared broken-video file exact across processes; elsewhere best effort.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)

BROKEN_VIDEOS_FILE = "broken_videos.txt"


class BrokenVideosError(UserError, RuntimeError):
    """Too many videos of one split could not be read."""


BROKEN_CONFIDENCE_Z = 4.0
"""Standard deviations of certainty before the first videos alone stop a run (about 3e-5 one-sided)."""


def surely_above(broken: int, tried: int, fraction: float, z: float = BROKEN_CONFIDENCE_Z) -> bool:
    """True when `broken` of `tried` videos show, beyond reasonable doubt, that more than `fraction` of the whole list
    is broken: the Wilson score lower bound of the broken fraction (z standard deviations) exceeds it.

    A wrong root or a half-extracted dataset is then known after a handful of videos instead of once the count alone
    exceeds the limit (most of an epoch for a generous limit). At least 3 broken videos are required.
    """
    if broken < 3 or tried <= 0:
        return False
    p, n = broken / tried, tried
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n) > fraction


@dataclass(frozen=True)
class BrokenVideoLog:
    """Record of unreadable videos shared by every process of a run (an append-only, locked text file).

    The folder is made on the first record only: a run without broken videos leaves nothing behind.
    """

    run_dir: Path

    @classmethod
    def temporary(cls) -> BrokenVideoLog:
        """A log for a run without a run folder: in a new folder of the temporary directory, named now (so every
        process of the run shares it) and made only when a broken video is recorded."""
        import secrets
        import tempfile

        return cls(Path(tempfile.gettempdir()) / f"tcclip-broken-{secrets.token_hex(8)}")

    @property
    def path(self) -> Path:
        return Path(self.run_dir) / BROKEN_VIDEOS_FILE

    def record(self, split: str, video: str, reason: str) -> bool:
        """Add a broken video (once per split and path). Returns True if it was new."""
        reason = " ".join(reason.split())  # one line per entry
        Path(self.run_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.path, "a+", encoding="utf-8") as f:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                f.seek(0)
                if any(line.split("\t", 2)[:2] == [split, video] for line in f.read().splitlines()):
                    return False
                f.write(f"{split}\t{video}\t{reason}\n")
                f.flush()
                return True
            finally:
                if fcntl is not None:
                    fcntl.flock(f, fcntl.LOCK_UN)

    def entries(self, split: str | None = None) -> dict[tuple[str, str], str]:
        """(split, path) -> reason, for one split or all."""
        if not self.path.is_file():
            return {}
        result = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            parts = line.split("\t", 2)
            if len(parts) == 3 and (split is None or parts[0] == split):
                result[(parts[0], parts[1])] = parts[2]
        return result

    def count(self, split: str) -> int:
        return len(self.entries(split))


class VideoDataset(Dataset):
    """The videos of one annotation list, as ``{"video": float [V, T, 3, S, S], "label": int, "index": int}``.

    Args:
        annotations: an annotation list file, or its parsed lines.
        root: dataset root; video paths in the list are relative to it.
        num_frames: frames sampled per view (T).
        transform: uint8 frames -> float [V, T, 3, S, S]; gets [T, H, W, 3] in training (``TrainTransform``) and
            [num_clip, T, H, W, 3] in evaluation (``TestTransform``, which adds the crops to V).
        train: training sampling (random offsets, 1 view) and broken videos replaced; otherwise test sampling
            (``num_clip`` deterministic views) and broken videos excluded.
        num_clip: temporal views per video at test time.
        backend: video decoder (see ``tcclip.data.video_reader.open_video``); checked here, so that a backend that
            cannot run stops the run at once with the fix instead of marking every video broken.
        split: name of this list in logs and in ``broken_videos.txt`` (unique within a run).
        broken_log: where broken videos are recorded; by default a ``broken_videos.txt`` in a new temporary folder,
            made when the first broken video is found (its path is in the warning).
        max_broken_fraction: stop when more than this fraction of the list is broken.
        num_classes: when given, labels are checked against it.
    """

    def __init__(
        self,
        annotations: str | os.PathLike | Sequence[Annotation],
        root: str | os.PathLike,
        num_frames: int,
        transform: Callable[[torch.Tensor], torch.Tensor],
        train: bool = False,
        num_clip: int = 1,
        backend: str = "auto",
        split: str = "data",
        broken_log: BrokenVideoLog | None = None,
        max_broken_fraction: float = 0.01,
        num_classes: int | None = None,
    ) -> None:
        if isinstance(annotations, (str, os.PathLike)):
            annotations = read_annotations(annotations, num_classes)
        self.annotations: list[Annotation] = list(annotations)
        self.root = Path(root)
        self.num_frames = num_frames
        self.transform = transform
        self.train = train
        self.num_clip = 1 if train else num_clip
        from tcclip.data.video_reader import resolve_backend

        self.backend = resolve_backend(backend)
        self.split = split
        self.broken_log = broken_log if broken_log is not None else BrokenVideoLog.temporary()
        self.max_broken_fraction = max_broken_fraction
        self._known_broken: set[int] = set()  # per process: do not decode a known-broken file again
        self._tried = 0  # per process: decodes attempted, for the early estimate of the broken fraction

    def __len__(self) -> int:
        return len(self.annotations)

    def path(self, index: int) -> str:
        """The video's path relative to the root, as written in the list."""
        return self.annotations[index].path

    def label(self, index: int) -> int:
        return self.annotations[index].label

    def __getitem__(self, key: int | tuple[int, int, int]) -> dict[str, Any]:
        """The video at `key`: an index, or in training (index, seed, epoch) as `tcclip.data.resumable.TrainSampler`
        yields them: its random frame offsets and augmentations then come from a generator seeded with exactly
        that, the same in whichever worker, and after a resume (otherwise from torch's RNG)."""
        rng = None
        if isinstance(key, (tuple, list)):
            index, seed, epoch = (int(k) for k in key)
            rng = np.random.default_rng([seed, epoch, index]) if self.train else None
        else:
            index = int(key)
        if not self.train:
            video = self._try_load(index)
            return {"video": video, "label": self.label(index), "index": index}
        for step in range(len(self)):
            candidate = (index + step) % len(self)
            video = self._try_load(candidate, rng)
            if video is not None:
                return {"video": video, "label": self.label(candidate), "index": candidate}
        raise BrokenVideosError(f"no video of split {self.split!r} under {self.root} can be read")

    def load_frames(self, index: int, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Decode the sampled frames of one video: uint8 [V*T, H, W, 3]. Raises on broken input.

        Args:
            rng: training only: where the random frame offsets come from (default: a generator seeded from torch's
                RNG, which the DataLoader seeds per worker)."""
        from tcclip.data.sampling import test_indices, train_indices
        from tcclip.data.video_reader import VideoDecodeError, open_video

        full_path = self.root / self.path(index)
        reader = open_video(full_path, backend=self.backend)
        # The shared frame definition: a count that only holds frames that decode, whatever the backend, so the
        # sampled views never decide whether a file is broken (see tcclip.data.video_frames).
        num_video_frames = len(reader)
        if self.train:
            if rng is None:  # a fresh generator from torch's RNG, seeded per worker by the DataLoader
                rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
            indices = train_indices(num_video_frames, self.num_frames, rng)
        else:
            views = test_indices(num_video_frames, self.num_frames, self.num_clip)
            indices = [i for view in views for i in view]
        frames = reader.get_frames(indices)
        if frames.shape[0] != len(indices):  # a reader that breaks its contract must not pass silently
            raise VideoDecodeError(full_path, f"decoded {frames.shape[0]} of {len(indices)} requested frames")
        return frames

    def _try_load(self, index: int, rng: np.random.Generator | None = None) -> torch.Tensor | None:
        from tcclip.data.video_reader import VideoDecodeError

        if index in self._known_broken:
            return None
        self._tried += 1
        try:
            frames = self.load_frames(index, rng)
        except (VideoDecodeError, OSError) as e:  # unreadable input only; other errors are bugs and propagate
            self._mark_broken(index, f"{type(e).__name__}: {e}")
            return None
        if not self.train:
            frames = frames.unflatten(0, (self.num_clip, self.num_frames))  # [V, T, H, W, 3], views clip-major
        if rng is not None:  # the same generator draws the augmentations (TrainTransform takes one)
            return self.transform(frames, rng=rng)  # type: ignore[call-arg]
        return self.transform(frames)

    def _mark_broken(self, index: int, reason: str) -> None:
        self._known_broken.add(index)
        action = "replaced by the next readable video" if self.train else "excluded from the metrics"
        if self.broken_log.record(self.split, self.path(index), reason):
            log.warning("broken video %s (split %s, %s): %s", self.root / self.path(index), self.split, action, reason)
            if len(self.broken_log.entries()) == 1:  # the first of the run: say where the list is kept
                log.warning("unreadable videos of this run are listed in %s", self.broken_log.path)
        count = self.broken_log.count(self.split)
        early = surely_above(len(self._known_broken), self._tried, self.max_broken_fraction)
        if count > self.max_broken_fraction * len(self) or early:
            seen = f" ({len(self._known_broken)} of the first {self._tried} tried)" if early else ""
            raise BrokenVideosError(
                f"{count} of {len(self)} videos of split {self.split!r} could not be read{seen}: more than "
                f"max_broken_fraction={self.max_broken_fraction} of the list is broken; the list is in "
                f"{self.broken_log.path}",
                fix=f"Check the dataset root ({self.root}) and the files, list them all with `tcclip data check "
                "--config <your config>`, or raise data.init_args.max_broken_fraction.",
            )


def eval_collate(items: list[dict[str, Any]], video_shape: Sequence[int]) -> dict[str, torch.Tensor]:
    """Stack evaluation items, dropping excluded (broken) videos. A batch may thus be smaller, or even empty.

    Args:
        video_shape: [V, T, 3, S, S] of one video, for the (rare) batch whose videos are all broken.
    """
    kept = [item for item in items if item["video"] is not None]
    if not kept:
        return {
            "video": torch.empty((0, *video_shape)),
            "label": torch.empty(0, dtype=torch.long),
            "index": torch.empty(0, dtype=torch.long),
        }
    return {
        "video": torch.stack([item["video"] for item in kept]),
        "label": torch.tensor([item["label"] for item in kept], dtype=torch.long),
        "index": torch.tensor([item["index"] for item in kept], dtype=torch.long),
    }


@dataclass(frozen=True)
class EvalCollate:
    """Picklable ``collate_fn`` for evaluation loaders (see :func:`eval_collate`)."""

    video_shape: tuple[int, ...]

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return eval_collate(items, self.video_shape)
