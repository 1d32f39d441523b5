"""Reading a checkpoint file without running pickled code: `safe_load`, the one reader of every checkpoint file of
the project (`load_model`'s, and Lightning's restores through `tcclip.training.checkpoint_io`).

Nothing is ever unpickled with `weights_only=False`: files are read with `torch.load(weights_only=True)` and an
explicit allow-list of the data-only omegaconf classes an official config pickles; any other pickled global is
refused with an error naming the file and the global. A file that is not a checkpoint at all (random bytes, a
truncated or empty file) is a one-paragraph `CheckpointError` saying which it looks like.
"""

from __future__ import annotations

import collections
import pickle
import typing
import zipfile
from pathlib import Path
from typing import Any

import torch

from tcclip.utils.errors import UserError

__all__ = ["CheckpointError", "safe_load"]


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be loaded as asked; the message names the file and the fix.

    A `UserError` (the CLI prints it as one paragraph and exits 2) and, for callers that catch it so, a `ValueError`.
    """


# -- the allow-list -------------------------------------------------------------------------------------------


def _allowed_globals() -> list[Any]:
    """The non-tensor classes that an official checkpoint's pickled omegaconf config needs, and nothing else.

    All are plain data containers: omegaconf's config containers, their metadata records and value nodes, the
    builtin types / `typing.Any` that omegaconf stores as metadata (`ref_type`, `object_type`, `key_type`), and the
    pathlib paths that a `PathNode` (or a Lightning checkpoint's hyper-parameters) may hold.
    """
    import pathlib

    from omegaconf import DictConfig, ListConfig, nodes
    from omegaconf.base import ContainerMetadata, Metadata

    value_nodes = [
        getattr(nodes, n)
        for n in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode")
        if hasattr(nodes, n)
    ]
    return [
        DictConfig,
        ListConfig,
        ContainerMetadata,
        Metadata,
        *value_nodes,
        typing.Any,
        dict,
        list,
        tuple,
        set,
        int,
        float,
        bool,
        str,
        bytes,
        type(None),
        collections.defaultdict,
        collections.OrderedDict,
        pathlib.PurePosixPath,
        pathlib.PosixPath,
        pathlib.PureWindowsPath,
        pathlib.WindowsPath,
    ]


def _global_name(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "typing"
    name = getattr(obj, "__qualname__", None) or getattr(obj, "_name", None) or repr(obj)
    return f"{module}.{name}"


def _refused_globals(path: Path) -> list[str]:
    """Globals pickled in `path` that are not on the allow-list (empty if the file cannot be scanned)."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - a file the scanner cannot parse names no global; it is reported as unreadable
        return []
    allowed = {_global_name(g) for g in _allowed_globals()} | {"builtins.NoneType", "typing.Any"}
    return sorted(g for g in found if g not in allowed)


def safe_load(path: str | Path, mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` with the omegaconf allow-list; other pickled objects are refused.

    Args:
        path: the file.
        mmap: map the tensors' storage instead of reading it (cheap inspection of large files).

    Raises:
        CheckpointError: no such file, not a checkpoint (random bytes, a truncated file), or unsafe pickled objects.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file; give the .ckpt / .pth file inside it")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with torch.serialization.safe_globals(_allowed_globals()):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
        except pickle.UnpicklingError as err:
            refused = _refused_globals(path)
            if not refused:
                raise _not_a_checkpoint(path, err) from err
            raise CheckpointError(
                f"{path}: refusing to load: the file contains pickled objects of {', '.join(refused)}, which are not "
                "on the allow-list of data-only types (tensors, containers, numbers, strings and omegaconf configs); "
                "unpickling it could run arbitrary code. Re-save the weights as a plain state dict (dict of tensors) "
                "if you trust the file"
            ) from err
        except Exception as err:  # noqa: BLE001 - malformed bytes make the unpickler fail in arbitrary ways
            raise _not_a_checkpoint(path, err) from err


def _not_a_checkpoint(path: Path, err: BaseException) -> CheckpointError:
    size = path.stat().st_size
    if size == 0:
        what = "it is empty (0 bytes): a save that was interrupted, or a failed copy"
    elif zipfile.is_zipfile(path):
        what = "it is a zip archive torch cannot read as a checkpoint (damaged)"
    else:
        with open(path, "rb") as f:
            head = f.read(2)
        # torch.save writes a zip archive; its legacy format starts with a pickle protocol mark (0x80).
        if head[:1] == b"\x80":
            what = f"its pickled data cannot be read ({type(err).__name__}); the file is damaged or truncated"
        else:
            what = "it is neither a torch zip archive nor a pickle: not a checkpoint, or truncated"
    return CheckpointError(
        f"{path}: not a checkpoint: {what}",
        fix="Give a .ckpt written by `tcclip fit` or an official TC-CLIP .pth; re-copy it if it is damaged.",
    )
