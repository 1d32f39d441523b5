"""The one table of TC-CLIP's evaluation protocols: datasets, shots, seeds, variants, recipes and the grid of cells.

Everything that enumerates experiments reads it: the sweep runner (`tcclip.experiments.sweep`), the tables
(`tcclip.experiments.results`, beside the published numbers of `tcclip.experiments.paper_results`), the config
generator (`configs/generate.py`) and the tests. Which protocols, few-shot K and base-to-novel seeds have split files
is defined by the data (`tcclip.data.protocol_splits`); the grids here are built on those values. See
docs/protocols.md.

The protocols are those of the paper's experiments (TC-CLIP, ECCV 2024, Sec. 4): zero-shot (train on Kinetics-400,
evaluate on HMDB-51, UCF-101 and Kinetics-600), few-shot (K = 2, 4, 8, 16 videos per class), base-to-novel (three
seeded training splits of the base classes) and fully-supervised Kinetics-400; `temporal` and `static` are evaluation
subsets of Kinetics-400 and SSv2 (classes that need motion, classes one frame suffices for). Each trained protocol has
one recipe (the paper's implementation details). Variants: `plain` (class names), `llm` (LLM-rephrased class names),
`pretrained` (start from the zero-shot Kinetics-400 TC-CLIP, the paper's "(P)" rows).

This module is plain data and small functions: it imports nothing from torch or Lightning, and from the rest of
tcclip only the plain data of `tcclip.data.protocol_splits`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from tcclip.data.protocol_splits import EVAL_SUBSETS, PROTOCOLS, SEEDS, SHOTS, TRAINED_PROTOCOLS


@dataclass(frozen=True)
class Recipe:
    """How a protocol trains (per protocol in the paper, the same for every dataset and variant)."""

    epochs: int
    warmup_epochs: int
    lr: float
    """Peak learning rate of the cosine schedule (new parameters get 10x)."""
    lr_min: float
    total_batch_size: int
    """Effective batch over all devices; gradient accumulation makes up the rest."""
    num_clip: int
    """Test-time clips per video."""
    num_crop: int
    """Test-time spatial crops per clip."""
    check_val_every_n_epoch: int = 1


@dataclass(frozen=True)
class Dataset:
    """A dataset family: its name in results, its short name in config file names, its DataModule class."""

    name: str
    short: str
    family: str
    """Class name in `tcclip.data.families`."""
    label: str
    """Name in prose and tables."""
    llm_labels: bool
    """Whether LLM-rephrased class descriptions exist (not for SSv2)."""


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("k400", "k400", "Kinetics400", "Kinetics-400", True),
        Dataset("k600", "k600", "Kinetics600", "Kinetics-600", True),
        Dataset("hmdb51", "hmdb", "HMDB51", "HMDB-51", True),
        Dataset("ucf101", "ucf", "UCF101", "UCF-101", True),
        Dataset("ssv2", "ssv2", "SSv2", "Something-Something v2", False),
    )
}
DATASET_ALIASES: dict[str, str] = {**{d.short: d.name for d in DATASETS.values()}, **{n: n for n in DATASETS}}

# Which protocols, K values and seeds have split files is the data's knowledge (`tcclip.data.protocol_splits`);
# the grids are built on it.
GRIDS: tuple[str, ...] = TRAINED_PROTOCOLS
"""Protocols with a grid of paper cells (what `tcclip sweep --grid` runs)."""
DATA_PROTOCOLS: tuple[str, ...] = PROTOCOLS
"""Every value `data.protocol` accepts (the grids and the evaluation-only subsets `EVAL_SUBSETS`)."""

VARIANTS: tuple[str, ...] = ("plain", "llm", "pretrained")
ZERO_SHOT_TARGETS: tuple[str, ...] = ("hmdb51", "ucf101", "k600")
ZERO_SHOT_SPLITS: int = 3
"""Test splits per zero-shot target (results are their mean and standard deviation)."""
FEW_SHOT_DATASETS: tuple[str, ...] = ("hmdb51", "ucf101", "ssv2")
BASE2NOVEL_DATASETS: tuple[str, ...] = ("k400", "hmdb51", "ucf101", "ssv2")
SUBSET_DATASETS: tuple[str, ...] = ("k400", "ssv2")
"""Datasets with temporal / static class subsets."""

RECIPES: dict[str, Recipe] = {
    "zero_shot": Recipe(10, 5, 8.0e-6, 8.0e-8, 256, 2, 1),
    "few_shot": Recipe(50, 5, 2.0e-6, 2.0e-8, 64, 2, 1),
    "base2novel": Recipe(12, 2, 3.33e-6, 3.33e-8, 64, 2, 1),
    # Validation with 4 clips x 3 crops is costly: every fifth epoch.
    "fully_supervised": Recipe(30, 5, 2.2e-5, 2.2e-7, 512, 4, 3, check_val_every_n_epoch=5),
}
EVAL_VIEWS: tuple[int, int] = (2, 1)
"""Clips and crops of an evaluation-only config (zero-shot targets, temporal / static subsets)."""
NUM_FRAMES: int = 16
PER_DEVICE_BATCH: int = 8
WISE_FT_WEIGHT: float = 0.7
"""Zero-shot protocol: also report the weight-space ensemble 0.3 * CLIP + 0.7 * fine-tuned (WiSE-FT)."""
PRETRAINED_SOURCE: str = "zero_shot/k400_plain"
"""The cell whose trained model the `pretrained` variant starts from."""
PRETRAINED_CKPT: str = "checkpoints/zero_shot_k400.ckpt"
"""Where the `pretrained` configs expect that model (override with --model.init_checkpoint)."""


def variant_exists(protocol: str, dataset: str, variant: str) -> bool:
    """Whether the paper has this (protocol, dataset, variant) combination."""
    if variant == "llm" and not DATASETS[dataset].llm_labels:
        return False  # no rephrased labels
    if variant == "pretrained" and (protocol not in ("few_shot", "base2novel") or dataset == "k400"):
        return False  # the pretrained model has already seen all of Kinetics-400
    if protocol in ("fully_supervised", *EVAL_SUBSETS) and variant != "plain":
        return False
    return True


def variants(protocol: str, dataset: str) -> tuple[str, ...]:
    return tuple(v for v in VARIANTS if variant_exists(protocol, dataset, v))


def config_name(
    protocol: str,
    dataset: str,
    variant: str = "plain",
    *,
    shots: int | None = None,
    seed: int | None = None,
    evaluation: bool = False,
) -> str:
    """The config file of one experiment, e.g. `few_shot_ucf_k4.yaml`, `zero_shot_eval_hmdb_llm.yaml`."""
    parts = [protocol] + (["eval"] if evaluation or protocol in EVAL_SUBSETS else []) + [DATASETS[dataset].short]
    parts += [f"k{shots}"] if shots is not None else []
    parts += [f"s{seed}"] if seed is not None else []
    return "_".join(parts) + ("" if variant == "plain" else f"_{variant}") + ".yaml"


@dataclass(frozen=True)
class Evaluation:
    """One `tcclip test` run of a cell; its results land in `<run dir>/eval/<name>/results.json`."""

    name: str
    config: str
    """Config file name inside the config folder."""
    dataset: str
    """Dataset evaluated on (a zero-shot cell trains on Kinetics-400 and evaluates on several)."""


@dataclass(frozen=True)
class Cell:
    """One run directory of a protocol grid: an optional training run, then one or more evaluations."""

    protocol: str
    name: str
    """Unique within the protocol; the run directory is `<runs>/<protocol>/<name>`."""
    dataset: str
    variant: str
    fit_config: str | None
    evaluations: tuple[Evaluation, ...]
    shots: int | None = None
    seed: int | None = None
    requires: str | None = None
    """`protocol/cell` whose trained model this cell starts from (the pretrained variant)."""
    overrides: tuple[str, ...] = ()
    """Extra `tcclip fit`/`test` arguments specific to this cell."""

    @property
    def key(self) -> str:
        return f"{self.protocol}/{self.name}"

    def run_dir(self, runs_dir: Path) -> Path:
        """Where the cell's training writes (checkpoints, logs)."""
        return Path(runs_dir) / self.protocol / self.name

    def results_path(self, runs_dir: Path, evaluation: Evaluation) -> Path:
        return self.run_dir(runs_dir) / "eval" / evaluation.name / "results.json"


