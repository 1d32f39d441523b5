"""`tcclip sweep` and its job scripts' `tcclip sweep run-cell`: typed functions over `tcclip.experiments.sweep`
(run the paper's protocol grids locally or as SLURM job arrays, then collect tables)."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from tcclip.cli.types import WordParser
from tcclip.utils.errors import UserError

if TYPE_CHECKING:
    from tcclip.experiments.cells import Cell, SweepSettings
    from tcclip.experiments.protocols import Selection
    from tcclip.experiments.slurm_arrays import SlurmOptions


def _csv(value: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in value.split(",") if x.strip())


CSV = WordParser("A,B,...", _csv)
INTS = WordParser("N,N,...", lambda value: tuple(int(x.lstrip("kKsS")) for x in _csv(value)))


@dataclass(frozen=True)
class SweepOptions:
    """What `tcclip sweep` runs, where and how (each field is an option: `--grid`, `--dry-run`, ...).

    Args:
        grid: protocol(s), comma-separated, or 'all': zero_shot, few_shot, base2novel, fully_supervised
        datasets: e.g. hmdb51,ucf101 (zero-shot: evaluation targets)
        shots: few-shot K values, e.g. 2,4
        seeds: base-to-novel seeds, e.g. 1,2
        variants: of plain, llm, pretrained
        only: glob patterns on cell names, e.g. 'hmdb51_k8_*'
        list: list the selected cells and their state, run nothing
        collect: only collect tables and plots from existing runs
        no_collect: do not collect tables after a local run
        smoke: synthetic data, tiny model, a few CPU steps per cell
        smoke_steps: smoke mode: training batches per cell
        ckpt_dir: evaluate the checkpoints in this folder instead of training
        pretrained_ckpt: model the pretrained variant starts from
        tag: name of this sweep: runs/<tag>, results/<tag> (for your own variants)
        runs_dir: default runs[/smoke|/eval|/<tag>]
        results_dir: default results[/smoke|/eval|/<tag>]
        config_dir: the experiment configs
        tcclip: command that runs tcclip (default: this Python -m tcclip.cli)
        gpus: run one cell per GPU at a time, e.g. 0,1,2,3
        jobs: cells at a time without --gpus
        slurm: write one job array over the grid and sbatch it
        dry_run: run nothing: print each cell's commands; with --slurm, write the job scripts and plans and print
            them with the sbatch command that submits each as written
        nodes: SLURM nodes per cell
        gpus_per_node: 0: a CPU-only job (default 1, or 0 with --smoke)
        cpus_per_task: default 8, or 1 with --smoke
        partition: SLURM partition
        account: SLURM account
        time: time limit per task, e.g. 24:00:00 or 1-12 (days-hours)
        mem: e.g. 64G
        max_parallel: array throttle (%N)
        sbatch: extra #SBATCH line, e.g. qos=high (repeatable)
        setup: shell line run before each cell, after the activation of this Python's environment (repeatable)
        grace: seconds before the time limit at which SLURM signals the fit to save and requeue (#SBATCH --signal)
        job_name: SLURM job name
    """

    grid: str
    datasets: Annotated[tuple[str, ...], CSV] = ()
    shots: Annotated[tuple[int, ...], INTS] = ()
    seeds: Annotated[tuple[int, ...], INTS] = ()
    variants: Annotated[tuple[str, ...], CSV] = ()
    only: Annotated[tuple[str, ...], CSV] = ()
    list: bool = False
    collect: bool = False
    no_collect: bool = False
    smoke: bool = False
    smoke_steps: int = 2
    ckpt_dir: Path | None = None
    pretrained_ckpt: Path | None = None
    tag: str | None = None
    runs_dir: Path | None = None
    results_dir: Path | None = None
    config_dir: Path = Path("configs")
    tcclip: str | None = None
    gpus: Annotated[tuple[str, ...], CSV] = ()
    jobs: int = 1
    slurm: bool = False
    dry_run: bool = False
    nodes: int = 1
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    partition: str | None = None
    account: str | None = None
    time: str | None = None
    mem: str | None = None
    max_parallel: int | None = None
    sbatch: Sequence[str] = ()
    setup: Sequence[str] = ()
    grace: int = 90
    job_name: str = "tcclip"


def sweep(o: SweepOptions, passthrough: Sequence[str] = ()) -> int:
    """Run the paper's protocol grids locally or as SLURM job arrays, then collect tables.

    Arguments after `--` go to every `tcclip fit`/`test` (your own variants; pair with --tag).

    Args:
        o: the options (`SweepOptions`)
        passthrough: the words after `--`
    """
    from rich.console import Console

    from tcclip.experiments.cells import SweepSettings
    from tcclip.experiments.protocols import build_grid
    from tcclip.experiments.slurm_arrays import SlurmOptions, check_slurm_options

    selection = _selection(o.datasets, o.shots, o.seeds, o.variants, o.only)
    grids = _protocols(o.grid)
    selected = {protocol: selection.apply(build_grid(protocol)) for protocol in grids}
    if not any(selected.values()):
        sizes = ", ".join(f"{p} ({len(build_grid(p))} cells)" for p in grids)
        raise UserError(
            f"the selection ({selection.describe()}) leaves no cell of the grid {sizes}",
            fix="Fix: loosen the filters; `tcclip sweep --grid GRID --list` lists the cell names --only matches.",
        )
    sub = o.tag or ("smoke" if o.smoke else "eval" if o.ckpt_dir else None)
    runs_dir = o.runs_dir or (Path("runs") / sub if sub else Path("runs"))
    results_dir = o.results_dir or (Path("results") / sub if sub else Path("results"))
    settings = SweepSettings(
        runs_dir=runs_dir,
        config_dir=o.config_dir,
        smoke_data_dir=runs_dir / "synthetic_data" if o.smoke else None,
        smoke_steps=o.smoke_steps,
        ckpt_dir=o.ckpt_dir,
        pretrained_ckpt=o.pretrained_ckpt,
        extra_args=tuple(passthrough),
        tcclip=tuple(shlex.split(o.tcclip)) if o.tcclip else SweepSettings.tcclip,
    )
    # SLURM jobs run this very interpreter (`python -m tcclip.cli`): no `tcclip` needs to be on anyone's PATH.
    slurm = SlurmOptions(
        nodes=o.nodes,
        gpus_per_node=o.gpus_per_node if o.gpus_per_node is not None else 0 if o.smoke else 1,
        cpus_per_task=o.cpus_per_task if o.cpus_per_task is not None else 1 if o.smoke else 8,
        partition=o.partition,
        account=o.account,
        time=o.time,
        mem=o.mem,
        max_parallel=o.max_parallel,
        job_name=o.job_name,
        log_dir=runs_dir / "slurm" / "logs",
        extra_sbatch=tuple(o.sbatch),
        setup=(*_default_setup(), *o.setup),
        requeue_grace_s=o.grace,
    )
    if o.slurm:
        check_slurm_options(slurm)
    console = Console(highlight=False)
    if o.list:
        return _list_cells(selected, settings, console)
    return _run_sweep(selected, settings, slurm, o, results_dir, console)


def _selection(datasets, shots, seeds, variants, only) -> Selection:
    from tcclip.experiments.protocols import SEEDS, SHOTS, VARIANTS, Selection, canonical_dataset

    try:
        names = tuple(canonical_dataset(d) for d in datasets)
    except ValueError as err:
        raise UserError(f"--datasets: {err}") from None
    for v in variants:
        if v not in VARIANTS:
            raise UserError(f"--variants: unknown variant {v!r}", fix=f"Fix: use {', '.join(VARIANTS)}.")
    _check_values("shots", shots, SHOTS)
    _check_values("seeds", seeds, SEEDS)
    return Selection(names, shots, seeds, variants, only)


def _list_cells(selected: dict[str, list[Cell]], settings: SweepSettings, console) -> int:
    from tcclip.experiments.cells import cell_done, fit_done

    for protocol, cells in selected.items():
        if not cells:
            console.print(f"[yellow]{protocol}: the selection leaves no cell[/yellow]")
        for cell in cells:
            state = "done" if cell_done(cell, settings) else "fit done" if fit_done(cell, settings) else "todo"
            console.print(f"{cell.key:40s} {state:9s} {cell.fit_config or ''}", markup=False)
    return 0


def _run_sweep(selected, settings: SweepSettings, slurm: SlurmOptions, o: SweepOptions, results_dir: Path, console):
    from tcclip.experiments.results import collect_protocol
    from tcclip.experiments.sweep import run_protocol

    status = 0
    submitted: dict[str, str] = {}  # cell key -> SLURM job id, so a later array can wait for an earlier one
    for protocol, cells in selected.items():
        if not cells:
            console.print(f"[yellow]{protocol}: the selection leaves no cell[/yellow]")
            continue
        if not o.collect:
            status |= run_protocol(protocol, cells, settings, console, slurm=slurm if o.slurm else None,
                                   dry_run=o.dry_run, gpus=o.gpus, jobs=o.jobs, submitted=submitted)  # fmt: skip
            if o.slurm and not o.dry_run:
                console.print(
                    f"{protocol}: when the jobs have finished (`squeue --me`), write the tables with the same "
                    "command and --collect instead of --slurm",
                    markup=False,
                )
        if not o.slurm and not o.dry_run and not o.no_collect:
            note = "Smoke run: synthetic data, tiny random model; not comparable with the paper" if o.smoke else ""
            table = collect_protocol(protocol, cells, settings.runs_dir, results_dir, note=note)
            console.out(table.markdown, highlight=False)  # no wrapping: it is a markdown table
            console.out(f"{protocol}: wrote {', '.join(str(p) for p in table.files)}", highlight=False)
            if table.missing:
                console.print(f"[yellow]{protocol}: {len(table.missing)} cells without results[/yellow]")
    return status


def _protocols(value: str) -> list[str]:
    from tcclip.experiments.protocols import GRIDS

    names = list(GRIDS) if value.strip() == "all" else [x.replace("-", "_") for x in _csv(value)]
    choices = f"choose from {', '.join(GRIDS)} or 'all'"
    if not names:
        raise UserError(f"--grid {value!r} names no protocol", fix=f"Fix: {choices}.")
    for name in names:
        if name not in GRIDS:
            raise UserError(f"--grid: unknown grid {name!r}", fix=f"Fix: {choices}.")
    return names


def _check_values(option: str, values: Sequence[int], allowed: Sequence[int]) -> None:
    """An unofficial K or seed would filter every cell of its grid away: say so instead of running nothing."""
    wrong = [v for v in values if v not in allowed]
    if wrong:
        raise UserError(
            f"--{option} {','.join(map(str, values))}: {', '.join(map(str, wrong))} is not one of the paper's values "
            f"({', '.join(map(str, allowed))})",
            fix=f"Fix: choose from {','.join(map(str, allowed))}, or leave --{option} out for all of them.",
        )


def _default_setup() -> tuple[str, ...]:
    if sys.prefix != sys.base_prefix:  # inside a virtual environment: activate it in the job too
        return (f"source {shlex.quote(str(Path(sys.prefix) / 'bin' / 'activate'))}",)
    return ()
