"""DDP on the CPU (gloo, two processes) counts every evaluation video once and gives one process's metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory) -> Path:
    """5 classes x 5 videos: 5 validation and 5 test videos, an odd count that two processes cannot split evenly."""
    from tcclip.data.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("ddp_data")
    make_synthetic_dataset(root, num_classes=5, videos_per_class=5, num_frames=(8, 12), size=32, seed=1)
    return root


@pytest.fixture
def tcclip(tiny_run_args):
    """`tcclip(COMMAND, data_root, run_dir, *extra)`: run `tcclip COMMAND` in a fresh process (DDP relaunches the
    command line) on the tiny setting and return its results.json."""

    def run(command: str, data_root: Path, run_dir: Path, *extra: str) -> dict:
        args = [
            sys.executable,
            "-m",
            "tcclip.cli",
            command,
            *tiny_run_args(data_root, run_dir),
            "--data.init_args.num_clip=2",
            # One video per forward pass: TC-CLIP's token merging may break near-ties differently in another batch.
            "--data.init_args.eval_batch_size=1",
            *extra,
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores
        done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        results = max(run_dir.rglob("results.json"), key=lambda p: p.stat().st_mtime_ns)
        return json.loads(results.read_text())

    return run


def test_ddp_evaluation_matches_one_process(odd_dataset: Path, tmp_path: Path, tcclip) -> None:
    trained = tcclip(
        "fit",
        odd_dataset,
        tmp_path / "fit",
        "--trainer.devices=1",
        "--trainer.max_epochs=1",
        "--data.init_args.batch_size=5",
        "--model.optim.total_batch_size=5",
    )
    assert trained["stage"] == "fit"
    ckpt = str(next((tmp_path / "fit").rglob("last.ckpt")))

    one = tcclip("test", odd_dataset, tmp_path / "one", "--trainer.devices=1", f"--ckpt_path={ckpt}")
    two = tcclip(
        "test", odd_dataset, tmp_path / "two", "--trainer.devices=2", "--trainer.strategy=ddp", f"--ckpt_path={ckpt}"
    )
    assert one["sets"]["split1"]["num_videos"] == two["sets"]["split1"]["num_videos"] == 5
    for key in ("top1", "top5", "per_class_top1"):
        assert two["sets"]["split1"][key] == one["sets"]["split1"][key], key


def test_ddp_fit_reaches_the_same_effective_batch(odd_dataset: Path, tmp_path: Path, tcclip) -> None:
    """Two processes with batches of 5 and total_batch_size 10 need no accumulation; validation counts 5 videos."""
    results = tcclip(
        "fit",
        odd_dataset,
        tmp_path / "ddp_fit",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.max_epochs=1",
        "--data.init_args.batch_size=5",
        "--model.optim.total_batch_size=10",
    )
    assert results["sets"]["val"]["num_videos"] == 5
    assert results["last"]["epoch"] == 0
