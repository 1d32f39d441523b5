"""Kernels of the fast path: the same functions as the plain forms in the modules, computed faster or leaner.

Nothing here states an idea of the paper; each function is checked against its plain form in float64 (design:
docs/model.md, "One switch: fast or plain"). What is here:

- `clip_mlp`: CLIP's MLP with QuickGELU as a scaled SiLU and a backward pass that keeps one hidden-sized tensor.
- `frame_attention`: TC attention (each frame's queries over [its own keys ; the video's context keys], with the
  local-global bias), without copying the context keys next to every frame's, through fused kernels that return
  the log-sum-exp (CPU: flash attention; CUDA: memory-efficient attention; `split_context_supported` says where).

Shapes: B videos, T frames, H heads, N tokens per frame (class token first), K context tokens, dh head width.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "GELU_SCALE",
    "clip_mlp",
    "frame_attention",
    "split_context_attention",
    "split_context_supported",
]

GELU_SCALE = 1.702
"""QuickGELU: x * sigmoid(1.702 x), CLIP's approximation of GELU."""


# -- CLIP's MLP ------------------------------------------------------------------------------------------------------
def _scaled_mm(a: Tensor, b: Tensor, alpha: float) -> Tensor:
    """alpha * (a @ b) with the scale applied inside the matrix product (no pass over the result)."""
    return torch.addmm(a.new_zeros(()), a, b, beta=0, alpha=alpha)


class _LeanMLPFunction(torch.autograd.Function):
    """CLIP's MLP on rows x [M, D] that keeps only x and the pre-activation for the backward pass.

    With a = 1.702, x * sigmoid(a x) = silu(a x) / a: the MLP is c_proj(silu(z)) / a with z = a * c_fc(x), the two
    scales applied inside the matrix products. Plain autograd keeps four hidden-sized tensors per token
    (pre-activation, its sigmoid, the activation, and the scaled copy); this keeps one and recomputes the
    activation, so an MLP costs 5 widths of stored activations per token instead of 13.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
        z = torch.addmm(b1 * GELU_SCALE, x, w1.t(), alpha=GELU_SCALE)
        ctx.save_for_backward(x, z, w1, w2)
        return torch.addmm(b2, F.silu(z), w2.t(), alpha=1 / GELU_SCALE)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, z, w1, w2 = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad
        with torch.autocast(grad_out.device.type, enabled=False):
            g = grad_out.contiguous()
            act = F.silu(z)  # recomputed
            grad_w2 = _scaled_mm(g.t(), act, 1 / GELU_SCALE) if need_w2 else None
            del act
            grad_z = torch.ops.aten.silu_backward(_scaled_mm(g, w2, 1 / GELU_SCALE), z)
            grad_x = _scaled_mm(grad_z, w1, GELU_SCALE) if need_x else None
            grad_w1 = _scaled_mm(grad_z.t(), x, GELU_SCALE) if need_w1 else None
            grad_b1 = grad_z.sum(0) * GELU_SCALE if need_b1 else None
        return grad_x, grad_w1, grad_b1, grad_w2, g.sum(0) if need_b2 else None


def clip_mlp(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """CLIP's MLP `c_proj(quick_gelu(c_fc(x)))` as c_proj(silu(a c_fc(x))) / a, the scales inside the matrix
    products (one activation pass instead of three); when gradients are recorded, through `_LeanMLPFunction`. Under
    autocast the casts happen here (autograd casts the gradients back to the parameters' dtype)."""
    rows = x.reshape(-1, x.shape[-1])
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, w1, b1, w2, b2))):
        hidden = F.silu(torch.addmm(b1 * GELU_SCALE, rows, w1.t(), alpha=GELU_SCALE), inplace=True)
        return torch.addmm(b2, hidden, w2.t(), alpha=1 / GELU_SCALE).reshape(*x.shape[:-1], -1)
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        rows, w1, b1, w2, b2 = (t.to(dtype) for t in (rows, w1, b1, w2, b2))
        with torch.autocast(device, enabled=False):
            return _LeanMLPFunction.apply(rows, w1, b1, w2, b2).reshape(*x.shape[:-1], -1)
    return _LeanMLPFunction.apply(rows, w1, b1, w2, b2).reshape(*x.shape[:-1], -1)


