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
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

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
    Cell,
    find_cell,
)
from tcclip.experiments.slurm_arrays import SlurmOptions, planned, submit_protocol
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
# Running a protocol's cells (`tcclip sweep`, tcclip/cli/sweep.py, is its command line).


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
