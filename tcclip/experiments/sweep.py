"""`tcclip sweep`: run the protocol grids of `tcclip.experiments.protocols` locally or as SLURM job arrays, then
collect tables.

A cell is run by `tcclip.experiments.cells.run_cell` in both cases (skip what is finished, resume a stopped fit,
evaluate what
has no results): the local runner calls it in worker threads, each SLURM array task calls it through the job script
`tcclip/experiments/templates/sweep.sbatch`.

Run directory layout (relative to the runs folder):
    <protocol>/<cell>/                  `tcclip fit` default_root_dir: checkpoints, logs, `fit.done` when finished
    <protocol>/<cell>/eval/<name>/      `tcclip test` default_root_dir, with `results.json`
"""

from __future__ import annotations

import logging
import os
import queue
import re
import shlex
import string
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
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
    write_plan,
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
from tcclip.utils.errors import UserError

log = logging.getLogger(__name__)

# Trainer options that make every SLURM task a (multi-node) DDP job. Requeue is tcclip's own
# (`tcclip.training.preemption`:
# save at a batch boundary, then `scontrol requeue`), so Lightning's handler, which saves mid-step, stays off.
SLURM_PLUGIN = "lightning.pytorch.plugins.environments.SLURMEnvironment"
JOB_TEMPLATE = Path(__file__).resolve().parent / "templates" / "sweep.sbatch"


@dataclass(frozen=True)
class SlurmOptions:
    """Resources and behaviour of the SLURM job array; every task is one cell run with `srun` over all its GPUs (or,
    with `gpus_per_node=0`, one CPU process per node)."""

    nodes: int = 1
    gpus_per_node: int = 1
    """0: CPU only (no `--gres`, one task per node, `trainer.accelerator=cpu`)."""
    cpus_per_task: int = 8
    partition: str | None = None
    account: str | None = None
    time: str | None = None
    mem: str | None = None
    max_parallel: int | None = None
    """Array throttle: at most this many cells run at once (`--array=0-N%M`)."""
    job_name: str = "tcclip"
    log_dir: Path = Path("runs/slurm")
    extra_sbatch: tuple[str, ...] = ()
    """Extra `#SBATCH` lines: `qos=high`, `--constraint=a100` or `#SBATCH --exclusive`."""
    setup: tuple[str, ...] = ()
    """Shell lines run before the cell (`module load cuda`, `source .venv/bin/activate`)."""
    requeue_grace_s: int = 90
    """SLURM sends SIGUSR1 this many seconds before the time limit: the fit saves and the task is requeued."""

    @property
    def tasks_per_node(self) -> int:
        return max(1, self.gpus_per_node)

    def trainer_args(self) -> list[str]:
        # Lightning reads ranks from SLURM's variables; devices x num_nodes must equal the srun tasks.
        if self.gpus_per_node == 0:
            devices = ["--trainer.accelerator=cpu", "--trainer.devices=1"]
        else:
            devices = ["--trainer.accelerator=gpu", f"--trainer.devices={self.gpus_per_node}"]
        return [
            *devices,
            f"--trainer.num_nodes={self.nodes}",
            f"--trainer.plugins={SLURM_PLUGIN}",
            "--trainer.plugins.auto_requeue=false",
        ]

    def launcher(self) -> tuple[str, ...]:
        # One process per GPU; Lightning's SLURM environment turns them into one DDP job.
        return ("srun", "--kill-on-bad-exit=1")


TIME_FORMATS = (
    "MINUTES, MINUTES:SECONDS, HOURS:MINUTES:SECONDS, DAYS-HOURS, DAYS-HOURS:MINUTES or DAYS-HOURS:MINUTES:SECONDS"
)
_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def time_limit_s(value: str) -> int | None:
    """Seconds of a SLURM `--time` value (None for UNLIMITED / INFINITE). Raises ValueError for anything else."""
    text = value.strip()
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    match = _TIME.fullmatch(text)
    if match is None:
        raise ValueError(value)
    days, first, second, third = match.groups()
    if days is not None:  # DAYS-HOURS[:MINUTES[:SECONDS]]
        hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
        total = ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    elif third is not None:  # HOURS:MINUTES:SECONDS
        total = (int(first) * 60 + int(second)) * 60 + int(third)
    elif second is not None:  # MINUTES:SECONDS
        total = int(first) * 60 + int(second)
    else:  # MINUTES
        total = int(first) * 60
    if total <= 0:
        raise ValueError(value)
    return total


