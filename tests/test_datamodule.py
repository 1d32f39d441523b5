"""DataModules: every family/protocol maps to the right official files; class names; loaders on synthetic videos."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningModule, Trainer

from tcclip.data.datamodule import VideoDataModule, VideoListDataModule
from tcclip.data.families import HMDB51, UCF101, Kinetics400, Kinetics600, SSv2, Synthetic
from tcclip.data.labels import read_annotations
from tcclip.data.splits import SplitFilesError
from tcclip.utils.errors import UserError

# (family, protocol, extra args) -> (train list lines, train classes, {eval set: classes} for val, the same for test)
Z3 = {"split1": 51, "split2": 51, "split3": 51}
K3 = {"split1": 160, "split2": 160, "split3": 160}
K400_TINY = {"train_list": "datasets_splits/k400_splits/train_tiny.txt"}
OFFICIAL = [
    (HMDB51, "few_shot", {"shots": 8}, (408, 51), {"split1": 51}, {"split1": 51}),
    (UCF101, "few_shot", {"shots": 2}, (202, 101), {"split1": 101}, {"split1": 101}),
    (SSv2, "few_shot", {"shots": 16}, (2784, 174), {"val": 174}, {"val": 174}),
    (HMDB51, "zero_shot", {}, None, Z3, Z3),
    (Kinetics600, "zero_shot", {}, None, K3, K3),
    (Kinetics400, "base2novel", {"seed": 2}, (3200, 200), {"base": 200}, {"base": 200, "novel": 200}),
    (HMDB51, "base2novel", {"seed": 1}, (416, 26), {"base": 26}, {"base": 26, "novel": 25}),
    (UCF101, "base2novel", {"seed": 3}, (816, 51), {"base": 51}, {"base": 51, "novel": 50}),
    (SSv2, "base2novel", {"seed": 1}, (1392, 87), {"base": 87}, {"base": 87, "novel": 87}),
    (Kinetics400, "fully_supervised", K400_TINY, (60000, 400), {"val": 400}, {"val": 400}),
    (Kinetics400, "temporal", {}, (21101, 32), {"val": 32}, {"val": 32}),
    (SSv2, "static", {}, (15097, 16), {"val": 16}, {"val": 16}),
]  # fmt: skip


@pytest.mark.parametrize(("family", "protocol", "extra", "train", "val", "test"), OFFICIAL)
def test_protocol_maps_to_official_files(upstream_mirror, family, protocol, extra, train, val, test):
    dm = family(protocol=protocol, splits_dir=str(upstream_mirror), **extra)
    assert {s.name: len(s.class_names) for s in dm.val_sets} == val
    assert {s.name: len(s.class_names) for s in dm.test_sets} == test
    for split, eval_set in zip(dm.splits.test, dm.test_sets, strict=True):  # every label fits its class list
        assert max(a.label for a in read_annotations(upstream_mirror / split.annotations)) < len(eval_set.class_names)
    if train is None:
        assert dm.splits.train is None and dm.train_class_names == dm.test_sets[0].class_names
    else:
        lines = read_annotations(upstream_mirror / dm.splits.train.annotations, len(dm.train_class_names))
        assert (len(lines), len(dm.train_class_names)) == train


def test_llm_labels_replace_class_names(upstream_mirror):
    dm = HMDB51(protocol="base2novel", seed=1, llm_labels=True, splits_dir=str(upstream_mirror))
    assert dm.train_class_names[0].startswith("Pour: A person is pouring")
    assert dm.test_sets[1].class_names[0].startswith("Brush hair:")


def test_ssv2_has_no_llm_labels_and_no_flip(upstream_mirror):
    assert SSv2(splits_dir=str(upstream_mirror)).flip is False
    assert HMDB51(splits_dir=str(upstream_mirror)).flip is True
    with pytest.raises(ValueError, match="no LLM-rephrased label file.*llm_labels: false"):
        SSv2(llm_labels=True, splits_dir=str(upstream_mirror))


def test_unknown_choices_are_refused(upstream_mirror):
    with pytest.raises(ValueError, match="shots=3 has no official split; choose one of 2, 4, 8, 16"):
        HMDB51(protocol="few_shot", shots=3, splits_dir=str(upstream_mirror))
    with pytest.raises(ValueError, match="Kinetics600 has no 'few_shot' splits"):
        Kinetics600(protocol="few_shot", splits_dir=str(upstream_mirror))
    with pytest.raises(ValueError, match=r"data.init_args.protocol: .fewshot. is unknown. Choose one of zero_shot"):
        HMDB51(protocol="fewshot", splits_dir=str(upstream_mirror))


def test_missing_split_files_tell_the_download_command(tmp_path, upstream_mirror):
    with pytest.raises(SplitFilesError, match=f"tcclip splits download --dest {tmp_path}"):
        HMDB51(protocol="few_shot", splits_dir=str(tmp_path))
    # The full K400 training list is not released upstream: the error says so.
    with pytest.raises(SplitFilesError, match="k400_splits/train.txt: list not found, and it is not one of the off"):
        Kinetics400(protocol="zero_shot", splits_dir=str(upstream_mirror))


def test_root_from_env_or_clear_error(upstream_mirror, tmp_path, monkeypatch):
    monkeypatch.delenv("TCCLIP_DATA_ROOT", raising=False)
    dm = HMDB51(splits_dir=str(upstream_mirror))
    with pytest.raises(UserError, match="no dataset root.*TCCLIP_DATA_ROOT"):
        dm.root  # noqa: B018
    monkeypatch.setenv("TCCLIP_DATA_ROOT", str(tmp_path))
    assert dm.root == tmp_path


def test_yaml_data_section_builds_a_family(upstream_mirror):
    parser = ArgumentParser()
    parser.add_subclass_arguments(VideoDataModule, "data")
    config = f"""
