"""Open-set rejection and calibration of a trained checkpoint on known and held-out classes.

    python benchmarks/open_set.py --ckpt runs/os/.../last.ckpt --data runs/os_data --ood runs/os_ood [--json out.json]

`--data` is the dataset the checkpoint was trained on (`tcclip data synth` layout: labels.csv, val.txt, test.txt);
`--ood` holds videos of classes the model never saw (every list of that folder is used). Steps:

1. calibration on the in-distribution validation list (`tcclip.inference.calibrate.fit_calibration`: temperature by NLL,
   thresholds at 95% recall), evaluated on the held-out test list: ECE before/after, top-1 before/after;
2. rejection, in-distribution test videos against the held-out-class videos, per score: AUROC, the false-positive
   rate at 95% true-positive rate (threshold set on the test videos themselves, the usual definition), and the
   operating point a user gets (the validation threshold applied to test and held-out videos).

Prints one table per step; `--json` keeps every number. The README's figures come from:

    tcclip data synth --out runs/os_data --classes MoveLeft,MoveRight,MoveUp,MoveDown --class-colours \
        --videos-per-class 200 --size 32 --num-frames 16-24            # the demo data (Makefile DEMO_SYNTH_ARGS)
    tcclip data synth --out runs/os_ood --classes RotateClockwise,Grow,StandStill,ChangeColor --class-colours \
        --videos-per-class 25 --size 32 --num-frames 16-24 --seed 1     # classes the model never sees
    tcclip fit --config configs/demo.yaml --data.init_args.root runs/os_data --trainer.default_root_dir runs/os \
        --trainer.check_val_every_n_epoch 10                            # (was run with OMP_NUM_THREADS=1)
    python benchmarks/open_set.py --ckpt runs/os/lightning_logs/version_0/checkpoints/last.ckpt \
        --data runs/os_data --ood runs/os_ood
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from tcclip.data.labels import read_annotations
from tcclip.inference.calibrate import fit_calibration
from tcclip.inference.clips import load_clip_views
from tcclip.inference.openset import (
    SCORES,
    all_scores,
    auroc,
    calibrated_probabilities,
    expected_calibration_error,
    fpr_at_recall,
    logit_scale,
    negative_log_likelihood,
)
from tcclip.inference.scoring import evaluating, video_view_logits
from tcclip.training.checkpoints import load_model


def score_list(model, root: Path, lists: list[str], views: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(view logits [N, V, C], labels [N]) of every video in the given annotation lists under `root`."""
    logits, labels = [], []
    num_frames, size = model.cfg.num_frames, model.cfg.clip.vision.image_size
    with evaluating(model):
        for name in lists:
            for ann in read_annotations(root / name):
                clips = load_clip_views(root / ann.path, num_frames, size, views, backend="pyav")
                logits.append(video_view_logits(model, clips[None])[0])
                labels.append(ann.label)
    return torch.stack(logits), torch.tensor(labels)


@dataclass(frozen=True)
class Options:
    """What to measure.

    Args:
        ckpt: the trained checkpoint
        data: in-distribution dataset (val.txt, test.txt)
        ood: videos of held-out classes
        views: temporal clips x spatial crops per video
        recall: in-distribution recall of the thresholds
        json: also write every number to this file
    """

    ckpt: Path
    data: Path
    ood: Path
    views: str = "1x1"
    recall: float = 0.95
    json: Path | None = None


def main(args: Options) -> None:
    """Open-set rejection and calibration of a trained checkpoint on known and held-out classes.

    Args:
        args: the options
    """

    model = load_model(args.ckpt)
    scale = logit_scale(model)
    val_logits, val_labels = score_list(model, args.data, ["val.txt"], args.views)
    test_logits, test_labels = score_list(model, args.data, ["test.txt"], args.views)
    ood_lists = sorted(p.name for p in args.ood.glob("*.txt"))
    ood_logits, _ = score_list(model, args.ood, ood_lists, args.views)

    cal = fit_calibration(val_logits, val_labels, model.class_names, scale, target_recall=args.recall)
    before = calibrated_probabilities(test_logits, 1.0)
    after = calibrated_probabilities(test_logits, cal.temperature)
    calibration = {
        "temperature": cal.temperature,
        "val_videos": int(val_labels.numel()),
        "test_videos": int(test_labels.numel()),
        "ood_videos": int(ood_logits.shape[0]),
        "test_ece_before": expected_calibration_error(before, test_labels),
        "test_ece_after": expected_calibration_error(after, test_labels),
        "test_nll_before": negative_log_likelihood(before, test_labels),
        "test_nll_after": negative_log_likelihood(after, test_labels),
        "test_top1_before": float((before.argmax(-1) == test_labels).double().mean() * 100),
        "test_top1_after": float((after.argmax(-1) == test_labels).double().mean() * 100),
        "top1_predictions_identical": bool(torch.equal(before.argmax(-1), after.argmax(-1))),
        "val_ece_before": cal.report["ece_before"],
        "val_ece_after": cal.report["ece_after"],
    }
    id_scores = all_scores(test_logits, scale, cal.temperature)
    ood_scores = all_scores(ood_logits, scale, cal.temperature)
    rejection = {}
    for name in SCORES:
        t = cal.thresholds[name]
        rejection[name] = {
            "auroc": auroc(id_scores[name], ood_scores[name]),
            "fpr_at_95tpr": fpr_at_recall(id_scores[name], ood_scores[name], args.recall),
            "val_threshold": t,
            "test_recall_at_val_threshold": float((id_scores[name] >= t).double().mean()),
            "ood_accepted_at_val_threshold": float((ood_scores[name] >= t).double().mean()),
        }

    console = Console()
    table = Table(title=f"calibration: fitted on {calibration['val_videos']} validation videos, measured on "
                  f"{calibration['test_videos']} test videos (temperature {cal.temperature:.3f})")  # fmt: skip
    for column in ("", "before", "after"):
        table.add_column(column, justify="right")
    for key, label in (("ece", "ECE (15 bins)"), ("nll", "NLL"), ("top1", "top-1 %")):
        table.add_row(label, f"{calibration[f'test_{key}_before']:.4f}", f"{calibration[f'test_{key}_after']:.4f}")
    console.print(table)
    console.print(f"top-1 predictions identical after calibration: {calibration['top1_predictions_identical']}")
    table = Table(title=f"rejection: {calibration['test_videos']} known-class test videos vs "
                  f"{calibration['ood_videos']} held-out-class videos")  # fmt: skip
    for column in ("score", "AUROC", "FPR@95%TPR", "val threshold", "test recall", "held-out accepted"):
        table.add_column(column, justify="right")
    for name, r in rejection.items():
        table.add_row(
            name,
            f"{r['auroc']:.4f}",
            f"{r['fpr_at_95tpr']:.4f}",
            f"{r['val_threshold']:.4g}",
            f"{r['test_recall_at_val_threshold']:.3f}",
            f"{r['ood_accepted_at_val_threshold']:.3f}",
        )
    console.print(table)
    if args.json:
        payload = {"checkpoint": str(args.ckpt), "calibration": calibration, "rejection": rejection}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    from tcclip.cli.typed import run

    sys.exit(run(main, sys.argv[1:], "python benchmarks/open_set.py", epilog=__doc__.split("\n", 1)[1]))
