"""Running one cell of a protocol grid: skip what is finished, resume a stopped fit, evaluate what has no results.

The same function runs a cell for the local runner and inside a SLURM array task (`tcclip sweep run-cell PLAN
INDEX`, called by the job script `tcclip/experiments/templates/sweep.sbatch`), so both share one definition of
"finished" and "resume":

- a cell is finished when each of its evaluations has `<run dir>/eval/<name>/results.json`;
- a fit is finished when `<run dir>/fit.done` exists; otherwise it starts again from the newest readable
  `last*.ckpt` or `hpc_ckpt_*.ckpt`, found as `--ckpt_path last` finds it (`tcclip.training.runs.find_checkpoint`: a
  truncated file is skipped). `fit.done` is written only when the fit exited 0 and its newest checkpoint is one of
  a finished fit (not one saved when a signal stopped it, `tcclip.training.preemption`); a marker without such a
  checkpoint
  (left by an older version, or its checkpoints deleted) is stale: it is removed, with a message, and the fit
  resumes, so that no cell is ever stuck;
- an evaluation that exists is not run again.

Every `tcclip fit` / `tcclip test` is a child process; under SLURM each is prefixed with the `srun` launcher so that
Lightning's SLURM environment turns its tasks into one DDP job. A SIGTERM (`scancel`, preemption) to the task is
passed on to the running child, which saves and stops; the task then stops too, with a non-zero status, and runs
nothing more (a resubmission or requeue resumes the cell).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tcclip.experiments.protocols import DATASETS, Cell, Evaluation, find_cell
from tcclip.training.runs import STOP_KEY, find_checkpoint, read_if_good
from tcclip.utils.outputs import atomic_write

# Fit option through which a cell starts from another model's weights (the LightningModule's init argument).
INIT_CHECKPOINT_OPTION = "--model.init_checkpoint"
FIT_DONE = "fit.done"


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
    launcher: tuple[str, ...] = ()
    """Prefix of every tcclip command (SLURM: `srun --kill-on-bad-exit=1`)."""
    trainer_args: tuple[str, ...] = ()
    """Trainer options added to every tcclip command (SLURM: devices, nodes, the SLURM environment plugin)."""

    def run_dir(self, cell: Cell) -> Path:
        return cell.run_dir(self.runs_dir)

    def results_path(self, cell: Cell, evaluation: Evaluation) -> Path:
        return cell.results_path(self.runs_dir, evaluation)

    def to_json(self) -> dict[str, Any]:
        return {
            k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in ((f.name, getattr(self, f.name)) for f in fields(self))
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SweepSettings:
        kinds = {f.name: f.type for f in fields(cls)}
        values = {}
        for key, value in data.items():
            kind = str(kinds[key])
            if value is not None and "Path" in kind:
                value = Path(value)
            elif isinstance(value, list):
                value = tuple(value)
            values[key] = value
        return cls(**values)


class CellFailed(RuntimeError):
    """A step of a cell failed; the message says which command and where its output went."""

    def __init__(self, message: str, returncode: int = 1) -> None:
        super().__init__(message)
        self.returncode = returncode


def cell_done(cell: Cell, settings: SweepSettings) -> bool:
    """A cell is finished when every one of its evaluations has written its results file."""
    return all(settings.results_path(cell, e).is_file() for e in cell.evaluations)


def fit_done(cell: Cell, settings: SweepSettings) -> bool:
    return (settings.run_dir(cell) / FIT_DONE).is_file()


def unfinished_reason(run_dir: Path) -> str | None:
    """Why the newest checkpoint under `run_dir` is not that of a finished fit (None when it is)."""
    ckpt = last_checkpoint(run_dir)
    if ckpt is None:
        return f"no readable last.ckpt under {run_dir}"
    stop = (read_if_good(ckpt) or {}).get(STOP_KEY)
    if stop:
        where = f"global step {stop.get('global_step')}"
        return f"the newest checkpoint, {ckpt}, was saved when {stop.get('signal')} stopped the fit at {where}"
    return None


def newest(folder: Path, name: str) -> Path | None:
    """The most recently written file called `name` under `folder`."""
    if not folder.is_dir():
        return None
    found = [p for p in folder.rglob(name) if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns, default=None)


def last_checkpoint(run_dir: Path) -> Path | None:
    """Where the cell's fit resumes from, and the model its tests evaluate: the `--ckpt_path last` of `tcclip fit`
    (the newest readable `last*.ckpt` or `hpc_ckpt_*.ckpt`; unreadable ones are skipped with a warning)."""
    found = find_checkpoint("last", run_dir)
    return None if found is None else Path(found)


def final_checkpoint(run_dir: Path) -> Path:
    """The trained model of a finished fit (its last checkpoint)."""
    ckpt = last_checkpoint(run_dir)
    if ckpt is None:
        raise CellFailed(
            f"no readable last.ckpt under {run_dir}: run its fit first (or pass the checkpoint explicitly)"
        )
    return ckpt


# Smoke mode: the synthetic dataset under the cell's protocol (the data module keeps protocol, shots, seed and LLM
# labels from the cell's config), the test-tiny CLIP with random weights, one short epoch on the CPU.
SMOKE_DATA = "tcclip.data.families.Synthetic"
SMOKE_MODEL = (
    "--model.model_config.arch=test-tiny",
    "--model.model_config.context_token_k=8",
    "--model.model_config.tome_r=4",
    "--model.model_config.prompt_generation_layer_level=[2]",
    "--model.clip_weights=null",
    "--model.log_confusion_matrix=false",
)
SMOKE_FIT = ("--model.optim.total_batch_size=null",)
"""Smoke fits step the optimiser every batch (evaluation configs hold no `model.optim` to override)."""


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


Runner = Callable[[list[str]], None]
"""Runs one command (raising CellFailed when it fails)."""


class StopSignals:
    """While active (main thread only), SIGTERM and SIGINT are noted and passed on to the running child instead of
    killing this process at once: the child (a fit) saves and stops, and the cell then stops with 128 + signal."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.child: subprocess.Popen | None = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum: int, frame: object) -> None:
        self.received = signum
        child = self.child
        if child is not None and child.poll() is None:
            try:
                child.send_signal(signum)
            except ProcessLookupError:
                pass

    def __enter__(self) -> StopSignals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]

    def check(self) -> None:
        if self.received is not None:
            name = signal.Signals(self.received).name
            raise CellFailed(
                f"stopped by {name}; the fit saved where it was: run the cell again (resubmit, or requeue) to resume",
                128 + self.received,
            )