data:
  class_path: tcclip.data.families.UCF101
  init_args: {{protocol: few_shot, shots: 4, splits_dir: {upstream_mirror}, num_frames: 8}}
"""
    dm = parser.instantiate_classes(parser.parse_string(config)).data
    assert isinstance(dm, UCF101) and dm.shots == 4 and dm.num_frames == 8 and len(dm.train_class_names) == 101


def _synthetic(root, **kwargs) -> Synthetic:
    args = {"num_frames": 4, "input_size": 32, "batch_size": 2, "num_workers": 0, "backend": "pyav"}
    return Synthetic(root=str(root), **(args | kwargs))


def test_synthetic_every_protocol(data_synth):
    for protocol, names in [("few_shot", ["split1"]), ("base2novel", ["base", "novel"]), ("zero_shot", ["split1"])]:
        dm = _synthetic(data_synth, protocol=protocol, shots=16, seed=2, llm_labels=True)
        assert [s.name for s in dm.test_sets] == names
    dm = _synthetic(data_synth, protocol="base2novel")
    assert dm.train_class_names == ["MoveLeft", "MoveRight"] and dm.test_sets[1].class_names == ["MoveUp"]


def test_synthetic_loaders_give_the_batches_the_module_expects(data_synth, tmp_path):
    dm = _synthetic(data_synth, protocol="few_shot", shots=2, num_clip=2, run_dir=str(tmp_path))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (2, 1, 4, 3, 32, 32) and batch["video"].dtype == torch.float32
    assert batch["label"].dtype == torch.long and batch["index"].dtype == torch.long
    (loader,) = dm.val_dataloader()
    batches = list(loader)
    assert batches[0]["video"].shape == (2, 2, 4, 3, 32, 32)
    assert sum(len(b["index"]) for b in batches) == 3  # test.txt: one video per class


def test_video_list_datamodule(data_synth):
    dm = VideoListDataModule(
        labels=str(data_synth / "labels.csv"),
        train_list="train.txt",
        val_lists=["val.txt", "test.txt"],
        splits_dir=str(data_synth),
        root=str(data_synth),
        num_frames=4,
        input_size=32,
    )
    assert [s.name for s in dm.val_sets] == ["val", "test"] and [s.name for s in dm.test_sets] == ["val", "test"]
    assert dm.train_class_names == ["MoveLeft", "MoveRight", "MoveUp"]


class _TinyModule(LightningModule):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, num_classes)

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.cross_entropy(self.head(batch["video"].mean(dim=(1, 2, 4, 5))), batch["label"])

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        assert batch["video"].shape[1:] == (2, 2, 3, 16, 16)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_writes_broken_videos_to_the_log_dir(data_synth, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(data_synth, root)
    (root / read_annotations(root / "train.txt")[0].path).write_bytes(b"junk" * 64)
    dm = _synthetic(root, protocol="base2novel", num_frames=2, input_size=16, max_broken_fraction=0.5)
    trainer = Trainer(
        max_epochs=1, limit_val_batches=1, logger=False, default_root_dir=tmp_path / "run", accelerator="cpu",
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(_TinyModule(len(dm.train_class_names)), dm)
    assert Path(dm.run_dir) == tmp_path / "run" and dm.broken_counts() == {"train": 1}


def test_a_run_without_a_run_folder_leaves_nothing_in_the_temporary_directory(data_synth, own_tmpdir):
    dm = _synthetic(data_synth, protocol="few_shot", shots=2, num_clip=2)  # no trainer, no run_dir
    dm.setup("fit")
    for loader in (dm.train_dataloader(), *dm.val_dataloader()):
        for _, batch in zip(range(2), loader, strict=False):
            assert batch["video"].shape[0] > 0
    dm.setup("test")
    next(iter(dm.test_dataloader()[0]))
    assert dm.broken_counts() == {} and dm.run_dir is None
    assert list(own_tmpdir.iterdir()) == []


def test_broken_videos_without_a_run_folder_are_kept_and_their_list_named(data_synth, own_tmpdir, tmp_path, caplog):
    root = tmp_path / "root"
    shutil.copytree(data_synth, root)
    broken = read_annotations(root / "test.txt")[0].path
    (root / broken).write_bytes(b"junk" * 64)
    dm = _synthetic(root, protocol="few_shot", shots=2, max_broken_fraction=0.5)
    dm.setup("test")
    with caplog.at_level("WARNING", logger="tcclip.data.dataset"):
        assert sum(len(b["index"]) for b in dm.test_dataloader()[0]) == 2  # 3 listed, 1 excluded
    (folder,) = own_tmpdir.iterdir()
    assert folder.name.startswith("tcclip-broken-") and dm.broken_counts() == {"test/split1": 1}
    lines = (folder / "broken_videos.txt").read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"test/split1\t{broken}\t")
    assert f"listed in {folder / 'broken_videos.txt'}" in caplog.text
