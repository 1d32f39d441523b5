"""`make demo` as a user runs it: synthetic data, fit, test and predict, and an accuracy far above chance."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_learns(tmp_path):
    data, run_dir = tmp_path / "data", tmp_path / "run"
    result = subprocess.run(
        ["make", "demo", f"DEMO_DATA={data}", f"DEMO_RUN={run_dir}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = re.search(r"demo: test top-1 ([\d.]+)% over (\d+) videos \(chance 25%\)", result.stdout)
    assert summary is not None, result.stdout[-3000:]
    assert float(summary[1]) >= 80.0 and int(summary[2]) == 160  # README: 98.8%
    tested = json.loads(max(run_dir.rglob("results.json"), key=lambda p: p.stat().st_mtime).read_text())
    assert tested["stage"] == "test" and tested["sets"]["split1"]["top1"] == pytest.approx(float(summary[1]), abs=0.05)
    assert (data / "synth_args.txt").read_text().strip().endswith("--num-frames 16-24")
    first_video = (data / "test.txt").read_text().split()[0]
    assert first_video in result.stdout and "probability" in result.stdout  # tcclip predict's table for it
