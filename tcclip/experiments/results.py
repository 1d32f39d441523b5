"""Collect the results files of a protocol grid into `results/<protocol>.{csv,md,png}`, beside the paper's numbers.

Tables follow the paper's layout: zero-shot mean ± std over the test splits (with and without WiSE-FT), few-shot
K = 2/4/8/16 per dataset, base-to-novel Base / Novel / HM averaged over seeds, fully-supervised top-1 / top-5.
Each of our numbers is shown as `ours / paper (ours - paper)`.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcclip.experiments import paper_results
from tcclip.experiments.protocols import Cell
from tcclip.utils.outputs import staged_files

DATASET_LABEL = {"k400": "K-400", "k600": "K-600", "hmdb51": "HMDB-51", "ucf101": "UCF-101", "ssv2": "SSv2"}
VARIANT_LABEL = {"plain": "TC-CLIP", "llm": "TC-CLIP (LLM)", "pretrained": "TC-CLIP (P)"}
TITLE = {
    "zero_shot": "Zero-shot (train K-400, top-1 %)",
    "few_shot": "Few-shot (top-1 %)",
    "base2novel": "Base-to-novel (top-1 %)",
    "fully_supervised": "Fully-supervised K-400 (%)",
}


@dataclass
class ProtocolTable:
    """What the collection of one protocol produced."""

    protocol: str
    rows: list[dict[str, Any]]
    """The CSV rows."""
    markdown: str
    files: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """Cells (`protocol/name`, or `protocol/name/evaluation`) that have no results file yet."""


def load_results(path: Path) -> dict[str, Any]:
    """A results file (as `tcclip test` writes it), checked enough that the tables can trust it."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); delete it to re-run the cell") from None
    sets = data.get("sets") if isinstance(data, dict) else None
    if not isinstance(sets, dict) or not sets or not all(isinstance(v, dict) and "top1" in v for v in sets.values()):
        raise ValueError(f"{path}: expected 'sets': {{name: {{'top1': ..}}}}; delete it to re-run the cell")
    return data


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def compare(ours: float | None, paper: float | None) -> str:
    """`ours / paper (ours - paper)`; dashes where a side is missing."""
    if paper is None:
        return fmt(ours)
    diff = f" ({ours - paper:+.1f})" if ours is not None else ""
    return f"{fmt(ours)} / {fmt(paper)}{diff}"


def _first_set(*values: float | None) -> float | None:
    """The first value that is not None (0.0 is a value)."""
    return next((v for v in values if v is not None), None)


def _diff(ours: float | None, paper: float | None) -> float | None:
    return None if ours is None or paper is None else round(ours - paper, 2)


def harmonic_mean(base: float, novel: float) -> float:
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)


def _markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _top1_of_sets(sets: dict[str, Any]) -> float:
    """The protocol's single number: the only evaluation set, or their mean (with a note in the CSV)."""
    return statistics.fmean(float(s["top1"]) for s in sets.values())


def _results(cell: Cell, runs_dir: Path, missing: list[str]) -> dict[str, dict[str, Any]]:
    """Evaluation name -> results of one cell; absent evaluations are added to `missing`."""
    found = {}
    for evaluation in cell.evaluations:
        path = cell.results_path(runs_dir, evaluation)
        if path.is_file():
            found[evaluation.name] = load_results(path) | {"_path": str(path)}
        else:
            missing.append(cell.key if len(cell.evaluations) == 1 else f"{cell.key}/{evaluation.name}")
    return found


# ---------------------------------------------------------------------------------------------------------------------
# One collector per protocol: (cells, runs folder) -> (csv rows, markdown body, plot function).


