"""The TC-CLIP model core: plain torch, no Lightning."""

from tcclip.model.config import CLIPCfg, CLIPTextCfg, CLIPVisionCfg, TCCLIPConfig

__all__ = ["CLIPCfg", "CLIPTextCfg", "CLIPVisionCfg", "TCCLIPConfig"]