def check_slurm_options(slurm: SlurmOptions) -> None:
    """Resources sbatch would refuse (or a grace time that cannot work), as one clear error before anything is
    written."""

    def bad(option: str, value: object, rule: str, fix: str) -> UserError:
        return UserError(f"{option} {value}: {rule}", fix=f"Fix: {fix}")

    if slurm.nodes < 1:
        raise bad("--nodes", slurm.nodes, "a job needs at least one node", "give --nodes 1 or more.")
    if slurm.gpus_per_node < 0:
        raise bad("--gpus-per-node", slurm.gpus_per_node, "cannot be negative", "give 0 (CPU only) or more.")
    if slurm.cpus_per_task < 1:
        raise bad("--cpus-per-task", slurm.cpus_per_task, "a task needs at least one CPU", "give 1 or more.")
    if slurm.max_parallel is not None and slurm.max_parallel < 1:
        raise bad("--max-parallel", slurm.max_parallel, "must be at least 1", "give 1 or more, or leave it out.")
    if slurm.requeue_grace_s < 1:
        raise bad("--grace", slurm.requeue_grace_s, "must be at least 1 second", "give the seconds a save needs.")
    if slurm.time is not None:
        try:
            limit = time_limit_s(slurm.time)
        except ValueError:
            raise bad(
                "--time", repr(slurm.time), "not a SLURM time limit", f"write it as {TIME_FORMATS}, e.g. 24:00:00."
            ) from None
        if limit is not None and slurm.requeue_grace_s >= limit:
            raise bad(
                "--grace",
                slurm.requeue_grace_s,
                f"the requeue signal would come before the job starts (--time {slurm.time} is {limit} s)",
                "give a --grace shorter than the time limit (the seconds a checkpoint save needs).",
            )


def render_job_script(
    num_cells: int, plan: Path, settings: SweepSettings, slurm: SlurmOptions, title: str, plan_id: str = ""
) -> str:
    """The sbatch script of one job array over the `num_cells` cells of `plan`, from the packaged template."""
    optional = [f"--gres=gpu:{slurm.gpus_per_node}"] if slurm.gpus_per_node > 0 else []
    optional += [f"--{k}={v}" for k, v in (("partition", slurm.partition), ("account", slurm.account)) if v]
    optional += [f"--{k}={v}" for k, v in (("time", slurm.time), ("mem", slurm.mem)) if v]
    for extra in slurm.extra_sbatch:
        extra = extra.removeprefix("#SBATCH").strip()
        optional.append(extra if extra.startswith("-") else f"--{extra}")
    values = {
        "title": title,
        "cells": f"{num_cells} cell" + ("" if num_cells == 1 else "s"),
        "plan": shlex.quote(str(plan)),
        "plan_id": shlex.quote(plan_id),
        "job_name": slurm.job_name,
        "last_index": num_cells - 1,
        "throttle": f"%{slurm.max_parallel}" if slurm.max_parallel else "",
        "nodes": slurm.nodes,
        "tasks_per_node": slurm.tasks_per_node,
        "cpus_per_task": slurm.cpus_per_task,
        "log_dir": slurm.log_dir,
        "requeue_grace_s": slurm.requeue_grace_s,
        "optional_sbatch": "\n".join(f"#SBATCH {x}" for x in optional),
        "workdir": shlex.quote(str(settings.workdir)),
        "setup": "\n".join(slurm.setup),
        "srun": shlex.join(slurm.launcher()),
        "tcclip": shlex.join(settings.tcclip),
        "trainer_args": shlex.join(slurm.trainer_args()),
        "python": shlex.quote(sys.executable),
    }
    return string.Template(JOB_TEMPLATE.read_text()).substitute(values)


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
# SLURM writer.


SLURM_JOB_MARKER = "slurm_job"
"""File in a cell's run directory holding the SLURM array task (`JOBID_INDEX`) that was submitted for it."""


def queued_job(cell: Cell, settings: SweepSettings) -> str | None:
    """The SLURM task submitted earlier for `cell` if it is still pending or running (`squeue`), else None."""
    marker = settings.run_dir(cell) / SLURM_JOB_MARKER
    if not marker.is_file():
        return None
    job = marker.read_text().strip()
    try:
        proc = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i"], capture_output=True, text=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return job if proc.returncode == 0 and proc.stdout.strip() else None


def planned(cell: Cell, settings: SweepSettings) -> list[str]:
    """The commands `run_cell` would run for `cell` now (and what it would skip), as text."""
    lines: list[str] = []
    run_cell(cell, settings, lambda command: lines.append(shlex.join(command)), lines.append, dry_run=True)
    return lines


