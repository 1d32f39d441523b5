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

import functools
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "EXECUTION_PATHS",
    "MLP",
    "ONEDNN_CPU_MATMULS",
    "ExecutionPath",
    "LayerNorm",
    "QuickGELU",
    "linear",
    "quick_gelu",
    "set_execution_path",
]

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


ONEDNN_CPU_MATMULS = True
"""Fast path, float32 on CPU: run the big matmuls (`linear`) as 1x1 channels-last convolutions, which torch hands to
oneDNN, instead of `F.linear`, which calls the BLAS (MKL). Same numbers up to float32 rounding. On CPUs where MKL
takes a slow code path it is about twice as fast (measured 2.2x on an AMD EPYC Zen 5, forward and backward);
elsewhere it is on par. Row counts with no suitable split into images (see `_image_split`) use `F.linear`. Set
to False to compare."""


def _onednn_images(x: Tensor) -> int:
    """How many images `x` [..., C] is split into for a oneDNN 1x1 convolution; 0: use `F.linear` instead."""
    if not (
        ONEDNN_CPU_MATMULS
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() >= 2
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
    ):
        return 0
    return _image_split(x.numel() // x.shape[-1])


@functools.lru_cache(maxsize=256)
def _image_split(rows: int) -> int:
    """The number of images to cut `rows` matrix rows into, or 0 when no split suits oneDNN.

    torch hands a 1x1 convolution to oneDNN from 16 images on (any count with several threads; the other route,
    im2col and the BLAS, is slower than `F.linear`), and oneDNN's weight gradient is fast with about 64 rows an
    image and several times slower with hundreds (measured: 16 images of 788 rows reach 1/5 of the speed of 197
    images of 64). So: the divisor of `rows` from 16 on, with at least 4 rows an image, that leaves closest to 64
    rows an image.
    """
    divisors = {d for i in range(1, math.isqrt(rows) + 1) if rows % i == 0 for d in (i, rows // i)}
    usable = [d for d in divisors if d >= 16 and rows // d >= 4]
    return min(usable, key=lambda d: (abs(rows // d - 64), -d), default=0)


def _as_image(x: Tensor, images: int) -> Tensor:
    """[..., C] -> [I, C, R / I, 1]: the same memory seen as a channels-last batch of I images (no copy)."""
    rows = x.numel() // x.shape[-1]
    return x.reshape(images, rows // images, 1, x.shape[-1]).permute(0, 3, 1, 2)


def _from_image(y: Tensor, leading: torch.Size) -> Tensor:
    """Inverse of `_as_image`: [I, C, R / I, 1] -> [*leading, C] (a view when y is channels-last)."""
    return y.permute(0, 2, 3, 1).reshape(*leading, y.shape[1])


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear`, through oneDNN on CPU in float32 (see `ONEDNN_CPU_MATMULS`); differentiable either way."""
    images = _onednn_images(x)
    if not images:
        return F.linear(x, weight, bias)
    y = F.conv2d(_as_image(x, images), weight[:, :, None, None], bias)  # 1x1 convolution = matmul over channels
    return _from_image(y, x.shape[:-1])


def _linear_grads(
    grad_out: Tensor, x: Tensor, weight: Tensor, needs: tuple[bool, bool, bool]
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of `linear(x, weight, bias)` for the input, weight and bias (None where not needed)."""
    images = _onednn_images(x)
    if images:
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            _as_image(grad_out, images), _as_image(x, images), weight[:, :, None, None], [weight.shape[0]],
            [1, 1], [0, 0], [1, 1], False, [0, 0], 1, list(needs),
        )  # fmt: skip
        return (
            _from_image(grad_x, x.shape[:-1]) if needs[0] else None,
            grad_w.view_as(weight) if needs[1] else None,
            grad_b if needs[2] else None,
        )
    grad_2d = grad_out.reshape(-1, grad_out.shape[-1])  # [M, out]
    return (
        grad_out @ weight if needs[0] else None,
        grad_2d.t() @ x.reshape(-1, x.shape[-1]) if needs[1] else None,
        grad_2d.sum(0) if needs[2] else None,
    )


class _LeanMLPFunction(torch.autograd.Function):
    """linear(silu(linear(x, w1, b1)), w2, b2) that keeps only x and the pre-activation for the backward pass.

    With w1, b1 scaled by a = 1.702 and w2 by 1/a this is CLIP's MLP, since x * sigmoid(a x) = silu(a x) / a (see
    `MLP`). Plain autograd keeps four hidden-sized tensors per token (pre-activation, its sigmoid, the activation,
    and the scaled copy); this keeps one and recomputes the activation, so an MLP costs 5 widths of stored
    activations per token instead of 13.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
        hidden = linear(x, w1, b1)
        ctx.save_for_backward(x, hidden, w1, w2)
        return linear(F.silu(hidden), w2, b2)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, hidden, w1, w2 = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad
        with torch.autocast(grad_out.device.type, enabled=False):
            act = F.silu(hidden)  # recomputed
            grad_act, grad_w2, grad_b2 = _linear_grads(grad_out.contiguous(), act, w2, (True, need_w2, need_b2))
            del act
            grad_hidden = torch.ops.aten.silu_backward(grad_act, hidden)
            del grad_act
            grad_x, grad_w1, grad_b1 = _linear_grads(grad_hidden, x, w1, (need_x, need_w1, need_b1))
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2


class MLP(nn.Module):
    """CLIP's MLP: `c_fc`, QuickGELU, `c_proj` (CLIP's parameter names).

    The fast path computes QuickGELU as silu(a h) / a with a = 1.702, folding a into c_fc and 1/a into c_proj: one
    fused activation pass instead of three (the same function; only float rounding differs). A training step
    keeps only the input and the pre-activation for the backward pass (`_LeanMLPFunction`). The reference path is
    CLIP's form through plain autograd.
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
        w1, b1, w2, b2 = _fold_gelu_scale(*params)
        return linear(F.silu(linear(x, w1, b1), inplace=True), w2, b2)


def _fold_gelu_scale(w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """c_fc scaled by a, c_proj's weight by 1/a: then c_proj(silu(c_fc(x))) is CLIP's MLP (QuickGELU)."""
    return w1 * _GELU_SCALE, b1 * _GELU_SCALE, w2 / _GELU_SCALE, b2


def _lean_mlp(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """`_LeanMLPFunction` on the folded weights; under autocast the casts happen outside (autograd casts the
    gradients back)."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        x, w1, b1, w2, b2 = (t.to(dtype) for t in (x, w1, b1, w2, b2))
        with torch.autocast(device, enabled=False):
            return _LeanMLPFunction.apply(x, *_fold_gelu_scale(w1, b1, w2, b2))
    return _LeanMLPFunction.apply(x, *_fold_gelu_scale(w1, b1, w2, b2))
