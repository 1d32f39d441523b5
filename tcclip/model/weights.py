"""Putting weights into a network, in plain torch: the strict key and shape check, the settings a set of weights
fixes (and the few an override may change), and WiSE-FT's mix of two state dicts.

Reading the weights from a file (a tcclip `.ckpt`, an official `.pth`, an exported folder) is the job of
`tcclip.training.checkpoints`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

import torch
from torch import Tensor, nn

from tcclip.model.config import TCCLIPConfig
from tcclip.model.errors import ModelError, WeightsError

__all__ = ["ALLOWED_TO_DIFFER", "check_state_dict", "config_with_overrides", "wise_ft"]

log = logging.getLogger(__name__)

ALLOWED_TO_DIFFER = frozenset({"num_frames", "context_length", "parse_class_names"})
"""Config fields an override may change relative to the weights' config: they do not change what a weight means.
(`num_frames` only with the `space` positional embedding; a `joint` table is per frame.)"""


def check_state_dict(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Exactly the model's keys, with the model's shapes.

    Raises:
        WeightsError: naming `source`, the missing, unexpected and misshaped tensors, and the settings to check.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} missing tensors ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})"
        )
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (", ..." if len(unexpected) > 5 else "")
        problems.append(f"{len(unexpected)} unexpected tensors ({shown})")
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches ({'; '.join(wrong[:5])})")
    if problems:
        cfg = getattr(model, "cfg", None)
        raise WeightsError(
            f"{source}: does not fit the {getattr(cfg, 'model', '?')} / {getattr(cfg, 'arch', '?')} model: "
            f"{'; '.join(problems)}. Check the model settings (arch, positional_embedding_type, num_frames, "
            "prompt_generation_layer_level, n_ctx, local_global_bias) against the ones the checkpoint was trained with"
        )


def config_with_overrides(config: Mapping[str, Any], overrides: Mapping[str, Any], source: str) -> TCCLIPConfig:
    """The weights' config with `overrides`; an override that contradicts it is an error (`ALLOWED_TO_DIFFER`).

    Fields the weights' config does not specify (an official config without that key) take the override freely.

    Raises:
        ModelError: an unknown setting, or one that contradicts the weights.
        ModelConfigError: a stored or overriding value of the wrong type or out of range (its key named).
    """
    names = {f.name for f in fields(TCCLIPConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ModelError(f"unknown model settings {unknown}; valid ones: {sorted(names)}")
    saved = TCCLIPConfig.from_dict(dict(config))
    wanted = saved.replace(**overrides)
    for name in overrides:
        old, new = getattr(saved, name), getattr(wanted, name)
        if old == new:
            continue
        if name not in config:
            log.info("%s: %s=%r (the checkpoint does not say)", source, name, new)
            continue
        joint_frames = name == "num_frames" and saved.positional_embedding_type == "joint"
        if name not in ALLOWED_TO_DIFFER or joint_frames:
            raise ModelError(
                f"{source}: the checkpoint was trained with {name}={old!r}, the override asks for {name}={new!r}; "
                f"drop the override (only {sorted(ALLOWED_TO_DIFFER)} may differ"
                + (", and num_frames not with a joint positional embedding)" if joint_frames else ")")
            )
        log.info("%s: %s=%r overrides the checkpoint's %r", source, name, new, old)
    return wanted


def wise_ft(
    finetuned: Mapping[str, Tensor],
    initial: Mapping[str, Tensor],
    weight: float,
    keep: Callable[[str], bool],
) -> dict[str, Tensor]:
    """WiSE-FT (Wortsman et al., CVPR 2022): (1 - weight) * initial + weight * finetuned, tensor by tensor.

    Args:
        finetuned: the fine-tuned state dict.
        initial: the state dict the fine-tuning started from (CLIP-initialised), same keys and shapes.
        weight: w in [0, 1]; 1 gives the fine-tuned model, 0 the initial one.
        keep: names that keep the fine-tuned value (`model.keeps_finetuned_in_wise_ft`).

    Non-floating tensors and tensors equal in both keep the fine-tuned value exactly. The mix is computed in
    float64 and stored in the fine-tuned tensor's dtype.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"WiSE-FT weight must be in [0, 1], got {weight}")
    missing, extra = sorted(set(finetuned) - set(initial)), sorted(set(initial) - set(finetuned))
    if missing or extra:
        raise ValueError(
            f"WiSE-FT needs the same tensors in both: only fine-tuned {missing[:5]}, only initial {extra[:5]}"
        )
    out = {}
    for name, ft in finetuned.items():
        init = initial[name]
        if tuple(ft.shape) != tuple(init.shape):
            raise ValueError(f"WiSE-FT: {name} has shape {tuple(ft.shape)} fine-tuned, {tuple(init.shape)} initial")
        init = init.to(ft.device)
        if keep(name) or not ft.is_floating_point() or torch.equal(ft, init.to(ft.dtype)):
            out[name] = ft
        else:
            out[name] = ((1.0 - weight) * init.double() + weight * ft.double()).to(ft.dtype)
    return out
