"""The console side of `tcclip predict`, `timeline` and `explain`: check the options, run the library, print the
results (rich tables on stdout, progress and failures on stderr)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tcclip.utils.errors import UserError

if TYPE_CHECKING:
    from tcclip.inference.predict import Views


Backend = Literal["auto", "torchcodec", "pyav", "decord"]
RejectScore = Literal["msp", "max_logit", "energy", "mcm"]
"""`tcclip.inference.openset.SCORES` (a test keeps the two equal)."""


@dataclass(frozen=True)
class ModelOptions:
    """The options every application shares: which model, which classes, where it runs, how videos are read.

    Args:
        checkpoint: our .ckpt / save_model file, a `tcclip export` folder, or an official TC-CLIP .pth
        labels: class names separated by commas, e.g. 'riding a bike,swimming'
        label_file: CSV with an id,name header, or JSON {id: name} (default: the checkpoint's own classes)
        device: cpu, cuda, cuda:1, ... (default auto: cuda if available)
        backend: video decoder (default auto: torchcodec where it works, else pyav; decord matches the official code)
        clip_weights: where an official checkpoint's token embedding comes from (default: openai)
    """

    checkpoint: str
    labels: str | None = None
    label_file: str | None = None
    device: str = "auto"
    backend: Backend | None = None
    clip_weights: str | None = None

    def __post_init__(self) -> None:
        if self.labels is not None and self.label_file is not None:
            raise UserError(
                "--labels and --label-file both name the classes",
                fix="Give one of them: --labels 'run,jump' or --label-file labels.csv.",
            )


@dataclass(frozen=True)
class RejectOptions:
    """Open-set rejection: "none of the above" under a threshold (`tcclip.inference.openset`).

    Args:
        reject: answer "none of the above" when the rejection score is under the threshold stored by tcclip calibrate
        reject_threshold: threshold to use instead of the stored one (implies --reject)
        reject_score: rejection score (default: the calibrated one, else msp)
    """

    reject: bool = False
    reject_threshold: float | None = None
    reject_score: RejectScore | None = None


def _keep_list(batch: list) -> list:
    return batch


def _print_video(out, path: Path, ranked: list, verdict: Any, as_json: bool) -> None:
    from tcclip.inference.openset import verdict_text
    from tcclip.inference.predictions import prediction_json, prediction_table

    if as_json:
        record = {"video": str(path), "predictions": [prediction_json(p) for p in ranked]}
        record.update(verdict.to_json() if verdict is not None else {})
        out.file.write(json.dumps(record) + "\n")
        return
    out.print(str(path), style="bold", soft_wrap=True, highlight=False)
    if verdict is not None:
        out.print(verdict_text(verdict), soft_wrap=True, highlight=False)
    out.print(prediction_table(ranked))
    out.print()


def classify(
    videos: Sequence[str],
    options: ModelOptions,
    rejection: RejectOptions,
    top_k: int,
    views: Views,
    as_json: bool,
    batch_size: int,
    workers: int,
    quiet: bool,
) -> int:
    """`tcclip predict`: every video's top-k (and verdict), in input order; 1 if any input failed."""
    import torch
    from rich.console import Console
    from rich.logging import RichHandler

    from tcclip.inference import predict as p
    from tcclip.inference.openset import calibrated_probabilities, check_reject_options, decide, rejector_from_args
    from tcclip.inference.predictions import report_failure
    from tcclip.utils.progress import progress_bar

    out, err = Console(), Console(stderr=True, soft_wrap=True)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=err)])
    p.check_model_args(options)
    check_reject_options(rejection.reject, rejection.reject_threshold, rejection.reject_score)
    paths, problems = p.expand_video_paths(list(videos))
    failed = 0
    for item, reason in problems:
        failed += 1
        report_failure(out, err, item, reason, as_json)
    if not paths:
        err.print(f"[red]no videos to classify[/] ({failed} input(s) named none)")
        return 1
    model = p.load_model_from_args(options)
    p.check_views_memory(model, views, min(batch_size, len(paths)))
    names = list(model.class_names)
    rejector = rejector_from_args(rejection, model)
    dataset = p.VideoFiles(paths, p.model_num_frames(model), p.model_input_size(model), views, options.backend)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_keep_list)
    verdicts: dict[int, Any] = {}
    progress = progress_bar("classifying", console=err, enabled=not (quiet or len(paths) < 2))
    with progress, p.evaluating(model):
        task = progress.add_task("videos", total=len(paths))
        for batch in loader:
            good = [(i, clips) for i, clips, _ in batch if clips is not None]
            logits = p.video_view_logits(model, torch.stack([c for _, c in good])) if good else None
            probs = calibrated_probabilities(logits, p.model_temperature(model)) if good else []
            ranked = {i: p.top_k_predictions(q, names, top_k) for (i, _), q in zip(good, probs, strict=True)}
            if rejector is not None and good:
                verdicts = dict(zip(ranked, decide(rejector, logits, list(ranked.values())), strict=True))
            for i, _, error in batch:  # in input order, failures where they occur
                if error is not None:
                    failed += 1
                    report_failure(out, err, str(paths[i]), error, as_json)
                else:
                    _print_video(out, paths[i], ranked[i], verdicts.get(i), as_json)
            progress.advance(task, len(batch))
    out.file.flush()
    done = len(paths) + len(problems) - failed
    if failed:
        err.print(f"[red]{failed} of {len(paths) + len(problems)} input(s) failed[/], {done} classified")
        return 1
    if len(paths) > 1:
        err.print(f"{done} videos classified")
    return 0


