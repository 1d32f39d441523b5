"""`tcclip sweep`: run the protocol grids of `tcclip.protocols` locally, as a SLURM job array, or in smoke mode.

Every cell becomes one branch of a bash task script (`render_script`); the local runner executes that script per cell
and the SLURM writer submits it as a job array, so resuming, skipping finished cells and locating checkpoints are
written once, in the script.

Run directory layout (relative to the runs folder):
    <protocol>/<cell>/                  `tcclip fit` default_root_dir: checkpoints, logs, `fit.done` when finished
    <protocol>/<cell>/eval/<name>/      `tcclip test` default_root_dir, with `results.json`
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from tcclip.errors import UserError
from tcclip.protocols import (
    DATASETS,
    GRIDS,
    SEEDS,
    SHOTS,
    VARIANTS,
    Cell,
    Evaluation,
    Selection,
    build_grid,
    canonical_dataset,
    find_cell,
)
from tcclip.results import collect_protocol

log = logging.getLogger(__name__)

# Fit option through which a cell starts from another model's weights (the LightningModule's init argument).
INIT_CHECKPOINT_OPTION = "--model.init_checkpoint"
# Trainer options that make every SLURM task a (multi-node) DDP job that requeues itself when preempted.
SLURM_PLUGIN = "lightning.pytorch.plugins.environments.SLURMEnvironment"


@dataclass(frozen=True)
class SweepSettings:
    """Where a sweep reads configs and writes runs, and how each cell is modified (smoke, evaluation-only)."""

    runs_dir: Path = Path("runs")
    config_dir: Path = Path("configs")
    smoke_data_dir: Path | None = None
    """Set in smoke mode: the synthetic dataset every cell trains and evaluates on, with a tiny model."""
    smoke_steps: int = 2
    """Smoke mode: training batches per cell (one epoch)."""
    ckpt_dir: Path | None = None
    """Evaluation-only mode: evaluate the checkpoints in this folder instead of training."""
    pretrained_ckpt: Path | None = None
    """Model the pretrained variant starts from; default: the zero-shot K400 cell of this sweep."""
    extra_args: tuple[str, ...] = ()
    """Arguments appended to every `tcclip fit`/`test` (your own variants)."""
    tcclip: tuple[str, ...] = (sys.executable, "-m", "tcclip.cli")
    workdir: Path = field(default_factory=Path.cwd)

    def run_dir(self, cell: Cell) -> Path:
        return cell.run_dir(self.runs_dir)

    def results_path(self, cell: Cell, evaluation: Evaluation) -> Path:
        return cell.results_path(self.runs_dir, evaluation)


def cell_done(cell: Cell, settings: SweepSettings) -> bool:
    """A cell is finished when every one of its evaluations has written its results file."""
    return all(settings.results_path(cell, e).is_file() for e in cell.evaluations)


def fit_done(cell: Cell, settings: SweepSettings) -> bool:
    return (settings.run_dir(cell) / "fit.done").is_file()


# Smoke mode: the synthetic dataset under the cell's protocol (the data module keeps protocol, shots, seed and LLM
# labels from the cell's config), the test-tiny CLIP with random weights, one short epoch on the CPU.
SMOKE_DATA = "tcclip.data.families.Synthetic"
SMOKE_MODEL = (
    "--model.model_config.arch=test-tiny",
    "--model.model_config.context_token_k=8",
    "--model.model_config.tome_r=4",
    "--model.model_config.prompt_generation_layer_level=[2]",
    "--model.clip_weights=null",
    "--model.total_batch_size=null",
    "--model.log_confusion_matrix=false",
)


def smoke_overrides(settings: SweepSettings) -> list[str]:
    """Arguments that turn a cell into a smoke run: synthetic videos, tiny random model, a few CPU steps."""
    assert settings.smoke_data_dir is not None
    return [
        f"--data.class_path={SMOKE_DATA}",
        f"--data.init_args.root={settings.smoke_data_dir}",
        "--data.init_args.num_frames=4",
        "--data.init_args.batch_size=2",
        "--data.init_args.eval_batch_size=8",
        "--data.init_args.num_workers=0",
        *SMOKE_MODEL,
        "--trainer.max_epochs=1",
        f"--trainer.limit_train_batches={settings.smoke_steps}",
        "--trainer.limit_val_batches=2",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
    ]


_OFFICIAL_SUFFIXES = (".pth", ".pt")


def find_eval_checkpoint(cell: Cell, ckpt_dir: Path) -> Path | None:
    """The checkpoint in `ckpt_dir` for `cell`: ours (`<cell>.ckpt`, `<protocol>/<cell>.ckpt`) or an official one
    (`few_shot_hmdb51_8shot_tc_clip.pth`, `base2novel_k400_base1_tc_clip.pth`, `zero_shot_k400_tc_clip.pth`, ...),
    matched on name tokens (dataset, K or seed, protocol, variant)."""
    for stem in (cell.name, f"{cell.protocol}_{cell.name}", f"{cell.protocol}/{cell.name}"):
        for suffix in (".ckpt", *_OFFICIAL_SUFFIXES):
            path = ckpt_dir / f"{stem}{suffix}"
            if path.is_file():
                return path
    matches = []
    files = [p for p in ckpt_dir.rglob("*") if p.suffix in (".ckpt", *_OFFICIAL_SUFFIXES) and p.is_file()]
    for path in files:
        tokens = set(re.split(r"[^a-z0-9]+", str(path.relative_to(ckpt_dir).with_suffix("")).lower()))
        dataset_ok = cell.dataset in tokens or DATASETS[cell.dataset].short in tokens
        protocol_ok = all(t in tokens for t in cell.protocol.split("_")) or cell.protocol in tokens
        shots_ok = cell.shots is None or bool({f"{cell.shots}shot", f"k{cell.shots}"} & tokens)
        seed_ok = cell.seed is None or bool({f"base{cell.seed}", f"s{cell.seed}", f"seed{cell.seed}"} & tokens)
        has = {"llm": "llm" in tokens, "pretrained": bool({"pretrained", "p"} & tokens)}
        variant_ok = has.get(cell.variant, True) and not any(v for k, v in has.items() if k != cell.variant)
        if dataset_ok and protocol_ok and shots_ok and seed_ok and variant_ok:
            matches.append(path)
    if len(matches) > 1:
        names = ", ".join(str(m) for m in sorted(matches))
        raise ValueError(f"{cell.key}: several checkpoints in {ckpt_dir} match ({names}); name one {cell.name}.ckpt")
    return matches[0] if matches else None


def checkpoint_args(path: Path | str, pretrained: bool = False) -> list[str]:
    """How `tcclip test` evaluates a checkpoint: official ones as the module's init weights, ours through Lightning's
    ckpt_path (for the pretrained variant also as init weights, in place of the config's zero-shot model)."""
    if str(path).endswith(_OFFICIAL_SUFFIXES):
        return [INIT_CHECKPOINT_OPTION, str(path)]
    return ["--ckpt_path", str(path)] + ([INIT_CHECKPOINT_OPTION, str(path)] if pretrained else [])


# ---------------------------------------------------------------------------------------------------------------------
# The task script: one `case` branch per cell; the same file runs locally (`bash script.sh INDEX`) and under SLURM.

_SCRIPT_FUNCTIONS = r"""
newest() {  # newest file under $1 whose name matches one of the patterns $2...
  local dir=$1 args=() p; shift
  [[ -d $dir ]] || return 0
  for p in "$@"; do args+=(-o -name "$p"); done
  find "$dir" -type f \( "${args[@]:1}" \) -printf '%T@ %p\n' | sort -n | tail -n 1 | cut -d' ' -f2-
}
final_checkpoint() {  # the trained model of a finished fit
  local ckpt; ckpt=$(newest "$1" 'last*.ckpt')
  if [[ -z $ckpt ]]; then
    echo "tcclip sweep: no last.ckpt under $1: run its fit first (or pass the checkpoint explicitly)" >&2
    return 1
  fi
  echo "$ckpt"
}
cell_done() {  # RUN_DIR EVAL...: every evaluation has its results file
  local run_dir=$1 name; shift
  for name in "$@"; do [[ -f $run_dir/eval/$name/results.json ]] || return 1; done
}
fit_cell() {  # RUN_DIR ARGS...: train unless finished; a run that died resumes from its newest checkpoint
  local run_dir=$1 resume=() ckpt; shift
  if [[ -f $run_dir/fit.done ]]; then echo "fit: finished earlier in $run_dir"; return 0; fi
  mkdir -p "$run_dir"
  ckpt=$(newest "$run_dir" 'last*.ckpt' 'hpc_ckpt_*.ckpt')
  if [[ -n $ckpt ]]; then echo "fit: resuming from $ckpt"; resume=(--ckpt_path "$ckpt"); fi
  @RUN@ fit "$@" @TRAINER@--trainer.default_root_dir "$run_dir" ${resume[@]+"${resume[@]}"}
  touch "$run_dir/fit.done"
}
test_cell() {  # OUT_DIR ARGS...: evaluate unless OUT_DIR/results.json exists
  local out=$1 found; shift
  if [[ -f $out/results.json ]]; then echo "test: $out/results.json exists"; return 0; fi
  mkdir -p "$out"
  @RUN@ test "$@" @TRAINER@--trainer.default_root_dir "$out"
  if [[ ! -f $out/results.json ]]; then  # a logger may have put it in a versioned sub-folder
    found=$(newest "$out" results.json)
    if [[ -z $found ]]; then echo "tcclip sweep: the test wrote no results.json under $out" >&2; return 1; fi
    cp "$found" "$out/results.json"
  fi
}
"""


@dataclass(frozen=True)
class SlurmOptions:
    """Resources and behaviour of the SLURM job array; every task is one cell run with `srun` over all its GPUs."""

    nodes: int = 1
    gpus_per_node: int = 1
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

    def trainer_args(self) -> list[str]:
        # Lightning reads ranks from SLURM's variables; devices x num_nodes must equal the srun tasks.
        return [
            "--trainer.accelerator=gpu",
            f"--trainer.devices={self.gpus_per_node}",
            f"--trainer.num_nodes={self.nodes}",
            f"--trainer.plugins={SLURM_PLUGIN}",
            "--trainer.plugins.auto_requeue=true",
        ]

    def header(self, num_tasks: int) -> list[str]:
        array = f"0-{num_tasks - 1}" + (f"%{self.max_parallel}" if self.max_parallel else "")
        lines = [
            f"--job-name={self.job_name}",
            f"--array={array}",
            f"--nodes={self.nodes}",
            f"--ntasks-per-node={self.gpus_per_node}",
            f"--gres=gpu:{self.gpus_per_node}",
            f"--cpus-per-task={self.cpus_per_task}",
        ]
        lines += [f"--{k}={v}" for k, v in (("partition", self.partition), ("account", self.account)) if v]
        lines += [f"--{k}={v}" for k, v in (("time", self.time), ("mem", self.mem)) if v]
        lines += [
            f"--output={self.log_dir}/%x-%A_%a.out",
            "--open-mode=append",  # a requeued task appends to its log
            f"--signal=SIGUSR1@{self.requeue_grace_s}",  # Lightning saves an hpc checkpoint and requeues
            "--requeue",
        ]
        for extra in self.extra_sbatch:
            extra = extra.removeprefix("#SBATCH").strip()
            lines.append(extra if extra.startswith("-") else f"--{extra}")
        return [f"#SBATCH {x}" for x in lines]


def _q(args: Iterable[str | Path]) -> str:
    return " ".join(shlex.quote(str(a)) for a in args)


def cell_commands(cell: Cell, settings: SweepSettings) -> list[str]:
    """Bash lines that run one cell: skip it when finished, else fit (resuming) and evaluate what is missing."""
    lines = [
        f"run={shlex.quote(str(settings.run_dir(cell)))}",
        f'if cell_done "$run" {_q(e.name for e in cell.evaluations)}; then',
        f'  echo "{cell.key}: every results file exists, nothing to do"; exit 0',
        "fi",
    ]
    cfg = settings.config_dir
    common = [*settings.extra_args, *cell.overrides]
    if settings.smoke_data_dir is not None:
        common += smoke_overrides(settings)
    if settings.ckpt_dir is not None:
        ckpt = find_eval_checkpoint(cell, settings.ckpt_dir)
        if ckpt is None:
            raise FileNotFoundError(
                f"{cell.key}: no checkpoint for this cell in {settings.ckpt_dir}; name it {cell.name}.ckpt "
                "(ours) or keep the official name, or leave the cell out with --only"
            )
        test_ckpt = _q(checkpoint_args(ckpt, pretrained=cell.requires is not None))
    else:
        init = []
        if cell.requires is not None:
            if settings.pretrained_ckpt is not None:
                lines.append(f"init={shlex.quote(str(settings.pretrained_ckpt))}")
            else:
                source = settings.run_dir(find_cell(cell.requires))
                lines.append(f"init=$(final_checkpoint {shlex.quote(str(source))})")
            init = [f'{INIT_CHECKPOINT_OPTION} "$init"']
        lines.append(" ".join(['fit_cell "$run"', _q(["--config", cfg / str(cell.fit_config), *common]), *init]))
        lines.append('ckpt=$(final_checkpoint "$run")')
        # The init checkpoint goes to the test too: the module loads it before the trained weights replace it, and
        # the results file then names the variant.
        test_ckpt = " ".join(['--ckpt_path "$ckpt"', *init])
    for evaluation in cell.evaluations:
        out = f'"$run"/eval/{shlex.quote(evaluation.name)}'
        lines.append(f"test_cell {out} {_q(['--config', cfg / evaluation.config, *common])} {test_ckpt}")
    return lines


def render_script(
    cells: Sequence[Cell],
    settings: SweepSettings,
    slurm: SlurmOptions | None = None,
    title: str = "",
) -> str:
    """The task script for `cells`: `bash script.sh INDEX` runs cell INDEX; under SLURM the array index picks it."""
    lines = ["#!/usr/bin/env bash"]
    if slurm is not None:
        lines += slurm.header(len(cells))
    lines += [
        f"# tcclip sweep{': ' + title if title else ''} ({len(cells)} cells), written by `tcclip sweep`.",
        "# Run one cell with `bash THIS_SCRIPT INDEX` (under SLURM the array index picks it).",
        "set -euo pipefail",
        f"cd {shlex.quote(str(settings.workdir))}",
    ]
    if slurm is not None:
        lines += list(slurm.setup)
    # One process per GPU under srun; Lightning's SLURM environment turns them into one DDP job.
    run = ("srun --kill-on-bad-exit=1 " if slurm is not None else "") + _q(settings.tcclip)
    trainer = "".join(f"{shlex.quote(a)} " for a in slurm.trainer_args()) if slurm is not None else ""
    lines.append(_SCRIPT_FUNCTIONS.strip("\n").replace("@RUN@", run).replace("@TRAINER@", trainer))
    lines += [
        "TASK=${1:-${SLURM_ARRAY_TASK_ID:-}}",
        'if [[ -z $TASK ]]; then echo "usage: $0 INDEX (0..' + str(len(cells) - 1) + ')" >&2; exit 2; fi',
        'case "$TASK" in',
    ]
    for index, cell in enumerate(cells):
        meta = f"dataset={cell.dataset} variant={cell.variant}"
        meta += f" shots={cell.shots}" if cell.shots is not None else ""
        meta += f" seed={cell.seed}" if cell.seed is not None else ""
        lines.append(f"  {index})  # {cell.key}: {meta}")
        lines += [f"    {x}" for x in cell_commands(cell, settings)]
        lines.append("    ;;")
    lines += ['  *) echo "no cell $TASK in this script (0..' + str(len(cells) - 1) + ')" >&2; exit 2 ;;', "esac", ""]
    return "\n".join(lines)


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
    script: Path,
    settings: SweepSettings,
    gpus: Sequence[str] = (),
    jobs: int = 1,
    report=None,
) -> list[CellOutcome]:
    """Run the cells of `script` wave after wave; N at a time, each pinned to one of `gpus` when given."""
    all_cells = [c for wave in waves for c in wave]
    slots: queue.Queue[str | None] = queue.Queue()
    for slot in gpus or [None] * max(1, jobs):
        slots.put(slot)
    workers = len(gpus) if gpus else max(1, jobs)
    outcomes: list[CellOutcome] = []

    def run_one(cell: Cell) -> CellOutcome:
        slot = slots.get()
        try:
            env = dict(os.environ)
            if slot is not None:
                env["CUDA_VISIBLE_DEVICES"] = slot
            run_dir = settings.run_dir(cell)
            run_dir.mkdir(parents=True, exist_ok=True)
            log_path = run_dir / "sweep.log"
            start = time.perf_counter()
            with open(log_path, "a") as log_file:
                index = str(all_cells.index(cell))
                proc = subprocess.run(["bash", str(script), index], stdout=log_file, stderr=subprocess.STDOUT, env=env)
            outcome = CellOutcome(cell, proc.returncode, time.perf_counter() - start, log_path)
            if report is not None:
                report(outcome, len(outcomes) + 1, len(all_cells))
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


