"""Smoke benchmarks end to end: the real CLI on synthetic videos with the tiny model, tables and plots filled.

`make benchmark-zero-shot SMOKE=1` runs the whole zero-shot grid (K400 training, HMDB-51 / UCF-101 / K600
evaluations, with and without WiSE-FT); a few-shot subset then reuses its K400 model for the pretrained variant.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _check_outputs(results: Path, protocol: str, expected_rows: int) -> str:
    with open(results / f"{protocol}.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == expected_rows
    markdown = (results / f"{protocol}.md").read_text()
    assert "no results yet" not in markdown
    assert (results / f"{protocol}.png").stat().st_size > 1000
    return markdown


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None or shutil.which("bash") is None, reason="needs make and bash")
def test_smoke_benchmarks_fill_every_cell(tmp_path: Path) -> None:
    runs, results = tmp_path / "runs", tmp_path / "results"
    paths = f"--runs-dir {runs} --results-dir {results}"
    make = ["make", "--no-print-directory", "benchmark-zero-shot", "SMOKE=1", f"SWEEP_ARGS={paths}"]
    make.append(f"PY={sys.executable}")
    proc = subprocess.run(make, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    markdown = _check_outputs(results, "zero_shot", expected_rows=2 * 3 * 2)
    assert "| TC-CLIP (LLM) | K-600 |" in markdown and "| — |" not in markdown

    few = [sys.executable, "benchmarks/protocols.py", "few_shot", "--smoke", *paths.split()]
    few += ["--datasets", "ucf101", "--shots", "2,4", "--variants", "plain,pretrained"]
    proc = subprocess.run(few, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "4 cells selected, 0 finished earlier" in proc.stdout
    assert "zero_shot/k400_plain" not in proc.stdout  # its K400 model exists already: not trained again
    markdown = _check_outputs(results, "few_shot", expected_rows=4)
    assert "| TC-CLIP (P) | UCF-101 |" in markdown
    for name in ("ucf101_k2_pretrained", "ucf101_k4_pretrained"):
        config = next((runs / "few_shot" / name).rglob("config.yaml")).read_text()
        assert "zero_shot/k400_plain" in config  # initialised from the zero-shot model of this sweep

    # Everything is finished: a second run starts nothing.
    proc = subprocess.run(make, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "2 cells selected, 2 finished earlier" in proc.stdout