def build_grid(protocol: str) -> list[Cell]:
    """Every cell of a protocol's grid, in the paper's table order (variant, dataset, K or seed)."""
    if protocol not in GRIDS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(GRIDS)}")
    cells: list[Cell] = []
    if protocol == "zero_shot":
        for variant in variants(protocol, "k400"):
            evals = tuple(
                Evaluation(t, config_name(protocol, t, variant, evaluation=True), t) for t in ZERO_SHOT_TARGETS
            )
            cells.append(
                Cell(protocol, f"k400_{variant}", "k400", variant, config_name(protocol, "k400", variant), evals)
            )
    elif protocol == "fully_supervised":
        config = config_name(protocol, "k400")
        cells.append(Cell(protocol, "k400_plain", "k400", "plain", config, (Evaluation("test", config, "k400"),)))
    else:
        datasets, values, key = (
            (FEW_SHOT_DATASETS, SHOTS, "shots") if protocol == "few_shot" else (BASE2NOVEL_DATASETS, SEEDS, "seed")
        )
        for variant in VARIANTS:
            for dataset in datasets:
                if not variant_exists(protocol, dataset, variant):
                    continue
                for value in values:
                    config = config_name(protocol, dataset, variant, **{key: value})
                    tag = f"k{value}" if key == "shots" else f"s{value}"
                    cells.append(
                        Cell(
                            protocol,
                            f"{dataset}_{tag}_{variant}",
                            dataset,
                            variant,
                            config,
                            (Evaluation("test", config, dataset),),
                            **{key: value},
                            requires=PRETRAINED_SOURCE if variant == "pretrained" else None,
                        )
                    )
    return cells


