"""`tcclip sweep`: run the protocol grids of `tcclip.experiments.protocols` locally or as SLURM job arrays, then
collect tables.

A cell is run by `tcclip.experiments.cells.run_cell` in both cases (skip what is finished, resume a stopped fit,
evaluate what has no results): the local runner here calls it in worker threads, each SLURM array task
(`tcclip.experiments.slurm_arrays`) calls it through the job script `tcclip/experiments/templates/sweep.sbatch`.

Run directory layout (relative to the runs folder):
    <protocol>/<cell>/                  `tcclip fit` default_root_dir: checkpoints, logs, `fit.done` when finished
    <protocol>/<cell>/eval/<name>/      `tcclip test` default_root_dir, with `results.json`
"""

from __future__ import annotations

import logging
import os
import queue
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from jsonargparse import ArgumentParser, Namespace

from tcclip.experiments.cells import (
    CellFailed,
    SweepSettings,
    cell_done,
    find_eval_checkpoint,
    fit_done,
    run_cell,
    subprocess_runner,
)
from tcclip.experiments.protocols import (
    GRIDS,
    SEEDS,
    SHOTS,
    VARIANTS,
    Cell,
    Selection,
    build_grid,
    canonical_dataset,
    find_cell,
)
from tcclip.experiments.results import collect_protocol
from tcclip.experiments.slurm_arrays import SlurmOptions, check_slurm_options, planned, submit_protocol
from tcclip.utils.errors import UserError

log = logging.getLogger(__name__)


def missing_configs(cells: Iterable[Cell], settings: SweepSettings) -> list[Path]:
    """Config files the cells name that do not exist."""
    names = set()
    for cell in cells:
        if settings.ckpt_dir is None and cell.fit_config:
            names.add(cell.fit_config)
        names.update(e.config for e in cell.evaluations)
    return sorted(settings.config_dir / n for n in names if not (settings.config_dir / n).is_file())


def prerequisites(cells: Sequence[Cell], settings: SweepSettings) -> list[Cell]:
    """Cells whose training must finish first (the pretrained variant starts from the zero-shot K400 model)."""
    if settings.ckpt_dir is not None or settings.pretrained_ckpt is not None:
        return []
    keys = {c.key for c in cells}
    needed = sorted({c.requires for c in cells if c.requires and c.requires not in keys})
    return [c for c in map(find_cell, needed) if not fit_done(c, settings)]


# ---------------------------------------------------------------------------------------------------------------------
# Local runner.


@dataclass
class CellOutcome:
    cell: Cell
    returncode: int
    seconds: float
    log: Path


def run_local(
    waves: Sequence[Sequence[Cell]],
    settings: SweepSettings,
    gpus: Sequence[str] = (),
    jobs: int = 1,
    report: Callable[[CellOutcome, int, int], None] | None = None,
) -> list[CellOutcome]:
    """Run the cells wave after wave (a wave waits for the one before); N at a time, each pinned to one of `gpus`
    when given. Each cell's output goes to `<run dir>/sweep.log`."""
    total = sum(len(w) for w in waves)
    slots: queue.Queue[str | None] = queue.Queue()
    for slot in gpus or [None] * max(1, jobs):
        slots.put(slot)
    workers = len(gpus) if gpus else max(1, jobs)
    outcomes: list[CellOutcome] = []

    def run_one(cell: Cell) -> CellOutcome:
        slot = slots.get()
        try:
            env = dict(os.environ) | ({"CUDA_VISIBLE_DEVICES": slot} if slot is not None else {})
            run_dir = settings.run_dir(cell)
            run_dir.mkdir(parents=True, exist_ok=True)
            log_path = run_dir / "sweep.log"
            start = time.perf_counter()
            returncode = 0
            with open(log_path, "a") as log_file:

                def say(message: str) -> None:
                    print(message, file=log_file, flush=True)

                try:
                    run_cell(cell, settings, subprocess_runner(settings, log_file, env), say)
                except CellFailed as err:
                    say(f"tcclip sweep: {err}")
                    returncode = err.returncode or 1
            outcome = CellOutcome(cell, returncode, time.perf_counter() - start, log_path)
            if report is not None:
                report(outcome, len(outcomes) + 1, total)
            return outcome
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for wave in waves:
            for outcome in pool.map(run_one, wave):
                outcomes.append(outcome)
    return outcomes


