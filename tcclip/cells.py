"""Running one cell of a protocol grid: skip what is finished, resume a stopped fit, evaluate what has no results.

The same function runs a cell for the local runner and inside a SLURM array task (`python -m tcclip.cells PLAN INDEX`,
called by the job script `tcclip/templates/sweep.sbatch`), so both share one definition of "finished" and "resume":

- a cell is finished when each of its evaluations has `<run dir>/eval/<name>/results.json`;
- a fit is finished when `<run dir>/fit.done` exists; otherwise it starts again from the newest readable
  `last*.ckpt` or `hpc_ckpt_*.ckpt` (the checkpoint Lightning's SLURM environment writes before it requeues a
  preempted job), found as `--ckpt_path last` finds it (`tcclip.runs.find_checkpoint`: a truncated file is skipped);
- an evaluation that exists is not run again.

Every `tcclip fit` / `tcclip test` is a child process; under SLURM each is prefixed with the `srun` launcher so that
Lightning's SLURM environment turns its tasks into one DDP job.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tcclip.outputs import atomic_write
from tcclip.protocols import DATASETS, Cell, Evaluation, find_cell
from tcclip.runs import find_checkpoint

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


Runner = Callable[[list[str]], None]
"""Runs one command (raising CellFailed when it fails)."""


def subprocess_runner(settings: SweepSettings, log=None, env: dict[str, str] | None = None) -> Runner:
    """Commands as child processes in the sweep's working folder, output to `log` (default: inherited)."""

    def run(command: list[str]) -> None:
        print("+ " + shlex.join(command), file=log or sys.stdout, flush=True)
        proc = subprocess.run(command, cwd=settings.workdir, stdout=log, stderr=subprocess.STDOUT, env=env)
        if proc.returncode != 0:
            raise CellFailed(f"`{shlex.join(command)}` failed with exit code {proc.returncode}", proc.returncode)

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
        if fit_done(cell, settings):
            say(f"{cell.key}: fit finished earlier in {run_dir}")
        else:
            resume = last_checkpoint(run_dir)
            if resume is not None:
                say(f"{cell.key}: resuming from {resume}")
            config = settings.config_dir / str(cell.fit_config)
            command = [*tcclip, "fit", "--config", str(config), *common, *init, *settings.trainer_args]
            command += ["--trainer.default_root_dir", str(run_dir)]
            command += ["--ckpt_path", str(resume)] if resume is not None else []
            if not dry_run:
                run_dir.mkdir(parents=True, exist_ok=True)
            run(command)
            if not dry_run:
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
        command = [*tcclip, "test", "--config", str(config), *common, *test_ckpt, *settings.trainer_args]
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


def write_plan(path: Path, cells: Sequence[Cell], settings: SweepSettings) -> None:
    data = {"settings": settings.to_json(), "cells": [_cell_json(c) for c in cells]}
    text = json.dumps(data, indent=1)
    atomic_write(path, lambda f: f.write(text.encode()), what="sweep plan")


def read_plan(path: Path) -> tuple[list[Cell], SweepSettings]:
    data = json.loads(Path(path).read_text())
    cells = []
    for c in data["cells"]:
        evaluations = tuple(Evaluation(**e) for e in c["evaluations"])
        cells.append(Cell(**{**c, "evaluations": evaluations, "overrides": tuple(c["overrides"])}))
    return cells, SweepSettings.from_json(data["settings"])


def _cell_json(cell: Cell) -> dict[str, Any]:
    return asdict(cell)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tcclip.cells PLAN INDEX`: run cell INDEX of a plan (what a SLURM array task does)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m tcclip.cells PLAN INDEX", file=sys.stderr)
        return 2
    cells, settings = read_plan(Path(argv[0]))
    index = int(argv[1])
    if index >= len(cells):
        print(f"{argv[0]}: no cell {index} (the plan has {len(cells)})", file=sys.stderr)
        return 2
    cell = cells[index]
    print(f"{cell.key}: dataset={cell.dataset} variant={cell.variant} shots={cell.shots} seed={cell.seed}", flush=True)
    try:
        run_cell(cell, settings, subprocess_runner(settings))
    except CellFailed as err:
        print(f"tcclip sweep: {err}", file=sys.stderr)
        return err.returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