def subprocess_runner(
    settings: SweepSettings, log=None, env: dict[str, str] | None = None, stop: StopSignals | None = None
) -> Runner:
    """Commands as child processes in the sweep's working folder, output to `log` (default: inherited); with `stop`,
    a stop signal is passed on to the child and no further command starts."""

    def run(command: list[str]) -> None:
        if stop is not None:
            stop.check()
        print("+ " + shlex.join(command), file=log or sys.stdout, flush=True)
        proc = subprocess.Popen(command, cwd=settings.workdir, stdout=log, stderr=subprocess.STDOUT, env=env)
        if stop is not None:
            stop.child = proc
        try:
            returncode = proc.wait()
        finally:
            if stop is not None:
                stop.child = None
        if stop is not None:
            stop.check()
        if returncode != 0:
            raise CellFailed(f"`{shlex.join(command)}` failed with exit code {returncode}", returncode)

    return run


def run_cell(
    cell: Cell, settings: SweepSettings, run: Runner, say: Callable[[str], None] = print, dry_run: bool = False
) -> None:
    """Bring `cell` to finished: fit (or resume) unless done, then every evaluation that has no results.

    With `dry_run`, `run` is only shown the commands (checkpoints not written yet appear as placeholders).
    """
    if cell_done(cell, settings):
        say(f"{cell.key}: every results file exists, nothing to do")
        return
    run_dir = settings.run_dir(cell)
    common = [*settings.extra_args, *cell.overrides]
    if settings.smoke_data_dir is not None:
        common += smoke_overrides(settings)
    tcclip = [*settings.launcher, *settings.tcclip]
    if settings.ckpt_dir is not None:
        ckpt = find_eval_checkpoint(cell, settings.ckpt_dir)
        if ckpt is None:
            raise CellFailed(
                f"{cell.key}: no checkpoint for this cell in {settings.ckpt_dir}; name it {cell.name}.ckpt "
                "(ours) or keep the official name, or leave the cell out with --only"
            )
        test_ckpt = checkpoint_args(ckpt, pretrained=cell.requires is not None)
    else:
        init: list[str] = []
        if cell.requires is not None:
            source = settings.pretrained_ckpt or _checkpoint(settings.run_dir(find_cell(cell.requires)), dry_run)
            init = [INIT_CHECKPOINT_OPTION, str(source)]
        if fit_done(cell, settings) and not dry_run:
            stale = unfinished_reason(run_dir)
            if stale is not None:
                (run_dir / FIT_DONE).unlink(missing_ok=True)
                say(f"{cell.key}: {run_dir / FIT_DONE} is stale ({stale}): removed it; the fit runs again")
        if fit_done(cell, settings):
            say(f"{cell.key}: fit finished earlier in {run_dir}")
        else:
            resume = last_checkpoint(run_dir)
            if resume is not None:
                say(f"{cell.key}: resuming from {resume}")
            config = settings.config_dir / str(cell.fit_config)
            # The plan's trainer options first: the cell's and the user's own options after them win.
            command = [*tcclip, "fit", "--config", str(config), *settings.trainer_args, *common, *init]
            command += list(SMOKE_FIT) if settings.smoke_data_dir is not None else []
            command += ["--trainer.default_root_dir", str(run_dir)]
            command += ["--ckpt_path", str(resume)] if resume is not None else []
            if not dry_run:
                run_dir.mkdir(parents=True, exist_ok=True)
            run(command)
            if not dry_run:
                unfinished = unfinished_reason(run_dir)
                if unfinished is not None:
                    raise CellFailed(
                        f"{cell.key}: `tcclip fit` exited 0 but {unfinished}; not marking the fit finished (run the "
                        "cell again to resume it)"
                    )
                (run_dir / FIT_DONE).touch()
        # The init checkpoint goes to the test too: the module loads it before the trained weights replace it, and
        # the results file then names the variant.
        test_ckpt = ["--ckpt_path", str(_checkpoint(run_dir, dry_run)), *init]
    for evaluation in cell.evaluations:
        target = settings.results_path(cell, evaluation)
        if target.is_file():
            say(f"{cell.key}: {target} exists")
            continue
        config = settings.config_dir / evaluation.config
        command = [*tcclip, "test", "--config", str(config), *settings.trainer_args, *common, *test_ckpt]
        run([*command, "--trainer.default_root_dir", str(target.parent)])
        if not dry_run:
            _publish_results(target)


