"""The network a `TCCLIPModule` trains: built from its config and CLIP weights, started from a TC-CLIP checkpoint,
partly frozen, pointed at a class list, and fused with CLIP for WiSE-FT."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from tcclip.model.config import TCCLIPConfig
from tcclip.model.factory import create_model
from tcclip.model.weights import wise_ft
from tcclip.training.checkpoints import read_checkpoint
from tcclip.utils.errors import ConfigError, UserError

log = logging.getLogger(__name__)

RANDOM_CLIP_SEED = 0
"""Random CLIP weights (`clip_weights: null`) are drawn from this seed, so that WiSE-FT can rebuild them."""
# Official checkpoints do not store the token-embedding table (it comes from CLIP's weights).
_NOT_IN_OFFICIAL_CHECKPOINTS = frozenset({"prompt_learner.token_embedding.weight"})


def build_network(cfg: TCCLIPConfig, clip_weights: str | None) -> nn.Module:
    """`create_model` with no class names yet; random CLIP weights come from `RANDOM_CLIP_SEED`."""
    if clip_weights is not None:
        try:
            return create_model(cfg, (), clip_weights=clip_weights)
        except UserError:
            raise
        except (ValueError, OSError) as err:  # not a weights file, the wrong architecture, a failed download
            raise ConfigError(
                "model.clip_weights",
                f"cannot use {clip_weights!r}: {str(err).splitlines()[0][:400]}",
                fix="Give model.clip_weights 'openai', the path of OpenAI / open_clip weights for "
                f"{cfg.arch}, or null (random weights).",
            ) from err
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_CLIP_SEED)
        return create_model(cfg, (), clip_weights=None)


def freeze(model: nn.Module, image: bool, text: bool) -> None:
    """Freeze the CLIP image and / or text encoder; TC-CLIP's own parts stay trainable, `logit_scale` freezes with
    both encoders."""
    for name, param in model.named_parameters():
        if model.keeps_finetuned_in_wise_ft(name):
            continue  # TC-CLIP's own parts (local-global bias, prompts) stay trainable
        if (image and name.startswith("image_encoder.")) or (text and name.startswith("text_encoder.")):
            param.requires_grad_(False)
        elif image and text and name == "logit_scale":
            param.requires_grad_(False)


def use_class_names(model: nn.Module, names: Sequence[str]) -> None:
    """Point the network at a class list (cheap when unchanged: the model rebuilds its prompts only on change)."""
    if list(model.class_names) != list(names):
        model.set_class_names(list(names))


def need_two_classes(names: Sequence[str], what: str) -> None:
    """A classifier of one class is always right: its accuracy (and torchmetrics) mean nothing."""
    if len(names) < 2:
        raise UserError(
            f"{what} has {len(names)} class(es) ({', '.join(map(repr, names[:1])) or 'none'}); classification needs "
            "at least two",
            fix="Check the label file and video lists of data.init_args (root, splits): every split should cover "
            "two or more classes.",
        )


def read_init_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Network weights from an official TC-CLIP `.pth` or one of our `.ckpt` files (keys without prefix, all finite)."""
    return read_checkpoint(path).state_dict


def load_init_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a TC-CLIP checkpoint into `model`; only the token-embedding table may be absent (it comes from CLIP)."""
    state = read_init_state_dict(path)
    result = model.load_state_dict(state, strict=False)
    missing = set(result.missing_keys) - _NOT_IN_OFFICIAL_CHECKPOINTS
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{path}: does not match the configured network (model.model_config). "
            f"Missing: {sorted(missing)[:8]}; unexpected: {sorted(result.unexpected_keys)[:8]}. "
            "Fix: use the model_config the checkpoint was trained with."
        )
    log.info("initialised the network from %s", path)


def wise_ft_network(model: nn.Module, cfg: TCCLIPConfig, clip_weights: str | None, weight: float) -> nn.Module:
    """A copy of `model` with weights (1 - w) * CLIP + w * fine-tuned (TC-CLIP additions kept fine-tuned), in eval
    mode (Wortsman et al., CVPR 2022)."""
    clip_state = build_network(cfg, clip_weights).state_dict()
    fused = wise_ft(model.state_dict(), clip_state, weight, keep=model.keeps_finetuned_in_wise_ft)
    wise = copy.deepcopy(model)
    wise.load_state_dict(fused)
    return wise.eval()
