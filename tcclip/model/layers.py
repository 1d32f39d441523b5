"""Small layers shared by the vision and text towers (CLIP's LayerNorm, QuickGELU and MLP) and the fast/plain switch.

Every network computes the same function two ways (float64 agreement is tested; design in docs/model.md):

- fast (default): fused and memory-lean kernels (`tcclip.model.kernels`), the text prefix shared by all videos;
- plain: the straightforward form of the paper's equations, as the official code computes them (explicit attention
  matrices, CLIP's MLP through autograd, the whole text encoder once per video), the yardstick of the tests and the
  baseline of `benchmarks/throughput.py`.

Modules that compute differently on the two carry a boolean `fast` (like timm's `fused_attn` or nanoGPT's `flash`);
`set_fast_path(module, False)` sets it on a module and all its submodules. New modules start fast unless the
environment variable `TCCLIP_FAST_PATH=0` is set.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tcclip.model import kernels

__all__ = ["MLP", "LayerNorm", "QuickGELU", "fast_path_default", "quick_gelu", "set_fast_path"]


def fast_path_default() -> bool:
    """Whether new modules start on the fast path: yes, unless the environment sets `TCCLIP_FAST_PATH=0`."""
    value = os.environ.get("TCCLIP_FAST_PATH", "1").strip().lower()
    if value not in ("0", "1", "false", "true", "no", "yes", "off", "on"):
        raise ValueError(f"TCCLIP_FAST_PATH must be 0 or 1, got {value!r}")
    return value in ("1", "true", "yes", "on")


def set_fast_path(module: nn.Module, enabled: bool) -> None:
    """Set `fast` on `module` and every submodule that has it (see the module docstring)."""
    if not isinstance(enabled, bool):
        raise TypeError(f"set_fast_path takes True or False, got {enabled!r}")
    for m in module.modules():
        if hasattr(m, "fast"):
            m.fast = enabled


class LayerNorm(nn.LayerNorm):
    """LayerNorm in the input's dtype; fp16/bf16 inputs are normalised in fp32 (so `.double()` stays float64)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            weight = None if self.weight is None else self.weight.float()
            bias = None if self.bias is None else self.bias.float()
            return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)
        return super().forward(x)


def quick_gelu(x: Tensor) -> Tensor:
    """CLIP's activation: x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(kernels.GELU_SCALE * x)


class QuickGELU(nn.Module):
    """CLIP's activation as a module: x * sigmoid(1.702 x)."""

    def forward(self, x: Tensor) -> Tensor:
        return quick_gelu(x)


class MLP(nn.Module):
    """CLIP's MLP: `c_fc`, QuickGELU, `c_proj` (CLIP's parameter names).

    Fast: `kernels.clip_mlp` (QuickGELU as a scaled SiLU, a backward that keeps one hidden-sized tensor per token).
    """

    def __init__(self, width: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = QuickGELU()
        self.c_proj = nn.Linear(hidden, width)
        self.fast = fast_path_default()

    def forward(self, x: Tensor) -> Tensor:
        if self.fast:
            return kernels.clip_mlp(x, self.c_fc.weight, self.c_fc.bias, self.c_proj.weight, self.c_proj.bias)
        return self.c_proj(self.gelu(self.c_fc(x)))
