"""Build a network from a `TCCLIPConfig` and CLIP's weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from tcclip.model.clip_backbone import load_clip_state_dict
from tcclip.model.config import TCCLIPConfig
from tcclip.model.tcclip import TCCLIP, VanillaCLIP, ViFiCLIP

__all__ = ["MODEL_CLASSES", "build_model", "create_model", "load_clip_weights"]

MODEL_CLASSES: dict[str, type[nn.Module]] = {"tc_clip": TCCLIP, "vifi_clip": ViFiCLIP, "clip": VanillaCLIP}

# OpenAI-layout CLIP names of the text tower and logit scale -> this project's names (a prefix table).
_TEXT_RENAMES = (
    ("token_embedding.", "prompt_learner.token_embedding."),
    ("positional_embedding", "text_encoder.positional_embedding"),
    ("transformer.", "text_encoder.transformer."),
    ("ln_final.", "text_encoder.ln_final."),
    ("text_projection", "text_encoder.text_projection"),
    ("logit_scale", "logit_scale"),
)


def build_model(cfg: TCCLIPConfig, class_names: Sequence[str] = ()) -> nn.Module:
    """The network of `cfg.model` with every tensor at its random initialisation (no CLIP weights)."""
    return MODEL_CLASSES[cfg.model](cfg, class_names)


def _rename_text(name: str) -> str | None:
    for old, new in _TEXT_RENAMES:
        if name == old or (old.endswith(".") and name.startswith(old)):
            return new + name[len(old) :]
    return None


@torch.no_grad()
def load_clip_weights(model: nn.Module, clip_state: Mapping[str, Tensor]) -> None:
    """Copy an OpenAI-layout CLIP state dict into `model`, then initialise the parts CLIP does not have.

    Every CLIP tensor must land somewhere and every text/vision tensor of the model that CLIP has must be
    written (checked, with the names of the offenders). After loading, the learnable prompt vectors start from the
    token embeddings of `ctx_init` and each prompt-generation layer from its CLIP text block (or stays random with
    `prompt_generation_layer_init=random`). The local-global bias keeps its own initialisation (it is not in CLIP).
    """
    own = model.state_dict()
    text: dict[str, Tensor] = {}
    unused = []
    for name, tensor in clip_state.items():
        if name.startswith("visual."):
            continue
        target = _rename_text(name)
        if target is None or target not in own:
            unused.append(name)
            continue
        if tuple(own[target].shape) != tuple(tensor.shape):
            raise ValueError(
                f"CLIP tensor {name!r} has shape {tuple(tensor.shape)} but {target!r} of the {model.cfg.arch} model "
                f"needs {tuple(own[target].shape)}: the CLIP weights are not of architecture {model.cfg.arch}"
            )
        text[target] = tensor
    if unused:
        raise ValueError(f"CLIP weights have {len(unused)} text tensors this model has no place for: {unused[:5]}")
    expected_text = {_rename_text(k) for k in _expected_text_names(model)}
    missing = sorted(expected_text - set(text))
    if missing:
        raise ValueError(f"CLIP weights lack {len(missing)} text tensors: {missing[:5]}")
    for target, tensor in text.items():
        own[target].copy_(tensor)
    model.image_encoder.load_from_clip(clip_state)
    model.prompt_learner.reset_ctx()
    model.prompt_learner.set_class_names(model.prompt_learner.class_names)  # the fixed parts come from the table
    encoder = model.text_encoder
    if encoder.levels and model.cfg.prompt_generation_layer_init == "clip":
        encoder.init_prompt_generation_from_clip()


def _expected_text_names(model: nn.Module) -> list[str]:
    """OpenAI-layout names of the text tensors the model takes from CLIP."""
    names = ["token_embedding.weight", "positional_embedding", "text_projection", "logit_scale"]
    names += ["ln_final.weight", "ln_final.bias"]
    prefix = "text_encoder.transformer."
    names += ["transformer." + k[len(prefix) :] for k in model.state_dict() if k.startswith(prefix)]
    return names


def create_model(
    cfg: TCCLIPConfig, class_names: Sequence[str] = (), clip_weights: str | Path | None = "openai"
) -> nn.Module:
    """The network of `cfg.model`, initialised from CLIP's weights.

    Args:
        cfg: the model config.
        class_names: classes of the logits (can be changed later with `set_class_names`).
        clip_weights: `"openai"` (download, cached), a local CLIP weights file (see
            `clip_backbone.load_clip_state_dict`), or None for random CLIP weights drawn from torch's RNG (tests:
            call `torch.manual_seed` first for a reproducible model).
    """
    clip_state = load_clip_state_dict(cfg.arch, clip_weights)  # first: the same seed gives the same CLIP weights
    model = build_model(cfg, class_names)
    load_clip_weights(model, clip_state)
    return model
