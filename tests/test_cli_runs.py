"""Ordinary mistakes around `tcclip fit/validate/test` give one paragraph and exit 2, not a traceback; non-finite
logits are an error wherever probabilities are computed."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from torch import nn

from tcclip.cli import commands as cli
from tcclip.cli.lightning import run_lightning_cli
from tcclip.inference.scoring import video_view_logits
from tcclip.training.metrics import multi_view_probabilities
from tcclip.utils.finite import NonFiniteError


def run(argv: list[str]) -> int:
    with mock.patch.object(sys, "argv", ["tcclip"]):
        return cli.main(argv)


def test_enable_progress_bar_false_works_with_the_defaults(tiny_run_args, data_synth: Path, tmp_path: Path) -> None:
    args = [*tiny_run_args(data_synth, tmp_path / "run"), "--trainer.enable_progress_bar=false"]
    with mock.patch.object(sys, "argv", ["tcclip"]):
        built = run_lightning_cli(args, run=False)
    assert built.trainer.progress_bar_callback is None
    # The other callbacks of the defaults are all still there.
    kinds = {type(c).__name__ for c in built.trainer.callbacks}
    assert {"ModelCheckpoint", "LearningRateMonitor", "EpochSeed", "RunGuard"} <= kinds


def test_unwritable_default_root_dir(tiny_run_args, data_synth: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert run(["fit", *tiny_run_args(data_synth, blocker / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tcclip fit: error: {blocker / 'run'}: trainer.default_root_dir cannot be created")
    assert "Traceback" not in err and err.count("\n") == 1


RANDOM = random.Random(0)


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        *[(RANDOM.randbytes(2048), "not a checkpoint") for _ in range(3)],
        (b"\x80\x02" + RANDOM.randbytes(2048), "its pickled data cannot be read"),  # looks like a legacy pickle
        (b"", "empty (0 bytes)"),
    ],
)
def test_bad_file_given_to_ckpt_path(tiny_run_args, data_synth, tmp_path, capsys, content, phrase) -> None:
    bad = tmp_path / "model.ckpt"
    bad.write_bytes(content)
    assert run(["test", *tiny_run_args(data_synth, tmp_path / "run"), f"--ckpt_path={bad}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tcclip test: error: {bad}: not a checkpoint") and phrase in err
    assert "unsafe" not in err and "Traceback" not in err and err.count("\n") == 1


class Broken(nn.Module):
    """A classifier whose logits for the second video are NaN (as after an fp16 overflow)."""

    class_names = ["a", "b", "c"]

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(video.shape[0], 3) + self.w
        logits[1, 0] = float("nan")
        return logits


def test_non_finite_logits_are_an_error_in_evaluation_and_prediction() -> None:
    video = torch.zeros(2, 2, 1, 3, 4, 4)  # [B, V, T, 3, S, S]
    with pytest.raises(NonFiniteError, match=r"logits for a val batch are not finite \(1 NaN of 6 values\)"):
        multi_view_probabilities(Broken(), video, "a val batch")
    with pytest.raises(NonFiniteError, match=r"logits for 2 video\(s\) are not finite"):
        video_view_logits(Broken(), video)


def test_missing_data_root(tiny_run_args, tmp_path: Path, capsys) -> None:
    root = tmp_path / "not_extracted_yet"
    assert run(["fit", *tiny_run_args(root, tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tcclip fit: error: {root}: the dataset root does not exist")
    assert "data.init_args.root" in err and "TCCLIP_DATA_ROOT" in err and "Traceback" not in err


def test_empty_data_root(tiny_run_args, data_synth: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "mounted_but_empty"
    root.mkdir()
    # The lists come from the real data; the root that should hold the videos is empty (an unmounted share).
    argv = ["fit", *tiny_run_args(root, tmp_path / "run"), f"--data.init_args.splits_dir={data_synth}"]
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tcclip fit: error: {root}: the dataset root is empty")
    assert "data.init_args.root" in err and "Traceback" not in err
