"""`tcclip calibrate --config CONFIG --ckpt_path CKPT`: temperature and rejection threshold on a validation list.

The checkpoint's network scores every video of the config's validation list (its test pipeline and views); then
`fit_calibration` fits the temperature by NLL, measures the expected calibration error before and after, and picks
the threshold of every rejection score that accepts `--target-recall` of those (in-distribution) videos. The
result is written next to the checkpoint as `<ckpt>.calibration.json` (`tcclip.calibration`), which
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

from tcclip.calibration import (
    Calibration,
    calibrated_probabilities,
    expected_calibration_error,
    file_sha256,
    fit_temperature,
    negative_log_likelihood,
    view_log_probabilities,
    write_sidecar,
)
from tcclip.errors import UserError
from tcclip.openset import DEFAULT_SCORE, SCORES, all_scores, threshold_for_recall

log = logging.getLogger(__name__)


def fit_calibration(
    view_logits: Tensor,
    labels: Tensor,
    class_names: Sequence[str],
    scale: float,
    score: str = DEFAULT_SCORE,
    target_recall: float = 0.95,
) -> Calibration:
    """Temperature (NLL), ECE before/after and every score's threshold at `target_recall`, from validation logits.

    Args:
        view_logits: [N, V, C] logits of every view of the N validation videos.
        labels: [N] their classes.
        class_names: the C classes.
        scale: exp(logit_scale) of the model (for the `mcm` score).
        score: the score whose threshold becomes the default.
        target_recall: fraction of validation videos every threshold accepts.
    """
    if score not in SCORES:
        raise ValueError(f"unknown rejection score {score!r}; choose one of {', '.join(SCORES)}")
    if view_logits.shape[0] < 2:
        raise UserError(
            f"only {view_logits.shape[0]} validation video(s)", fix="calibrate on a list of at least tens of videos"
        )
    temperature = fit_temperature(view_log_probabilities(view_logits), labels)
    before = calibrated_probabilities(view_logits, 1.0)
    after = calibrated_probabilities(view_logits, temperature)
    scores = all_scores(view_logits, scale, temperature)
    thresholds = {name: threshold_for_recall(values, target_recall) for name, values in scores.items()}
    report = {
        "num_videos": int(view_logits.shape[0]),
        "views": int(view_logits.shape[1]),
        "ece_before": expected_calibration_error(before, labels),
        "ece_after": expected_calibration_error(after, labels),
        "nll_before": negative_log_likelihood(before, labels),
        "nll_after": negative_log_likelihood(after, labels),
        "top1_before": float((before.argmax(-1) == labels).double().mean() * 100),
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


# ----------------------------------------------------------------------------------------------- data


def read_config_files(configs: Sequence[str | Path], overrides: Sequence[str]) -> dict[str, Any]:
    """configs/defaults.yaml (as `tcclip fit` reads it), then each --config file, then `key=value` overrides."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from tcclip.lightning_cli import defaults_files

    merged = OmegaConf.create({})
    for path in [*defaults_files(), *map(str, configs)]:
        if not Path(path).is_file():
            raise UserError("no such config file", path=path, fix="give a YAML config such as configs/demo.yaml")
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


def validation_logits(model: nn.Module, datamodule: Any, set_name: str | None, quiet: bool = False):
    """(view logits [N, V, C], labels [N], class names) of one validation set of the data module."""
    from rich.console import Console
    from rich.progress import Progress

    from tcclip.inference import evaluating, use_labels, video_view_logits

    datamodule.setup("validate")
    sets = list(datamodule.val_sets)
    names = [s.name for s in sets]
    index = 0 if set_name is None else (names.index(set_name) if set_name in names else -1)
    if index < 0:
        raise UserError(f"no validation set {set_name!r}; the config has {names}", fix="pick one with --set")
    eval_set = sets[index]
    class_names = use_labels(model, eval_set.class_names)
    loader = datamodule.val_dataloader()[index]
    logits, labels = [], []
    with Progress(console=Console(stderr=True), transient=True, disable=quiet) as progress, evaluating(model):
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
        "the config, as for tcclip fit.",
        epilog="Example: tcclip calibrate --config configs/demo.yaml --ckpt_path runs/demo/.../last.ckpt",
    )
    parser.add_argument("--config", action="append", required=True, help="experiment YAML (repeatable)")
    parser.add_argument("--ckpt_path", "--ckpt-path", dest="ckpt_path", required=True, help="the checkpoint file")
    parser.add_argument("--set", help="validation set name (default: the first)")
    parser.add_argument("--score", choices=SCORES, default=DEFAULT_SCORE, help=f"default score ({DEFAULT_SCORE})")
    parser.add_argument(
        "--target-recall", type=float, default=0.95, help="in-distribution recall of the thresholds (default 0.95)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


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

    from tcclip.inference import resolve_device
    from tcclip.model.checkpoint import CheckpointError, load_model
    from tcclip.openset import logit_scale

    parser = build_parser()
    own, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(own)
    if not 0.0 < args.target_recall <= 1.0:
        parser.error("--target-recall must be in (0, 1]")
    ckpt = Path(args.ckpt_path)
    if not ckpt.is_file():
        raise UserError("no such checkpoint file", path=ckpt, fix="give the .ckpt to calibrate")
    config = read_config_files(args.config, overrides)
    try:
        model = load_model(ckpt, None)
    except CheckpointError as err:
        raise UserError(str(err), fix="give a checkpoint written by tcclip fit or convert-checkpoint") from err
    model = model.to(resolve_device(args.device))
    datamodule = build_datamodule(config, model)
    logits, labels, names = validation_logits(model, datamodule, args.set, args.quiet)
    calibration = fit_calibration(logits, labels, names, logit_scale(model), args.score, args.target_recall)
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