# ---------------------------------------------------------------------------------------------------------------------
# Command line.


def _csv(value: str | tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(value, tuple):  # jsonargparse passes the (already parsed) default through the type too
        return value
    return tuple(x.strip() for x in value.split(",") if x.strip())


def _ints(value: str | tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(value, tuple):
        return value
    return tuple(int(x.lstrip("kKsS")) for x in _csv(value))


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="tcclip sweep",
        description="Run the paper's protocol grids locally or as SLURM job arrays, then collect tables.",
        epilog="Arguments after `--` go to every `tcclip fit`/`test` (your own variants; pair with --tag).",
    )
    p.add_argument("--grid", required=True, help=f"protocol(s), comma-separated, or 'all': {', '.join(GRIDS)}")
    sel = p.add_argument_group("selection")
    sel.add_argument("--datasets", type=_csv, default=(), help="e.g. hmdb51,ucf101 (zero-shot: evaluation targets)")
    sel.add_argument("--shots", type=_ints, default=(), help="few-shot K values, e.g. 2,4")
    sel.add_argument("--seeds", type=_ints, default=(), help="base-to-novel seeds, e.g. 1,2")
    sel.add_argument("--variants", type=_csv, default=(), help=f"of {', '.join(VARIANTS)}")
    sel.add_argument("--only", type=_csv, default=(), help="glob patterns on cell names, e.g. 'hmdb51_k8_*'")
    mode = p.add_argument_group("mode")
    mode.add_argument("--list", action="store_true", help="list the selected cells and their state, run nothing")
    mode.add_argument("--collect", action="store_true", help="only collect tables and plots from existing runs")
    mode.add_argument("--no-collect", action="store_true", help="do not collect tables after a local run")
    mode.add_argument("--smoke", action="store_true", help="synthetic data, tiny model, a few CPU steps per cell")
    mode.add_argument("--smoke-steps", type=int, default=2, help="smoke mode: training batches per cell")
    mode.add_argument("--ckpt-dir", type=Path, help="evaluate the checkpoints in this folder instead of training")
    mode.add_argument("--pretrained-ckpt", type=Path, help="model the pretrained variant starts from")
    where = p.add_argument_group("paths")
    where.add_argument("--tag", help="name of this sweep: runs/<tag>, results/<tag> (for your own variants)")
    where.add_argument("--runs-dir", type=Path, help="default runs[/smoke|/eval|/<tag>]")
    where.add_argument("--results-dir", type=Path, help="default results[/smoke|/eval|/<tag>]")
    where.add_argument("--config-dir", type=Path, default=Path("configs"))
    where.add_argument("--tcclip", default=None, help="command that runs tcclip (default: this Python -m tcclip.cli)")
    local = p.add_argument_group("local runner")
    local.add_argument("--gpus", type=_csv, default=(), help="run one cell per GPU at a time, e.g. 0,1,2,3")
    local.add_argument("--jobs", type=int, default=1, help="cells at a time without --gpus")
    slurm = p.add_argument_group("SLURM")
    slurm.add_argument("--slurm", action="store_true", help="write one job array over the grid and sbatch it")
    slurm.add_argument(
        "--dry-run",
        action="store_true",
        help="run nothing: print each cell's commands; with --slurm, write the job scripts and plans and print them "
        "with the sbatch command that submits each as written",
    )
    slurm.add_argument("--nodes", type=int, default=1)
    slurm.add_argument(
        "--gpus-per-node", type=int, default=None, help="0: a CPU-only job (default 1, or 0 with --smoke)"
    )
    slurm.add_argument("--cpus-per-task", type=int, default=None, help="default 8, or 1 with --smoke")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--time", help="time limit per task, e.g. 24:00:00 or 1-12 (days-hours)")
    slurm.add_argument("--mem", help="e.g. 64G")
    slurm.add_argument("--max-parallel", type=int, help="array throttle (%%N)")
    slurm.add_argument("--sbatch", action="append", default=[], help="extra #SBATCH line, e.g. qos=high (repeatable)")
    slurm.add_argument(
        "--setup",
        action="append",
        default=[],
        help="shell line run before each cell, after the activation of this Python's environment (repeatable)",
    )
    slurm.add_argument(
        "--grace",
        type=int,
        default=90,
        help="seconds before the time limit at which SLURM signals the fit to save and requeue (#SBATCH --signal)",
    )
    slurm.add_argument("--job-name", default="tcclip")
    return p


def _protocols(value: str) -> list[str]:
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


def _default_dir(base: str, args: Namespace) -> Path:
    sub = args.tag or ("smoke" if args.smoke else "eval" if args.ckpt_dir else None)
    return Path(base) / sub if sub else Path(base)


def _default_setup() -> tuple[str, ...]:
    if sys.prefix != sys.base_prefix:  # inside a virtual environment: activate it in the job too
        return (f"source {shlex.quote(str(Path(sys.prefix) / 'bin' / 'activate'))}",)
    return ()


def prepare_smoke_data(settings: SweepSettings, console) -> None:
    """Write the synthetic dataset once (`tcclip data synth`)."""
    data = settings.smoke_data_dir
    assert data is not None
    if (data / "labels.csv").is_file():
        return
    console.print(f"smoke: writing the synthetic dataset to {data}")
    command = [*settings.tcclip, "data", "synth", "--out", str(data)]
    proc = subprocess.run(command, cwd=settings.workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`{shlex.join(command)}` failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")


def main(argv: Sequence[str] | None = None) -> int:
    """`tcclip sweep`: see `tcclip sweep --help`."""
    from rich.console import Console

    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    args = build_parser().parse_args(argv)
    console = Console(highlight=False)
    try:
        datasets = tuple(canonical_dataset(d) for d in args.datasets)
    except ValueError as err:
        raise UserError(f"--datasets: {err}") from None
    for v in args.variants:
        if v not in VARIANTS:
            raise UserError(f"--variants: unknown variant {v!r}", fix=f"Fix: use {', '.join(VARIANTS)}.")
    _check_values("shots", args.shots, SHOTS)
    _check_values("seeds", args.seeds, SEEDS)
    selection = Selection(datasets, args.shots, args.seeds, args.variants, args.only)
    grids = _protocols(args.grid)
    selected = {protocol: selection.apply(build_grid(protocol)) for protocol in grids}
    if not any(selected.values()):
        sizes = ", ".join(f"{p} ({len(build_grid(p))} cells)" for p in grids)
        raise UserError(
            f"the selection ({selection.describe()}) leaves no cell of the grid {sizes}",
            fix="Fix: loosen the filters; `tcclip sweep --grid GRID --list` lists the cell names --only matches.",
        )
    runs_dir = args.runs_dir or _default_dir("runs", args)
    results_dir = args.results_dir or _default_dir("results", args)
    settings = SweepSettings(
        runs_dir=runs_dir,
        config_dir=args.config_dir,
        smoke_data_dir=runs_dir / "synthetic_data" if args.smoke else None,
        smoke_steps=args.smoke_steps,
        ckpt_dir=args.ckpt_dir,
        pretrained_ckpt=args.pretrained_ckpt,
        extra_args=tuple(extra),
        tcclip=tuple(shlex.split(args.tcclip)) if args.tcclip else SweepSettings.tcclip,
    )
    # SLURM jobs run this very interpreter (`python -m tcclip.cli`): no `tcclip` needs to be on anyone's PATH.
    gpus_per_node = args.gpus_per_node if args.gpus_per_node is not None else 0 if args.smoke else 1
    slurm = SlurmOptions(
        nodes=args.nodes,
        gpus_per_node=gpus_per_node,
        cpus_per_task=args.cpus_per_task if args.cpus_per_task is not None else 1 if args.smoke else 8,
        partition=args.partition,
        account=args.account,
        time=args.time,
        mem=args.mem,
        max_parallel=args.max_parallel,
        job_name=args.job_name,
        log_dir=runs_dir / "slurm" / "logs",
        extra_sbatch=tuple(args.sbatch),
        setup=(*_default_setup(), *args.setup),
        requeue_grace_s=args.grace,
    )
    if args.slurm:
        check_slurm_options(slurm)
    status = 0
    submitted: dict[str, str] = {}  # cell key -> SLURM job id, so a later array can wait for an earlier one
    for protocol, cells in selected.items():
        if not cells:
            console.print(f"[yellow]{protocol}: the selection leaves no cell[/yellow]")
            continue
        if args.list:
            for cell in cells:
                state = "done" if cell_done(cell, settings) else "fit done" if fit_done(cell, settings) else "todo"
                console.print(f"{cell.key:40s} {state:9s} {cell.fit_config or ''}", markup=False)
            continue
        if not args.collect:
            status |= run_protocol(
                protocol,
                cells,
                settings,
                console,
                slurm=slurm if args.slurm else None,
                dry_run=args.dry_run,
                gpus=args.gpus,
                jobs=args.jobs,
                submitted=submitted,
            )
            if args.slurm and not args.dry_run:
                console.print(
                    f"{protocol}: when the jobs have finished (`squeue --me`), write the tables with the same "
                    "command and --collect instead of --slurm",
                    markup=False,
                )
        if not args.slurm and not args.dry_run and not args.no_collect:
            note = "Smoke run: synthetic data, tiny random model; not comparable with the paper" if args.smoke else ""
            table = collect_protocol(protocol, cells, settings.runs_dir, results_dir, note=note)
            console.out(table.markdown, highlight=False)  # no wrapping: it is a markdown table
            console.out(f"{protocol}: wrote {', '.join(str(p) for p in table.files)}", highlight=False)
            if table.missing:
                console.print(f"[yellow]{protocol}: {len(table.missing)} cells without results[/yellow]")
    return status


def run_protocol(
    protocol: str,
    cells: list[Cell],
    settings: SweepSettings,
    console,
    *,
    slurm: SlurmOptions | None = None,
    dry_run: bool = False,
    gpus: Sequence[str] = (),
    jobs: int = 1,
    submitted: dict[str, str] | None = None,
) -> int:
    """Run the unfinished `cells` of one protocol (and the cells they start from) here, or submit them as SLURM job
    arrays with `slurm`; returns 1 if a cell run here failed, else 0.

    `submitted` maps cell keys to SLURM jobs across protocols, so an array can wait for one submitted before it.
    With `dry_run`, the commands (or job scripts) are printed and nothing runs.
    """
    todo = [c for c in cells if not cell_done(c, settings)]
    console.print(f"{protocol}: {len(cells)} cells selected, {len(cells) - len(todo)} finished earlier")
    if settings.ckpt_dir is not None:
        # Evaluation only: a folder often holds a few of the grid's checkpoints; evaluate those.
        without = [c for c in todo if find_eval_checkpoint(c, settings.ckpt_dir) is None]
        if without:
            names = ", ".join(c.name for c in without)
            console.print(f"[yellow]{protocol}: no checkpoint in {settings.ckpt_dir} for {names}: skipped[/yellow]")
        todo = [c for c in todo if c not in without]
    if not todo:
        return 0
    first = prerequisites(todo, settings)
    missing = missing_configs([*first, *todo], settings)
    if missing:
        message = f"{protocol}: config files not found: {', '.join(map(str, missing))}"
        fix = "Fix: run from the repository root or pass --config-dir."
        if not dry_run:
            raise UserError(message, fix=fix)
        console.print(f"[yellow]warning: {message}. {fix}[/yellow]")
    if settings.smoke_data_dir is not None and not dry_run:
        prepare_smoke_data(settings, console)
    if slurm is not None:
        submit_protocol(
            protocol, first, todo, settings, slurm, {} if submitted is None else submitted, dry_run, console
        )
        return 0
    if dry_run:
        for cell in [*first, *todo]:
            console.out("\n".join([f"# {cell.key}", *planned(cell, settings)]), highlight=False)
        return 0

    def report(outcome: CellOutcome, done: int, total: int) -> None:
        ok = "[green]ok[/green]" if outcome.returncode == 0 else f"[red]failed ({outcome.returncode})[/red]"
        console.print(f"[{done}/{total}] {outcome.cell.key}: {ok} in {outcome.seconds:.1f} s")
        if outcome.returncode != 0:
            tail = outcome.log.read_text(errors="replace").splitlines()[-15:]
            console.out("\n".join(f"    {line}" for line in tail), highlight=False)
            console.out(f"    (full log: {outcome.log})", highlight=False)

    outcomes = run_local([first, todo], settings, gpus=gpus, jobs=jobs, report=report)
    failed = [o for o in outcomes if o.returncode != 0]
    if failed:
        console.print(f"[red]{protocol}: {len(failed)} of {len(outcomes)} cells failed[/red]")
        return 1
    return 0
