"""End to end on synthetic videos with a tiny TC-CLIP: `tcclip fit`, `validate`, `test` (with WiSE-FT), `score`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest import mock

import pytest

from tcclip.cli import main as cli_main
from tcclip.cli.lightning import run_lightning_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_args(tiny_run_args):
    """The shared tiny run, smaller still: batches of 3 and an effective batch of 6 (accumulation 2), 2 views."""

    def args(data_root: Path, run_dir: Path) -> list[str]:
        return [
            *tiny_run_args(data_root, run_dir),
            "--data.init_args.batch_size=3",
            "--data.init_args.num_clip=2",
            "--model.optim.total_batch_size=6",
            "--model.loss.mixup=true",
            "--trainer.max_epochs=2",
            "--trainer.devices=1",
            "--trainer.log_every_n_steps=1",
        ]

    return args


def run(command: str, args: list[str]):
    with mock.patch.object(sys, "argv", ["tcclip"]):  # LightningCLI warns when it sees pytest's arguments too
        return run_lightning_cli([command, *args])


def newest(run_dir: Path, name: str) -> Path:
    return max(run_dir.rglob(name), key=lambda p: p.stat().st_mtime_ns)


def test_fit_validate_test(data_synth: Path, tmp_path: Path, tiny_args) -> None:
    run_dir = tmp_path / "run"
    args = tiny_args(data_synth, run_dir)

    cli = run("fit", args)
    # 9 training videos in batches of 3 -> 3 batches an epoch, 2 optimiser steps (the last one incomplete).
    assert cli.trainer.accumulate_grad_batches == 2
    assert cli.trainer.global_step == 4
    fit = json.loads(newest(run_dir, "results.json").read_text())
    assert fit["stage"] == "fit" and fit["protocol"] == "fully_supervised" and fit["dataset"] == "synthetic"
    assert fit["sets"]["val"]["num_videos"] == 3
    assert fit["last"]["epoch"] == 1 and fit["best"]["epoch"] in (0, 1)
    assert len(list(run_dir.rglob("last.ckpt"))) == 1 and len(list(run_dir.rglob("best-*.ckpt"))) == 1
    events = b"".join(p.read_bytes() for p in run_dir.rglob("events.out.tfevents*"))
    assert b"val/val/confusion" in events and b"lr-AdamW/clip" in events

    run("validate", [*args, "--ckpt_path=best"])
    validated = json.loads(newest(run_dir, "results.json").read_text())
    assert validated["stage"] == "validate" and "best-" in validated["checkpoint"]
    assert validated["sets"]["val"]["top1"] == fit["best"]["top1"]

    run("test", [*args, "--ckpt_path=last", "--model.wise_ft_weight=0.5"])
    tested = json.loads(newest(run_dir, "results.json").read_text())
    assert tested["stage"] == "test" and tested["checkpoint"].endswith("last.ckpt")
    assert set(tested["sets"]) == {"split1"} and tested["sets"]["split1"]["num_videos"] == 3
    assert tested["wise_ft"]["weight"] == 0.5 and set(tested["wise_ft"]["sets"]) == {"split1"}
    assert tested["best"] == fit["best"] and tested["last"] == fit["last"]  # carried by the checkpoint
    # the weights scored, beyond doubt: the file and its SHA-256 (computed here independently)
    import hashlib

    last = Path(tested["checkpoint"])
    assert tested["weights"] == {
        "source": "ckpt_path",
        "path": str(last.absolute()),
        "sha256": hashlib.sha256(last.read_bytes()).hexdigest(),
    }
    assert fit["weights"] == {"source": "training", "epoch": 1}


def test_score_writes_every_video(data_synth: Path, tmp_path: Path, tiny_args) -> None:
    run_dir = tmp_path / "run"
    args = tiny_args(data_synth, run_dir)
    run("fit", [*args, "--trainer.max_epochs=1"])
    run("test", [*args, "--ckpt_path=last"])
    tested = json.loads(newest(run_dir, "results.json").read_text())
    with mock.patch.object(sys, "argv", ["tcclip"]):  # `tcclip score` is LightningCLI's predict loop
        assert cli_main(["score", *args, "--ckpt_path=last"]) == 0
    written = json.loads(newest(run_dir, "predictions.json").read_text())
    assert written["weights"]["source"] == "ckpt_path" and len(written["weights"]["sha256"]) == 64
    predictions = written["dataloaders"][0]
    assert predictions["num_videos"] == 3 and len(predictions["videos"]) == 3
    assert predictions["top1"] == pytest.approx(tested["sets"]["split1"]["top1"], abs=1e-3)
    first = predictions["videos"][0]
    assert len(first["top"]) == 3 and sum(p for _, p in first["top"]) == pytest.approx(1.0, abs=1e-4)


def test_ckpt_path_last_resumes_in_the_runs_own_folder(data_synth: Path, tmp_path: Path, tiny_args) -> None:
    run_dir = tmp_path / "run"
    args = tiny_args(data_synth, run_dir)
    run("fit", [*args, "--trainer.max_epochs=1"])
    cli = run("fit", [*args, "--ckpt_path=last"])
    assert cli.trainer.current_epoch == 2 and cli.trainer.global_step == 4  # continued, not restarted
    # One run, one folder: the resumed run writes where it came from, no second version_N.
    assert [p.name for p in (run_dir / "lightning_logs").iterdir()] == ["version_0"]
    assert [p.relative_to(run_dir).as_posix() for p in run_dir.rglob("last.ckpt")] == [
        "lightning_logs/version_0/checkpoints/last.ckpt"
    ]
    assert not list(run_dir.rglob("tcclip.lock"))  # released


def test_validate_and_test_leave_nothing_in_the_temporary_directory(
    data_synth: Path, tmp_path: Path, tiny_args, own_tmpdir: Path
) -> None:
    args = tiny_args(data_synth, tmp_path / "run")
    run("validate", args)
    run("test", args)
    assert json.loads(newest(tmp_path / "run", "results.json").read_text())["stage"] == "test"
    assert list(own_tmpdir.iterdir()) == []