def submit_array(
    cells: Sequence[Cell],
    settings: SweepSettings,
    slurm: SlurmOptions,
    name: str,
    depends_on: Sequence[str] = (),
    dry_run: bool = False,
    out=None,
) -> str:
    """Write one job array over `cells` and submit it with sbatch (after `depends_on` succeeded); returns its job id.

    With `dry_run` the script and the sbatch command are passed to `out` instead and the id is a placeholder."""
    opts = replace(slurm, job_name=f"{slurm.job_name}-{name}")
    text = render_script(cells, settings, opts, title=name)
    command = ["sbatch", "--parsable"] + ([f"--dependency=afterok:{':'.join(depends_on)}"] if depends_on else [])
    script_dir = settings.runs_dir / "slurm"
    if dry_run:
        path = script_dir / f"{opts.job_name}.sbatch"
        if out is not None:
            out(f"# ==== {path} (submit: {_q(command)} {path})\n{text}")
        return f"<{opts.job_name}>"
    script_dir.mkdir(parents=True, exist_ok=True)
    slurm.log_dir.mkdir(parents=True, exist_ok=True)
    path = script_dir / f"{opts.job_name}-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
    path.write_text(text)
    proc = subprocess.run([*command, str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch {path} failed with exit code {proc.returncode}: {proc.stderr.strip()}")
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


def _csv(value: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in value.split(",") if x.strip())


def _ints(value: str) -> tuple[int, ...]:
    return tuple(int(x.lstrip("kKsS")) for x in _csv(value))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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
    slurm.add_argument("--dry-run", action="store_true", help="print the scripts (and sbatch commands) only")
    slurm.add_argument("--nodes", type=int, default=1)
    slurm.add_argument("--gpus-per-node", type=int, default=1)
    slurm.add_argument("--cpus-per-task", type=int, default=8)
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--time", help="e.g. 24:00:00")
    slurm.add_argument("--mem", help="e.g. 64G")
    slurm.add_argument("--max-parallel", type=int, help="array throttle (%%N)")
    slurm.add_argument("--sbatch", action="append", default=[], help="extra #SBATCH line, e.g. qos=high (repeatable)")
    slurm.add_argument("--setup", action="append", default=None, help="shell line before each cell (repeatable)")
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


def _default_dir(base: str, args: argparse.Namespace) -> Path:
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
        raise RuntimeError(f"`{_q(command)}` failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")


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
    if args.tcclip is None and args.slurm:
        settings = replace(settings, tcclip=("tcclip",))
    slurm = SlurmOptions(
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_task,
        partition=args.partition,
        account=args.account,
        time=args.time,
        mem=args.mem,
        max_parallel=args.max_parallel,
        job_name=args.job_name,
        log_dir=runs_dir / "slurm" / "logs",
        extra_sbatch=tuple(args.sbatch),
        setup=tuple(args.setup) if args.setup is not None else _default_setup(),
    )
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
    args: argparse.Namespace,
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
    text = render_script([*first, *todo], settings, title=protocol)
    if args.dry_run:
        console.out(text)
        return 0
    script = settings.runs_dir / protocol / "sweep.sh"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(text)

    def report(outcome: CellOutcome, done: int, total: int) -> None:
        ok = "[green]ok[/green]" if outcome.returncode == 0 else f"[red]failed ({outcome.returncode})[/red]"
        console.print(f"[{done}/{total}] {outcome.cell.key}: {ok} in {outcome.seconds:.1f} s")
        if outcome.returncode != 0:
            tail = outcome.log.read_text(errors="replace").splitlines()[-15:]
            console.out("\n".join(f"    {line}" for line in tail), highlight=False)
            console.out(f"    (full log: {outcome.log})", highlight=False)

    outcomes = run_local([first, todo], script, settings, gpus=args.gpus, jobs=args.jobs, report=report)
    failed = [o for o in outcomes if o.returncode != 0]
    if failed:
        console.print(f"[red]{protocol}: {len(failed)} of {len(outcomes)} cells failed[/red]")
        return 1
    return 0