# -- TC attention ----------------------------------------------------------------------------------------------------
class _Part(NamedTuple):
    """One fused attention call's result, for queries [..., L, dh]."""

    out: Tensor
    """[..., L, dh] the attention output."""
    lse: Tensor
    """[..., L] the log-sum-exp of each query's logits (float32, or float64 for float64 inputs)."""
    state: tuple[Tensor, ...]
    """Tensors the backward kernel needs besides the inputs, output and log-sum-exp."""
    lse_rows: int
    """Rows of the kernel's own log-sum-exp (L, or L padded), the layout its backward kernel reads."""


def _cpu_forward(q: Tensor, k: Tensor, v: Tensor, scale: float) -> _Part:
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=scale)
    return _Part(out, lse, (), lse.shape[-1])


def _cpu_backward(g, q, k, v, out, lse, state: tuple[Tensor, ...], lse_rows: int, scale: float):
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        g, q, k, v, out, lse, 0.0, False, scale=scale
    )


_EFFICIENT_OPS = (
    torch.ops.aten._scaled_dot_product_efficient_attention,
    torch.ops.aten._scaled_dot_product_efficient_attention_backward,
)
"""CUDA's memory-efficient attention and its backward (the tests put plain-math stand-ins here to run the CUDA
wrappers on the CPU)."""


def _cuda_forward(q: Tensor, k: Tensor, v: Tensor, scale: float) -> _Part:
    out, lse, seed, offset = _EFFICIENT_OPS[0](q, k, v, None, True, 0.0, False, scale=scale)
    # The kernel pads the log-sum-exp to a multiple of 32 rows (not on ROCm); its backward reads that layout.
    return _Part(out, lse[..., : q.shape[-2]], (seed, offset), lse.shape[-1])


def _cuda_backward(g, q, k, v, out, lse, state: tuple[Tensor, ...], lse_rows: int, scale: float):
    seed, offset = state
    lse = F.pad(lse, (0, lse_rows - lse.shape[-1])).contiguous()
    gq, gk, gv, _ = _EFFICIENT_OPS[1](
        g, q, k, v, None, out, lse, seed, offset, 0.0, [True, True, True, False], False, scale=scale
    )
    return gq, gk, gv


class _Kernel(NamedTuple):
    forward: Callable[[Tensor, Tensor, Tensor, float], _Part]
    backward: Callable[..., tuple[Tensor, Tensor, Tensor]]


_KERNELS = {"cpu": _Kernel(_cpu_forward, _cpu_backward), "cuda": _Kernel(_cuda_forward, _cuda_backward)}
"""Per device: a fused attention that returns its log-sum-exp, and the backward kernel that takes it back."""


def split_context_supported(q: Tensor) -> bool:
    """Whether `split_context_attention` has kernels for queries like `q` (device, dtype, head width)."""
    if q.device.type not in _KERNELS:
        return False
    if q.device.type == "cuda":  # memory-efficient attention: half, bfloat16 and float32; 8-aligned head widths
        return q.dtype in (torch.float16, torch.bfloat16, torch.float32) and q.shape[-1] % 8 == 0
    return q.dtype.is_floating_point


def _per_video(x: Tensor) -> Tensor:
    """[B, T, H, N, ...] -> [B, H, T*N, ...]: every query of a video in one sequence."""
    return x.transpose(1, 2).flatten(2, 3)


def _per_frame(x: Tensor, t: int) -> Tensor:
    """Inverse of `_per_video`: [B, H, T*N, ...] -> [B, T, H, N, ...]."""
    return x.unflatten(2, (t, -1)).transpose(1, 2)


