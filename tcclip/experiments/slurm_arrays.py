"""SLURM job arrays over grid cells (`tcclip sweep --slurm`): the resources of an array, the job script written from
the packaged template `tcclip/experiments/templates/sweep.sbatch`, and its submission with `sbatch`.

Every array task runs one cell with `tcclip.experiments.cells.run_cell` (as the local runner does), from the plan file
written beside the script; a marker in the cell's run directory remembers the task, so a cell still queued is not
submitted twice.
"""

from __future__ import annotations

import re
import shlex
import string
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tcclip.experiments.cells import SweepSettings, run_cell, write_plan
from tcclip.experiments.protocols import Cell
from tcclip.utils.errors import UserError

# Trainer options that make every SLURM task a (multi-node) DDP job. Requeue is tcclip's own
# (`tcclip.training.preemption`: save at a batch boundary, then `scontrol requeue`), so Lightning's handler, which
# saves mid-step, stays off.
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


def submit_protocol(
    protocol: str,
    first: Sequence[Cell],
    todo: Sequence[Cell],
    settings: SweepSettings,
    slurm: SlurmOptions,
    submitted: dict[str, str],
    dry_run: bool,
    console,
) -> None:
    """Submit one protocol's cells as job arrays: `first` (the cells they start from) as one array, `todo` as another
    that waits for it. `submitted` (cell key -> job, updated here) carries the jobs across protocols."""
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
        job = submit_array(new_first, settings, slurm, f"{protocol}-prerequisites", (), dry_run, console.out)
        submitted.update((c.key, job) for c in new_first)
        depends.append(job)
    if todo:
        job = submit_array(todo, settings, slurm, protocol, depends, dry_run, console.out)
        submitted.update((c.key, job) for c in todo)
