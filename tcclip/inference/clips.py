"""A video as the model's test input: files, folders and decoded frames accepted as videos, the test views
(temporal clips x spatial crops), and the frames of those views read through `tcclip.data.video_reader`, the reader
training uses, then put through the evaluation transform.

The sampling is the evaluation pipeline's (`tcclip.data.sampling.test_indices` and
`tcclip.data.transforms.TestTransform`: deterministic frame sampling, short-side resize and centre crop,
normalisation).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from tcclip.utils.errors import UserError

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv"}
)
"""File endings that a folder given to `tcclip predict` is searched for."""

VideoInput = str | Path | Tensor
"""A video file, or its decoded frames as uint8 [F, H, W, 3] (a torch tensor or a numpy array)."""


class VideoInputError(UserError, TypeError):
    """A video argument of the Python API that is neither a path nor decoded frames."""


def as_video_input(video: object, what: str = "video") -> str | Path | Tensor:
    """A path as it is, a numpy array of frames as a tensor (shared memory), anything else refused by name."""
    import numpy as np

    if isinstance(video, (str, Path, Tensor)):
        return video
    if isinstance(video, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(video))
    if isinstance(video, os.PathLike):
        return Path(video)
    raise VideoInputError(
        f"{what} is {'None' if video is None else type(video).__name__}, not a video",
        fix="Give a file path, decoded frames as uint8 [F, H, W, 3] (a torch tensor or a numpy array), or a list "
        "of those.",
    )


def video_list(video: object) -> tuple[bool, list]:
    """(one video given?, the videos checked): a single input, or a list/tuple of them (each named if wrong)."""
    import numpy as np

    if video is None or isinstance(video, (str, Path, Tensor, np.ndarray, os.PathLike)):
        return True, [as_video_input(video)]
    if not isinstance(video, (list, tuple)):
        as_video_input(video)  # refused, by name
    if not video:
        raise VideoInputError("the list of videos is empty", fix="Give at least one video.")
    return False, [as_video_input(v, f"video[{i}]") for i, v in enumerate(video)]


@dataclass(frozen=True)
class Views:
    """Test views per video: `clips` temporal clips (evenly shifted samplings) times `crops` spatial crops."""

    clips: int = 1
    crops: int = 1

    def __post_init__(self) -> None:
        if self.clips < 1 or self.crops not in (1, 3):
            raise ValueError(f"views need clips >= 1 and crops 1 or 3, got {self.clips}x{self.crops}")

    @property
    def count(self) -> int:
        return self.clips * self.crops

    @classmethod
    def parse(cls, views: str | Views) -> Views:
        """`"2x1"` (clips x crops), `"4"` (clips, one crop) or a `Views`."""
        if isinstance(views, Views):
            return views
        parts = str(views).lower().split("x")
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            numbers = []
        if len(numbers) not in (1, 2):
            raise ValueError(f"views must look like 2x1 (temporal clips x spatial crops), got {views!r}")
        return cls(*numbers)

    def __str__(self) -> str:
        return f"{self.clips}x{self.crops}"


def make_test_transform(input_size: int, crops: int, num_frames: int):
    """The evaluation transform (resize, crop(s), normalise) for clips of `num_frames`."""
    from tcclip.data.transforms import TestTransform

    return TestTransform(input_size, num_crop=crops, num_frames=num_frames)


def default_backend() -> str:
    """The exact video decoder that works here: torchcodec where FFmpeg's libraries load, else PyAV."""
    from tcclip.data.video_reader import available_backends

    return available_backends()[0]


def sample_frames(
    video: VideoInput, num_frames: int, clips: int, backend: str | None = None
) -> tuple[Tensor, list[int]]:
    """Decode the frames of `clips` test samplings of `num_frames` each.

    Returns:
        uint8 frames [clips * num_frames, H, W, 3] (clip-major) and their indices in the video.
    """
    from tcclip.data.sampling import test_indices

    if isinstance(video, Tensor):
        if video.dtype != torch.uint8 or video.dim() != 4 or video.shape[-1] != 3:
            raise ValueError(f"decoded frames must be uint8 [F, H, W, 3], got {video.dtype} {list(video.shape)}")
        indices = [i for clip in test_indices(video.shape[0], num_frames, clips) for i in clip]
        return video[indices], indices

    from tcclip.data.video_reader import VideoDecodeError, open_video

    with open_video(video, backend=backend or default_backend()) as reader:
        if len(reader) < 1:
            raise VideoDecodeError(video, "the video has no frames")
        indices = [i for clip in test_indices(len(reader), num_frames, clips) for i in clip]
        return reader.get_frames(indices), indices


def load_clip_views(
    video: VideoInput, num_frames: int, input_size: int, views: str | Views = "2x1", backend: str | None = None
) -> Tensor:
    """One video as the model's test input: float [V, T, 3, S, S], normalised, V = clips * crops."""
    views = Views.parse(views)
    frames, _ = sample_frames(video, num_frames, views.clips, backend)
    return make_test_transform(input_size, views.crops, num_frames)(frames)


def expand_video_paths(inputs: Sequence[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given, folders searched recursively for videos, glob patterns expanded (`**` allowed).

    Returns:
        The video paths (in the order given, each folder's and pattern's sorted, without repeats) and
        `(input, reason)` for every input that names no video.
    """
    found: list[Path] = []
    problems: list[tuple[str, str]] = []
    for item in map(str, inputs):
        path = Path(item)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
            if not matches:
                problems.append((item, f"folder has no video files ({', '.join(sorted(VIDEO_EXTENSIONS))})"))
        elif path.exists():
            matches = [path]
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not matches:
                problems.append((item, "the pattern matches no file"))
        else:
            matches = []
            problems.append((item, "no such file or folder"))
        found.extend(matches)
    return list(dict.fromkeys(found)), problems
