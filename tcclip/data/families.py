"""The dataset families of the paper, each a table of its official split files per protocol.

All paths are relative to the splits directory (``tcclip splits download``). Evaluation set names are the keys of
``results.json``: "split1".."split3" (the three official test splits), "base" / "novel", or "val".

| family       | zero_shot        | few_shot (K)          | base2novel (s)  | fully_supervised | temporal / static |
|--------------|------------------|-----------------------|-----------------|------------------|-------------------|
| Kinetics400  | train + val      | -                     | fs_base_s{s}    | train + val      | *32 subsets       |
| Kinetics600  | split1-3 (test)  | -                     | -               | -                | -                 |
| HMDB51       | split1-3 (test)  | train1_few_shot_K     | fs_base_s{s}    | -                | -                 |
| UCF101       | split1-3 (test)  | train1_few_shot_K     | fs_base_s{s}    | -                | -                 |
| SSv2         | -                | train1_few_shot_K     | fs_base_s{s}    | train + val      | static16 / temporal18 |

Few-shot models are evaluated on test split 1 (SSv2: its validation set); base-to-novel models are validated on
the base classes and tested on base and novel. The K400 training list of the full zero-shot / fully-supervised
setting (``k400_splits/train.txt``) is not in the upstream release (only ``train_tiny.txt``, 150 videos per class):
``tcclip data download k400`` writes it from the annotation CSV, or set
``train_list: datasets_splits/k400_splits/train_tiny.txt``.
For K400 base-to-novel training videos extracted into one folder per seed, use
``train_list: datasets_splits/base2novel_splits/k400_splits/fs_base_s{seed}_train_prefix.txt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tcclip.data.datamodule import VideoDataModule
from tcclip.data.protocol_splits import SEEDS, SHOTS, ProtocolSplits, SplitFiles, base2novel_splits, check_choice

SPLITS = "datasets_splits"
LABELS = "labels"
LLM = "labels/labels_froster"


class Kinetics400(VideoDataModule):
    """Kinetics-400: zero-shot source, fully supervised, base-to-novel, temporal/static subsets."""

    dataset_name = "k400"

    def protocol_splits(self) -> ProtocolSplits:
        labels, llm = f"{LABELS}/kinetics_400_labels.csv", f"{LLM}/kinetics_400_llm_labels.json"
        if self.protocol in ("zero_shot", "fully_supervised"):
            val = SplitFiles("val", f"{SPLITS}/k400_splits/val.txt", labels, llm)
            return ProtocolSplits(SplitFiles("train", f"{SPLITS}/k400_splits/train.txt", labels, llm), (val,), (val,))
        if self.protocol == "base2novel":
            seed = check_choice("seed", self.seed, SEEDS, "Kinetics400")
            base, novel = f"{LABELS}/kinetics_400_base_labels.csv", f"{LABELS}/kinetics_400_novel_labels.csv"
            llms = f"{LLM}/kinetics_400_base_llm_labels.json", f"{LLM}/kinetics_400_novel_llm_labels.json"
            return base2novel_splits("k400_splits", seed, base, novel, *llms)
        if self.protocol in ("temporal", "static"):
            labels = f"{LABELS}/labels_temporal_static/kinetics_400_{self.protocol}32_labels.csv"
            lists = f"{SPLITS}/temporal_static_splits/k400_splits"
            val = SplitFiles("val", f"{lists}/val_{self.protocol}32.txt", labels)
            return ProtocolSplits(SplitFiles("train", f"{lists}/train_{self.protocol}32.txt", labels), (val,), (val,))
        raise self.unsupported(("zero_shot", "fully_supervised", "base2novel", "temporal", "static"))


class Kinetics600(VideoDataModule):
    """Kinetics-600 zero-shot targets: three splits of 160 classes that are not in K400 (evaluation only)."""

    dataset_name = "k600"

    def protocol_splits(self) -> ProtocolSplits:
        if self.protocol != "zero_shot":
            raise self.unsupported(("zero_shot",))
        sets = tuple(
            SplitFiles(
                f"split{n}",
                f"{SPLITS}/k600_splits/ZS_split{n}_K600_eval.txt",
                f"{LABELS}/ZS_split{n}_K600.csv",
                f"{LLM}/ZS_split{n}_K600_llm.json",
            )
            for n in (1, 2, 3)
        )
        return ProtocolSplits(None, sets, sets)


class _SplitsOf3(VideoDataModule):
    """HMDB-51 and UCF-101: three official train/test splits, few-shot lists of split 1, base/novel."""

    folder: str  # under datasets_splits/
    labels_stem: str  # labels/<stem>_labels.csv, <stem>_base_labels.csv, ...

    def protocol_splits(self) -> ProtocolSplits:
        stem = self.labels_stem
        labels, llm = f"{LABELS}/{stem}_labels.csv", f"{LLM}/{stem}_llm_labels.json"
        tests = tuple(SplitFiles(f"split{n}", f"{SPLITS}/{self.folder}/val{n}.txt", labels, llm) for n in (1, 2, 3))
        if self.protocol == "zero_shot":
            return ProtocolSplits(None, tests, tests)
        if self.protocol == "few_shot":
            shots = check_choice("shots", self.shots, SHOTS, type(self).__name__)
            train = SplitFiles("train", f"{SPLITS}/{self.folder}/train1_few_shot_{shots}.txt", labels, llm)
            return ProtocolSplits(train, tests[:1], tests[:1])
        if self.protocol == "base2novel":
            seed = check_choice("seed", self.seed, SEEDS, type(self).__name__)
            base, novel = f"{LABELS}/{stem}_base_labels.csv", f"{LABELS}/{stem}_novel_labels.csv"
            base_llm, novel_llm = f"{LLM}/{stem}_base_llm_labels.json", f"{LLM}/{stem}_novel_llm_labels.json"
            return base2novel_splits(self.folder, seed, base, novel, base_llm, novel_llm)
        raise self.unsupported(("zero_shot", "few_shot", "base2novel"))


class HMDB51(_SplitsOf3):
    """HMDB-51 (51 classes)."""

    dataset_name = "hmdb51"
    folder = "hmdb_splits"
    labels_stem = "hmdb_51"


class UCF101(_SplitsOf3):
    """UCF-101 (101 classes)."""

    dataset_name = "ucf101"
    folder = "ucf_splits"
    labels_stem = "ucf_101"


class SSv2(VideoDataModule):
    """Something-Something v2 (174 classes). Left/right matter here, so training does not flip; no LLM labels."""

    dataset_name = "ssv2"

    def __init__(self, *, flip: bool = False, **kwargs: Any) -> None:
        super().__init__(flip=flip, **kwargs)

    def protocol_splits(self) -> ProtocolSplits:
        labels = f"{LABELS}/ssv2_labels.csv"
        val = SplitFiles("val", f"{SPLITS}/ssv2_splits/validation.txt", labels)
        if self.protocol == "few_shot":
            shots = check_choice("shots", self.shots, SHOTS, "SSv2")
            train = SplitFiles("train", f"{SPLITS}/ssv2_splits/train1_few_shot_{shots}.txt", labels)
            return ProtocolSplits(train, (val,), (val,))
        if self.protocol == "fully_supervised":
            return ProtocolSplits(SplitFiles("train", f"{SPLITS}/ssv2_splits/train.txt", labels), (val,), (val,))
        if self.protocol == "base2novel":
            seed = check_choice("seed", self.seed, SEEDS, "SSv2")
            base, novel = f"{LABELS}/ssv2_174_base_labels.csv", f"{LABELS}/ssv2_174_novel_labels.csv"
            return base2novel_splits("ssv2_splits", seed, base, novel, None, None)
        if self.protocol in ("temporal", "static"):
            n = {"temporal": 18, "static": 16}[self.protocol]
            labels = f"{LABELS}/labels_temporal_static/ssv2_{self.protocol}{n}_labels.csv"
            lists = f"{SPLITS}/temporal_static_splits/ssv2_splits"
            val = SplitFiles("val", f"{lists}/validation_{self.protocol}{n}.txt", labels)
            return ProtocolSplits(SplitFiles("train", f"{lists}/train_{self.protocol}{n}.txt", labels), (val,), (val,))
        raise self.unsupported(("few_shot", "fully_supervised", "base2novel", "temporal", "static"))


class Synthetic(VideoDataModule):
    """The synthetic dataset of ``tcclip data synth`` under every protocol, for smoke runs.

    ``root`` is the synthetic dataset folder; its protocol lists (``<root>/splits``, written by
    ``tcclip.data.custom_splits.make_synthetic_protocol_splits``) are created on first use. Few-shot K larger than the
    training videos of a class uses all of them. zero_shot trains on train.txt, validates on val.txt and tests on
    "split1" = test.txt; the other protocols train on train.txt (few-shot / base lists for those protocols) and
    evaluate on test.txt.
    """

    dataset_name = "synthetic"

    def __init__(self, *, flip: bool = False, **kwargs: Any) -> None:
        # MoveLeft/MoveRight (and the rotations) swap under a horizontal flip: never flip this data.
        super().__init__(flip=flip, **kwargs)

    def _resolve_splits_dir(self, splits_dir: str | None) -> Path:
        if splits_dir:
            return Path(splits_dir).expanduser()
        from tcclip.data.custom_splits import make_synthetic_protocol_splits

        if not (self.root / "splits" / "llm_labels.json").is_file():
            make_synthetic_protocol_splits(self.root)
        return self.root

    def protocol_splits(self) -> ProtocolSplits:
        labels, llm = "labels.csv", "splits/llm_labels.json"
        test = SplitFiles("split1", "test.txt", labels, llm)
        if self.protocol == "few_shot":
            train = SplitFiles("train", f"splits/train_few_shot_{self.shots}.txt", labels, llm)
            return ProtocolSplits(train, (test,), (test,))
        if self.protocol == "base2novel":
            b2n = "splits/base2novel"
            base, novel = (SplitFiles(p, f"{b2n}/{p}_val.txt", f"{b2n}/{p}_labels.csv", f"{b2n}/{p}_llm_labels.json")
                           for p in ("base", "novel"))  # fmt: skip
            train = SplitFiles("train", f"{b2n}/fs_base_s{self.seed}_train.txt", base.labels, base.llm_labels)
            return ProtocolSplits(train, (base,), (base, novel))
        val = SplitFiles("val", "val.txt", labels, llm)
        return ProtocolSplits(SplitFiles("train", "train.txt", labels, llm), (val,), (test,))