def _zero_shot(cells: Sequence[Cell], runs_dir: Path, missing: list[str]):
    rows: list[dict[str, Any]] = []
    for cell in cells:
        found = _results(cell, runs_dir, missing)
        for dataset in dict.fromkeys(e.dataset for e in cell.evaluations):
            names = [e.name for e in cell.evaluations if e.dataset == dataset]
            for wise in (False, True):
                splits = []
                for name in names:
                    res = found.get(name)
                    sets = (res.get("wise_ft") or {}).get("sets") if wise and res else res and res["sets"]
                    splits += [float(s["top1"]) for s in (sets or {}).values()]
                paper = paper_results.zero_shot(cell.variant, dataset)
                mean = statistics.fmean(splits) if splits else None
                std = statistics.pstdev(splits) if len(splits) > 1 else (0.0 if splits else None)
                rows.append(
                    {
                        "variant": cell.variant,
                        "dataset": dataset,
                        "wise_ft": wise,
                        "splits": ";".join(f"{x:.2f}" for x in splits),
                        "top1_mean": mean,
                        "top1_std": std,
                        "paper_mean": paper[0] if paper else None,
                        "paper_std": paper[1] if paper else None,
                        "diff": _diff(mean, paper[0] if paper else None),
                        "cell": cell.key,
                    }
                )
    body = []
    for i in range(0, len(rows), 2):
        plain, wise = rows[i], rows[i + 1]

        def cell_text(r: dict[str, Any]) -> str:
            if r["top1_mean"] is None:
                return "—"
            diff = f" ({r['diff']:+.1f})" if r["diff"] is not None else ""
            return f"{r['top1_mean']:.1f} ± {r['top1_std']:.1f}{diff}"

        paper = "—" if plain["paper_mean"] is None else f"{plain['paper_mean']:.1f} ± {plain['paper_std']:.1f}"
        n = len(plain["splits"].split(";")) if plain["splits"] else 0
        row = [VARIANT_LABEL[plain["variant"]], DATASET_LABEL[plain["dataset"]], cell_text(plain), cell_text(wise)]
        body.append([*row, paper, str(n)])
    header = ["Model", "Dataset", "ours", "ours + WiSE-FT", "paper", "splits"]
    notes = (
        "Mean ± standard deviation (population, over the test splits) of top-1; (ours - paper) in brackets. "
        "WiSE-FT: 0.3 x CLIP + 0.7 x fine-tuned weights, as in the paper's zero-shot protocol."
    )
    return rows, _markdown_table(header, body), notes, _plot_zero_shot


def _few_shot(cells: Sequence[Cell], runs_dir: Path, missing: list[str]):
    rows: list[dict[str, Any]] = []
    for cell in cells:
        found = _results(cell, runs_dir, missing).get("test")
        best = (found or {}).get("best") or {}
        last = (found or {}).get("last") or {}
        test = _top1_of_sets(found["sets"]) if found else None
        # The paper reports the best evaluation over training; fall back to the test of the final model.
        top1 = best.get("top1", test) if found else None
        paper = paper_results.few_shot(cell.variant, cell.dataset, int(cell.shots or 0))
        rows.append(
            {
                "variant": cell.variant,
                "dataset": cell.dataset,
                "shots": cell.shots,
                "top1": top1,
                "top1_source": ("best epoch" if "top1" in best else "final test") if found else "",
                "best_top1": best.get("top1"),
                "best_epoch": best.get("epoch"),
                "last_top1": last.get("top1"),
                "last_epoch": last.get("epoch"),
                "test_top1": test,
                "paper": paper,
                "diff": _diff(top1, paper),
                "cell": cell.key,
            }
        )
    shots = sorted({r["shots"] for r in rows})
    groups: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["dataset"]), {})[r["shots"]] = r
    header = ["Model", "Dataset", *(f"K={k}" for k in shots)]
    best_body, last_body = [], []
    for (variant, dataset), by_k in groups.items():
        label = [VARIANT_LABEL[variant], DATASET_LABEL[dataset]]
        best_body.append(label + [compare(by_k[k]["top1"], by_k[k]["paper"]) if k in by_k else "" for k in shots])
        last_body.append(
            label + [fmt(_first_set(by_k[k]["last_top1"], by_k[k]["test_top1"])) if k in by_k else "" for k in shots]
        )
    table = _markdown_table(header, best_body)
    table += "\n\nLast epoch (final model; the paper reports only the best epoch):\n\n" + _markdown_table(
        header, last_body
    )
    notes = "Best evaluation top-1 over training, as the paper reports: ours / paper (ours - paper)."
    return rows, table, notes, _plot_few_shot


def _base2novel(cells: Sequence[Cell], runs_dir: Path, missing: list[str]):
    rows: list[dict[str, Any]] = []
    per_group: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for cell in cells:
        found = _results(cell, runs_dir, missing).get("test")
        base = novel = None
        if found:
            base = _pick_set(found, "base")
            novel = _pick_set(found, "novel")
        row = {
            "variant": cell.variant,
            "dataset": cell.dataset,
            "seed": cell.seed,
            "base": base,
            "novel": novel,
            "hm": harmonic_mean(base, novel) if base is not None and novel is not None else None,
            "cell": cell.key,
        }
        rows.append(row)
        per_group.setdefault((cell.variant, cell.dataset), []).append(row)
    body = []
    for (variant, dataset), seeds in per_group.items():
        done = [r for r in seeds if r["hm"] is not None]
        base = statistics.fmean(r["base"] for r in done) if done else None
        novel = statistics.fmean(r["novel"] for r in done) if done else None
        hm = harmonic_mean(base, novel) if done else None
        paper = paper_results.base2novel(variant, dataset) or (None, None, None)
        rows.append(
            {
                "variant": variant,
                "dataset": dataset,
                "seed": "mean",
                "base": base,
                "novel": novel,
                "hm": hm,
                "paper_base": paper[0],
                "paper_novel": paper[1],
                "paper_hm": paper[2],
                "diff_hm": _diff(hm, paper[2]),
                "cell": f"{len(done)}/{len(seeds)} seeds",
            }
        )
        values = [compare(o, p) for o, p in zip((base, novel, hm), paper, strict=True)]
        body.append([VARIANT_LABEL[variant], DATASET_LABEL[dataset], *values, f"{len(done)}/{len(seeds)}"])
    header = ["Model", "Dataset", "Base", "Novel", "HM", "seeds"]
    notes = "Base and Novel averaged over seeds, HM of those averages: ours / paper (ours - paper)."
    return rows, _markdown_table(header, body), notes, _plot_base2novel


