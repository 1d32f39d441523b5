"""Calibrating a checkpoint on a validation list (`tcclip calibrate --config CONFIG --ckpt_path CKPT`): the
temperature and the rejection thresholds of `tcclip.inference.openset`, fitted and written beside the checkpoint.

The checkpoint's network scores every video of the config's validation list (its test pipeline and views); then
`fit_calibration` fits the temperature by NLL, measures the expected calibration error before and after, and picks
the threshold of every rejection score that accepts `--target-recall` of those (in-distribution) videos. The
result is written next to the checkpoint as `<ckpt>.calibration.json` (`tcclip.training.calibration_record`), which
`tcclip.load_model`, `tcclip predict`, `tcclip timeline` and `tcclip export` pick up.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tcclip.inference.openset import (
    DEFAULT_SCORE,
    SCORES,
    all_scores,
    calibrated_probabilities,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    poor_fit_reasons,
    threshold_for_recall,
    view_log_probabilities,
)
from tcclip.training.calibration_record import Calibration, file_sha256, write_sidecar
from tcclip.utils.errors import UserError

log = logging.getLogger(__name__)


def fit_calibration(
    view_logits: Tensor,
    labels: Tensor,
    class_names: Sequence[str],
    scale: float,
    score: str = DEFAULT_SCORE,
    target_recall: float = 0.95,
    min_videos: int | None = None,
) -> Calibration:
    """Temperature (NLL), ECE before/after and every score's threshold at `target_recall`, from validation logits.

    Args:
        view_logits: [N, V, C] logits of every view of the N validation videos.
        labels: [N] their classes.
        class_names: the C classes.
        scale: exp(logit_scale) of the model (for the `mcm` score).
        score: the score whose threshold becomes the default.
        target_recall: fraction of validation videos every threshold accepts.
        min_videos: the fewest videos to fit on (default `MIN_VIDEOS`).

    Raises:
        UserError: fewer videos than `min_videos`, or fewer than two classes among them: a temperature fitted on
            those is noise (it runs off to the bounds and every later probability is near uniform).
    """
    if score not in SCORES:
        raise ValueError(f"unknown rejection score {score!r}; choose one of {', '.join(SCORES)}")
    check_calibration_set(labels, class_names, min_videos)
    temperature = fit_temperature(view_log_probabilities(view_logits), labels)
    before = calibrated_probabilities(view_logits, 1.0)
    after = calibrated_probabilities(view_logits, temperature)
    scores = all_scores(view_logits, scale, temperature)
    thresholds = {name: threshold_for_recall(values, target_recall) for name, values in scores.items()}
    top1 = float((before.argmax(-1) == labels).double().mean() * 100)
    nll_after = negative_log_likelihood(after, labels)
    warnings = poor_fit_reasons(temperature, nll_after, len(class_names), top1)
    for reason in warnings:
        log.warning("calibration: %s; the temperature and thresholds are unreliable (use a larger validation list, "
                    "or a model that is better than chance on it)", reason)  # fmt: skip
    report = {
        "num_videos": int(view_logits.shape[0]),
        "classes_present": int(labels.unique().numel()),
        "warnings": warnings,
        "views": int(view_logits.shape[1]),
        "ece_before": expected_calibration_error(before, labels),
        "ece_after": expected_calibration_error(after, labels),
        "nll_before": negative_log_likelihood(before, labels),
        "nll_after": nll_after,
        "top1_before": top1,
        "top1_after": float((after.argmax(-1) == labels).double().mean() * 100),
    }
    return Calibration(
        temperature=temperature,
        score=score,
        threshold=thresholds[score],
        target_recall=target_recall,
        thresholds=thresholds,
        class_names=tuple(class_names),
        report=report,
    )


MIN_VIDEOS = 20
"""The fewest validation videos `tcclip calibrate` fits on (`--min-videos` lowers it, knowingly)."""


def check_calibration_set(labels: Tensor, class_names: Sequence[str], min_videos: int | None = None) -> None:
    """Refuse a validation set too small, or with too few classes, to fit a temperature and thresholds on."""
    needed = MIN_VIDEOS if min_videos is None else min_videos
    count = int(labels.numel())
    if count < max(needed, 2):
        raise UserError(
            f"only {count} validation video(s) to calibrate on; at least {max(needed, 2)} are needed (a temperature "
            "fitted on a handful of videos runs off to an extreme and makes every later probability meaningless)",
            fix="Calibrate on a larger validation list (tens of videos per class is good); --min-videos N lowers "
            "the minimum if you must.",
        )
    present = sorted({int(i) for i in labels.tolist()})
    if len(present) < 2:
        name = class_names[present[0]] if present and present[0] < len(class_names) else "?"
        raise UserError(
            f"the {count} validation videos are all of one class ({name!r}); calibration needs at least two classes "
            "present (with one, being right says nothing about confidence)",
            fix="Calibrate on a validation list that covers the classes.",
        )


# ----------------------------------------------------------------------------------------------- data


def validation_logits(
    model: nn.Module, datamodule: Any, set_name: str | None, quiet: bool = False, min_videos: int | None = None
):
    """(view logits [N, V, C], labels [N], class names) of one validation set of the data module; a list shorter
    than `min_videos` is refused before any video is scored."""
    from tcclip.inference.scoring import evaluating, use_labels, video_view_logits
    from tcclip.utils.progress import progress_bar

    datamodule.setup("validate")
    sets = list(datamodule.val_sets)
    names = [s.name for s in sets]
    index = 0 if set_name is None else (names.index(set_name) if set_name in names else -1)
    if index < 0:
        raise UserError(f"no validation set {set_name!r}; the config has {names}", fix="pick one with --set")
    eval_set = sets[index]
    class_names = use_labels(model, eval_set.class_names)
    loader = datamodule.val_dataloader()[index]
    listed = len(loader.dataset) if hasattr(loader.dataset, "__len__") else None
    if listed is not None and listed < max(MIN_VIDEOS if min_videos is None else min_videos, 2):
        check_calibration_set(torch.zeros(listed), eval_set.class_names, min_videos)
    logits, labels = [], []
    with progress_bar(unit="percent", enabled=not quiet) as progress, evaluating(model):
        task = progress.add_task(f"scoring {eval_set.name}", total=len(loader))
        for batch in loader:
            if batch["video"].shape[0]:
                logits.append(video_view_logits(model, batch["video"]))
                labels.append(batch["label"])
            progress.advance(task)
    if not logits:
        raise UserError(f"validation set {eval_set.name!r} has no readable video", fix="check the data root")
    return torch.cat(logits), torch.cat(labels), class_names


# ----------------------------------------------------------------------------------------------- the command


def calibrate_checkpoint(
    datamodule: Any,
    ckpt_path: str | Path,
    device: torch.device,
    set_name: str | None = None,
    score: str = DEFAULT_SCORE,
    target_recall: float = 0.95,
    min_videos: int = MIN_VIDEOS,
    quiet: bool = False,
) -> Path:
    """What `tcclip calibrate` does once LightningCLI has built the config's data module (linked to the
    checkpoint's network) and resolved `--ckpt_path`: score the validation set, fit, write the sidecar, print the
    tables. Returns the sidecar's path."""
    from tcclip.inference.openset import logit_scale
    from tcclip.training.checkpoints import CheckpointError, load_model

    if not 0.0 < target_recall <= 1.0:
        raise UserError(f"--target-recall must be in (0, 1], got {target_recall}", fix="e.g. --target-recall 0.95")
    if min_videos < 2:
        raise UserError(f"argument --min-videos: must be >= 2, got {min_videos}", fix="e.g. --min-videos 20")
    if score not in SCORES:
        raise UserError(f"unknown rejection score {score!r}", fix=f"Choose one of {', '.join(SCORES)}.")
    ckpt = Path(ckpt_path)
    try:
        model = load_model(ckpt, None, calibration=False)  # a stale record beside it is about to be replaced
    except CheckpointError as err:
        raise UserError(str(err), fix="give a checkpoint written by tcclip fit or convert-checkpoint") from err
    model = model.to(device)
    logits, labels, names = validation_logits(model, datamodule, set_name, quiet, min_videos)
    calibration = fit_calibration(logits, labels, names, logit_scale(model), score, target_recall, min_videos)
    calibration = Calibration(**{**vars(calibration), "checkpoint_sha256": file_sha256(ckpt)})
    path = write_sidecar(calibration, ckpt)
    _print_report(calibration, target_recall, path)
    return path


def _print_report(calibration: Calibration, target_recall: float, path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    rep = calibration.report
    out = Console()
    table = Table(title=f"calibration on {rep['num_videos']} validation videos ({rep['views']} view(s) each)")
    for column in ("", "before", "after"):
        table.add_column(column, justify="right")
    table.add_row("temperature", "1", f"{calibration.temperature:.4f}")
    table.add_row("ECE (15 bins)", f"{rep['ece_before']:.4f}", f"{rep['ece_after']:.4f}")
    table.add_row("NLL", f"{rep['nll_before']:.4f}", f"{rep['nll_after']:.4f}")
    table.add_row("top-1 %", f"{rep['top1_before']:.2f}", f"{rep['top1_after']:.2f}")
    out.print(table)
    thresholds = Table(title=f"rejection thresholds at {100 * target_recall:g}% in-distribution recall")
    thresholds.add_column("score")
    thresholds.add_column("threshold", justify="right")
    for name, value in calibration.thresholds.items():
        thresholds.add_row(name + (" (default)" if name == calibration.score else ""), f"{value:.6g}")
    out.print(thresholds)
    out.print(f"wrote {path}", highlight=False)