def label_timeline(
    video: Path, options: ModelOptions, rejection: RejectOptions, window: dict[str, Any], out_dir: Path | None,
    quiet: bool,
) -> int:  # fmt: skip
    """`tcclip timeline`: every option and the output folder checked before the model is loaded or a frame
    decoded; then the timeline's files and a table of its segments."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from tcclip.data.video_reader import declared_duration
    from tcclip.inference import timeline as t
    from tcclip.inference.openset import check_reject_options
    from tcclip.inference.predict import check_model_args, load_model_from_args
    from tcclip.inference.timeline_outputs import TIMELINE_FILES, save_timeline
    from tcclip.inference.timeline_windows import check_window_count, check_window_options
    from tcclip.utils.outputs import check_output_folder

    out = Console()
    out_dir = out_dir or video.with_name(video.stem + "_timeline")
    check_window_options(window["window"], window["stride"], window["top_k"], window["batch_size"],
                           window["smooth"], window["refine"])  # fmt: skip
    check_reject_options(rejection.reject, rejection.reject_threshold, rejection.reject_score)
    if not video.is_file():
        raise UserError("no such video file" if not video.exists() else "is a folder, not a video file", path=video,
                        fix="Give a video file.")  # fmt: skip
    check_window_count(declared_duration(video), window["window"], window["stride"], video)
    check_model_args(options)
    check_output_folder(out_dir, "--out", TIMELINE_FILES)
    model = load_model_from_args(options)
    tl = t.timeline(model, str(video), **window, reject=rejection.reject, reject_threshold=rejection.reject_threshold,
                    reject_score=rejection.reject_score, progress=not quiet, backend=options.backend)  # fmt: skip
    files = save_timeline(tl, out_dir)
    table = Table(title=f"{escape(str(video))}: {len(tl.windows)} windows of {tl.window:g} s every {tl.stride:g} s")
    for column in ("start", "end", "label", "mean prob."):
        table.add_column(column, justify="right" if column != "label" else "left")
    for s in tl.segments:
        table.add_row(f"{s.start:.2f}", f"{s.end:.2f}", escape(s.label), f"{s.mean_probability:.3f}")
    out.print(table)
    out.print("wrote " + ", ".join(str(f) for f in files), highlight=False, soft_wrap=True)
    return 0


def draw_explanation(video: str, options: ModelOptions, out: str, layer: int, top_k: int, fmt: str) -> int:
    """`tcclip explain`: the pictures of one video into `out`; 1 if the video cannot be explained."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    from rich.console import Console
    from rich.markup import escape

    from tcclip.inference.explain import explain, save_explanation
    from tcclip.inference.predict import check_model_args, load_model_from_args
    from tcclip.utils.outputs import check_writable_folder

    err = Console(stderr=True, soft_wrap=True)
    check_model_args(options)
    if not Path(video).is_file():
        what = "is a folder" if Path(video).is_dir() else "no such file"
        raise UserError(f"{what}", path=video, fix="Give explain one video file.")
    out_dir = check_writable_folder(out, "--out")  # before the model runs, not after
    model = load_model_from_args(options)
    num_layers = int(model.cfg.clip.vision.layers)
    if not -num_layers <= layer < num_layers:
        raise UserError(
            f"--layer {layer}: the vision encoder of this checkpoint has layers 0..{num_layers - 1}",
            fix="Pick one of those, or a negative number to count from the last (-1).",
        )
    try:
        expl = explain(model, video, layer=layer, top_k=top_k, backend=options.backend)
    except (RuntimeError, OSError, ValueError) as error:
        err.print(f"[red]cannot explain {escape(video)}:[/] {escape(str(error))}", highlight=False)
        return 1
    formats = ("png", "gif") if fmt == "both" else (fmt,)
    try:
        written = save_explanation(expl, out_dir, formats)
    except OSError as error:  # a full disk, a quota: nothing was written (save_explanation stages every file)
        raise UserError(
            f"--out {out_dir}: cannot write the pictures ({error.strerror or error}); none was written",
            fix="Free some space or choose another folder, then run the same command again.",
        ) from None
    for path in written:
        err.print(f"wrote {path}", highlight=False)
    label, prob = expl.predictions[0]
    err.print(f"top-1: {label} ({prob:.1%})", highlight=False)
    return 0
