"""`tcclip calibrate --config CONFIG --ckpt_path CKPT`: temperature and rejection threshold on a validation list.

The checkpoint's network scores every video of the config's validation list (its test pipeline and views); then
`fit_calibration` fits the temperature by NLL, measures the expected calibration error before and after, and picks
the threshold of every rejection score that accepts `--target-recall` of those (in-distribution) videos. The
result is written next to the checkpoint as `<ckpt>.calibration.json` (`tcclip.training.calibration_record`), which
`tcclip.load_model`, `tcclip predict`, `tcclip timeline` and `tcclip export` pick up.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser
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


def read_config_files(configs: Sequence[str | Path], overrides: Sequence[str]) -> dict[str, Any]:
    """configs/defaults.yaml (as `tcclip fit` reads it), then each --config file, then `key=value` overrides."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from tcclip.cli.config_files import check_config_file
    from tcclip.cli.lightning import defaults_files

    merged = OmegaConf.create({})
    for path in [*defaults_files(), *map(str, configs)]:
        check_config_file(path)  # missing, empty, not a mapping, bad YAML: named with the file (and line)
        try:
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        except (OmegaConfBaseException, ValueError) as err:
            raise UserError(f"not a valid YAML config ({err})", path=path, fix="fix the YAML") from err
    try:
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_container(merged, resolve=True)
    except (OmegaConfBaseException, ValueError) as err:
        raise UserError(f"bad override ({err})", fix="write overrides as --data.init_args.root DIR") from err


def build_datamodule(config: dict[str, Any], model: nn.Module) -> Any:
    """The config's data module, with the model's frame count and input size (as `tcclip fit` links them)."""
    import importlib

    data = config.get("data") or {}
    class_path = data.get("class_path") if isinstance(data, dict) else None
    if not class_path:
        raise UserError("the config has no data.class_path", fix="use an experiment config (e.g. configs/demo.yaml)")
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise UserError(f"data.class_path {class_path!r} cannot be imported ({err})", fix="fix the config") from err
    init_args = dict(data.get("init_args") or {})
    init_args["num_frames"] = int(model.cfg.num_frames)
    init_args["input_size"] = int(model.cfg.clip.vision.image_size)
    try:
        return cls(**init_args)
    except (TypeError, ValueError, OSError) as err:
        raise UserError(f"cannot build {class_name}: {err}", fix="check data.init_args in the config") from err


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


# ----------------------------------------------------------------------------------------------- command line


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="tcclip calibrate",
        description="Fit a temperature (NLL) and choose rejection thresholds on the config's validation list; "
        "writes <ckpt>.calibration.json next to the checkpoint. Extra --data.init_args.KEY VALUE pairs override "
        "the config, as for tcclip fit: --data.init_args.root DIR sets the dataset root ($TCCLIP_DATA_ROOT is "
        "used only when the config sets none).",
        epilog="Example: tcclip calibrate --config configs/demo.yaml --ckpt_path runs/demo/.../last.ckpt",
    )
    parser.add_argument("--config", action="append", required=True, help="experiment YAML (repeatable)")
    parser.add_argument(
        "--ckpt_path",
        "--ckpt-path",
        dest="ckpt_path",
        required=True,
        help="the checkpoint file, or last / best: looked up under the config's trainer.default_root_dir, as by "
        "tcclip test",
    )
    parser.add_argument("--set", help="validation set name (default: the first)")
    parser.add_argument("--score", choices=SCORES, default=DEFAULT_SCORE, help=f"default score ({DEFAULT_SCORE})")
    parser.add_argument(
        "--target-recall", type=float, default=0.95, help="in-distribution recall of the thresholds (default 0.95)"
    )
    parser.add_argument(
        "--min-videos",
        type=int,
        default=MIN_VIDEOS,
        help=f"the fewest validation videos to fit on (default {MIN_VIDEOS}; fewer give a meaningless temperature)",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def resolve_checkpoint(ckpt_path: str, config: dict[str, Any], configs: Sequence[str | Path]) -> Path:
    """`--ckpt_path`: a file, or `last` / `best` under the config's trainer.default_root_dir (runs/<config name>
    when null), as `tcclip test` finds them; nothing found is an error naming the folder searched."""
    from tcclip.cli.lightning import RUNS_DIR, no_checkpoint_message
    from tcclip.training.runs import find_checkpoint

    if ckpt_path in ("last", "best"):
        root = (config.get("trainer") or {}).get("default_root_dir") or RUNS_DIR / Path(str(configs[-1])).stem
        found = find_checkpoint(ckpt_path, root)
        if found is None:
            raise UserError(
                no_checkpoint_message(ckpt_path, root),
                fix="Give the run's folder with --trainer.default_root_dir DIR, or the checkpoint file with "
                "--ckpt_path PATH.",
            )
        log.info("--ckpt_path %s: %s", ckpt_path, found)
        return Path(found)
    ckpt = Path(ckpt_path)
    if not ckpt.is_file():
        what = "is a folder, not a checkpoint file" if ckpt.is_dir() else "no such checkpoint file"
        raise UserError(what, path=ckpt, fix="Give the .ckpt to calibrate, or last / best.")
    return ckpt


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(calibrate's own options, config overrides): `--data.init_args.root DIR` / `--data.init_args.root=DIR` pairs
    (any `--a.b` option: calibrate's own have no dot) become omegaconf dot-list items `data.init_args.root=DIR`."""
    own: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        item = argv[i]
        if not (item.startswith("--") and "." in item.split("=", 1)[0]):
            own.append(item)
            i += 1
        elif "=" in item:
            overrides.append(item[2:])
            i += 1
        elif i + 1 < len(argv):
            overrides.append(f"{item[2:]}={argv[i + 1]}")
            i += 2
        else:
            raise UserError(f"{item} needs a value", fix=f"Give it one: {item} VALUE (or {item}=VALUE).")
    return own, overrides


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from tcclip.inference.openset import logit_scale
    from tcclip.inference.predict import resolve_device
    from tcclip.training.checkpoints import CheckpointError, load_model

    parser = build_parser()
    own, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(own)
    if not 0.0 < args.target_recall <= 1.0:
        parser.error("--target-recall must be in (0, 1]")
    if args.min_videos < 2:
        parser.error(f"argument --min-videos: must be >= 2, got {args.min_videos}")
    config = read_config_files(args.config, overrides)
    ckpt = resolve_checkpoint(args.ckpt_path, config, args.config)
    try:
        model = load_model(ckpt, None, calibration=False)  # a stale record beside it is about to be replaced
    except CheckpointError as err:
        raise UserError(str(err), fix="give a checkpoint written by tcclip fit or convert-checkpoint") from err
    model = model.to(resolve_device(args.device))
    datamodule = build_datamodule(config, model)
    logits, labels, names = validation_logits(model, datamodule, args.set, args.quiet, args.min_videos)
    calibration = fit_calibration(
        logits, labels, names, logit_scale(model), args.score, args.target_recall, args.min_videos
    )
    calibration = Calibration(**{**vars(calibration), "checkpoint_sha256": file_sha256(ckpt)})
    path = write_sidecar(calibration, ckpt)

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
    thresholds = Table(title=f"rejection thresholds at {100 * args.target_recall:g}% in-distribution recall")
    thresholds.add_column("score")
    thresholds.add_column("threshold", justify="right")
    for name, value in calibration.thresholds.items():
        thresholds.add_row(name + (" (default)" if name == calibration.score else ""), f"{value:.6g}")
    out.print(thresholds)
    out.print(f"wrote {path}", highlight=False)
    return 0
