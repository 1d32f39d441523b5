"""Checkpoint files: what each kind holds, and `load_model`, the one loader of every kind (`tcclip.load_model`).

Kinds read by `load_model`:

- a Lightning checkpoint (`.ckpt`) of `tcclip fit`: `state_dict` with the network's keys prefixed `model.`, and
  `hyper_parameters["model_config"]` = `TCCLIPConfig.to_dict()`; the training classes in `tcclip.train_class_names`
  (`TCCLIPModule.on_save_checkpoint`). `lightning_checkpoint` gives this layout with an empty training state (what
  `tcclip convert-checkpoint` writes): `{"state_dict": {"model." + k: v}, "hyper_parameters": {"model_config": ...},
  "pytorch-lightning_version": <installed lightning version>, "epoch": 0, "global_step": 0, "optimizer_states": [],
  "lr_schedulers": []}` (no "loops": Lightning then restores no loop state), so both `load_model` and
  `tcclip validate/test --ckpt_path` read it;
- `save_model`'s file: `{"format": "tcclip", "model_config": ..., "state_dict": ..., "class_names": [...]}`;
- an official TC-CLIP release `.pth` (`tcclip.model.official` maps its keys and config; the token embedding table,
  which it lacks, comes from CLIP's weights);
- a `tcclip export` folder (`tcclip.training.portable`: safetensors and JSON, no pickle).

Every file is read by `tcclip.training.safe_load.safe_load` (no pickled code runs). An official config is taken as
written: omegaconf interpolations are never resolved, and a model setting written as one is refused. Non-finite
weights are refused (`tcclip.utils.finite`). The calibration stored with the weights (`tcclip calibrate`) is
attached to the returned model as `model.calibration`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tcclip.model.errors import ModelError
from tcclip.model.official import NOT_IN_OFFICIAL, official_config_to_tcclip, strip_official_keys
from tcclip.model.weights import check_state_dict, config_with_overrides
from tcclip.training.calibration_record import attach, read_sidecar
from tcclip.training.safe_load import CheckpointError, safe_load
from tcclip.utils.errors import UserError, as_user_error
from tcclip.utils.finite import check_finite_state

__all__ = [
    "CheckpointContents",
    "CheckpointError",
    "lightning_checkpoint",
    "load_model",
    "load_official_checkpoint",
    "read_checkpoint",
    "save_model",
]

log = logging.getLogger(__name__)

LIGHTNING_PREFIX = "model."


def _checkpoint_error(err: ModelError, path: Path) -> UserError:
    """The model core's refusal of what a checkpoint holds, as the error a user sees."""
    if err.key is not None:  # a setting stored in the checkpoint (or an override) of the wrong type or range
        fix = "The checkpoint's model_config (or an override) holds this value; fix it there."
        return as_user_error(err, path=path, fix=fix) or CheckpointError(err.message, fix=fix)
    return CheckpointError(err.message, fix=err.fix)


def _config_to_dict(config: Any, source: str) -> dict[str, Any]:
    """An omegaconf DictConfig (or a dict) as a plain dict, every value as written: interpolations stay strings.

    A config inside a downloaded file is untrusted: resolving `${oc.env:NAME}` would copy an environment variable
    into the model settings, the converted checkpoint and messages. `official_config_to_tcclip` refuses such strings
    in the settings it reads; the other keys (data paths, Hydra's own) are never used.
    """
    if config is None:
        return {}
    from omegaconf import DictConfig, OmegaConf

    if isinstance(config, DictConfig):
        out = OmegaConf.to_container(config, resolve=False, throw_on_missing=False)
        return {str(k): v for k, v in out.items()}
    if isinstance(config, Mapping):
        return dict(config)
    raise CheckpointError(f"{source}: 'config' is a {type(config).__name__}, expected an omegaconf DictConfig or dict")


