"""Weights that travel without pickle: a directory with `model.safetensors` and `config.json`.

Layout written by `write_exported` (and `tcclip export`):

    OUT_DIR/model.safetensors   every tensor of the network's state dict, by its name (safetensors: no code)
    OUT_DIR/config.json         {"format": "tcclip-export", "format_version": 1, "model_config": TCCLIPConfig fields,
                                 "class_names": [...], "calibration": Calibration record or null, "tcclip_version"}
    OUT_DIR/README.md           model card (written by `tcclip.inference.export`)

`load_exported` reads it with `safetensors.torch.load_file` and `json`: nothing is unpickled, and attaches the
calibration of config.json to the model as `model.calibration`. `tcclip.load_model`
(`tcclip.training.checkpoints.load_model`) reads such a folder this way, and every checkpoint file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from tcclip.training.calibration_record import Calibration, attach
from tcclip.utils.errors import UserError, check_format
from tcclip.utils.outputs import give_usual_mode

EXPORT_FORMAT = "tcclip-export"
EXPORT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def is_exported_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tcclip")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def write_exported(
    model: nn.Module, out_dir: str | Path, calibration: Calibration | None = None, extra: dict[str, Any] | None = None
) -> Path:
    """Write `model.safetensors` and `config.json` of `model` (its current class names) into `out_dir`."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # safetensors refuses tensors that share storage; every state-dict entry is copied to its own contiguous buffer.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": EXPORT_FORMAT})
    give_usual_mode(out_dir / WEIGHTS_FILE)  # safetensors writes it readable by its owner only
    config = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "tcclip_version": _installed_version(),
        "model_config": model.cfg.to_dict(),
        "class_names": list(model.class_names),
        "calibration": None if calibration is None else calibration.to_dict(),
        **(extra or {}),
    }
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def read_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise UserError("no config.json", path=directory, fix="give a directory written by `tcclip export`") from err
    except json.JSONDecodeError as err:
        raise UserError(f"not valid JSON ({err.msg})", path=path, line=err.lineno, fix="re-export the model") from err
    check_format(
        config,
        name=EXPORT_FORMAT,
        version=EXPORT_VERSION,
        what="export",
        path=path,
        fix="give a directory written by `tcclip export`",
    )
    return config


def load_exported(directory: str | Path, class_names: Sequence[str] | None = None) -> nn.Module:
    """The eval-mode network of an exported directory, with its calibration attached; no pickle involved."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from tcclip.model.config import TCCLIPConfig
    from tcclip.model.factory import build_model

    directory = Path(directory)
    config = read_config(directory)
    try:
        cfg = TCCLIPConfig.from_dict(dict(config["model_config"]))
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"bad model_config: {err}", path=directory / CONFIG_FILE, fix="re-export the model") from err
    try:
        state = load_file(str(directory / WEIGHTS_FILE))
    except (SafetensorError, OSError) as err:
        raise UserError(
            f"unreadable weights ({err})", path=directory / WEIGHTS_FILE, fix="re-export the model"
        ) from err
    names = list(class_names) if class_names is not None else list(config.get("class_names") or [])
    if not names:
        raise UserError(
            "stores no class names",
            path=directory / CONFIG_FILE,
            fix="Give them: --labels / --label-file on the command line, class_names=[...] in Python.",
        )
    model = build_model(cfg, names)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in sorted(set(own) & set(state)) if own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise UserError(
            f"weights do not fit the {cfg.model}/{cfg.arch} model of config.json: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}",
            path=directory / WEIGHTS_FILE,
            fix="re-export the model; do not mix files of different exports",
        )
    model.load_state_dict(state, strict=True)
    record = config.get("calibration")
    calibration = None if record is None else Calibration.from_dict(record, str(directory / CONFIG_FILE))
    return attach(model.eval(), calibration)
