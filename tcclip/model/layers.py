"""Small layers shared by the vision and text towers: CLIP's LayerNorm, QuickGELU and MLP, and the execution-path
switch.

Every network can run two ways that give the same numbers (float64 agreement is tested, spec 9):

- `fast` (default): the implementation tuned for speed and memory (fused attention kernels, a memory-lean MLP
  backward, text prefix shared across the batch and cached between evaluation calls);
- `reference`: the straightforward form the official code uses (explicit attention matrices, CLIP's MLP through
  plain autograd, the full text encoder once per video), kept as a yardstick for tests and benchmarks.

Modules that behave differently on the two paths carry an `execution_path` attribute; `set_execution_path` sets it
on a module and all its children.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EXECUTION_PATHS", "MLP", "ExecutionPath", "LayerNorm", "QuickGELU", "quick_gelu", "set_execution_path"]

ExecutionPath = Literal["fast", "reference"]
EXECUTION_PATHS: tuple[str, ...] = ("fast", "reference")

_GELU_SCALE = 1.702  # QuickGELU: x * sigmoid(1.702 x), CLIP's approximation of GELU


def set_execution_path(module: nn.Module, path: ExecutionPath) -> None:
    """Set `execution_path` on `module` and every submodule that has one (see the module docstring)."""
    if path not in EXECUTION_PATHS:
        raise ValueError(f"execution path must be one of {', '.join(EXECUTION_PATHS)}, got {path!r}")
    for m in module.modules():
        if hasattr(m, "execution_path"):
            m.execution_path = path


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
    return x * torch.sigmoid(_GELU_SCALE * x)


class QuickGELU(nn.Module):
    """CLIP's activation as a module: x * sigmoid(1.702 x)."""

    def forward(self, x: Tensor) -> Tensor:
        return quick_gelu(x)


class _LeanMLPFunction(torch.autograd.Function):
    """c_proj(quick_gelu(c_fc(x))) that keeps only x and the pre-activation for the backward pass.

    Plain autograd keeps four hidden-sized tensors per token (pre-activation, sigmoid, activation, and the scaled
    copy's sigmoid input); this keeps one and recomputes the cheap activation, so an MLP costs 5 widths of stored
    activations per token instead of 13. Same numbers as autograd up to rounding order.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:  # noqa: ANN001
        hidden = F.linear(x, w1, b1)
        ctx.save_for_backward(x, hidden, w1, w2)
        return F.linear(quick_gelu(hidden), w2, b2)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # noqa: ANN001
        x, hidden, w1, w2 = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad
        sig = torch.sigmoid(_GELU_SCALE * hidden)
        act = hidden * sig  # the activation, recomputed
        grad_out_2d = grad_out.reshape(-1, grad_out.shape[-1])  # [M, D]
        grad_w2 = grad_out_2d.t() @ act.reshape(-1, act.shape[-1]) if need_w2 else None
        grad_b2 = grad_out_2d.sum(0) if need_b2 else None
        # d/dh [h * sigmoid(a h)] = sigmoid(a h) + a * h * sigmoid(a h) * (1 - sigmoid(a h)), in place on `act`.
        grad_hidden = (grad_out @ w2).mul_(act.mul_(1 - sig).mul_(_GELU_SCALE).add_(sig))  # [..., hidden]
        del act, sig
        grad_hidden_2d = grad_hidden.reshape(-1, grad_hidden.shape[-1])
        grad_w1 = grad_hidden_2d.t() @ x.reshape(-1, x.shape[-1]) if need_w1 else None
        grad_b1 = grad_hidden_2d.sum(0) if need_b1 else None
        grad_x = grad_hidden @ w1 if need_x else None
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2


class MLP(nn.Module):
    """CLIP's MLP: `c_fc`, QuickGELU, `c_proj` (CLIP's parameter names).

    On the fast path a training step keeps only the input and the pre-activation for the backward pass (see
    `_LeanMLPFunction`) and evaluation computes the activation in place; on the reference path it is plain autograd.
    """

    def __init__(self, width: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = QuickGELU()
        self.c_proj = nn.Linear(hidden, width)
        self.execution_path: ExecutionPath = "fast"

    def forward(self, x: Tensor) -> Tensor:
        if self.execution_path == "reference":
            return self.c_proj(self.gelu(self.c_fc(x)))
        params = (self.c_fc.weight, self.c_fc.bias, self.c_proj.weight, self.c_proj.bias)
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
            return _lean_mlp(x, *params)
        hidden = self.c_fc(x)
        hidden = hidden.mul_(torch.sigmoid(_GELU_SCALE * hidden))  # in place: one hidden-sized temporary, not three
        return self.c_proj(hidden)


def _lean_mlp(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """`_LeanMLPFunction` under autocast: the casts happen outside (so autograd casts the gradients back)."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        x, w1, b1, w2, b2 = (t.to(dtype) for t in (x, w1, b1, w2, b2))
        with torch.autocast(device, enabled=False):
            return _LeanMLPFunction.apply(x, w1, b1, w2, b2)
    return _LeanMLPFunction.apply(x, w1, b1, w2, b2)
