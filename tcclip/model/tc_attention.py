"""TC attention: every frame attends to its own tokens and to the video's context tokens.

This is the context infusion step of Temporal Contextualization (paper: "Temporal Contextualization"; see
docs/model.md for how the paper's steps map onto the code): the context tokens
that the previous layer summarised from the whole video join each frame's keys and values, with a learnable
local-global bias that weighs the frame's own keys against the context keys per head. The class token's attention
row over the frame's patches is also returned, as the informativeness score for the seed selection that follows.

Parameter names follow CLIP's attention split into `q_proj`, `k_proj`, `v_proj`, `out_proj` (the official
checkpoints' layout). Design of the fast branch: docs/model.md.

Shapes: B videos, T frames, N = 1 + P tokens per frame (class token first), K context tokens, D width, H heads,
dh = D / H.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tcclip.model import kernels
from tcclip.model.layers import fast_path_default

__all__ = ["KeysValues", "TCAttention"]


class KeysValues(NamedTuple):
    """A layer's keys and values, per head: the frames' [B, T, H, N, dh], the context's [B, H, K, dh] or None."""

    k: Tensor
    v: Tensor
    k_ctx: Tensor | None
    v_ctx: Tensor | None


class TCAttention(nn.Module):
    """Per-frame multi-head attention whose keys/values are the frame's tokens plus the video's context tokens.

    With no context tokens this is CLIP's attention, one frame at a time.

    Args:
        width: D.
        heads: H.
        local_global_bias: learn (b_local, b_global) per head, added to the frame-key and context-key logits.
    """

    def __init__(self, width: int, heads: int, local_global_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)
        if local_global_bias:
            # [H, 1, 2]: (b_local, b_global) per head; not in CLIP, so it keeps this initialisation.
            self.local_global_bias_table = nn.Parameter(torch.empty(heads, 1, 2))
            nn.init.trunc_normal_(self.local_global_bias_table, std=0.02)
        else:
            self.register_parameter("local_global_bias_table", None)
        self.fast = fast_path_default()
        """Fused kernels (`kernels.frame_attention`) instead of explicit attention matrices, where the device has
        them (else the plain form); the same function."""

    def forward(
        self, x: Tensor, context: Tensor | None = None, class_scores: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Attention output for the frame tokens, and optionally the class token's attention on the patches.

        Args:
            x: [B, T, N, D] layer-normed frame tokens (the queries, and the frame's own keys/values).
            context: [B, K, D] layer-normed context tokens (keys/values shared by all frames), or None.
            class_scores: also return the class query's attention probabilities on the frame's P patch keys,
                averaged over heads (the seed-selection score).

        Returns:
            ([B, T, N, D] output, [B, T, P] class-token scores or None).
        """
        return self.attend(x, self.keys_values(x, context), class_scores)

    def keys_values(self, x: Tensor, context: Tensor | None = None) -> KeysValues:
        """The keys and values of frame tokens x [B, T, N, D] and context tokens [B, K, D] (both layer-normed), for
        `attend`: computed once, they serve several sets of queries."""
        k, v = (self._split_heads(F.linear(x, m.weight, m.bias)) for m in (self.k_proj, self.v_proj))
        if context is None:
            return KeysValues(k, v, None, None)
        k_ctx, v_ctx = (self._split_heads(F.linear(context, m.weight, m.bias)) for m in (self.k_proj, self.v_proj))
        return KeysValues(k, v, k_ctx, v_ctx)  # [B, T, H, N, dh] and the context's [B, H, K, dh]

    def attend(self, queries: Tensor, kv: KeysValues, class_scores: bool = False) -> tuple[Tensor, Tensor | None]:
        """`forward` for some rows only: queries [B, T, M, D] (layer-normed; each attends to its frame's keys and the
        context like a row of x) -> ([B, T, M, D] output, [B, T, P] scores of the class query, row 0, or None)."""
        q = self._split_heads(F.linear(queries, self.q_proj.weight, self.q_proj.bias))
        k, v, k_ctx, v_ctx = kv
        scale = q.shape[-1] ** -0.5
        if self.fast and (k_ctx is None or kernels.split_context_supported(q)):
            out, scores = kernels.frame_attention(
                q, k, v, k_ctx, v_ctx, self.local_global_bias_table, scale, class_scores
            )
        else:
            n, t = k.shape[-2], k.shape[1]
            logits = (q * scale) @ k.transpose(-2, -1)  # [B, T, H, M, N] each frame on its own keys
            if k_ctx is not None:
                logits_ctx = (q * scale) @ k_ctx[:, None].transpose(-2, -1)  # [B, T, H, M, K] on the context keys
                if self.local_global_bias_table is not None:
                    b_local, b_global = self.local_global_bias_table.to(q.dtype).unbind(-1)  # [H, 1] each
                    logits, logits_ctx = logits + b_local[:, None], logits_ctx + b_global[:, None]
                logits = torch.cat([logits, logits_ctx], dim=-1)  # [B, T, H, M, N + K]
                v = torch.cat([v, v_ctx[:, None].expand(-1, t, -1, -1, -1)], dim=-2)  # [B, T, H, N + K, dh]
            probs = logits.softmax(dim=-1)
            out = probs @ v  # [B, T, H, M, dh]
            scores = probs[..., 0, 1:n].mean(dim=2).detach() if class_scores else None  # class row on the patches
        return F.linear(out.transpose(-3, -2).flatten(-2), self.out_proj.weight, self.out_proj.bias), scores

    def _split_heads(self, x: Tensor) -> Tensor:
        """[..., M, D] -> [..., H, M, dh] (a view)."""
        return x.unflatten(-1, (self.heads, -1)).transpose(-3, -2)