def _pick_set(results: dict[str, Any], which: str) -> float:
    """Top-1 of the evaluation set whose name contains `which` ("base" / "novel")."""
    names = [n for n in results["sets"] if which in n.lower()]
    if len(names) != 1:
        raise ValueError(
            f"{results['_path']}: expected one evaluation set named like '{which}' among {sorted(results['sets'])}"
        )
    return float(results["sets"][names[0]]["top1"])


def _fully_supervised(cells: Sequence[Cell], runs_dir: Path, missing: list[str]):
    rows, body = [], []
    for cell in cells:
        found = _results(cell, runs_dir, missing).get("test")
        ours = {
            m: statistics.fmean(float(s[m]) for s in found["sets"].values()) if found else None
            for m in ("top1", "top5")
        }
        paper = {m: paper_results.fully_supervised(cell.variant, cell.dataset, m) for m in ("top1", "top5")}
        rows.append(
            {
                "variant": cell.variant,
                "dataset": cell.dataset,
                **ours,
                "paper_top1": paper["top1"],
                "paper_top5": paper["top5"],
                "diff_top1": _diff(ours["top1"], paper["top1"]),
                "diff_top5": _diff(ours["top5"], paper["top5"]),
                "cell": cell.key,
            }
        )
        label = [VARIANT_LABEL[cell.variant], DATASET_LABEL[cell.dataset]]
        body.append(label + [compare(ours[m], paper[m]) for m in ("top1", "top5")])
    notes = "4 clips x 3 crops: ours / paper (ours - paper)."
    return rows, _markdown_table(["Model", "Dataset", "Top-1", "Top-5"], body), notes, _plot_fully_supervised


COLLECTORS: dict[str, Callable] = {
    "zero_shot": _zero_shot,
    "few_shot": _few_shot,
    "base2novel": _base2novel,
    "fully_supervised": _fully_supervised,
}


# ---------------------------------------------------------------------------------------------------------------------
# Plots.


