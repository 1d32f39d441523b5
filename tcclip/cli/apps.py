"""`tcclip predict`, `tcclip timeline` and `tcclip explain`: typed functions over `tcclip.inference` (their
signatures and docstrings are the commands' options and help, `tcclip.cli.typed`).

Each checks every option (and the output folder) before the model is loaded or a frame decoded, and prints what
it wrote; the work itself is the library's (`tcclip.inference.predict`, `.timeline`, `.explain`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from tcclip.cli.app_console import Backend, ModelOptions, RejectOptions, RejectScore
from tcclip.utils.errors import UserError

__all__ = ["Backend", "ModelOptions", "RejectOptions", "RejectScore", "explain", "predict", "timeline"]

NO_REJECTION = RejectOptions()
"""Every video gets a class unless --reject, --reject-threshold or --reject-score say otherwise."""


def _positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}", fix="Give a positive number.")


def predict(
    *videos: str,
    model: ModelOptions,
    top_k: int = 5,
    views: str = "2x1",
    json: bool = False,
    batch_size: int = 4,
    workers: int = 2,
    quiet: bool = False,
    rejection: RejectOptions = NO_REJECTION,
) -> int:
    """Classify video files with a trained checkpoint (ours or an official TC-CLIP .pth).

    Exit code 1 when a video could not be read (the others are still classified).

    Args:
        videos: video files, folders (searched recursively) or glob patterns such as 'clips/**/*.mp4' (quote them)
        model: the model, its classes, the device and the video decoder (the options of `ModelOptions`)
        top_k: classes shown per video
        views: temporal clips x spatial crops (1 or 3) per video
        json: print one JSON object per video instead of tables
        batch_size: videos per forward pass
        workers: decoding processes (0: decode in this one)
        quiet: no progress bar
        rejection: open-set rejection (the options of `RejectOptions`)
    """
    from tcclip.cli.app_console import classify
    from tcclip.inference.predict import Views

    if top_k < 1 or batch_size < 1 or workers < 0:
        raise UserError(
            "--top-k and --batch-size must be >= 1 and --workers >= 0",
            fix=f"got --top-k {top_k}, --batch-size {batch_size}, --workers {workers}",
        )
    try:
        parsed_views = Views.parse(views)
    except ValueError as error:  # Views owns the rule (clips >= 1, crops 1 or 3)
        raise UserError(f"argument --views: {error}", fix="Give clips x crops, e.g. --views 2x1 or 4x3.") from None
    return classify(videos, model, rejection, top_k, parsed_views, json, batch_size, workers, quiet)


def timeline(
    video: str,
    *,
    model: ModelOptions,
    window: float = 2.0,
    stride: float | None = None,
    top_k: int = 3,
    batch_size: int = 8,
    smooth: int = 1,
    refine: int = 4,
    out: Path | None = None,
    quiet: bool = False,
    rejection: RejectOptions = NO_REJECTION,
) -> int:
    """Slide a window of the model's T frames over a long video: per-window top-k (CSV, JSON), merged segments and a
    PNG timeline plot.

    Args:
        video: the video file
        model: the model, its classes, the device and the video decoder (the options of `ModelOptions`)
        window: window length in seconds
        stride: seconds between window starts (default: half the window)
        top_k: classes kept per window
        batch_size: windows per forward pass
        smooth: label windows from the mean of this many windows' probabilities (odd)
        refine: place each change with windows this many times shorter (0: half-way between windows)
        out: output folder (default: <video name>_timeline/ next to the video)
        quiet: no progress bar
        rejection: open-set rejection (the options of `RejectOptions`)
    """
    from tcclip.cli.app_console import label_timeline

    options = {"window": window, "stride": stride, "top_k": top_k, "batch_size": batch_size, "smooth": smooth,
               "refine": refine}  # fmt: skip
    return label_timeline(Path(video), model, rejection, options, out, quiet)


def explain(
    video: str,
    *,
    model: ModelOptions,
    out: str,
    layer: int = -1,
    top_k: int = 5,
    format: Literal["png", "gif", "both"] = "png",
) -> int:
    """Draw the seed patches, context tokens and top-k classes of TC-CLIP on one video.

    Args:
        video: a video file
        model: the model, its classes, the device and the video decoder (the options of `ModelOptions`)
        out: folder for the pictures (created if missing)
        layer: 0-based vision layer to show; -1 is the last
        top_k: classes in the bar chart
        format: png, gif or both
    """
    from tcclip.cli.app_console import draw_explanation

    _positive(top_k=top_k)
    return draw_explanation(video, model, out, layer, top_k, format)
