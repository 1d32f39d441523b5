"""Run a trained model on video files: `tcclip.predict(...)` and the `tcclip predict VIDEO ... --checkpoint` command.

The videos go through the evaluation pipeline (`tcclip.inference.clips`: deterministic frame sampling, short-side
resize and centre crop, normalisation); with several views the per-view softmax probabilities are averaged (the
official evaluation sums them, which ranks the classes the same way; the mean stays a probability).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn

from tcclip.inference.clips import (
    VideoInput,
    Views,
    expand_video_paths,
    load_clip_views,
    sample_frames,
    video_list,
)
from tcclip.inference.openset import OpenSetPrediction, Rejector, calibrated_probabilities, decide
from tcclip.inference.predictions import (
    Prediction,
    top_k_predictions,
)
from tcclip.inference.scoring import (
    check_views_memory,
    evaluating,
    label_length_errors,
    model_input_size,
    model_num_frames,
    model_temperature,
    use_labels,
    video_view_logits,
)
from tcclip.utils.errors import UserError

__all__ = [
    "Prediction",
    "VideoInput",
    "Views",
    "expand_video_paths",
    "load_clip_views",
    "predict",
    "predict_open_set",
    "sample_frames",
]

log = logging.getLogger(__name__)


class ModelArgs(Protocol):
    """The model options the applications share (`tcclip.cli.app_console.ModelOptions`)."""

    checkpoint: str
    labels: str | None
    label_file: str | None
    device: str
    backend: str | None
    clip_weights: str | None


def predict(
    model: nn.Module,
    video: VideoInput | Sequence[VideoInput],
    labels: Sequence[str] | None = None,
    top_k: int = 5,
    views: str | Views = "2x1",
    backend: str | None = None,
    batch_size: int = 8,
    reject: bool = False,
    reject_threshold: float | None = None,
    reject_score: str | None = None,
) -> list[Prediction] | list[list[Prediction]] | OpenSetPrediction | list[OpenSetPrediction]:
    """Classify one video or several.

    Example:
        >>> model = tcclip.load_model("tc_clip_k400.ckpt", class_names=["archery", "bowling"])
        >>> tcclip.predict(model, "clip.mp4", top_k=2)
        [Prediction(label='archery', probability=0.91), Prediction(label='bowling', probability=0.09)]

    Args:
        model: a model from `tcclip.load_model` (any device).
        video: a file path, decoded uint8 frames [F, H, W, 3] (a torch tensor or a numpy array), or a list of
            those.
        labels: class names to score; replaces the model's list (`set_class_names`) when different.
        top_k: how many classes to return per video.
        views: test views per video, `"clips x crops"` (see `Views`).
        backend: video decoder, `torchcodec`, `pyav` or `decord` (default: torchcodec where it works, else pyav).
        batch_size: videos per forward pass (each counts `views` clips).
        reject: answer "none of the above" when the rejection score is under the threshold (`tcclip.inference.openset`).
        reject_threshold: the threshold (default: the one `tcclip calibrate` stored with the model).
        reject_score: `msp`, `max_logit`, `energy` or `mcm` (default: the calibrated one).

    Returns:
        For one video, its top-k `(label, probability)` pairs; for a list, one such list per video. With `reject`,
        an `OpenSetPrediction` (label or "none of the above", score, threshold, top-k) instead of each list.

    Raises:
        VideoDecodeError: a video cannot be read (the command-line tool reports these and goes on instead).
        VideoInputError: `video` is neither (None included).
        LabelFileError: `labels` is one string, holds a non-string, or repeats a class.
        UserError: views whose forward pass cannot fit the device's free memory; `reject_score` without rejection;
            a threshold outside its score's range.
    """
    if top_k < 1 or batch_size < 1:
        raise ValueError(f"top_k and batch_size must be >= 1, got {top_k} and {batch_size}")
    from tcclip.inference.openset import check_reject_options

    check_reject_options(reject, reject_threshold, reject_score)
    if reject or reject_threshold is not None:
        return predict_open_set(model, video, labels, top_k, views, backend, batch_size, reject_threshold, reject_score)
    single, videos = video_list(video)
    names = use_labels(model, labels)
    temperature = model_temperature(model)
    results: list[list[Prediction]] = []
    for logits in batched_view_logits(model, videos, views, backend, batch_size):
        probs = calibrated_probabilities(logits, temperature)
        results.extend(top_k_predictions(p, names, top_k) for p in probs)
    return results[0] if single else results


def batched_view_logits(
    model: nn.Module, videos: list, views: str | Views, backend: str, batch_size: int
) -> Iterator[Tensor]:
    """Decode `videos` (paths or clips) `batch_size` at a time and yield their view logits [B, V, C]."""
    views = Views.parse(views)
    check_views_memory(model, views, min(batch_size, len(videos)))
    with evaluating(model):
        for start in range(0, len(videos), batch_size):
            batch = [
                load_clip_views(v, model_num_frames(model), model_input_size(model), views, backend)
                for v in videos[start : start + batch_size]
            ]
            yield video_view_logits(model, torch.stack(batch))


# ----------------------------------------------------------------------------------------------- command line


def read_labels(labels: str | None, label_file: str | None) -> list[str] | None:
    """Class names from `--labels a,b,c` or `--label-file F`; None when neither is given.

    Raises:
        LabelFileError: an empty or malformed list, a line break in a name, two names with the same prompt.
    """
    from tcclip.data.labels import LabelFileError, check_class_names, read_class_names

    if labels is not None:
        names = [name.strip() for name in labels.split(",") if name.strip()]
        if not names:
            raise LabelFileError("--labels is empty", fix="Give class names separated by commas: --labels 'run,jump'.")
        try:
            return check_class_names(names)
        except LabelFileError as error:
            raise LabelFileError(f"--labels: {error.message}", fix=error.fix) from None
    if label_file is None:
        return None
    return read_class_names(label_file)


def check_checkpoint_path(checkpoint: str | Path) -> Path:
    """The `--checkpoint` file; a `UserError` for a folder or a path that does not exist."""
    from tcclip.training.portable import is_exported_dir

    path = Path(checkpoint)
    if path.is_dir() and not is_exported_dir(path):  # a folder written by `tcclip export` is a model
        found = sorted(p.name for p in path.iterdir() if p.suffix in (".ckpt", ".pth", ".pt") and p.is_file())
        fix = (
            f"Pass one of the checkpoint files in it: {', '.join(found[:5])}" + (", ..." if len(found) > 5 else ".")
            if found
            else "Pass a .ckpt or .pth file, not the folder that holds it."
        )
        raise UserError("--checkpoint is a folder, not a checkpoint file", path=path, fix=fix)
    if not path.exists():
        raise UserError("--checkpoint: no such file", path=path, fix="Check the path of the .ckpt or .pth file.")
    return path


def check_model_args(args: ModelArgs) -> None:
    """Find a bad --device, --checkpoint path or class list before any slow work (`UserError`)."""
    resolve_device(args.device)
    check_checkpoint_path(args.checkpoint)
    read_labels(args.labels, args.label_file)


def load_model_from_args(args: ModelArgs) -> nn.Module:
    """The model that the options of `tcclip predict`, `timeline` and `explain` ask for, on its device.

    Raises:
        UserError: a bad --device, --checkpoint, --labels or --label-file, or a checkpoint that cannot be loaded.
    """
    from tcclip.training.checkpoints import load_model

    device = resolve_device(args.device)  # first: the cheapest mistake to find
    path = check_checkpoint_path(args.checkpoint)
    class_names = read_labels(args.labels, args.label_file)
    overrides = {} if args.clip_weights is None else {"clip_weights": args.clip_weights}
    try:
        with label_length_errors(args.label_file):
            model = load_model(path, class_names, **overrides)
    except UserError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as error:  # CheckpointError is a ValueError
        message = str(error)
        if str(path) in message:  # the checkpoint's own messages already name the file
            raise UserError(f"cannot load the checkpoint: {message}") from None
        raise UserError(f"cannot load the checkpoint: {message}", path=path) from None
    return model.to(device)


class VideoFiles(torch.utils.data.Dataset):
    """Decodes one file per item; a failure becomes the item's error message instead of an exception."""

    def __init__(
        self, paths: Sequence[Path], num_frames: int, input_size: int, views: Views, backend: str | None
    ) -> None:
        self.paths = list(paths)
        self.num_frames, self.input_size, self.views, self.backend = num_frames, input_size, views, backend

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Tensor | None, str | None]:
        try:
            clips = load_clip_views(self.paths[i], self.num_frames, self.input_size, self.views, self.backend)
        # A broken or unsupported file must not stop the other videos: any decoder error is reported per video.
        except (RuntimeError, OSError, ValueError, IndexError) as err:
            return i, None, str(err) or type(err).__name__
        return i, clips, None