def _figure(n: int, width: float = 4.0, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return plt, fig, list(axes[0])


def _plot_few_shot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    plt, fig, axes = _figure(len(datasets))
    colors = {v: f"C{i}" for i, v in enumerate(VARIANT_LABEL)}
    for ax, dataset in zip(axes, datasets, strict=True):
        for variant in dict.fromkeys(r["variant"] for r in rows if r["dataset"] == dataset):
            sel = sorted(
                (r for r in rows if r["dataset"] == dataset and r["variant"] == variant), key=lambda r: r["shots"]
            )
            ours = [(r["shots"], r["top1"]) for r in sel if r["top1"] is not None]
            paper = [(r["shots"], r["paper"]) for r in sel if r["paper"] is not None]
            if ours:
                ax.plot(*zip(*ours, strict=True), "o-", color=colors[variant], label=VARIANT_LABEL[variant])
            if paper:
                ax.plot(
                    *zip(*paper, strict=True),
                    "x--",
                    color=colors[variant],
                    alpha=0.6,
                    label=f"{VARIANT_LABEL[variant]}, paper",
                )
        shots = sorted({r["shots"] for r in rows})
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.set_xlabel("K (videos per class)")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(DATASET_LABEL[dataset])
        ax.grid(alpha=0.3)
    _legend(axes)
    _save(plt, fig, path, title)


def _save(plt, fig, path: Path, title: str) -> None:
    """Title the figure, write it as a PNG and free it (the ending every plot shares)."""
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def _legend(axes) -> None:
    """One legend (on the last panel) with every series of every panel, each once."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    axes[-1].legend(list(entries.values()), list(entries), fontsize=7)


def _grouped_bars(
    ax,
    groups: list[str],
    series: dict[str, list[float | None]],
    hatched: set[str],
    errors: dict[str, list[float | None]] | None = None,
) -> None:
    """Bars per group; a series named "<x>, paper" shares the colour of "<x>" and is hatched."""
    width = 0.8 / max(1, len(series))
    colors = {base: f"C{i}" for i, base in enumerate(dict.fromkeys(n.removesuffix(", paper") for n in series))}
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        heights = [math.nan if v is None else v for v in values]
        kwargs: dict[str, Any] = {"hatch": "//", "alpha": 0.45} if name in hatched else {}
        if errors and name in errors:
            kwargs |= {"yerr": [0.0 if e is None else e for e in errors[name]], "capsize": 2}
        ax.bar(xs, heights, width, label=name, color=colors[name.removesuffix(", paper")], **kwargs)
    ax.set_xticks(range(len(groups)), groups)
    ax.grid(axis="y", alpha=0.3)


def _plot_base2novel(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    means = [r for r in rows if r["seed"] == "mean"]
    variants = list(dict.fromkeys(r["variant"] for r in means))
    plt, fig, axes = _figure(len(variants), width=5.0)
    for ax, variant in zip(axes, variants, strict=True):
        sel = [r for r in means if r["variant"] == variant]
        series: dict[str, list[float | None]] = {}
        for metric in ("base", "novel", "hm"):
            series[f"{metric.capitalize() if metric != 'hm' else 'HM'}"] = [r[metric] for r in sel]
            series[f"{metric.capitalize() if metric != 'hm' else 'HM'}, paper"] = [r[f"paper_{metric}"] for r in sel]
        _grouped_bars(ax, [DATASET_LABEL[r["dataset"]] for r in sel], series, {k for k in series if "paper" in k})
        ax.set_ylabel("top-1 (%)")
        ax.set_title(VARIANT_LABEL[variant])
    _legend(axes)
    _save(plt, fig, path, title)


def _plot_zero_shot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    plt, fig, axes = _figure(len(variants))
    for ax, variant in zip(axes, variants, strict=True):
        plain = [r for r in rows if r["variant"] == variant and not r["wise_ft"]]
        wise = [r for r in rows if r["variant"] == variant and r["wise_ft"]]
        datasets = [DATASET_LABEL[r["dataset"]] for r in plain]
        series = {
            "ours": [r["top1_mean"] for r in plain],
            "ours + WiSE-FT": [r["top1_mean"] for r in wise],
            "paper": [r["paper_mean"] for r in plain],
        }
        errors = {
            "ours": [r["top1_std"] for r in plain],
            "ours + WiSE-FT": [r["top1_std"] for r in wise],
            "paper": [r["paper_std"] for r in plain],
        }
        _grouped_bars(ax, datasets, series, {"paper"}, errors)
        ax.set_ylabel("top-1 (%), mean over splits")
        ax.set_title(VARIANT_LABEL[variant])
    _legend(axes)
    _save(plt, fig, path, title)


def _plot_fully_supervised(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    plt, fig, axes = _figure(1)
    series = {"ours": [rows[0]["top1"], rows[0]["top5"]], "paper": [rows[0]["paper_top1"], rows[0]["paper_top5"]]}
    _grouped_bars(axes[0], ["top-1", "top-5"], series, {"paper"})
    axes[0].set_ylabel("accuracy (%)")
    axes[0].legend(fontsize=7)
    _save(plt, fig, path, title)


# ---------------------------------------------------------------------------------------------------------------------


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {k: ("" if v is None else round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
            )


def collect_protocol(
    protocol: str,
    cells: Sequence[Cell],
    runs_dir: Path,
    results_dir: Path | None,
    note: str = "",
) -> ProtocolTable:
    """Read every cell's results and (when `results_dir` is given) write `<protocol>.csv`, `.md` and `.png` there."""
    missing: list[str] = []
    rows, table, notes, plot = COLLECTORS[protocol](list(cells), Path(runs_dir), missing)
    title = TITLE[protocol]
    parts = [f"## {title}", ""]
    if note:
        parts += [f"**{note}**", ""]
    parts += [notes, "", table, ""]
    if missing:
        parts += [f"{len(missing)} cells have no results yet: {', '.join(missing)}", ""]
    result = ProtocolTable(protocol, rows, "\n".join(parts), missing=missing)
    if results_dir is not None:
        results_dir = Path(results_dir)
        results_dir.mkdir(parents=True, exist_ok=True)
        names = [f"{protocol}.{ext}" for ext in ("csv", "md", "png")]
        # All three or none: a failure (say, in plotting) leaves the tables of an earlier collection as they were.
        with staged_files() as stage:
            write_csv(rows, stage(results_dir / names[0]))
            stage(results_dir / names[1]).write_text(result.markdown)
            plot(rows, stage(results_dir / names[2]), title + ("\n" + textwrap.fill(note, 48) if note else ""))
        result.files = [results_dir / name for name in names]
    return result
