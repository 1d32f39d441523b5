"""Write the experiment files of configs/ from the protocol table (`tcclip.experiments.protocols`), one file per
paper cell.

Every file stays a complete, runnable experiment (`tcclip fit --config configs/few_shot_ucf_k4.yaml`); this script is
their single source, and `tests/test_configs.py` fails when a committed file differs from what it writes. To change a
recipe or add a cell, edit `tcclip/experiments/protocols.py` (or the wording here) and run, from the repository root:

    python configs/generate.py            # rewrite every generated file (demo.yaml is hand-written and left alone)
    python configs/generate.py --check    # exit 1 and name the files that differ from the table
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from tcclip.experiments.protocols import (
    DATASETS,
    EVAL_SUBSETS,
    EVAL_VIEWS,
    NUM_FRAMES,
    PER_DEVICE_BATCH,
    PRETRAINED_CKPT,
    RECIPES,
    SUBSET_DATASETS,
    WISE_FT_WEIGHT,
    ZERO_SHOT_TARGETS,
    Recipe,
    build_grid,
    config_name,
)

HERE = Path(__file__).resolve().parent
GENERATED_BY = "Written by configs/generate.py from tcclip/experiments/protocols.py: edit those, then run it."

VARIANT_TEXT = {
    "plain": "TC-CLIP ViT-B/16 initialised from CLIP",
    "llm": "TC-CLIP ViT-B/16 initialised from CLIP, LLM-rephrased class descriptions (LLM variant)",
    "pretrained": "TC-CLIP ViT-B/16 initialised from the zero-shot K400 TC-CLIP model ((P) variant)",
}
VARIANT_NOTES = {
    "plain": [],
    "llm": ["The rephrased descriptions are long: the text encoder uses the full CLIP context (77 tokens)."],
    "pretrained": [
        "init_checkpoint: the model trained with zero_shot_k400.yaml (our .ckpt or the official zero-shot .pth),",
        f"expected at {PRETRAINED_CKPT}; override with --model.init_checkpoint PATH.",
    ],
}
DATA_NOTE = "Videos: data.init_args.root (or $TCCLIP_DATA_ROOT); official split files: `tcclip splits download`."
WISE_NOTE = (
    f"validate/test also report WiSE-FT: {1 - WISE_FT_WEIGHT:.1f} x CLIP + {WISE_FT_WEIGHT} x fine-tuned weights."
)


def _model(recipe: Recipe | None, variant: str, wise_ft: bool = False) -> dict[str, Any]:
    model_config: dict[str, Any] = {"model": "tc_clip", "arch": "ViT-B-16"}
    if variant == "llm":
        model_config["context_length"] = 77
    model: dict[str, Any] = {"model_config": model_config}
    if variant == "pretrained":
        model["init_checkpoint"] = PRETRAINED_CKPT
    if recipe is not None:
        # The protocol's recipe (tcclip.training.hparams.Optimization); the rest of AdamW's settings are shared.
        model["optim"] = {
            "lr": recipe.lr,
            "lr_min": recipe.lr_min,
            "warmup_epochs": recipe.warmup_epochs,
            "total_batch_size": recipe.total_batch_size,
        }
    if wise_ft:
        model["wise_ft_weight"] = WISE_FT_WEIGHT
    return model


def _data(dataset: str, protocol: str, recipe: Recipe | None, variant: str, **choice: int) -> dict[str, Any]:
    init: dict[str, Any] = {"protocol": protocol, **choice}
    if variant == "llm":
        init["llm_labels"] = True
    clips, crops = (recipe.num_clip, recipe.num_crop) if recipe is not None else EVAL_VIEWS
    init |= {"num_frames": NUM_FRAMES, "num_clip": clips, "num_crop": crops}
    if recipe is not None:
        init["batch_size"] = PER_DEVICE_BATCH
    return {"class_path": f"tcclip.data.families.{DATASETS[dataset].family}", "init_args": init}


def _trainer(recipe: Recipe) -> dict[str, Any]:
    trainer: dict[str, Any] = {"max_epochs": recipe.epochs}
    if recipe.check_val_every_n_epoch != 1:
        trainer["check_val_every_n_epoch"] = recipe.check_val_every_n_epoch
    return trainer


def render(header: list[str], body: dict[str, Any]) -> str:
    """The file: comment lines, then the body as YAML (keys in the order given, a blank line between sections)."""
    comments = "".join(f"# {line}".rstrip() + "\n" for line in [*header, "", GENERATED_BY])
    sections = [yaml.safe_dump({key: value}, sort_keys=False, width=120) for key, value in body.items()]
    return comments + "\n" + "\n".join(sections)


def _usage(name: str, test: bool = True) -> list[str]:
    lines = [f"  tcclip fit --config configs/{name}"]
    return lines + ([f"  tcclip test --config configs/{name} --ckpt_path last"] if test else [])


def training_config(protocol: str, dataset: str, variant: str, shots: int | None, seed: int | None) -> str:
    recipe = RECIPES[protocol]
    label = DATASETS[dataset].label
    name = config_name(protocol, dataset, variant, shots=shots, seed=seed)
    if protocol == "few_shot":
        on = "its validation set" if dataset == "ssv2" else "test split 1"
        header = [
            f"Few-shot {label}, K={shots} training videos per class;",
            f"{VARIANT_TEXT[variant]}.",
            f"Trains {recipe.epochs} epochs and evaluates on {on} after every epoch: results.json has the",
            '"last" epoch\'s top-1 and the "best" epoch\'s (the paper reports the best).',
            *_usage(name),
        ]
        choice = {"shots": shots}
    elif protocol == "base2novel":
        header = [
            f"Base-to-novel {label}, training split s{seed} (16 videos per base class);",
            f"{VARIANT_TEXT[variant]}.",
            "Validates on the base classes; `test` reports base, novel and their harmonic mean",
            '(results.json "summary": base, novel, hm). The paper averages the three seeds.',
            *_usage(name),
        ]
        choice = {"seed": seed}
    elif protocol == "zero_shot":
        header = [
            f"Zero-shot protocol, training on {label} (400 classes);",
            f"{VARIANT_TEXT[variant]}.",
            "The upstream release has no full K400 training list (k400_splits/train.txt): write one for your copy, or",
            "add --data.init_args.train_list datasets_splits/k400_splits/train_tiny.txt (150 videos per class).",
            "Then evaluate the trained model on HMDB-51, UCF-101 and K600 with the zero_shot_eval_* configs.",
            *_usage(name, test=False),
            WISE_NOTE,
        ]
        choice = {}
    else:
        header = [
            f"Fully-supervised {label}: train and test on the 400 classes, top-1 and top-5 with"
            f" {recipe.num_clip} clips x {recipe.num_crop} crops.",
            "The upstream release has no full K400 training list (k400_splits/train.txt): write one for your copy.",
            f"Validation with {recipe.num_clip * recipe.num_crop} views is costly, so it runs every"
            f" {recipe.check_val_every_n_epoch} epochs.",
            *_usage(name),
        ]
        choice = {}
    body = {
        "trainer": _trainer(recipe),
        "model": _model(recipe, variant, wise_ft=protocol == "zero_shot"),
        "data": _data(dataset, protocol, recipe, variant, **choice),
    }
    return render([*header, *VARIANT_NOTES[variant], DATA_NOTE], body)


def zero_shot_eval_config(dataset: str, variant: str) -> str:
    name = config_name("zero_shot", dataset, variant, evaluation=True)
    train = config_name("zero_shot", "k400", variant).removesuffix(".yaml")
    header = [
        f'Zero-shot evaluation on {DATASETS[dataset].label}: the three official test splits (results.json "summary":',
        "mean and std of top-1), for the fine-tuned model and its WiSE-FT fusion with CLIP.",
        f"The network comes from the checkpoint (trained with {train}.yaml):",
        f"  tcclip test --config configs/{name} \\",
        f"    --ckpt_path runs/{train}/lightning_logs/version_0/checkpoints/last.ckpt",
        "or from an official checkpoint: --model.init_checkpoint PATH.pth",
        WISE_NOTE,
        *VARIANT_NOTES[variant],
        DATA_NOTE,
    ]
    body = {"model": _model(None, variant, wise_ft=True), "data": _data(dataset, "zero_shot", None, variant)}
    return render(header, body)


def subset_eval_config(dataset: str, subset: str) -> str:
    name = config_name(subset, dataset)
    sizes = {"k400": {"temporal": 32, "static": 32}, "ssv2": {"temporal": 18, "static": 16}}[dataset]
    what = "motion is needed" if subset == "temporal" else "one frame suffices"
    fully = RECIPES["fully_supervised"]
    header = [
        f"Evaluation on the {subset} class subset of {DATASETS[dataset].label} ({sizes[subset]} classes where {what}).",
        "The network comes from the checkpoint of a model trained on the whole dataset, e.g.",
        f"  tcclip test --config configs/{name} --ckpt_path PATH/last.ckpt",
        f"({EVAL_VIEWS[0]} clips x {EVAL_VIEWS[1]} crop; the fully-supervised test uses"
        f" --data.init_args.num_clip {fully.num_clip} --data.init_args.num_crop {fully.num_crop})",
        DATA_NOTE,
    ]
    body = {"model": _model(None, "plain"), "data": _data(dataset, subset, None, "plain")}
    return render(header, body)


def all_configs() -> dict[str, str]:
    """File name -> text of every generated config: each paper cell's training file and every evaluation file."""
    out: dict[str, str] = {}
    for protocol in ("zero_shot", "few_shot", "base2novel", "fully_supervised"):
        for cell in build_grid(protocol):
            assert cell.fit_config is not None
            out[cell.fit_config] = training_config(protocol, cell.dataset, cell.variant, cell.shots, cell.seed)
    for cell in build_grid("zero_shot"):
        for dataset in ZERO_SHOT_TARGETS:
            out[config_name("zero_shot", dataset, cell.variant, evaluation=True)] = zero_shot_eval_config(
                dataset, cell.variant
            )
    for dataset in SUBSET_DATASETS:
        for subset in EVAL_SUBSETS:
            out[config_name(subset, dataset)] = subset_eval_config(dataset, subset)
    return out


def drifted(folder: Path = HERE) -> list[str]:
    """Generated files that are missing from `folder` or differ from the table."""
    return sorted(
        n for n, text in all_configs().items() if not (folder / n).is_file() or (folder / n).read_text() != text
    )


def generate(*, check: bool = False) -> int:
    """Write the experiment files of configs/ from the protocol table; exit code 1 when --check finds a file that
    differs from it.

    Args:
        check: only report files that differ from the table
    """
    if check:
        stale = drifted()
        for name in stale:
            print(f"configs/{name}: differs from tcclip/experiments/protocols.py; run `python configs/generate.py`",
                  file=sys.stderr)  # fmt: skip
        return 1 if stale else 0
    for name, text in all_configs().items():
        (HERE / name).write_text(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python configs/generate.py [--check]`."""
    from tcclip.cli.typed import run

    return run(generate, sys.argv[1:] if argv is None else argv, "python configs/generate.py")


if __name__ == "__main__":
    sys.exit(main())
