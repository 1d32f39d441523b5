"""`VideoDataModule`: one protocol of one dataset family as Lightning dataloaders.

A family (``tcclip.data.families``) only says which annotation list and label files make up each protocol
(:meth:`VideoDataModule.protocol_splits`); everything else (datasets, transforms, samplers, broken videos) lives
here. After construction the class names are known without touching any video:

- ``train_class_names``: class names of the training list (for an evaluation-only protocol, those of the first
  test set), so LightningCLI can link them into the model;
- ``val_sets`` / ``test_sets``: one :class:`EvalSet` per evaluation list, in the order of the loaders returned by
  ``val_dataloader()`` / ``test_dataloader()``.

Batches are ``{"video": float [B, V, T, 3, S, S], "label": long [B], "index": long [B]}`` with V = 1 in training and
V = num_clip * num_crop in evaluation. Evaluation batches leave out videos that cannot be read (see
``tcclip.data.dataset``), so they can be smaller than ``batch_size`` and, rarely, empty; evaluation loaders under DDP
use :class:`~tcclip.data.distributed.EvalDistributedSampler` so every video is counted exactly once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from tcclip.data.dataset import BrokenVideoLog, EvalCollate, VideoDataset
from tcclip.data.distributed import EvalDistributedSampler
from tcclip.data.labels import read_class_names
from tcclip.data.protocol_splits import PROTOCOLS, ProtocolSplits, SplitFiles
from tcclip.data.resumable import TrainSampler
from tcclip.data.splits import default_splits_dir, require_split_file
from tcclip.utils.errors import ConfigError, UserError

log = logging.getLogger(__name__)

DATA_ROOT_ENV = "TCCLIP_DATA_ROOT"


@dataclass(frozen=True)
class EvalSet:
    """One evaluation list: its name (a key of ``results.json`` "sets") and the class names it is scored over."""

    name: str
    class_names: list[str]


def _check_loader_settings(**values: object) -> None:
    """Refuse a data setting out of range before any list is read, naming its key (`data.init_args.<name>`)."""

    def bad(name: str, rule: str) -> ConfigError:
        return ConfigError(
            f"data.init_args.{name}", f"must be {rule}, got {values[name]!r}", fix=f"Fix data.init_args.{name}."
        )

    def integer(name: str) -> int | None:
        value = values[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise bad(name, "an integer")
        return value  # type: ignore[return-value]

    for name in ("batch_size", "num_clip", "num_frames"):
        if integer(name) < 1:  # type: ignore[operator]
            raise bad(name, ">= 1")
    eval_batch = integer("eval_batch_size")
    if eval_batch is not None and eval_batch < 1:
        raise bad("eval_batch_size", ">= 1, or null (the training batch size)")
    if integer("num_workers") < 0:  # type: ignore[operator]
        raise bad("num_workers", ">= 0 (0: load in the main process)")
    if values["num_crop"] not in (1, 3):
        raise bad("num_crop", "1 or 3 (centre crop, or three crops along the long side)")
    fraction = values["max_broken_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise bad("max_broken_fraction", "a fraction in [0, 1]")


class VideoDataModule(LightningDataModule):
    """Base DataModule; subclasses implement :meth:`protocol_splits` (a table of paths).

    Args:
        root: dataset root (video paths in the lists are relative to it); default ``$TCCLIP_DATA_ROOT``.
        protocol: one of zero_shot, few_shot, base2novel, fully_supervised, temporal, static.
        shots: training videos per class in the few-shot protocol (official: 2, 4, 8, 16).
        seed: base-to-novel training split (official: 1, 2, 3).
        llm_labels: use the LLM-rephrased class descriptions instead of the class names.
        num_frames: frames per video (T).
        input_size: frame size after cropping (S).
        batch_size: videos per training batch on each device.
        eval_batch_size: videos per evaluation batch (default: batch_size).
        num_workers: DataLoader worker processes.
        num_clip: temporal views per video in evaluation.
        num_crop: spatial crops per view in evaluation (1 = centre crop, 3 = three crops along the long side).
        backend: video decoder: auto (exact: torchcodec where it works, else pyav), torchcodec, pyav, or decord
            (the official code's decoder, for bit-compatibility with published numbers; wrong frames on MPEG-4
            part 2 AVIs with B-frames). See ``tcclip.data.video_reader``.
        splits_dir: folder with the official ``labels/`` and ``datasets_splits/`` (default ``$TCCLIP_SPLITS_DIR``
            or ``data_splits/files``; fill it with ``tcclip splits download``).
        max_broken_fraction: stop when more than this fraction of a list cannot be read.
        run_dir: where ``broken_videos.txt`` and the data summary go (default: the trainer's log dir; without a
            trainer the summary is only printed, and broken videos are listed in a temporary folder made for the
            first one, whose path is logged).
        train_list: replace the protocol's training list (path relative to ``splits_dir``, or absolute); may contain
            ``{shots}`` and ``{seed}``.
        flip: random horizontal flip in training.
    """

    dataset_name: ClassVar[str] = "videos"
    """Short name of the family (the "dataset" field of results.json)."""

    def __init__(
        self,
        root: str | None = None,
        protocol: str = "few_shot",
        shots: int = 16,
        seed: int = 1,
        llm_labels: bool = False,
        num_frames: int = 16,
        input_size: int = 224,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        num_clip: int = 2,
        num_crop: int = 1,
        backend: str = "auto",
        splits_dir: str | None = None,
        max_broken_fraction: float = 0.01,
        run_dir: str | None = None,
        train_list: str | None = None,
        flip: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if protocol not in PROTOCOLS:
            raise ConfigError(
                "data.init_args.protocol", f"{protocol!r} is unknown", fix=f"Choose one of {', '.join(PROTOCOLS)}."
            )
        _check_loader_settings(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            num_clip=num_clip,
            num_crop=num_crop,
            num_frames=num_frames,
            max_broken_fraction=max_broken_fraction,
        )
        self._root = root
        self.protocol = protocol
        self.shots = shots
        self.seed = seed
        self.llm_labels = llm_labels
        self.num_frames = num_frames
        self.input_size = input_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.num_clip = num_clip
        self.num_crop = num_crop
        self.backend = backend
        self.splits_dir = self._resolve_splits_dir(splits_dir)
        self.max_broken_fraction = max_broken_fraction
        self.run_dir = run_dir
        self.train_list = train_list
        self.flip = flip
        # The training order's seed: the run's seed_everything value (LightningCLI seeds before building this).
        self.shuffle_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))

        self.splits = self.protocol_splits()
        if self.train_list is not None and self.splits.train is not None:
            override = self.train_list.format(shots=shots, seed=seed)
            self.splits = ProtocolSplits(_replace_list(self.splits.train, override), self.splits.val, self.splits.test)
        for split in (self.splits.train, *self.splits.val, *self.splits.test):  # fail now, not after an epoch
            if split is not None:
                self._file(split.annotations)
        self.val_sets = [EvalSet(s.name, self._class_names(s)) for s in self.splits.val]
        self.test_sets = [EvalSet(s.name, self._class_names(s)) for s in self.splits.test]
        if self.splits.train is not None:
            self.train_class_names = self._class_names(self.splits.train)
        else:  # evaluation-only protocol: the model is built with the first test set's classes
            self.train_class_names = list(self.test_sets[0].class_names)
        self._datasets: dict[str, list[VideoDataset]] = {}
        self._temporary_log: BrokenVideoLog | None = None

    # -- what a family provides ---------------------------------------------------------------------------------------
    def protocol_splits(self) -> ProtocolSplits:
        """The lists and label files of ``self.protocol`` (uses ``self.shots`` / ``self.seed`` where relevant)."""
        raise NotImplementedError(f"{type(self).__name__} must implement protocol_splits()")

    def unsupported(self, supported: Sequence[str]) -> ValueError:
        """The error for a protocol this family has no official splits for."""
        return ValueError(
            f"{type(self).__name__} has no {self.protocol!r} splits; use data.protocol one of {', '.join(supported)}"
        )

    # -- paths --------------------------------------------------------------------------------------------------------
    def _resolve_splits_dir(self, splits_dir: str | None) -> Path:
        return Path(splits_dir).expanduser() if splits_dir else default_splits_dir()

    @property
    def root(self) -> Path:
        """Dataset root: the ``root`` argument, else ``$TCCLIP_DATA_ROOT``."""
        env = os.environ.get(DATA_ROOT_ENV)
        root = self._root or env
        fix = f"Set data.init_args.root (or ${DATA_ROOT_ENV}) to the folder the video paths in the lists start from."
        if self._root and env and Path(env).expanduser() != Path(self._root).expanduser():
            # The config's root wins over the environment (as every explicit setting does); say so when it fails.
            fix = (
                f"The config sets data.init_args.root, so ${DATA_ROOT_ENV}={env} is not used. Override the root on "
                f"the command line: --data.init_args.root {env} (tcclip fit/test/calibrate, tcclip data check --root)."
            )
        if not root:
            raise UserError(f"{type(self).__name__}: no dataset root given", fix=fix)
        root = Path(root).expanduser()
        if not root.is_dir():
            what = "is a file, not a folder" if root.exists() else "does not exist"
            source = "data.init_args.root" if self._root else f"${DATA_ROOT_ENV}"
            raise UserError(f"the dataset root {what} (set by {source})", path=root, fix=fix)
        return root

    def _file(self, rel_path: str) -> Path:
        return require_split_file(self.splits_dir, rel_path)

    def _class_names(self, split: SplitFiles) -> list[str]:
        if not self.llm_labels:
            return read_class_names(self._file(split.labels))
        if split.llm_labels is None:
            raise ValueError(
                f"{type(self).__name__} ({self.protocol}, {split.name}) has no LLM-rephrased label file. "
                "Fix: set data.llm_labels: false."
            )
        return read_class_names(self._file(split.llm_labels))

    # -- Lightning hooks ----------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        parts = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for part in parts.get(stage or "", ("train", "val", "test")):
            self.datasets(part)
        stage = str(getattr(stage, "value", stage))  # Lightning passes its TrainerFn enum
        if stage in ("fit", "validate", "test") and self._world()[1] == 0:
            self._record_data_summary(stage)

    def _record_data_summary(self, stage: str) -> None:
        """Print (and keep in the run folder) how complete the data is, so a result comes with the data it was
        measured on: presence of every listed video plus cached `tcclip data verify` results, no decoding."""
        from lightning.pytorch.utilities.rank_zero import rank_zero_info

        from tcclip.data.verify import start_of_run_summary

        line = start_of_run_summary(self, stage)
        rank_zero_info(f"data: {line}")
        folder = self._run_folder()
        if folder is None:
            return  # no run to keep it with (no trainer, no run_dir): the line was printed
        try:
            (folder / f"data_summary_{stage}.txt").write_text(line + "\n")
        except OSError:
            pass  # the run folder's own checks report an unwritable folder; the line was printed

    def _build(self, part: str) -> list[VideoDataset]:
        from tcclip.data.transforms import TestTransform, TrainTransform

        broken_log = self._broken_log()
        if not any(self.root.iterdir()):
            raise UserError(
                "the dataset root is empty",
                path=self.root,
                fix=f"Set data.init_args.root (or ${DATA_ROOT_ENV}) to the folder that holds the videos.",
            )
        common = {"root": self.root, "num_frames": self.num_frames, "backend": self.backend, "broken_log": broken_log}
        common["max_broken_fraction"] = self.max_broken_fraction
        if part == "train":
            if self.splits.train is None:
                raise ValueError(f"{type(self).__name__} has nothing to train on in the {self.protocol} protocol")
            split = self.splits.train
            transform = TrainTransform(self.input_size, flip=self.flip)
            num_classes = len(self.train_class_names)
            return [
                VideoDataset(self._file(split.annotations), transform=transform, train=True, split="train",
                             num_classes=num_classes, **common)
            ]  # fmt: skip
        transform = TestTransform(self.input_size, num_crop=self.num_crop)
        splits, sets = (self.splits.val, self.val_sets) if part == "val" else (self.splits.test, self.test_sets)
        return [
            VideoDataset(self._file(s.annotations), transform=transform, train=False, num_clip=self.num_clip,
                         split=f"{part}/{s.name}", num_classes=len(e.class_names), **common)
            for s, e in zip(splits, sets, strict=True)
        ]  # fmt: skip

    def _run_folder(self) -> Path | None:
        """The run's folder: ``run_dir``, else the trainer's log folder; None without either."""
        if self.run_dir is None and self.trainer is not None:
            self.run_dir = self.trainer.log_dir or self.trainer.default_root_dir
        return Path(self.run_dir) if self.run_dir is not None else None

    def _broken_log(self) -> BrokenVideoLog:
        folder = self._run_folder()
        if folder is not None:
            return BrokenVideoLog(folder)
        if self._temporary_log is None:  # one for every list of this data module, made on the first broken video
            self._temporary_log = BrokenVideoLog.temporary()
        return self._temporary_log

    def datasets(self, part: str) -> list[VideoDataset]:
        """The datasets of "train", "val" or "test" (built on first use)."""
        if part not in self._datasets:
            self._datasets[part] = self._build(part)
        return self._datasets[part]

    def train_dataloader(self) -> DataLoader:
        # Resumable in the middle of an epoch: same videos, order and augmentations after a stop (see resumable.py).
        from torchdata.stateful_dataloader import StatefulDataLoader

        dataset = self.datasets("train")[0]
        world_size, rank = self._world()
        return StatefulDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=TrainSampler(dataset, num_replicas=world_size, rank=rank, seed=self.shuffle_seed),
            num_workers=self.num_workers,
            drop_last=len(dataset) >= self.batch_size,  # official: drop the ragged batch; tiny lists keep theirs
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader(d) for d in self.datasets("val")]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader(d) for d in self.datasets("test")]

    def predict_dataloader(self) -> list[DataLoader]:
        # `tcclip predict --config ...` scores the test sets, with the test pipeline.
        return self.test_dataloader()

    def _eval_loader(self, dataset: VideoDataset) -> DataLoader:
        world_size, rank = self._world()
        sampler = EvalDistributedSampler(dataset, num_replicas=world_size, rank=rank) if world_size > 1 else None
        views = self.num_clip * self.num_crop
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=EvalCollate((views, self.num_frames, 3, self.input_size, self.input_size)),
            pin_memory=torch.cuda.is_available(),
        )

    def _world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.world_size, self.trainer.global_rank
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    def annotation_files(self, parts: Sequence[str] = ("train", "val", "test")) -> list[tuple[str, Path]]:
        """(list name, file) of the lists used by ``parts``: "train", "val/<set>", "test/<set>"."""
        files = []
        if "train" in parts and self.splits.train is not None:
            files.append(("train", self._file(self.splits.train.annotations)))
        for part, splits in (("val", self.splits.val), ("test", self.splits.test)):
            if part in parts:
                files.extend((f"{part}/{s.name}", self._file(s.annotations)) for s in splits)
        return files

    def broken_counts(self) -> dict[str, int]:
        """Unreadable videos found so far, per list ("train", "val/<set>", "test/<set>")."""
        broken_log = BrokenVideoLog(Path(self.run_dir)) if self.run_dir is not None else self._temporary_log
        if broken_log is None:
            return {}
        counts: dict[str, int] = {}
        for split, _ in broken_log.entries():
            counts[split] = counts.get(split, 0) + 1
        return counts


def _replace_list(split: SplitFiles, annotations: str) -> SplitFiles:
    return SplitFiles(split.name, annotations, split.labels, split.llm_labels)


class VideoListDataModule(VideoDataModule):
    """Your own annotation lists and label files, given directly (format: ``tcclip.data.labels``).

    Paths are relative to ``splits_dir`` when it is given, else used as written. Evaluation sets are named after
    their list's file name (``val1.txt`` -> "val1").

    Args:
        train_list: training list (optional: evaluation-only runs need none).
        val_lists: lists evaluated during fit / validate.
        test_lists: lists evaluated by test (default: val_lists).
        labels: label file (CSV or JSON) of every list.
        val_labels: per-list label files for val_lists (e.g. base / novel), instead of ``labels``.
        test_labels: the same for test_lists.
        **kwargs: the common VideoDataModule arguments (root, protocol, num_frames, ...).
    """

    dataset_name = "custom"

    def __init__(
        self,
        labels: str,
        train_list: str | None = None,
        val_lists: list[str] | None = None,
        test_lists: list[str] | None = None,
        val_labels: list[str] | None = None,
        test_labels: list[str] | None = None,
        **kwargs,
    ) -> None:
        self._lists = (labels, val_lists or [], test_lists or val_lists or [], val_labels, test_labels)
        self._list_train = train_list
        super().__init__(train_list=train_list, **kwargs)

    def _resolve_splits_dir(self, splits_dir: str | None) -> Path:
        return Path(splits_dir).expanduser() if splits_dir else Path()

    def _file(self, rel_path: str) -> Path:
        path = self.splits_dir / rel_path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: list or label file not found. Fix: check data.init_args paths.")
        return path

    def protocol_splits(self) -> ProtocolSplits:
        labels, val_lists, test_lists, val_labels, test_labels = self._lists

        def eval_splits(lists: list[str], per_list: list[str] | None, what: str) -> tuple[SplitFiles, ...]:
            if per_list is not None and len(per_list) != len(lists):
                raise ValueError(f"data.{what}_labels has {len(per_list)} files for {len(lists)} {what} lists")
            names = [Path(p).stem for p in lists]
            names = [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]
            label_files = per_list or [labels] * len(lists)
            return tuple(SplitFiles(n, p, f, f) for n, p, f in zip(names, lists, label_files, strict=True))

        train = SplitFiles("train", self._list_train, labels, labels) if self._list_train else None
        val, test = eval_splits(val_lists, val_labels, "val"), eval_splits(test_lists, test_labels, "test")
        if train is None and not test:
            raise ValueError("VideoListDataModule needs a train_list or at least one val/test list")
        return ProtocolSplits(train, val, test)
