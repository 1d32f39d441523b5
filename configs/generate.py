"""Write the per-experiment YAML files of configs/ from the spec's hyper-parameter table (section 6).

The YAML files are committed and meant to be read (and edited) directly; this script only keeps the grid consistent.
Run from the repository root: `python configs/generate.py` (rewrites every generated file, leaves the others).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Recipe:
    """One row of the spec's section 6 table."""

    epochs: int
    warmup: int
    lr: str
    lr_min: str
    total_batch: int
    num_clip: int
    num_crop: int


ZERO_SHOT = Recipe(10, 5, "8.0e-06", "8.0e-08", 256, 2, 1)
FEW_SHOT = Recipe(50, 5, "2.0e-06", "2.0e-08", 64, 2, 1)
BASE2NOVEL = Recipe(12, 2, "3.33e-06", "3.33e-08", 64, 2, 1)
FULLY_SUPERVISED = Recipe(30, 5, "2.2e-05", "2.2e-07", 512, 4, 3)

# Short name in file names -> (family class, name in prose, has LLM-rephrased labels).
DATASETS = {
    "k400": ("Kinetics400", "Kinetics-400", True),
    "k600": ("Kinetics600", "Kinetics-600", True),
    "hmdb": ("HMDB51", "HMDB-51", True),
    "ucf": ("UCF101", "UCF-101", True),
    "ssv2": ("SSv2", "Something-Something v2", False),
}
PRETRAINED_CKPT = "checkpoints/zero_shot_k400.ckpt"
PER_DEVICE_BATCH = 8
WISE_FT_WEIGHT = 0.7


def _variant_text(variant: str) -> str:
    return {
        "plain": "TC-CLIP ViT-B/16 initialised from CLIP",
        "llm": "TC-CLIP ViT-B/16 initialised from CLIP, LLM-rephrased class names (LLM variant)",
        "pretrained": "TC-CLIP ViT-B/16 initialised from the zero-shot K400 TC-CLIP model ((P) variant)",
    }[variant]


def _model_block(recipe: Recipe | None, variant: str, wise_ft: bool = False) -> list[str]:
    lines = ["model:", "  model_config:", "    model: tc_clip", "    arch: ViT-B-16"]
    if variant == "llm":
        lines.append("    # The rephrased descriptions are long: the full CLIP context.")
        lines.append("    context_length: 77")
    if variant == "pretrained":
        lines += [
            "  # The TC-CLIP model trained with zero_shot_k400.yaml (our .ckpt or the official zero-shot .pth);",
            "  # override with --model.init_checkpoint PATH.",
            f"  init_checkpoint: {PRETRAINED_CKPT}",
        ]
    if recipe is not None:
        lines += [
            f"  lr: {recipe.lr}",
            f"  lr_min: {recipe.lr_min}",
            f"  warmup_epochs: {recipe.warmup}",
            f"  total_batch_size: {recipe.total_batch}",
        ]
    if wise_ft:
        lines.append("  # validate/test also report the WiSE-FT model: 0.3 * CLIP + 0.7 * fine-tuned (spec 7).")
        lines.append(f"  wise_ft_weight: {WISE_FT_WEIGHT}")
    return lines


def _data_block(ds: str, protocol: str, recipe: Recipe | None, variant: str, **extra: int) -> list[str]:
    family = DATASETS[ds][0]
    lines = [
        "data:",
        f"  class_path: tcclip.data.families.{family}",
        "  init_args:",
        "    # Videos: root (or $TCCLIP_DATA_ROOT); split files: `tcclip splits download`.",
        f"    protocol: {protocol}",
    ]
    lines += [f"    {k}: {v}" for k, v in extra.items()]
    if variant == "llm":
        lines.append("    llm_labels: true")
    lines.append("    num_frames: 16")
    if recipe is not None:
        lines.append(f"    num_clip: {recipe.num_clip}")
        lines.append(f"    num_crop: {recipe.num_crop}")
        lines.append(f"    batch_size: {PER_DEVICE_BATCH}")
    else:
        lines.append("    num_clip: 2")
        lines.append("    num_crop: 1")
    return lines


def _trainer_block(recipe: Recipe, check_val_every: int = 1) -> list[str]:
    lines = ["trainer:", f"  max_epochs: {recipe.epochs}"]
    if check_val_every != 1:
        lines.append(f"  check_val_every_n_epoch: {check_val_every}")
    return lines


def _file(header: list[str], *blocks: list[str]) -> str:
    out = [f"# {h}" if h else "#" for h in header]
    for block in blocks:
        out += ["", *block]
    return "\n".join(out) + "\n"


def _suffix(variant: str) -> str:
    return {"plain": "", "llm": "_llm", "pretrained": "_pretrained"}[variant]


def few_shot(ds: str, k: int, variant: str) -> tuple[str, str]:
    name = f"few_shot_{ds}_k{k}{_suffix(variant)}"
    evaluated_on = "its validation set" if ds == "ssv2" else "test split 1"
    header = [
        f"Few-shot {DATASETS[ds][1]}, K={k} training videos per class;",
        f"{_variant_text(variant)}.",
        f"Trains {FEW_SHOT.epochs} epochs and evaluates on {evaluated_on} after every epoch: results.json has the",
        '"last" epoch\'s top-1 and the "best" epoch\'s (the paper reports the best).',
        f"  tcclip fit --config configs/{name}.yaml",
        f"  tcclip test --config configs/{name}.yaml --ckpt_path last",
    ]
    body = (
        _trainer_block(FEW_SHOT),
        _model_block(FEW_SHOT, variant),
        _data_block(ds, "few_shot", FEW_SHOT, variant, shots=k),
    )
    return name, _file(header, *body)