def merge_parts(o1: Tensor, l1: Tensor, o2: Tensor, l2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Softmax attention over the union of two key sets from the attention over each set.

    With log-sum-exps l1, l2 of the two parts' logits, the union's is l = logaddexp(l1, l2), and its output is
    o1 * exp(l1 - l) + o2 * exp(l2 - l) = o1 + w2 * (o2 - o1) with w2 = exp(l2 - l).

    Args:
        o1, o2: [..., L, dh] the parts' outputs.
        l1, l2: [..., L] their log-sum-exps.

    Returns:
        (output [..., L, dh] in the log-sum-exps' dtype, log-sum-exp [..., L], w2 [..., L]).
    """
    lse = torch.logaddexp(l1, l2)
    w2 = (l2 - lse).exp()
    return torch.lerp(o1.to(lse.dtype), o2.to(lse.dtype), w2[..., None]), lse, w2


class _SplitContextAttention(torch.autograd.Function):
    """`split_context_attention` with its backward pass through the fused backward kernels.

    Backward: the backward kernel of one part, given the merged output and log-sum-exp, yields exactly that part's
    share of the gradients (its probabilities are exp(logit - l), and the row term dO.O is the merged one). The
    shift's gradient follows from the context values' gradient and w2 (see `backward`), so nothing is recomputed
    and only w2 ([B, T, H, N]) is kept besides the inputs, output and log-sum-exp.
    """

    @staticmethod
    def forward(ctx, q, k, v, k_ctx, v_ctx, shift, scale):
        kernel = _KERNELS[q.device.type]
        t = q.shape[1]
        with torch.autocast(q.device.type, enabled=False):
            own = kernel.forward(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), scale)  # B*T frames
            ctx_part = kernel.forward(_per_video(q), k_ctx, v_ctx, scale)  # B videos, T*N queries each
            l2 = _per_frame(ctx_part.lse, t)
            if shift is not None:
                l2 = l2 + shift.to(l2.dtype)[:, None]
            out, lse, w2 = merge_parts(own.out.unflatten(0, q.shape[:2]), own.lse.unflatten(0, q.shape[:2]),
                                       _per_frame(ctx_part.out, t), l2)  # fmt: skip
            out = out.to(q.dtype)
        ctx.save_for_backward(
            q, k, v, k_ctx, v_ctx, shift, out, lse, w2 if ctx.needs_input_grad[5] else None, *own.state, *ctx_part.state
        )
        ctx.lse_rows = (own.lse_rows, ctx_part.lse_rows)
        ctx.scale = scale
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, _grad_lse):
        q, k, v, k_ctx, v_ctx, shift, out, lse, w2, *states = ctx.saved_tensors
        kernel = _KERNELS[q.device.type]
        own_state, ctx_state = states[: len(states) // 2], states[len(states) // 2 :]
        own_rows, ctx_rows = ctx.lse_rows
        scale = ctx.scale
        b, t = q.shape[:2]
        with torch.autocast(q.device.type, enabled=False):
            g = grad_out.contiguous()
            gq, gk, gv = kernel.backward(
                g.flatten(0, 1), q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), out.flatten(0, 1),
                lse.flatten(0, 1), own_state, own_rows, scale,
            )  # fmt: skip
            lse_ctx = lse if shift is None else lse - shift.to(lse.dtype)[:, None]  # the part's own logits
            gq_ctx, gk_ctx, gv_ctx = kernel.backward(
                _per_video(g).contiguous(), _per_video(q), k_ctx, v_ctx, _per_video(out).contiguous(),
                _per_video(lse_ctx).contiguous(), ctx_state, ctx_rows, scale,
            )  # fmt: skip
            grad_q = gq.unflatten(0, (b, t)) + _per_frame(gq_ctx, t)
            grad_shift = None
            if w2 is not None:
                # d shift = sum over queries i and context keys j of dS_ij = P_ij (dO_i.v_j - dO_i.O_i), per head;
                # sum_ij P_ij dO_i.v_j = sum_j v_j.dv_j and sum_j P_ij = w2_i.
                dot_out = (g * out).sum(-1, dtype=lse.dtype)  # [B, T, H, N]
                through_values = (v_ctx * gv_ctx).sum((0, 2, 3), dtype=lse.dtype)  # [H]
                grad_shift = (through_values - (w2 * dot_out).sum((0, 1, 3))).to(shift.dtype)
        return grad_q, gk.unflatten(0, (b, t)), gv.unflatten(0, (b, t)), gk_ctx, gv_ctx, grad_shift, None


def split_context_attention(
    q: Tensor, k: Tensor, v: Tensor, k_ctx: Tensor, v_ctx: Tensor, shift: Tensor | None, scale: float
) -> tuple[Tensor, Tensor]:
    """Each frame's queries over [its own keys ; the video's context keys] in two fused calls, never copying the
    context keys per frame.

    Part 1: frame t's N queries on its N keys (one call over B*T frames). Part 2: all T*N queries of a video on its
    K context keys (one call over B videos). `merge_parts` combines them through their log-sum-exps; `shift` is
    added to the context part's log-sum-exp, which is the same as adding it to every context logit.

    Args:
        q, k, v: [B, T, H, N, dh].
        k_ctx, v_ctx: [B, H, K, dh].
        shift: [H] added to the context logits, or None.
        scale: logit scale.

    Returns:
        (attention output [B, T, H, N, dh], log-sum-exp over all N + K logits [B, T, H, N], no gradient).
    """
    return _SplitContextAttention.apply(q, k, v, k_ctx, v_ctx, shift, scale)


def frame_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_ctx: Tensor | None,
    v_ctx: Tensor | None,
    bias_table: Tensor | None,
    scale: float,
    class_scores: bool,
) -> tuple[Tensor, Tensor | None]:
    """The fast TC attention: what `TCAttention`'s plain branch computes, through fused kernels (with context
    tokens only where `split_context_supported(q)`).

    Args:
        q, k, v: [B, T, H, N, dh] the frames' queries, keys, values.
        k_ctx, v_ctx: [B, H, K, dh] the video's context keys/values, or None.
        bias_table: [H, 1, 2] (b_local, b_global) per head, or None.
        scale: logit scale.
        class_scores: also return the class query's head-averaged probabilities on the P patch keys [B, T, P].

    Returns:
        ([B, T, H, N, dh] output, [B, T, P] class-token scores or None). The scores carry no gradient: only their
        ranking is used (the seeds are indices).
    """
    if k_ctx is None:  # layer 0: each frame on its own keys
        out = F.scaled_dot_product_attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), scale=scale)
        out = out.unflatten(0, q.shape[:2])
        if not class_scores:
            return out, None
        with torch.no_grad():
            return out, _class_logits(q, k, scale).softmax(dim=-1)[..., 1:].mean(dim=2)
    # Only b_global - b_local matters: a shift shared by all keys of a query leaves the softmax unchanged.
    shift = None if bias_table is None else bias_table[:, 0, 1] - bias_table[:, 0, 0]  # [H]
    out, lse = split_context_attention(q, k, v, k_ctx, v_ctx, shift, scale)
    if not class_scores:
        return out, None
    with torch.no_grad():  # p(class query -> patch j) = exp(logit - lse), the frame keys carrying no shift
        logits = _class_logits(q, k, scale)[..., 1:]  # [B, T, H, P]
        return out, (logits - lse[..., :1].to(logits.dtype)).exp().mean(dim=2)


def _class_logits(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """The class query's (row 0 of q) logits on every key of its frame, [B, T, H, N].

    One product per frame of the keys [N, D], in the layout their projection wrote them, with a block-diagonal
    [D, H] matrix of the class query's heads: the same sums, without copying the keys into per-head matrices.
    """
    heads = q.shape[2]
    keys = k.transpose(2, 3).flatten(-2)  # [B, T, N, D], a view of the projection's output
    eye = torch.eye(heads, dtype=q.dtype, device=q.device)
    blocks = (q[:, :, :, 0, :, None] * eye[:, None, :]).flatten(2, 3)  # [B, T, D, H]: head h's query in column h
    return (keys @ blocks).transpose(-2, -1) * scale
