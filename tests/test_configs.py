"""Every YAML in configs/ parses with the CLI, names official split files, follows the paper's recipes, and equals
what configs/generate.py writes from the protocol table."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import torch

from tcclip.cli.lightning import TCCLIPLightningCLI, default_precision
from tcclip.data.datamodule import VideoDataModule
from tcclip.training.module import TCCLIPModule

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
EXPERIMENTS = sorted(CONFIG_DIR.glob("*.yaml"))
# Evaluation-only files (zero-shot targets, temporal / static subsets) carry "_eval_" in their names.
TRAINING = [p for p in EXPERIMENTS if "_eval_" not in p.stem and p.stem != "demo"]
EVALUATION = [p for p in EXPERIMENTS if "_eval_" in p.stem]
MANIFEST = {e["path"] for e in json.loads((REPO / "tcclip" / "data" / "split_manifest.json").read_text())["files"]}
# Not in the upstream release (data_splits/README.md): the user writes the full K400 training list.
NOT_RELEASED = {"datasets_splits/k400_splits/train.txt"}

# The paper's recipes, written out here independently of tcclip/experiments/protocols.py:
# protocol -> (epochs, warm-up epochs, lr, lr_min, total batch, clips, crops).
RECIPES = {
    "zero_shot": (10, 5, 8e-6, 8e-8, 256, 2, 1),
    "few_shot": (50, 5, 2e-6, 2e-8, 64, 2, 1),
    "base2novel": (12, 2, 3.33e-6, 3.33e-8, 64, 2, 1),
    "fully_supervised": (30, 5, 2.2e-5, 2.2e-7, 512, 4, 3),
}


class _ParseOnly(TCCLIPLightningCLI):
    """Parses (with the project's run-time defaults) but builds and runs nothing."""

    def instantiate_classes(self) -> None:
        pass

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def _parse_only(args: list[str]) -> _ParseOnly:
    with mock.patch.object(sys, "argv", ["tcclip"]):  # LightningCLI warns when it sees pytest's arguments too
        return _ParseOnly(
            TCCLIPModule,
            VideoDataModule,
            subclass_mode_data=True,
            args=args,
            parser_kwargs={"fit": {"default_config_files": [str(REPO / "tcclip" / "configs" / "defaults.yaml")]}},
        )


@pytest.fixture(scope="module")
def parse():
    """Config file -> the parsed `fit` namespace (one parser for all, results cached)."""
    parser = _parse_only(["fit", "--config", str(CONFIG_DIR / "few_shot_hmdb_k8.yaml")]).parser
    return functools.cache(lambda path: parser.parse_args(["fit", "--config", str(path)]).fit)


def _family(cfg):
    module_name, cls_name = cfg.data.class_path.rsplit(".", 1)
    return getattr(importlib.import_module(module_name), cls_name)


def _split_files(cfg) -> list[str]:
    """Files a config's data module reads, from the family's table (no file is opened)."""
    family, init = _family(cfg), cfg.data.init_args
    table = family.__new__(family)
    table.protocol, table.shots, table.seed = init.protocol, init.shots, init.seed
    splits = table.protocol_splits()
    files = []
    for split in [splits.train, *splits.val, *splits.test]:
        if split is not None:
            files += [split.annotations, split.llm_labels if init.llm_labels else split.labels]
    return files


def test_there_is_a_config_for_every_cell_of_the_grid() -> None:
    names = {p.stem for p in EXPERIMENTS}
    assert "demo" in names and "fully_supervised_k400" in names
    assert {"zero_shot_k400", "zero_shot_k400_llm"} <= names
    for ds in ("hmdb", "ucf", "k600"):
        assert {f"zero_shot_eval_{ds}", f"zero_shot_eval_{ds}_llm"} <= names
    for ds in ("hmdb", "ucf", "ssv2"):
        for k in (2, 4, 8, 16):
            assert {f"few_shot_{ds}_k{k}", f"few_shot_{ds}_k{k}_pretrained"} <= names
            assert (f"few_shot_{ds}_k{k}_llm" in names) == (ds != "ssv2")  # SSv2 has no LLM labels
    for ds in ("k400", "hmdb", "ucf", "ssv2"):
        for s in (1, 2, 3):
            assert f"base2novel_{ds}_s{s}" in names
            assert (f"base2novel_{ds}_s{s}_llm" in names) == (ds != "ssv2")
            assert (f"base2novel_{ds}_s{s}_pretrained" in names) == (ds != "k400")
    for ds in ("k400", "ssv2"):
        assert {f"temporal_eval_{ds}", f"static_eval_{ds}"} <= names


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_config_parses_and_names_official_split_files(parse, path: Path) -> None:
    cfg = parse(path)
    assert cfg.data.class_path.startswith("tcclip.data.families.")
    if cfg.data.class_path.endswith(".Synthetic"):
        return  # its lists are generated next to the synthetic videos
    files = _split_files(cfg)
    unknown = [f for f in files if f not in MANIFEST and f not in NOT_RELEASED]
    assert not unknown, f"{path.name} names files that are not in the split manifest: {unknown}"


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: p.stem)
def test_training_configs_follow_the_paper_recipe(parse, path: Path) -> None:
    cfg = parse(path)
    epochs, warmup, lr, lr_min, total, clips, crops = RECIPES[cfg.data.init_args.protocol]
    model, optim = cfg.model, cfg.model.optim
    assert (cfg.trainer.max_epochs, optim.warmup_epochs, optim.total_batch_size) == (epochs, warmup, total)
    assert (optim.lr, optim.lr_min) == pytest.approx((lr, lr_min))
    assert (cfg.data.init_args.num_clip, cfg.data.init_args.num_crop) == (clips, crops)
    assert cfg.data.init_args.num_frames == 16 and model.model_config.num_frames == 16  # linked
    assert model.model_config.model == "tc_clip" and optim.lr_10x and optim.betas == (0.9, 0.98)
    assert optim.total_batch_size % cfg.data.init_args.batch_size == 0
    assert model.loss.mixup and model.loss.label_smoothing == 0.1
    assert cfg.data.init_args.llm_labels == path.stem.endswith("_llm")
    assert (model.model_config.context_length == 77) == cfg.data.init_args.llm_labels
    assert bool(model.init_checkpoint) == path.stem.endswith("_pretrained")
    # The zero-shot protocol also reports the WiSE-FT model (weight 0.7); nothing else does.
    assert model.wise_ft_weight == (0.7 if path.stem.startswith("zero_shot") else None)


