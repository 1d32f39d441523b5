"""The TC-CLIP model core: plain torch, no Lightning. It imports nothing else from tcclip, so it can be copied or
used on its own.

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
    "load_model": "tcclip.model.checkpoint",
    "save_model": "tcclip.model.checkpoint",
    "load_official_checkpoint": "tcclip.model.checkpoint",
    "official_config_to_tcclip": "tcclip.model.checkpoint",
    "to_official_state_dict": "tcclip.model.checkpoint",
    "wise_ft": "tcclip.model.checkpoint",
    "CheckpointError": "tcclip.model.checkpoint",
}

__all__ = ["CLIPCfg", "CLIPTextCfg", "CLIPVisionCfg", "TCCLIPConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tcclip.model' has no attribute {name!r}")
