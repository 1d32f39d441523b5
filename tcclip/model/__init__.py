"""The TC-CLIP model core: plain torch, no Lightning. It imports nothing else from tcclip, so it can be copied or
used on its own.

It owns the network (`tcclip`, `vision`, `text`, `tc_attention`, `token_merging`, `prompting`, `layers`, `kernels`),
its settings (`config`), building it (`factory`, `clip_backbone`), the official release's names (`official`),
putting weights into it and WiSE-FT (`weights`), and its errors (`errors`: `ValueError`s the layers above present as
user errors). May import: torch, open_clip and the standard library; nothing else from tcclip, and no Lightning,
argparse, jsonargparse or rich. Reading checkpoint files is `tcclip.training.checkpoints` (`tcclip.load_model`).

The config classes import without torch; the rest is imported on first use (`from tcclip.model import
create_model` works as usual).
"""

from __future__ import annotations

import importlib
from typing import Any

from tcclip.model.config import CLIPCfg, CLIPTextCfg, CLIPVisionCfg, TCCLIPConfig

# public name -> module that defines it
_LAZY = {
    "TCCLIP": "tcclip.model.tcclip",
    "ViFiCLIP": "tcclip.model.tcclip",
    "VanillaCLIP": "tcclip.model.tcclip",
    "create_model": "tcclip.model.factory",
    "build_model": "tcclip.model.factory",
    "load_clip_weights": "tcclip.model.factory",
    "process_class_name": "tcclip.model.prompting",
    "PromptLearner": "tcclip.model.prompting",
    "VPTextEncoder": "tcclip.model.text",
    "TCAttention": "tcclip.model.tc_attention",
    "set_fast_path": "tcclip.model.layers",
    "official_config_to_tcclip": "tcclip.model.official",
    "to_official_state_dict": "tcclip.model.official",
    "check_state_dict": "tcclip.model.weights",
    "wise_ft": "tcclip.model.weights",
    "ModelError": "tcclip.model.errors",
    "ModelConfigError": "tcclip.model.errors",
    "WeightsError": "tcclip.model.errors",
}

# Names the model core no longer has (checkpoint files are read and written by tcclip.training), and where they are.
_MOVED = {
    "load_model": "tcclip.load_model",
    "save_model": "tcclip.training.checkpoints.save_model",
    "load_official_checkpoint": "tcclip.training.checkpoints.load_official_checkpoint",
    "CheckpointError": "tcclip.training.checkpoints.CheckpointError",
}

__all__ = ["CLIPCfg", "CLIPTextCfg", "CLIPVisionCfg", "TCCLIPConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _MOVED:
        raise AttributeError(
            f"module 'tcclip.model' has no attribute {name!r}: checkpoint files are read and written outside the "
            f"model core; use {_MOVED[name]}"
        )
    raise AttributeError(f"module 'tcclip.model' has no attribute {name!r}")