def base2novel(ds: str, seed: int, variant: str) -> tuple[str, str]:
    name = f"base2novel_{ds}_s{seed}{_suffix(variant)}"
    header = [
        f"Base-to-novel {DATASETS[ds][1]}, training split s{seed} (16 videos per base class);",
        f"{_variant_text(variant)}.",
        "Validates on the base classes; `test` reports base, novel and their harmonic mean",
        '(results.json "summary": base, novel, hm). The paper averages the three seeds.',
        f"  tcclip fit --config configs/{name}.yaml",
        f"  tcclip test --config configs/{name}.yaml --ckpt_path last",
    ]
    body = (
        _trainer_block(BASE2NOVEL),
        _model_block(BASE2NOVEL, variant),
        _data_block(ds, "base2novel", BASE2NOVEL, variant, seed=seed),
    )
    return name, _file(header, *body)


def zero_shot_train(variant: str) -> tuple[str, str]:
    name = f"zero_shot_k400{_suffix(variant)}"
    header = [
        "Zero-shot protocol, training on Kinetics-400 (400 classes);",
        f"{_variant_text(variant)}.",
        "The upstream release has no full K400 training list (k400_splits/train.txt): write one for your copy, or",
        "add --data.init_args.train_list datasets_splits/k400_splits/train_tiny.txt (150 videos per class).",
        "Then evaluate the trained model on HMDB-51, UCF-101 and K600 with the zero_shot_eval_* configs.",
        f"  tcclip fit --config configs/{name}.yaml",
    ]
    body = (
        _trainer_block(ZERO_SHOT),
        _model_block(ZERO_SHOT, variant, wise_ft=True),
        _data_block("k400", "zero_shot", ZERO_SHOT, variant),
    )
    return name, _file(header, *body)


def zero_shot_eval(ds: str, variant: str) -> tuple[str, str]:
    name = f"zero_shot_eval_{ds}{_suffix(variant)}"
    train_cfg = f"zero_shot_k400{_suffix(variant)}"
    header = [
        f'Zero-shot evaluation on {DATASETS[ds][1]}: the three official test splits (results.json "summary": mean',
        "and std of top-1), for the fine-tuned model and its WiSE-FT fusion with CLIP (weight 0.7, spec 7).",
        f"The network comes from the checkpoint (trained with {train_cfg}.yaml):",
        f"  tcclip test --config configs/{name}.yaml \\",
        f"    --ckpt_path runs/{train_cfg}/lightning_logs/version_0/checkpoints/last.ckpt",
        "or from an official checkpoint: --model.init_checkpoint PATH.pth",
    ]
    body = (_model_block(None, variant, wise_ft=True), _data_block(ds, "zero_shot", None, variant))
    return name, _file(header, *body)


def fully_supervised() -> tuple[str, str]:
    name = "fully_supervised_k400"
    header = [
        "Fully-supervised Kinetics-400: train and test on the 400 classes, top-1 and top-5 with 4 clips x 3 crops.",
        "The upstream release has no full K400 training list (k400_splits/train.txt): write one for your copy.",
        "Validation with 12 views is costly, so it runs every 5 epochs.",
        f"  tcclip fit --config configs/{name}.yaml",
        f"  tcclip test --config configs/{name}.yaml --ckpt_path last",
    ]
    body = (
        _trainer_block(FULLY_SUPERVISED, check_val_every=5),
        _model_block(FULLY_SUPERVISED, "plain"),
        _data_block("k400", "fully_supervised", FULLY_SUPERVISED, "plain"),
    )
    return name, _file(header, *body)


def temporal_static_eval(ds: str, subset: str) -> tuple[str, str]:
    name = f"{subset}_eval_{ds}"
    sizes = {"k400": {"temporal": 32, "static": 32}, "ssv2": {"temporal": 18, "static": 16}}[ds]
    what = "motion is needed" if subset == "temporal" else "one frame suffices"
    header = [
        f"Evaluation on the {subset} class subset of {DATASETS[ds][1]} ({sizes[subset]} classes where {what}).",
        "The network comes from the checkpoint of a model trained on the whole dataset, e.g.",
        f"  tcclip test --config configs/{name}.yaml --ckpt_path PATH/last.ckpt",
        "(2 clips x 1 crop; the fully-supervised test uses --data.init_args.num_clip 4 --data.init_args.num_crop 3)",
    ]
    body = (_model_block(None, "plain"), _data_block(ds, subset, None, "plain"))
    return name, _file(header, *body)


def all_configs() -> dict[str, str]:
    out: dict[str, str] = {}
    for variant in ("plain", "llm"):
        out.update([zero_shot_train(variant)])
        for ds in ("hmdb", "ucf", "k600"):
            out.update([zero_shot_eval(ds, variant)])
    for ds in ("hmdb", "ucf", "ssv2"):
        for variant in ("plain", "llm", "pretrained"):
            if variant == "llm" and not DATASETS[ds][2]:
                continue
            for k in (2, 4, 8, 16):
                out.update([few_shot(ds, k, variant)])
    for ds in ("k400", "hmdb", "ucf", "ssv2"):
        for variant in ("plain", "llm", "pretrained"):
            if (variant == "llm" and not DATASETS[ds][2]) or (variant == "pretrained" and ds == "k400"):
                continue
            for seed in (1, 2, 3):
                out.update([base2novel(ds, seed, variant)])
    out.update([fully_supervised()])
    for ds in ("k400", "ssv2"):
        for subset in ("temporal", "static"):
            out.update([temporal_static_eval(ds, subset)])
    return out


def main() -> None:
    for name, text in all_configs().items():
        (HERE / f"{name}.yaml").write_text(text)


if __name__ == "__main__":
    main()
