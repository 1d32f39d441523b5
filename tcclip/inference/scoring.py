"""Running a model on test clips: its class list, one forward pass per batch of views (checked to fit in memory
first), calibrated probabilities and the top-k classes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from tcclip.inference.clips import Views
from tcclip.training.calibration_record import model_calibration
from tcclip.utils.errors import UserError
from tcclip.utils.finite import check_finite_logits


def model_num_frames(model: nn.Module) -> int:
    return int(model.cfg.num_frames)


def model_input_size(model: nn.Module) -> int:
    return int(model.cfg.clip.vision.image_size)


def device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no autograd for the duration, restoring the model's previous mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)


def use_labels(model: nn.Module, labels: Sequence[str] | None) -> list[str]:
    """Give the model this class list (re-encoding the prompts only when it changed); returns the active list.

    Raises:
        LabelFileError: an empty list, a name with a line break, two names with the same prompt, or a name whose
            prompt is longer than the text encoder's context length.
    """
    from tcclip.data.labels import LabelFileError, as_class_names

    if labels is not None:
        if isinstance(labels, Sequence) and not isinstance(labels, str) and len(labels) == 0:
            raise LabelFileError("the label list is empty", fix="Pass at least one class name.")
        labels = as_class_names(labels, "labels")
        if list(model.class_names) != labels:
            with label_length_errors():
                model.set_class_names(labels)
    names = list(model.class_names)
    if not names:
        raise LabelFileError("the model has no class names yet", fix="Pass labels=[...] (or --labels / --label-file).")
    return names


@contextmanager
def label_length_errors(source: str | Path | None = None) -> Iterator[None]:
    """Turn the text encoder's "prompt too long" into a message about the label (the user can only shorten it)."""
    from tcclip.data.labels import LabelFileError
    from tcclip.model.prompting import PromptTooLongError

    try:
        yield
    except PromptTooLongError as error:
        raise LabelFileError(
            f"the label {error.name!r} is too long for the text encoder's context length {error.context_length}: "
            f"its prompt needs {error.num_tokens} tokens",
            path=source,
            fix=f"Shorten the label so that its prompt fits in {error.context_length} tokens (a few words name a "
            "class best).",
        ) from None


def video_view_logits(model: nn.Module, clips: Tensor) -> Tensor:
    """Logits of every view of a batch of videos: clips float [B, V, T, 3, S, S] -> float [B, V, C] on the CPU."""
    device, dtype = device_dtype(model)
    batch, views = clips.shape[:2]
    logits = model(clips.flatten(0, 1).to(device=device, dtype=dtype))  # [B*V, C]
    check_finite_logits(logits, f"{batch} video(s)")  # never an arbitrary top-1 with probability NaN
    return logits.float().view(batch, views, -1).cpu()


def model_temperature(model: nn.Module) -> float:
    calibration = model_calibration(model)
    return 1.0 if calibration is None else calibration.temperature


ACTIVATION_FACTOR = 12
"""Peak inference memory of a transformer block per token, in units of width x 4 bytes (input, q/k/v, attention
output, the MLP's 4x hidden layer and the residual stream, with some slack); a rough figure for `views_memory`."""


def views_memory(model: nn.Module, views: Views, batch_size: int) -> int:
    """Bytes one forward pass of `batch_size` videos of `views` needs at least: the float input clips and the
    activations of the widest stage of the vision tower (an estimate, within a small factor)."""
    cfg = model.cfg
    vision = cfg.clip.vision
    clips = batch_size * views.count
    frame_input = 3 * vision.image_size**2 * 4
    tokens = vision.num_patches + 1 + cfg.context_token_k
    activations = tokens * vision.width * 4 * ACTIVATION_FACTOR
    return clips * cfg.num_frames * (frame_input + activations)


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a forward pass on `device` (MemAvailable on a Linux CPU, free memory on a GPU), if known."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    return None


def check_views_memory(model: nn.Module, views: Views, batch_size: int, timeline: bool = False) -> None:
    """Refuse views x batch size whose forward pass cannot fit in this device's free memory (instead of the kernel
    killing the process with no message)."""
    device, _ = device_dtype(model)
    try:
        need = views_memory(model, views, batch_size)
    except AttributeError:  # not a TC-CLIP network (a stand-in with its own forward): nothing to estimate
        return
    free = available_memory(device)
    if free is not None and need > free:
        gib = 1024**3
        asked = (
            f"--batch-size {batch_size} (batch_size=) windows"
            if timeline
            else f"--views {views} with --batch-size {batch_size} (views=, batch_size=)"
        )
        raise UserError(
            f"{asked} scores {views.count * batch_size:,} clips of {model.cfg.num_frames} frames in one pass: about "
            f"{need / gib:.1f} GiB, and {device.type} has {free / gib:.1f} GiB free",
            fix="Use a smaller --batch-size."
            if timeline
            else "Use fewer views (the paper's test views are 4x3 at most; 2x1 is the default) or a smaller "
            "--batch-size.",
        )
