"""Collection over fabricated run directories gives the paper-layout tables, CSV and plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tcclip.experiments import paper_results
from tcclip.experiments.protocols import Cell, build_grid
from tcclip.experiments.results import collect_protocol, harmonic_mean, load_results


def _write(runs: Path, cell: Cell, evaluation_name: str, sets: dict, **extra) -> None:
    evaluation = next(e for e in cell.evaluations if e.name == evaluation_name)
    path = cell.results_path(runs, evaluation)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"protocol": cell.protocol, "dataset": evaluation.dataset, "variant": cell.variant, "shots": cell.shots}
    record |= {"seed": cell.seed, "stage": "test", "checkpoint": "x.ckpt", "sets": sets, "wise_ft": None}
    record |= {"best": None, "last": None, **extra}
    path.write_text(json.dumps(record))


def _top(top1: float) -> dict:
    return {"top1": top1, "top5": min(100.0, top1 + 10), "num_videos": 10}


def _csv_rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_few_shot_table_puts_best_epoch_beside_paper(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    cells = build_grid("few_shot")
    for cell in cells:
        paper = paper_results.few_shot(cell.variant, cell.dataset, cell.shots) or 50.0
        best = {"epoch": 3, "top1": paper + 1.0}
        _write(runs, cell, "test", {"test": _top(paper - 2.0)}, best=best, last={"epoch": 4, "top1": paper - 2.0})
    table = collect_protocol("few_shot", cells, runs, tmp_path / "results")
    assert table.missing == []
    assert (
        "| TC-CLIP | HMDB-51 | 58.3 / 57.3 (+1.0) | 63.3 / 62.3 (+1.0) | 68.3 / 67.3 (+1.0) | 69.6 / 68.6 (+1.0) |"
        in (table.markdown)
    )
    rows = _csv_rows(tmp_path / "results" / "few_shot.csv")
    assert len(rows) == len(cells)
    hmdb8 = next(r for r in rows if r["cell"] == "few_shot/hmdb51_k8_plain")
    assert (float(hmdb8["top1"]), hmdb8["top1_source"], float(hmdb8["last_top1"])) == (68.3, "best epoch", 65.3)
    assert all(r["top1"] for r in rows)
    assert (tmp_path / "results" / "few_shot.png").stat().st_size > 0
    assert (tmp_path / "results" / "few_shot.md").read_text() == table.markdown


def test_base2novel_averages_seeds_and_takes_hm_of_the_averages(tmp_path: Path) -> None:
    runs = tmp_path
    cells = [c for c in build_grid("base2novel") if c.dataset == "hmdb51" and c.variant == "plain"]
    for cell, (base, novel) in zip(cells, [(70.0, 50.0), (72.0, 56.0), (74.0, 53.0)], strict=True):
        _write(runs, cell, "test", {"hmdb51_base": _top(base), "hmdb51_novel": _top(novel)})
    table = collect_protocol("base2novel", cells, runs, None)
    mean = next(r for r in table.rows if r["seed"] == "mean")
    assert (mean["base"], mean["novel"]) == (72.0, 53.0)
    assert mean["hm"] == pytest.approx(harmonic_mean(72.0, 53.0))
    assert (
        "| TC-CLIP | HMDB-51 | 72.0 / 73.3 (-1.3) | 53.0 / 54.1 (-1.1) | 61.1 / 62.2 (-1.1) | 3/3 |" in table.markdown
    )
    assert [r["seed"] for r in table.rows] == [1, 2, 3, "mean"]


def test_zero_shot_mean_and_std_over_splits_with_and_without_wise_ft(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    cells = build_grid("zero_shot")
    for cell in cells:
        for evaluation in cell.evaluations:
            splits = {f"{evaluation.dataset}_split{i}": _top(50.0 + i) for i in (1, 2, 3)}
            wise = {"weight": 0.7, "sets": {k: _top(v["top1"] + 2.0) for k, v in splits.items()}}
            _write(runs, cell, evaluation.name, splits, wise_ft=wise)
    table = collect_protocol("zero_shot", cells, runs, tmp_path / "results")
    assert table.missing == []
    # splits 51, 52, 53: mean 52, population std 0.8165; HMDB-51 paper 54.2 ± 0.7.
    assert "| TC-CLIP | HMDB-51 | 52.0 ± 0.8 (-2.2) | 54.0 ± 0.8 (-0.2) | 54.2 ± 0.7 | 3 |" in table.markdown
    assert len(table.rows) == 2 * 3 * 2  # variants x targets x (with, without WiSE-FT)
    assert (tmp_path / "results" / "zero_shot.png").is_file()


def test_missing_cells_are_listed_and_left_blank(tmp_path: Path) -> None:
    runs = tmp_path
    cells = build_grid("fully_supervised")
    table = collect_protocol("fully_supervised", cells, runs, None)
    assert table.missing == ["fully_supervised/k400_plain"]
    assert "| TC-CLIP | K-400 | — / 85.2 | — / 96.9 |" in table.markdown
    _write(runs, cells[0], "test", {"k400": {"top1": 84.0, "top5": 97.0, "num_videos": 5}})
    table = collect_protocol("fully_supervised", cells, runs, None)
    assert table.missing == [] and "84.0 / 85.2 (-1.2)" in table.markdown


def test_broken_results_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text('{"sets": {"a": {"top5": 1}}}')
    with pytest.raises(ValueError, match="results.json.*'top1'"):
        load_results(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"results.json:1: not valid JSON"):
        load_results(path)


def test_zero_accuracy_is_a_value_not_a_gap(tmp_path: Path) -> None:
    runs = tmp_path
    cells = [c for c in build_grid("few_shot") if c.name == "ssv2_k2_plain"]
    _write(runs, cells[0], "test", {"test": _top(5.0)}, best={"epoch": 0, "top1": 0.0}, last={"epoch": 1, "top1": 0.0})
    table = collect_protocol("few_shot", cells, runs, None)
    assert "| TC-CLIP | SSv2 | 0.0 / 7.3 (-7.3) |" in table.markdown
    assert table.markdown.rstrip().endswith("| TC-CLIP | SSv2 | 0.0 |")