def _checkpoint(run_dir: Path, dry_run: bool) -> Path | str:
    if dry_run and last_checkpoint(run_dir) is None:
        return f"<newest last.ckpt under {run_dir}>"
    return final_checkpoint(run_dir)


def _publish_results(target: Path) -> None:
    """Put the test's results file at `target` (a logger may have written it into a versioned sub-folder)."""
    if target.is_file():
        return
    found = newest(target.parent, "results.json")
    if found is None:
        raise CellFailed(f"the test wrote no results.json under {target.parent}")
    data = found.read_bytes()
    atomic_write(target, lambda f: f.write(data), what="results file")  # it marks the evaluation done: whole or absent


# ---------------------------------------------------------------------------------------------------------------------
# A plan: what one SLURM job array runs, written next to its job script and read by each array task.


def write_plan(path: Path, cells: Sequence[Cell], settings: SweepSettings, plan_id: str = "") -> None:
    """The plan of one job array: its id (also written into the job script), the settings, and one row per array
    task naming its cell."""
    data = {"id": plan_id, "settings": settings.to_json(), "cells": [{"key": c.key, **_cell_json(c)} for c in cells]}
    text = json.dumps(data, indent=1)
    atomic_write(path, lambda f: f.write(text.encode()), what="sweep plan")


