"""`AtomicCheckpointIO`: how every Lightning checkpoint of a run is written and read.

Writing: through `tcclip.utils.outputs.atomic_write` (a temporary file in the destination folder, fsync, rename, fsync
of
the folder), so a kill, a full disk or a crash during a save leaves the previous file under the final name and no
partial file under any checkpoint name. Lightning's own `_atomic_save` stages the file through fsspec's
transaction, which on a local disk writes to the system's temporary folder and then moves the file: a copy plus an
unlink when that folder is on another filesystem. A checkpoint whose weights are not finite is never written, so a
diverged run cannot replace a good `last.ckpt` (docs/reliability.md).

Reading: through `tcclip.training.safe_load.safe_load`, the project's one checkpoint reader (no pickled code runs,
unreadable files give a one-paragraph error). `--ckpt_path` of `validate`, `test` and `score` may also name weights
without a training state, a `save_model` file or a `tcclip export` folder: `lightning_layout` gives them the layout
of a Lightning checkpoint with an empty training state (as `tcclip convert-checkpoint` writes), so they are evaluated
as the weights they are. `fit` cannot resume from them (`refuse_for_fit` names the option that starts from them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH

from tcclip.training.safe_load import safe_load
from tcclip.utils.errors import UserError
from tcclip.utils.finite import check_finite_state
from tcclip.utils.outputs import atomic_write


def checkpoint_kind(path: str | Path, obj: Any = None) -> str:
    """`lightning`, `save_model`, `export` (a `tcclip export` folder), `official` or `unknown`."""
    from tcclip.training.portable import is_exported_dir

    if Path(path).is_dir():
        return "export" if is_exported_dir(path) else "unknown"
    obj = safe_load(path, mmap=True) if obj is None else obj
    if not isinstance(obj, Mapping):
        return "unknown"
    if isinstance(obj.get("state_dict"), Mapping) and "model_config" in obj:
        return "save_model"
    if isinstance(obj.get("state_dict"), Mapping):
        return "lightning"
    if isinstance(obj.get("model"), Mapping):
        return "official"
    return "unknown"


def lightning_layout(path: str | Path) -> dict[str, Any]:
    """The checkpoint at `path` as Lightning restores it: a Lightning checkpoint as it is; a `save_model` file or an
    export folder as its weights with an empty training state.

    Raises:
        UserError: an official `.pth` (it must be converted first) or a file of no known layout.
    """
    from tcclip.training.checkpoints import lightning_checkpoint, load_model

    path = Path(path)
    obj = None if path.is_dir() else safe_load(path)
    kind = checkpoint_kind(path, obj)
    if kind == "lightning":
        return obj
    if kind in ("save_model", "export"):
        return lightning_checkpoint(load_model(path))
    if kind == "official":
        raise UserError(
            "is an official TC-CLIP checkpoint, which --ckpt_path cannot restore",
            path=path,
            fix=f"Convert it once: `tcclip convert-checkpoint {path} {path.with_suffix('.ckpt')}`, then pass the "
            ".ckpt to --ckpt_path (or start a training from it with --model.init_checkpoint).",
        )
    raise UserError(
        "is not a checkpoint tcclip knows (a tcclip fit .ckpt, a save_model file or a tcclip export folder)",
        path=path,
        fix="Give --ckpt_path one of those, or last / best to look under trainer.default_root_dir.",
    )


def refuse_for_fit(path: str | Path) -> None:
    """`fit --ckpt_path` resumes a training: weights without a training state are refused with what to use."""
    kind = checkpoint_kind(path)
    if kind in ("save_model", "official"):
        what = "a save_model file" if kind == "save_model" else "an official TC-CLIP checkpoint"
        raise UserError(
            f"is {what}: it holds weights but no training state, so `tcclip fit --ckpt_path` cannot resume from it",
            path=path,
            fix=f"To train starting from these weights, pass --model.init_checkpoint {path} (and no --ckpt_path); "
            f"to evaluate them, `tcclip test --config ... --ckpt_path {path}`.",
        )
    if kind == "export":
        raise UserError(
            "is a `tcclip export` folder: weights for inference, no training state to resume",
            path=path,
            fix=f"Evaluate it with `tcclip test --config ... --ckpt_path {path}`, or resume from the run's .ckpt.",
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` with atomic, finite-only saves and safe loads (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        check_finite_state(
            checkpoint.get("state_dict", {}),
            path,
            fix="The checkpoint was not written and the previous one under this name is kept. The training has "
            "diverged: lower model.optim.lr or set trainer.gradient_clip_val, and resume with --ckpt_path last.",
        )
        atomic_write(path, lambda f: torch.save(checkpoint, f), what="checkpoint")

    def load_checkpoint(
        self, path: _PATH, map_location: Callable | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # On the CPU: Lightning moves every restored tensor to the strategy's device itself.
        checkpoint = lightning_layout(path)
        check_finite_state(checkpoint.get("state_dict", {}), path)
        return checkpoint
