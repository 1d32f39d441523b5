"""A run's folder: which checkpoint `last` and `best` mean, where a resumed run writes, and the lock that keeps a
second process out while a run writes there (the rules are written up in docs/reliability.md).

Layout (Lightning's): `<default_root_dir>/lightning_logs/version_N/` holds a run's logs, `results.json` and
`checkpoints/` (`last.ckpt`, `best-*.ckpt`). A fit resumed with `--ckpt_path` continues in the version folder of its
checkpoint, so one folder holds the whole run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcclip.training.safe_load import CheckpointError, safe_load
from tcclip.utils.errors import UserError
from tcclip.utils.outputs import is_temporary

log = logging.getLogger(__name__)

LOCK_FILE = "tcclip.lock"
STOP_KEY = "tcclip_stop"
"""Checkpoint key of a save made when a run was stopped by a signal (`tcclip.training.preemption`): not a finished
fit."""
_VERSION = re.compile(r"version_(\d+)")


# -- checkpoint lookup -------------------------------------------------------------------------------------------


LAST_PATTERNS = ("last*.ckpt", "hpc_ckpt_*.ckpt")
"""What `last` means: ModelCheckpoint's `last.ckpt` (`last-v1.ckpt`, ...) and the `hpc_ckpt_N.ckpt` that Lightning's
SLURM environment saves into the run's root folder before it requeues a preempted job (the newest state of the run)."""


def _checkpoints(root: Path, *patterns: str) -> list[Path]:
    """Files matching one of `patterns` under `root`, newest first (in-progress temporary files excluded)."""
    if not root.is_dir():
        return []
    found = {p for pattern in patterns for p in root.rglob(pattern) if p.is_file() and not is_temporary(p)}
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def read_if_good(path: Path) -> Mapping[str, Any] | None:
    """The checkpoint at `path` (tensors memory-mapped), or None with a warning when it cannot be read."""
    try:
        obj = safe_load(path, mmap=True)
    except CheckpointError as err:
        log.warning("skipping an unreadable checkpoint: %s", err)
        return None
    if not isinstance(obj, Mapping) or "state_dict" not in obj:
        log.warning("skipping %s: not a Lightning checkpoint (no 'state_dict')", path)
        return None
    return obj


def newest_good(candidates: list[Path]) -> tuple[Path, Mapping[str, Any]] | None:
    for path in candidates:
        obj = read_if_good(path)
        if obj is not None:
            return path, obj
    return None