@pytest.mark.parametrize("path", EVALUATION, ids=lambda p: p.stem)
def test_evaluation_configs_use_two_clips_one_crop_and_no_recipe(parse, path: Path) -> None:
    cfg = parse(path)
    assert cfg.trainer.max_epochs is None  # nothing here trains
    assert (cfg.data.init_args.num_clip, cfg.data.init_args.num_crop) == (2, 1)
    assert cfg.data.init_args.llm_labels == path.stem.endswith("_llm")
    protocol = cfg.data.init_args.protocol
    assert protocol == path.stem.split("_eval_")[0]  # zero_shot, temporal or static
    assert cfg.model.wise_ft_weight == (0.7 if protocol == "zero_shot" else None)
    assert cfg.model.optim is None  # nothing here trains: no recipe


def test_committed_configs_equal_the_generator_output() -> None:
    spec = importlib.util.spec_from_file_location("generate_configs", CONFIG_DIR / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    written = generate.all_configs()
    assert generate.drifted(CONFIG_DIR) == [], "run `python configs/generate.py` and commit the result"
    # Every config in the folder is either generated or the hand-written demo; every grid cell has its file.
    assert {p.name for p in EXPERIMENTS} == set(written) | {"demo.yaml"}
    assert len(TRAINING) + len(EVALUATION) + 1 == len(EXPERIMENTS)


def test_generator_check_reports_a_drifted_file(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate_configs", CONFIG_DIR / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    for name, text in generate.all_configs().items():
        (tmp_path / name).write_text(text)
    assert generate.drifted(tmp_path) == []
    edited = tmp_path / "few_shot_ucf_k4.yaml"
    edited.write_text(edited.read_text().replace("max_epochs: 50", "max_epochs: 5"))
    (tmp_path / "base2novel_ssv2_s3.yaml").unlink()
    assert generate.drifted(tmp_path) == ["base2novel_ssv2_s3.yaml", "few_shot_ucf_k4.yaml"]


def test_configs_build_their_data_module_from_the_official_files(parse, upstream_mirror: Path) -> None:
    """With the official files at hand, every data module finds and checks its label files (no video is read)."""
    started, built = time.perf_counter(), 0
    for path in EXPERIMENTS:
        cfg = parse(path)
        if cfg.data.class_path.endswith(".Synthetic") or any(f in NOT_RELEASED for f in _split_files(cfg)):
            continue
        init = {k: v for k, v in vars(cfg.data.init_args).items() if k != "splits_dir"}
        datamodule = _family(cfg)(**init, splits_dir=str(upstream_mirror))
        assert datamodule.train_class_names and datamodule.test_sets, path.name
        built += 1
    assert built >= len(EXPERIMENTS) - 4  # all but the demo and the two K400 trainings
    assert time.perf_counter() - started < 60


def test_run_time_defaults_of_the_user_command() -> None:
    cli = _parse_only(["fit", "--config", "configs/few_shot_hmdb_k8.yaml"])
    trainer = cli.config.fit.trainer
    assert trainer.default_root_dir == os.path.join("runs", "few_shot_hmdb_k8")
    assert trainer.precision == ("bf16-mixed" if torch.cuda.is_available() else "32-true")
    assert cli.config.fit.model.model_config.arch == "ViT-B-16" and cli.config.fit.data.init_args.input_size == 224


def test_default_precision() -> None:
    assert default_precision("cpu") == "32-true"
    if not torch.cuda.is_available():
        assert default_precision("auto") == "32-true"