def read_plan(path: Path) -> tuple[list[Cell], SweepSettings]:
    cells, settings, _ = read_plan_with_id(path)
    return cells, settings


def read_plan_with_id(path: Path) -> tuple[list[Cell], SweepSettings, str]:
    data = json.loads(Path(path).read_text())
    cells = []
    for c in data["cells"]:
        fields_ = {k: v for k, v in c.items() if k != "key"}
        evaluations = tuple(Evaluation(**e) for e in fields_["evaluations"])
        cell = Cell(**{**fields_, "evaluations": evaluations, "overrides": tuple(fields_["overrides"])})
        if "key" in c and c["key"] != cell.key:
            raise ValueError(f"{path}: a row names cell {c['key']!r} but describes {cell.key!r}")
        cells.append(cell)
    return cells, SweepSettings.from_json(data["settings"]), str(data.get("id", ""))


def _cell_json(cell: Cell) -> dict[str, Any]:
    return asdict(cell)


def _name_the_log(cell: Cell) -> None:
    """Under SLURM, give the task's output file (`<job>-<array>_<task>.out`) a second name that says which cell it
    holds: `<protocol>-<cell>-<array>_<task>.out`, a symbolic link beside it."""
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    try:
        out = Path(os.readlink("/proc/self/fd/1"))
    except OSError:
        return
    if task is None or array is None or not out.is_file():
        return
    link = out.parent / f"{cell.protocol}-{cell.name}-{array}_{task}.out"
    try:
        if not link.is_symlink():
            link.symlink_to(out.name)
    except OSError:
        pass  # a name for convenience only


def run_planned_cell(plan: Path, index: int, *, plan_id: str | None = None) -> int:
    """Run cell INDEX of a sweep plan: what each SLURM array task of `tcclip sweep --slurm` does.

    The cell is skipped when finished, its fit resumed from its newest checkpoint when stopped, and what has no
    results yet is evaluated. Exit code 143 when SIGTERM (scancel, preemption) stopped it; 2 for a plan that cannot
    be read or has no such cell.

    Args:
        plan: the plan file the job script names (cells and settings, written by `tcclip sweep --slurm`)
        index: the cell's index in the plan ($SLURM_ARRAY_TASK_ID)
        plan_id: the id the job script was written with: a plan file that is not that script's own is refused
            instead of running another submission's cell
    """
    try:
        cells, settings, stored_id = read_plan_with_id(Path(plan))
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"tcclip sweep: cannot read the plan {plan}: {err}", file=sys.stderr)
        return 2
    if plan_id is not None and stored_id != plan_id:
        print(
            f"tcclip sweep: {plan} is plan {stored_id!r}, but this job script was written for plan {plan_id!r}; "
            "not running a cell another submission planned. Fix: submit again with `tcclip sweep --slurm`.",
            file=sys.stderr,
        )
        return 2
    if not 0 <= index < len(cells):
        print(f"{plan}: no cell {index} (the plan has {len(cells)})", file=sys.stderr)
        return 2
    cell = cells[index]
    _name_the_log(cell)
    print(f"{cell.key}: dataset={cell.dataset} variant={cell.variant} shots={cell.shots} seed={cell.seed}", flush=True)
    try:
        with StopSignals() as stop:
            run_cell(cell, settings, subprocess_runner(settings, stop=stop))
    except CellFailed as err:
        print(f"tcclip sweep: {err}", file=sys.stderr)
        return err.returncode or 1
    return 0


if __name__ == "__main__":
    # Job scripts written before `tcclip sweep run-cell` existed (a requeued task runs its script again) call this
    # module: the command line is `tcclip sweep run-cell`'s, run by name so that this layer imports no command code.
    import runpy

    sys.argv = ["tcclip", "sweep", "run-cell", *sys.argv[1:]]
    runpy.run_module("tcclip.cli", run_name="__main__", alter_sys=True)
