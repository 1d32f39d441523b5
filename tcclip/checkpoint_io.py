"""`AtomicCheckpointIO`: how every Lightning checkpoint of a run is written and read.

Writing: through `tcclip.outputs.atomic_write` (a temporary file in the destination folder, fsync, rename, fsync of
the folder), so a kill, a full disk or a crash during a save leaves the previous file under the final name and no
partial file under any checkpoint name. Lightning's own `_atomic_save` stages the file through fsspec's
transaction, which on a local disk writes to the system's temporary folder and then moves the file: a copy plus an
unlink when that folder is on another filesystem. A checkpoint whose weights are not finite is never written, so a
diverged run cannot replace a good `last.ckpt` (docs/reliability.md).

Reading: through `tcclip.model.checkpoint.safe_load`, the project's one checkpoint reader (no pickled code runs,
unreadable files give a one-paragraph error).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH

from tcclip.finite import check_finite_state
from tcclip.model.checkpoint import safe_load
from tcclip.outputs import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` with atomic, finite-only saves and safe loads (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        check_finite_state(
            checkpoint.get("state_dict", {}),
            path,
            fix="The checkpoint was not written and the previous one under this name is kept. The training has "
            "diverged: lower model.lr or set trainer.gradient_clip_val, and resume with --ckpt_path last.",
        )
        atomic_write(path, lambda f: torch.save(checkpoint, f), what="checkpoint")

    def load_checkpoint(
        self, path: _PATH, map_location: Callable | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # On the CPU: Lightning moves every restored tensor to the strategy's device itself.
        checkpoint = safe_load(path)
        check_finite_state(checkpoint.get("state_dict", {}), path)
        return checkpoint
