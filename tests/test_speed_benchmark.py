"""benchmarks/throughput.py's report: which numbers go where, the ratios and the targets' marks (no model runs)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def throughput(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module("throughput")
    yield module
    sys.modules.pop("throughput", None)
    sys.modules.pop("speed_worker", None)


def _results(clips_400: dict[str, float]) -> dict:
    variants = ["fast", "plain", "fast, plain vision attention", "fast, plain MLP", "fast, plain text"]
    variants += ["baseline fast", "baseline plain", "official"]
    eval_row = {v: {"clips_per_s": 0.2, "max_abs_logit_difference_to_fast": 1e-6} for v in variants}
    return {
        "settings": {"arch": "ViT-B-16", "frames": 16, "context_token_k": 96, "eval_batch": 1, "train_classes": 51,
                     "f64_frames": 16, "repeats": 2, "train_repeats": 1},
        "machine": {"cpu": "some CPU", "cores": "2", "threads": "1", "torch": "2.x", "cpu_capability": "AVX2"},
        "device": "cpu", "dtype": "fp32", "date": "2026-12-04 19:30 UTC", "seconds": 1200.0,
        "command": "python benchmarks/throughput.py", "train_batch": 1, "official_name": "official",
        "eval": {"51": eval_row, "400": {v: {**eval_row[v], "clips_per_s": clips_400[v]} for v in variants}},
        "train": {
            v: {"step_seconds": 10.0 if v.endswith("fast") else 20.0, "peak_memory_bytes": 2e9 if v == "fast" else 5e9}
            for v in variants
        },
        "float64": {"max_abs": 1e-15, "max_rel": 1e-15},
        "agreement": {"videos": 300, "agreement": 1.0},
        "sources": {"tcclip": "/here/tcclip/__init__.py"},
    }  # fmt: skip


def test_report_puts_every_variant_in_a_row_and_checks_the_targets_against_the_official_code(throughput):
    clips = {"fast": 0.3, "plain": 0.1, "fast, plain vision attention": 0.25, "fast, plain MLP": 0.3,
             "fast, plain text": 0.15, "baseline fast": 0.3, "baseline plain": 0.1, "official": 0.12}  # fmt: skip
    text = throughput.render(_results(clips))
    assert "| official | 0.2 | 0.12 | 20 | 5 |" in text
    # fast 0.3 / official 0.12 = 2.5x < 3x; step 20 / 10 = 2x >= 1.4x; memory 2 / 5 = 0.4x <= 0.5x
    assert "| fast vs official code | 1.00x | 2.50x ✗ (>= 3x) | 2.00x ✓ (>= 1.4x) | 0.40x ✓ (<= 0.5x) |" in text
    assert "| shared text work (fast vs fast with plain text) | 1.00x | 2.00x | 2.00x | 0.40x |" in text
    assert "| fast vs baseline fast | 1.00x | 1.00x | 1.00x | 0.40x |" in text
    assert "| plain vs baseline plain |" in text
    assert "`python benchmarks/throughput.py`" in text and "some CPU" in text


def test_report_without_the_official_code_has_no_target_marks(throughput):
    results = _results(
        dict.fromkeys(
            [
                "fast",
                "plain",
                "fast, plain vision attention",
                "fast, plain MLP",
                "fast, plain text",
                "baseline fast",
                "baseline plain",
                "official",
            ],
            0.2,
        )
    )
    for row in (*results["eval"].values(), results["train"]):
        for name in ("official", "baseline fast", "baseline plain"):
            row.pop(name)
    results["official_name"] = None
    text = throughput.render(results)
    assert "official" not in text and "✓" not in text and "✗" not in text
    assert "| fast vs plain path | 1.00x | 1.00x | 2.00x | 0.40x |" in text


def test_records_name_the_checkouts_not_this_machines_folders(throughput, tmp_path):
    here = Path(throughput.__file__).resolve().parents[1]
    assert throughput.Impl("", "tcclip").public(str(here / "tcclip" / "__init__.py")) == "tcclip/__init__.py"
    other = tmp_path / "old-checkout"
    baseline = throughput.Impl("baseline ", "tcclip", str(other))
    assert baseline.public(str(other / "tcclip" / "__init__.py")) == "<baseline checkout>/tcclip/__init__.py"
    official = throughput.Impl("official", "official", str(tmp_path / "tc-clip"))
    assert official.public(str(tmp_path / "tc-clip")) == "<official checkout>"
    assert throughput.Impl("", "tcclip").public("/opt/venv/lib/site-packages/tcclip/__init__.py") == (
        "<installed>/tcclip/__init__.py"
    )
    command = throughput.public_command(
        ["--threads", "1", "--baseline", str(other), f"--official={tmp_path}", "--json", str(tmp_path / "speed.json")]
    )
    assert command == (
        "python benchmarks/throughput.py --threads 1 --baseline <baseline checkout> --official=<official checkout> "
        "--json speed.json"
    )
    assert str(tmp_path) not in command


def test_training_rows_take_turns_and_the_best_step_of_all_processes_counts(throughput, monkeypatch):
    """A disturbance in one process must not decide a row: every row runs `train_rounds` processes, in turns."""
    calls: list[tuple[str, str]] = []
    steps = {("fast", 0): 13.0, ("fast", 1): 12.0, ("official", 0): 17.0, ("official", 1): 18.0}

    def fake_job(args, impl, settings, weights, variant, job, **extra):
        calls.append((variant, job))
        if job == "memory":
            return {"peak_memory_bytes": 1}
        done = sum(1 for v, j in calls[:-1] if v == variant and j == "train")
        return {"step_seconds": steps[variant, done], "peak_memory_bytes": 2}

    class _Impl:
        def __init__(self, variant):
            self.variant = variant

        def variants(self):
            return [self.variant]

    monkeypatch.setattr(throughput, "run_train_job", fake_job)
    settings = throughput.replace(throughput.QUICK, train_rounds=2)
    args = type("Args", (), {"checkpointing": False, "device": "cpu"})()
    results = throughput.measure_train(args, [_Impl("fast"), _Impl("official")], settings, Path("w"))
    trains = [v for v, j in calls if j == "train"]
    assert trains == ["fast", "official", "fast", "official"]  # turns, not one row's processes in a row
    assert results["fast"]["step_seconds"] == 12.0 and results["official"]["step_seconds"] == 17.0
    assert results["fast"]["step_seconds_per_process"] == [13.0, 12.0]
    assert results["official"]["step_seconds_per_process"] == [17.0, 18.0]