def _record(obj: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    ours = obj.get("tcclip")
    value = ours.get(key) if isinstance(ours, Mapping) else None
    return dict(value) if isinstance(value, Mapping) else None


def find_checkpoint(which: str, root: str | Path) -> str | None:
    """`last`: the newest readable `last*.ckpt` or `hpc_ckpt_*.ckpt` under `root` (else the newest readable `*.ckpt`,
    with a warning); `best`: the checkpoint holding the weights of the run's best validation epoch. None when there
    is no checkpoint at all.

    Unreadable files (a save cut short, random bytes) are skipped with a warning. `best` reads the run's record
    (`best`: epoch and val top-1 over the whole run, carried from checkpoint to checkpoint across resumes) from the
    newest good `last` checkpoint and returns the checkpoint whose own validation is that epoch's, looked for in its
    folder first, then anywhere under `root`.

    Raises:
        UserError: the record names a best epoch whose checkpoint is not on disk (any other would be the wrong model).
    """
    root = Path(root)
    last = newest_good(_checkpoints(root, *LAST_PATTERNS))
    if last is None:
        last = newest_good(_checkpoints(root, "*.ckpt"))
        if last is not None:
            log.warning(
                "no readable last*.ckpt or hpc_ckpt_*.ckpt under %s; the newest readable checkpoint is %s",
                root,
                last[0],
            )
    if last is None:
        return None
    last_path, last_obj = last
    if which == "last":
        return str(last_path)
    if which != "best":
        raise ValueError(f"which must be 'last' or 'best', got {which!r}")
    best = _record(last_obj, "best")
    if best is None:
        return _best_from_callback_state(last_obj)
    folder = last_path.parent
    candidates = [p for p in _checkpoints(folder, "*.ckpt")]
    candidates += [p for p in _checkpoints(root, "*.ckpt") if p.parent != folder]
    for path in candidates:
        obj = last_obj if path == last_path else read_if_good(path)
        # The weights of epoch e, saved right after its validation: their own `last` record is the run's best.
        if obj is not None and obj.get("epoch") == best["epoch"] and _record(obj, "last") == best:
            return str(path)
    raise UserError(
        f"--ckpt_path best: the run's best epoch is {best['epoch']} (val top-1 {best['top1']:.4f}), but no readable "
        f"checkpoint under {root} holds its weights",
        fix="Give the checkpoint to use with --ckpt_path PATH (or --ckpt_path last).",
    )


def _best_from_callback_state(obj: Mapping[str, Any]) -> str | None:
    """A run without our record: the best model the monitoring ModelCheckpoint remembers, if readable."""
    for key, value in obj.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and value.get("monitor") and value.get("best_model_path"):
            path = Path(value["best_model_path"])
            if path.is_file() and read_if_good(path) is not None:
                return str(path)
    return None


# -- the version folder of a checkpoint --------------------------------------------------------------------------


@dataclass(frozen=True)
class RunFolder:
    """`<save_dir>/<name>/version_<version>`: where a TensorBoardLogger writes (`checkpoints/` inside)."""

    save_dir: Path
    name: str
    version: int

    @property
    def path(self) -> Path:
        return self.save_dir / self.name / f"version_{self.version}"


def run_folder_of(checkpoint: str | Path) -> RunFolder | None:
    """The run folder a checkpoint was written in (`.../<name>/version_N/checkpoints/x.ckpt`), else None.

    The path is taken as spelled (relative stays relative): Lightning's ModelCheckpoint compares its folder with the
    one stored in the checkpoint as strings, and restores its full state only when they are equal.
    """
    path = Path(checkpoint)
    if path.parent.name != "checkpoints":
        return None
    version_dir = path.parent.parent
    if version_dir.parent == version_dir.parent.parent:  # too short to hold <save_dir>/<name>/version_N
        return None
    match = _VERSION.fullmatch(version_dir.name)
    if match is None:
        return None
    return RunFolder(version_dir.parent.parent, version_dir.parent.name, int(match.group(1)))


# -- the lock ------------------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


HEARTBEAT_S = 60.0
"""How often a running owner refreshes its lock's modification time."""
STALE_AFTER_S = 15 * 60.0
"""A lock of another host not refreshed for this long belongs to a dead run."""


def _slurm_job() -> str | None:
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return None if job is None else f"{job}_{task}" if task is not None else job


class RunLock:
    """An exclusive lock on a run folder: `tcclip.lock` holding the owner's pid, host, SLURM job and start time.

    Created with O_EXCL, so of two processes only one gets it. The owner refreshes the file's modification time
    while it runs (`heartbeat`). A lock is stale, and replaced with a warning, when its process is gone: on this
    host, its pid is not running; under SLURM, it names this very job (a requeued job runs once at a time); on
    another host, it has not been refreshed for `STALE_AFTER_S`. Otherwise the second process is refused.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.held = False
        self._beat = 0.0

    def _unwritable(self, action: str, err: OSError) -> UserError:
        return UserError(
            f"cannot {action} ({err.strerror or err})",
            path=self.folder,
            fix="Set trainer.default_root_dir to a folder you can write to.",
        )

    def acquire(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise self._unwritable("create the run folder", err) from err
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and not self._stale(owner):
                    raise UserError(
                        f"another run is writing to this folder (pid {owner.get('pid')} on {owner.get('host')}, "
                        f"started {owner.get('started')}); two runs in one folder would mix their checkpoints",
                        path=self.folder,
                        fix=f"Wait for it to finish, or give this run another trainer.default_root_dir. If that run "
                        f"is dead, delete {self.path}.",
                    ) from None
                log.warning("removing a stale lock %s (its process %s is gone)", self.path, owner)
                self.path.unlink(missing_ok=True)
                continue
            except OSError as err:
                raise self._unwritable("write in the run folder", err) from err
            with os.fdopen(fd, "w") as f:
                owner = {"pid": os.getpid(), "host": socket.gethostname(), "slurm_job": _slurm_job()}
                json.dump({**owner, "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
            self.held = True
            self._beat = time.monotonic()
            return
        raise UserError("could not take the run lock (it keeps reappearing)", path=self.path)

    def _owner(self) -> dict[str, Any] | None:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # unreadable or half-written by a killed process: stale
        return owner if isinstance(owner, dict) else None

    def _stale(self, owner: dict[str, Any]) -> bool:
        if owner.get("slurm_job") is not None and owner.get("slurm_job") == _slurm_job():
            return True
        if owner.get("host") != socket.gethostname():
            try:
                return time.time() - self.path.stat().st_mtime > STALE_AFTER_S
            except OSError:
                return True
        pid = owner.get("pid")
        # Our own pid: a lock left by an earlier run of this process (one process runs one fit at a time).
        return not isinstance(pid, int) or pid == os.getpid() or not _alive(pid)

    def heartbeat(self) -> None:
        """Refresh the lock's modification time (at most every `HEARTBEAT_S`), so other hosts see the run alive."""
        if self.held and time.monotonic() - self._beat > HEARTBEAT_S:
            self._beat = time.monotonic()
            try:
                os.utime(self.path)
            except OSError:
                pass  # the lock is advisory; a failed refresh must not stop the run

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