def load_official_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read an official TC-CLIP checkpoint safely.

    Returns:
        The state dict without the `module.` prefix and without the class-list tensors (`IGNORED_OFFICIAL_KEYS`),
        and the config as a plain dict (official key names; `{}` if the file has none).
    """
    obj = safe_load(path)
    if not isinstance(obj, Mapping) or not isinstance(obj.get("model"), Mapping):
        keys = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path}: not an official TC-CLIP checkpoint (expected a dict with 'model'; got {keys})")
    try:
        state = strip_official_keys(obj["model"], str(path))
    except ModelError as err:
        raise _checkpoint_error(err, Path(path)) from err
    check_finite_state(state, path)
    return state, _config_to_dict(obj.get("config"), str(path))


@dataclass(frozen=True)
class CheckpointContents:
    """What a checkpoint file says about a network.

    Attributes:
        kind: `official`, `lightning` (a `tcclip fit` .ckpt or a converted one) or `tcclip` (`save_model`).
        state_dict: the network's tensors under our names (no `module.` / `model.` prefix), all finite.
        model_config: the TCCLIPConfig fields the file specifies (an official config: only those it names).
        class_names: the class names stored with the weights, if any.
        raw: the whole loaded object (Lightning's training state included).
    """

    kind: str
    state_dict: dict[str, Tensor]
    model_config: dict[str, Any]
    class_names: list[str] | None
    raw: Mapping[str, Any]


def _lightning_weights(obj: Mapping[str, Any], path: Path) -> dict[str, Tensor]:
    state = {}
    skipped = 0
    for key, value in obj["state_dict"].items():
        if key.startswith(LIGHTNING_PREFIX):
            state[key[len(LIGHTNING_PREFIX) :]] = value
        else:
            skipped += 1  # the Lightning module's own tensors (not the network)
    if not state:
        raise CheckpointError(f"{path}: Lightning checkpoint without any '{LIGHTNING_PREFIX}*' tensors")
    if skipped:
        log.info("%s: %d state_dict entries outside '%s' are not network weights; not loaded", path, skipped, "model.")
    return state


def read_checkpoint(path: str | Path) -> CheckpointContents:
    """Read any checkpoint file this project knows (the one parser of checkpoint files; see the module docstring).

    Raises:
        CheckpointError: unsafe, unreadable or unknown file (or an official config this implementation cannot map).
        NonFiniteError: non-finite weights (named).
    """
    path = Path(path)
    obj = safe_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got a {type(obj).__name__}")
    hparams = obj.get("hyper_parameters")
    hparams = hparams if isinstance(hparams, Mapping) else {}
    if isinstance(obj.get("state_dict"), Mapping) and "model_config" not in obj:
        # A Lightning checkpoint; one saved without hyper-parameters specifies no model settings.
        state = _lightning_weights(obj, path)
        ours = obj.get("tcclip")
        names = hparams.get("class_names") or (ours.get("train_class_names") if isinstance(ours, Mapping) else None)
        kind, config = "lightning", dict(hparams.get("model_config") or {})
    elif "model_config" in obj and isinstance(obj.get("state_dict"), Mapping):
        names = obj.get("class_names")
        kind, state, config = "tcclip", dict(obj["state_dict"]), dict(obj["model_config"])
    elif isinstance(obj.get("model"), Mapping):
        try:
            state = strip_official_keys(obj["model"], str(path))
            config = official_config_to_tcclip(_config_to_dict(obj.get("config"), str(path)), str(path))
        except ModelError as err:
            raise _checkpoint_error(err, path) from err
        kind, names = "official", None  # only the settings the official config names
    else:
        raise CheckpointError(
            f"{path}: unknown checkpoint layout (top-level keys {sorted(map(str, obj))}); expected an official "
            "TC-CLIP checkpoint ('model', 'config'), a tcclip Lightning checkpoint ('state_dict', "
            "'hyper_parameters') or a file written by save_model"
        )
    check_finite_state(state, path)
    return CheckpointContents(kind, state, config, list(names) if names else None, obj)


def load_model(
    checkpoint: str | Path,
    class_names: Sequence[str] | None = None,
    clip_weights: str | Path | None = None,
    *,
    calibration: bool = True,
    **overrides: Any,
) -> nn.Module:
    """An eval-mode network from a tcclip `.ckpt`, a `tcclip export` folder, a `save_model` file or an official `.pth`.

    Args:
        checkpoint: the file or folder.
        class_names: classes of the logits; None uses the ones stored with the weights (if there are any).
        clip_weights: where the token embedding table of an official checkpoint comes from (`"openai"` when None;
            see `tcclip.model.factory.create_model`). Our own checkpoints hold every tensor and ignore it.
        calibration: attach the calibration stored with the weights (`tcclip calibrate`) as `model.calibration`
            (None if there is none); False ignores it (as `tcclip calibrate` does before fitting a new one).
        **overrides: TCCLIPConfig fields (checkpoint files only); only `tcclip.model.weights.ALLOWED_TO_DIFFER` may
            contradict the checkpoint's config.

    Raises:
        CheckpointError: unsafe or unknown file, config contradictions, key or shape mismatches.
        ConfigError: a setting stored in the checkpoint (or an override) of the wrong type or out of range.
        LabelFileError: `class_names` is one string, holds a non-string, or repeats a class (also after
            lower-casing), as `--labels` is refused.
    """
    from tcclip.data.labels import as_class_names
    from tcclip.training.portable import CONFIG_FILE, WEIGHTS_FILE, is_exported_dir, load_exported

    class_names = as_class_names(class_names)
    path = Path(checkpoint)
    if path.is_dir():
        if not is_exported_dir(path):
            raise CheckpointError(
                f"is a directory without {CONFIG_FILE} and {WEIGHTS_FILE}: it is a folder, but not one written by "
                "`tcclip export`",
                path=path,
                fix="give a checkpoint file, or a directory written by `tcclip export`",
            )
        if overrides or clip_weights is not None:
            raise UserError("an exported model takes no model overrides or clip_weights", path=path, fix="drop them")
        model = load_exported(path, class_names)
        return model if calibration else attach(model, None)
    try:
        model = _load_file(path, class_names, clip_weights, overrides)
    except ModelError as err:
        raise _checkpoint_error(err, path) from err
    return attach(model, read_sidecar(path) if calibration else None)


def _load_file(
    path: Path, class_names: list[str] | None, clip_weights: str | Path | None, overrides: Mapping[str, Any]
) -> nn.Module:
    from tcclip.model.factory import build_model, create_model

    contents = read_checkpoint(path)
    kind, state, stored_names = contents.kind, contents.state_dict, contents.class_names
    cfg = config_with_overrides(contents.model_config, overrides, str(path))
    if class_names is None:
        if stored_names is None:
            raise CheckpointError(
                f"{path}: stores no class names; give them: --labels / --label-file on the command line, "
                "class_names=[...] in Python"
            )
        class_names = stored_names
    if kind == "official":
        model = create_model(cfg, class_names, clip_weights=clip_weights or "openai")
        own = model.state_dict()
        state = {**state, **{k: own[k] for k in NOT_IN_OFFICIAL if k in own}}
    else:
        if clip_weights is not None:
            log.info("%s holds every tensor; clip_weights=%s is not needed and not used", path, clip_weights)
        model = build_model(cfg, class_names)
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True)
    return model.eval()


def save_model(model: nn.Module, path: str | Path) -> Path:
    """Write `{"format": "tcclip", "model_config", "state_dict", "class_names"}`, readable by `load_model`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(
        {
            "format": "tcclip",
            "model_config": model.cfg.to_dict(),
            "state_dict": state,
            "class_names": model.class_names,
        },
        path,
    )
    return path


def _lightning_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("lightning", "pytorch-lightning"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "0.0.0"


def lightning_checkpoint(model: nn.Module) -> dict[str, Any]:
    """A Lightning-style checkpoint dict of `model` with empty training state (see the module docstring)."""
    return {
        "state_dict": {LIGHTNING_PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()},
        "hyper_parameters": {"model_config": model.cfg.to_dict()},
        "pytorch-lightning_version": _lightning_version(),
        "epoch": 0,
        "global_step": 0,
        "optimizer_states": [],
        "lr_schedulers": [],
    }