def resolve_device(name: str) -> torch.device:
    """`--device`: auto (a CUDA GPU if there is one, else the CPU), cpu, cuda, cuda:N or mps.

    Raises:
        UserError: not a device name, or a device this machine does not have.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fix = "Use --device cpu, or --device auto to take a GPU when there is one."
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device", fix="Use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise UserError(f"--device {name}: {why}", fix=fix)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}", fix=fix)
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"--device {name}: MPS (Apple GPU) is not available here", fix=fix)
    elif device.type != "cpu":
        raise UserError(
            f"--device {name!r}: tcclip runs on cpu, cuda or mps", fix="Use auto, cpu, cuda, cuda:N or mps."
        )
    return device


def predict_open_set(
    model: nn.Module,
    video,
    labels: Sequence[str] | None = None,
    top_k: int = 5,
    views="2x1",
    backend: str | None = None,
    batch_size: int = 8,
    reject_threshold: float | None = None,
    reject_score: str | None = None,
) -> OpenSetPrediction | list[OpenSetPrediction]:
    """`tcclip.predict(..., reject=True)`: like `predict`, with "none of the above" under the threshold."""
    single, videos = video_list(video)
    names = use_labels(model, labels)
    rejector = Rejector.for_model(model, reject_threshold, reject_score)
    results: list[OpenSetPrediction] = []
    for logits in batched_view_logits(model, videos, views, backend, batch_size):
        probs = calibrated_probabilities(logits, rejector.temperature)
        results.extend(decide(rejector, logits, [top_k_predictions(p, names, top_k) for p in probs]))
    return results[0] if single else results