def find_cell(key: str) -> Cell:
    """The cell named `protocol/name`."""
    protocol, _, name = key.partition("/")
    for cell in build_grid(protocol):
        if cell.name == name:
            return cell
    raise ValueError(f"no cell {name!r} in the {protocol} grid")


def canonical_dataset(name: str) -> str:
    """`hmdb` -> `hmdb51` and so on; raises with the accepted names otherwise."""
    try:
        return DATASET_ALIASES[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}") from None


@dataclass(frozen=True)
class Selection:
    """A subset of a grid; empty fields select everything."""

    datasets: tuple[str, ...] = ()
    shots: tuple[int, ...] = ()
    seeds: tuple[int, ...] = ()
    variants: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    """Glob patterns on cell names (`hmdb51_k8_*`) or `protocol/name`."""

    def apply(self, cells: Iterable[Cell]) -> list[Cell]:
        chosen = []
        for cell in cells:
            if self.variants and cell.variant not in self.variants:
                continue
            if self.shots and cell.shots is not None and cell.shots not in self.shots:
                continue
            if self.seeds and cell.seed is not None and cell.seed not in self.seeds:
                continue
            if self.only and not any(fnmatch.fnmatchcase(n, p) for p in self.only for n in (cell.name, cell.key)):
                continue
            if self.datasets:
                # A zero-shot cell trains on Kinetics-400; the dataset filter then picks its evaluation targets.
                evals = tuple(e for e in cell.evaluations if e.dataset in self.datasets)
                if cell.dataset not in self.datasets and not (evals and cell.protocol == "zero_shot"):
                    continue
                if cell.protocol == "zero_shot" and evals:
                    cell = replace(cell, evaluations=evals)
            chosen.append(cell)
        return chosen

    def describe(self) -> str:
        """The filters in the words of the command line, for messages about an empty selection."""
        parts = [
            f"--{name} {','.join(map(str, value))}"
            for name, value in (
                ("datasets", self.datasets),
                ("shots", self.shots),
                ("seeds", self.seeds),
                ("variants", self.variants),
                ("only", self.only),
            )
            if value
        ]
        return " ".join(parts) or "no filter"
