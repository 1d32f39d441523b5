"""The official TC-CLIP release's naming, in plain torch: its state-dict keys and its (Hydra) config keys.

An official checkpoint is a `torch.save` dict with `model` (the state dict, every key prefixed `module.` by
DistributedDataParallel) and `config` (an omegaconf DictConfig; its model settings keep the official key names).
Reading such a file safely is the job of `tcclip.training.checkpoints`; this module maps what it holds:

- `strip_official_keys`: the official state dict under this implementation's names. `prompt_learner.token_prefix` /
  `token_suffix` are left out (`IGNORED_OFFICIAL_KEYS`: they depend on the class list and are rebuilt from the class
  names), and the token embedding table, which official files lack (`NOT_IN_OFFICIAL`), comes from CLIP's weights.
- `official_config_to_tcclip`: the official config's model settings as `TCCLIPConfig` fields.
- `to_official_state_dict`: the reverse, a model's tensors as the official code would save them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from tcclip.model.errors import ModelError, WeightsError

__all__ = [
    "IGNORED_OFFICIAL_KEYS",
    "NOT_IN_OFFICIAL",
    "OFFICIAL_PREFIX",
    "official_config_to_tcclip",
    "strip_official_keys",
    "to_official_state_dict",
]

OFFICIAL_PREFIX = "module."
IGNORED_OFFICIAL_KEYS = ("prompt_learner.token_prefix", "prompt_learner.token_suffix")
"""Official tensors that depend on the class list; rebuilt from the class names instead."""
NOT_IN_OFFICIAL = ("prompt_learner.token_embedding.weight",)
"""Our tensors that official checkpoints lack; they come from CLIP's weights."""


def strip_official_keys(state: Mapping[str, Any], source: str) -> dict[str, Tensor]:
    """Drop DDP's `module.` prefix (all keys or none must have it) and the ignored class-list tensors.

    Raises:
        WeightsError: a mix of prefixed and plain keys, or an entry that is not a tensor (named, with `source`).
    """
    prefixed = [k.startswith(OFFICIAL_PREFIX) for k in state]
    if any(prefixed) and not all(prefixed):
        odd = next(k for k in state if not k.startswith(OFFICIAL_PREFIX))
        raise WeightsError(f"{source}: some keys start with {OFFICIAL_PREFIX!r} and some do not (e.g. {odd!r})")
    out = {}
    for key, value in state.items():
        name = key[len(OFFICIAL_PREFIX) :] if any(prefixed) else key
        if not isinstance(value, Tensor):
            raise WeightsError(f"{source}: model entry {key!r} is a {type(value).__name__}, not a tensor")
        if name not in IGNORED_OFFICIAL_KEYS:
            out[name] = value
    return out


def _is_interpolation(value: Any) -> bool:
    if isinstance(value, str):
        return "${" in value
    if isinstance(value, (list, tuple)):
        return any(_is_interpolation(v) for v in value)
    if isinstance(value, Mapping):
        return any(_is_interpolation(v) for v in value.values())
    return False


def _setting(config: Mapping[str, Any], key: str, source: str) -> Any:
    """`config[key]` as written (None when absent); an omegaconf interpolation is refused, never resolved.

    A config inside a downloaded file is untrusted: resolving `${oc.env:NAME}` would copy an environment variable
    into the model settings, a converted checkpoint and messages.
    """
    value = config.get(key)
    if _is_interpolation(value):
        raise ModelError(
            f"{source}: model setting {key!r} is an omegaconf interpolation ({value!r}); tcclip never resolves "
            "interpolations from a file (they can read environment variables and other files)",
            fix=f"Give {key} as a plain value in a YAML file (`tcclip convert-checkpoint ... --config model.yaml`).",
        )
    return value


# Official config keys that map one to one onto TCCLIPConfig fields (same names in both).
_SAME_NAME_KEYS = (
    "num_frames",
    "positional_embedding_type",
    "local_global_bias",
    "context_token_k",
    "seed_token_a",
    "tome_r",
    "n_ctx",
    "ctx_init",
    "context_length",
    "prompt_generation_layer_level",
    "prompt_generation_layer_init",
    "im_stop_grad",
)


def official_config_to_tcclip(config: Mapping[str, Any], source: str = "official config") -> dict[str, Any]:
    """TCCLIPConfig field overrides from an official (Hydra) config dict; keys it lacks are left to the defaults.

    Mapped: `trainer_name` (`TCCLIP` -> model `tc_clip`; `ViFiCLIP` -> `vifi_clip`, or `clip` when `zs_eval` is
    true, the official vanilla-CLIP setting), `model_arch` (`ViT-B/16` -> arch `ViT-B-16`), `parse_ucf101` ->
    `parse_class_names`, and the same-name keys `num_frames`, `positional_embedding_type`, `local_global_bias`,
    `context_token_k`, `seed_token_a`, `tome_r`, `n_ctx`, `ctx_init`, `context_length`,
    `prompt_generation_layer_level` (int or list), `prompt_generation_layer_init`, `im_stop_grad`.
    The TC-CLIP keys are read only for `TCCLIP` (ViFi-CLIP configs carry none of them).

    Values are taken as written; a setting written as an omegaconf interpolation (`${...}`) is refused.

    Raises:
        ModelError: an interpolation; a setting this implementation does not have (`tome_d` != 0: a merge count
            that changes from layer to layer; an unknown `trainer_name`).
    """
    out: dict[str, Any] = {}

    def get(key: str) -> Any:
        return _setting(config, key, source)

    trainer = get("trainer_name")
    if trainer is not None:
        if trainer == "TCCLIP":
            out["model"] = "tc_clip"
        elif trainer == "ViFiCLIP":
            out["model"] = "clip" if get("zs_eval") else "vifi_clip"
        else:
            raise ModelError(f"official trainer_name {trainer!r} is not supported (TCCLIP or ViFiCLIP)")
    if get("model_arch") is not None:
        out["arch"] = str(get("model_arch")).replace("/", "-")
    if get("parse_ucf101") is not None:
        out["parse_class_names"] = bool(get("parse_ucf101"))
    if get("num_frames") is not None:
        out["num_frames"] = int(get("num_frames"))
    if out.get("model", "tc_clip") == "tc_clip":
        if get("tome_d") not in (None, 0):
            raise ModelError(f"official tome_d={get('tome_d')} (a varying merge count) is not supported")
        for key in _SAME_NAME_KEYS:
            if get(key) is not None:
                out[key] = get(key)
        level = out.get("prompt_generation_layer_level")
        if level is not None:
            out["prompt_generation_layer_level"] = tuple(level) if isinstance(level, (list, tuple)) else (int(level),)
    elif get("context_length") is not None:
        out["context_length"] = int(get("context_length"))
    return out


def to_official_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's tensors under the official names (`module.` prefix), as the official code would save them.

    Includes the class-list tensors `token_prefix` / `token_suffix` of the current class names; leaves out the
    token embedding table (`NOT_IN_OFFICIAL`), which official checkpoints do not hold.
    """
    state = {k: v for k, v in model.state_dict().items() if k not in NOT_IN_OFFICIAL}
    state["prompt_learner.token_prefix"] = model.prompt_learner.token_prefix.detach()
    state["prompt_learner.token_suffix"] = model.prompt_learner.token_suffix.detach()
    return {OFFICIAL_PREFIX + k: v for k, v in state.items()}
