"""`tcclip convert-checkpoint OFFICIAL.pth OUT.ckpt`: an official TC-CLIP checkpoint as a tcclip Lightning checkpoint.

The output (`tcclip.training.checkpoints.lightning_checkpoint`) holds the network's weights and its `model_config`,
so `tcclip.load_model` and `tcclip validate/test --ckpt_path` read it. The official file's embedded config is taken
as written, never resolved (see `tcclip.model.official`); settings it lacks, or gives as interpolations, come from
`--config model.yaml`. The output appears whole or not at all (`tcclip.utils.outputs`).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from tcclip.model.config import TCCLIPConfig
from tcclip.model.errors import ModelError
from tcclip.model.official import NOT_IN_OFFICIAL, official_config_to_tcclip
from tcclip.model.weights import check_state_dict
from tcclip.training.checkpoints import CheckpointError, lightning_checkpoint, load_official_checkpoint
from tcclip.utils.errors import UserError, as_user_error
from tcclip.utils.outputs import atomic_write


def read_yaml_settings(path: Path) -> dict[str, Any]:
    """The raw mapping of a YAML file of model settings (official key names, TCCLIPConfig field names, or both).

    Read with omegaconf's loader but never resolved: a `${...}` value is refused like one in a checkpoint.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except FileNotFoundError as err:
        raise UserError(
            "no such YAML file", path=path, fix="Give --config an existing file of model settings."
        ) from err
    except (OmegaConfBaseException, ValueError, OSError) as err:
        raise UserError(f"not a readable YAML file ({err})", path=path) from err
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a YAML mapping of model settings")
    return {str(k): v for k, v in raw.items()}


# Official config keys whose TCCLIPConfig field has another name; the others map onto the field of the same name.
OFFICIAL_TO_FIELD = {
    "trainer_name": "model",
    "zs_eval": "model",
    "model_arch": "arch",
    "parse_ucf101": "parse_class_names",
}


def model_settings(official: dict[str, Any], yaml: dict[str, Any], yaml_path: Path | None, source: str) -> TCCLIPConfig:
    """TCCLIPConfig from the checkpoint's config, with every field the YAML file sets (under either name) replaced."""
    ours = {f.name for f in fields(TCCLIPConfig)}
    replaced = {OFFICIAL_TO_FIELD.get(k, k) for k in yaml}
    # A setting the YAML replaces is not read from the checkpoint at all (it may be an interpolation there).
    kept = {k: v for k, v in official.items() if OFFICIAL_TO_FIELD.get(k, k) not in replaced}
    settings = official_config_to_tcclip(kept, source)
    settings.update(official_config_to_tcclip({k: v for k, v in yaml.items() if k not in ours}, str(yaml_path)))
    for key, value in yaml.items():
        if key in ours:
            if isinstance(value, str) and "${" in value:
                raise CheckpointError(f"{yaml_path}: {key!r} is an omegaconf interpolation ({value!r}); give a value")
            settings[key] = tuple(value) if isinstance(value, list) else value
    try:
        return TCCLIPConfig(**settings)
    except (TypeError, ValueError) as err:
        raise UserError(f"invalid model settings ({err})", path=yaml_path or source) from err


def convert(
    official: str | Path, out: str | Path, config: str | Path | None = None, clip_weights: str = "openai"
) -> tuple[Path, TCCLIPConfig, int]:
    """Convert `official` into `out`; returns (out, the network's config, number of tensors)."""
    from tcclip.model.factory import create_model

    official, out = Path(official), Path(out)
    state, official_cfg = load_official_checkpoint(official)
    yaml = read_yaml_settings(Path(config)) if config is not None else {}
    try:
        cfg = model_settings(official_cfg, yaml, Path(config) if config is not None else None, str(official))
    except ModelError as err:  # an interpolation, or a setting this implementation does not have
        raise as_user_error(err) from err
    try:
        model = create_model(cfg, (), clip_weights=clip_weights)
    except (OSError, RuntimeError) as err:
        raise UserError(
            f"cannot load the CLIP weights {clip_weights!r} for the token embedding table ({err})",
            fix="Pass --clip-weights with a local OpenAI / open_clip weights file.",
        ) from err
    own = model.state_dict()
    state = {**state, **{k: own[k] for k in NOT_IN_OFFICIAL if k in own}}
    try:
        check_state_dict(model, state, str(official))
    except ModelError as err:
        raise as_user_error(err) from err
    model.load_state_dict(state, strict=True)
    checkpoint = lightning_checkpoint(model)
    atomic_write(out, lambda f: torch.save(checkpoint, f), what="converted checkpoint")
    return out, cfg, len(state)