def submit_array(
    cells: Sequence[Cell],
    settings: SweepSettings,
    slurm: SlurmOptions,
    name: str,
    depends_on: Sequence[str] = (),
    dry_run: bool = False,
    out: Callable[[str], None] | None = None,
) -> str:
    """Write one job array over `cells` (a plan and its job script, under a name no other submission can have) and
    submit it with sbatch (after `depends_on` succeeded); returns its job id.

    With `dry_run` the plan and script are written but not submitted: `out` gets the script, the sbatch command that
    submits it as written, and the commands each task would run now; the id is a placeholder. A refused submission
    (no sbatch, a resource the cluster does not have) is a UserError with sbatch's words, and leaves no file."""
    opts = replace(slurm, job_name=f"{slurm.job_name}-{name}")
    task_settings = replace(settings, launcher=opts.launcher(), trainer_args=tuple(opts.trainer_args()))
    command = ["sbatch", "--parsable"] + ([f"--dependency=afterok:{':'.join(depends_on)}"] if depends_on else [])
    # Unique per submission: two sweeps submitted in the same second must not share (and overwrite) a plan.
    plan_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    script_dir = settings.runs_dir / "slurm"
    path, plan = script_dir / f"{opts.job_name}-{plan_id}.sbatch", script_dir / f"{opts.job_name}-{plan_id}.json"
    text = render_job_script(len(cells), plan, settings, opts, title=name, plan_id=plan_id)
    write_plan(plan, cells, task_settings, plan_id)
    opts.log_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if dry_run:
        if out is not None:
            out(f"# ==== {path} (not submitted; submit it as written with: {shlex.join([*command, str(path)])})")
            out(text)
            for index, cell in enumerate(cells):
                out(
                    f"# task {index} ({cell.key}) would run now:\n"
                    + "\n".join(f"#   {x}" for x in planned(cell, task_settings))
                )
        return f"<{opts.job_name}>"
    try:
        proc = subprocess.run([*command, str(path)], capture_output=True, text=True)
    except FileNotFoundError:
        proc = None
    if proc is None or proc.returncode != 0:
        path.unlink(missing_ok=True)
        plan.unlink(missing_ok=True)
        if proc is None:
            raise UserError(
                "cannot submit: there is no `sbatch` on PATH (this machine is not a SLURM submission host)",
                fix="Fix: run `tcclip sweep --slurm` on the cluster's login node, or leave out --slurm to run the "
                "cells here; --dry-run writes and prints the job scripts without submitting.",
            )
        said = " ".join(proc.stderr.split()) or f"exit code {proc.returncode}"
        raise UserError(
            f"sbatch refused the job array {opts.job_name}: {said}",
            fix="Fix: check the resources against the cluster's partitions (`sinfo -o '%P %D %c %m %G %l'`): "
            "--partition, --gpus-per-node (0 for a CPU partition, without --gres), --cpus-per-task, --mem, "
            "--time, --account and any --sbatch lines.",
        )
    job_id = proc.stdout.strip().split(";")[0]  # --parsable prints "id[;cluster]"
    for index, cell in enumerate(cells):
        marker = settings.run_dir(cell) / SLURM_JOB_MARKER
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{job_id}_{index}\n")
    if out is not None:
        out(f"submitted {path} as job array {job_id} ({len(cells)} cells)")
    return job_id


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
            status |= _run_protocol(protocol, cells, settings, slurm, args, console, submitted)
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


def _run_protocol(
    protocol: str,
    cells: list[Cell],
    settings: SweepSettings,
    slurm: SlurmOptions,
    args: Namespace,
    console,
    submitted: dict[str, str],
) -> int:
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
        if not args.dry_run:
            raise UserError(message, fix=fix)
        console.print(f"[yellow]warning: {message}. {fix}[/yellow]")
    if args.smoke and not args.dry_run:
        prepare_smoke_data(settings, console)
    if args.slurm:
        # A cell already queued by an earlier `tcclip sweep --slurm` is not submitted twice (two jobs in one run
        # directory would overwrite each other's checkpoints); cells that need it wait for that job.
        for cell in [*first, *todo]:
            job = submitted.get(cell.key) or queued_job(cell, settings)
            if job is not None:
                submitted[cell.key] = job
        queued = [c.name for c in todo if c.key in submitted]
        if queued:
            console.print(f"{protocol}: already queued, not submitted again: {', '.join(queued)}")
            todo = [c for c in todo if c.key not in submitted]
        depends = sorted({submitted[c.key] for c in first if c.key in submitted})
        new_first = [c for c in first if c.key not in submitted]
        if new_first:
            job = submit_array(new_first, settings, slurm, f"{protocol}-prerequisites", (), args.dry_run, console.out)
            submitted.update((c.key, job) for c in new_first)
            depends.append(job)
        if todo:
            job = submit_array(todo, settings, slurm, protocol, depends, args.dry_run, console.out)
            submitted.update((c.key, job) for c in todo)
        return 0
    if args.dry_run:
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

    outcomes = run_local([first, todo], settings, gpus=args.gpus, jobs=args.jobs, report=report)
    failed = [o for o in outcomes if o.returncode != 0]
    if failed:
        console.print(f"[red]{protocol}: {len(failed)} of {len(outcomes)} cells failed[/red]")
        return 1
    return 0
