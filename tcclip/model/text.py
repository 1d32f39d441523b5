"""CLIP's text tower with video-conditional prompting between its blocks (paper: "Video-conditional Prompting").

Plain (`fast=False`): for each video in turn, every class prompt runs every block at its full length, the prompt
vectors rewritten from that video's context tokens before each prompt-generation level (`_forward_plain`).

Fast (default), the same numbers with the work that the causal mask makes redundant left out:
- the first S = 1 + n_ctx positions (start token and prompt vectors) see only each other, so they are the same in
  every class's prompt: they run once (the "head", [1, S, W], and from the first prompt-generation level on one
  per video, [B, S, W]), and the rest of each prompt (the "tail", [C, M, W]) attends to the head as extra keys
  (`TextBlock.forward_shared_head`);
- the blocks before the first prompt-generation level see only the class prompts, never the video, so they run
  once for all videos (`encode_prefix`; the model caches its result between no-grad calls, see `TCCLIP`); the
  others run per video (`encode_rest`);
- the last block computes only each prompt's end-token row, the only one read out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tcclip.model.config import CLIPTextCfg
from tcclip.model.layers import MLP, LayerNorm, fast_path_default
from tcclip.model.prompting import PromptGenerationLayer

__all__ = ["SharedPrompts", "TextBlock", "TextTransformer", "VPTextEncoder", "causal_mask"]


class SharedPrompts(NamedTuple):
    """Hidden states of the class prompts on the fast path: the positions every prompt shares, and the rest."""

    head: Tensor
    """[1 or B, S, W] positions 0..S-1 (start token and prompt vectors), one copy (per video once they depend on it)."""
    tail: Tensor
    """[1 or B, C, M, W] positions S.. of each class prompt."""


def causal_mask(length: int, device: torch.device | None = None) -> Tensor:
    """Boolean [length, length] mask, True where attention is not allowed (a key after the query)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu_(1)


class TextBlock(nn.Module):
    """CLIP's causal residual attention block (pre-norm, QuickGELU MLP)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio)
        self.ln_2 = LayerNorm(width)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask, is_causal=True)[0]
        return x + self.mlp(self.ln_2(x))

    def forward_shared_head(self, head: Tensor, tail: Tensor, end: Tensor | None) -> tuple[Tensor | None, Tensor]:
        """The block on prompts whose first S positions are the same in every class (the same numbers as `forward`
        on the whole prompts, under the causal mask).

        Args:
            head: [B, S, W] the shared positions, one copy per video.
            tail: [B or 1, C, M, W] positions S.. of every class prompt (1: the same for every video so far).
            end: None for every row, or [C] the position of each prompt's end token within the tail: then only
                that row is computed (a last block, whose other rows nobody reads).

        Returns:
            (the new head [B, S, W], or None when `end` is given; the new tail [B, C, M, W], or [B, C, W] at `end`).
        """
        batch, shared, width = head.shape
        num_classes, length = tail.shape[1], tail.shape[2]
        w_q, w_k, w_v = self.attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.attn.in_proj_bias.chunk(3)
        heads = self.attn.num_heads

        def split(x: Tensor) -> Tensor:  # [..., L, W] -> [..., H, L, dh]
            return x.unflatten(-1, (heads, -1)).transpose(-3, -2)

        h_head, h_tail = self.ln_1(head), self.ln_1(tail)
        k_head, v_head = split(F.linear(h_head, w_k, b_k)), split(F.linear(h_head, w_v, b_v))  # [B, H, S, dh]
        k_tail, v_tail = split(F.linear(h_tail, w_k, b_k)), split(F.linear(h_tail, w_v, b_v))  # [B', C, H, M, dh]
        # Every tail row sees the whole head and the tail causally: keys [head ; tail] per video and class.
        keys = torch.cat(
            [k_head[:, None].expand(-1, num_classes, -1, -1, -1), k_tail.expand(batch, -1, -1, -1, -1)], -2
        )
        values = torch.cat(
            [v_head[:, None].expand(-1, num_classes, -1, -1, -1), v_tail.expand(batch, -1, -1, -1, -1)], -2
        )
        visible = torch.ones(length, length, dtype=torch.bool, device=tail.device).tril_()  # [M, M], True: attend
        if end is None:
            rows, h_rows = tail, h_tail
        else:
            classes = torch.arange(num_classes, device=tail.device)
            rows, h_rows = tail[:, classes, end, None], h_tail[:, classes, end, None]  # [B', C, 1, W]
            visible = visible[end, None]  # [C, 1, M]
        mask = torch.cat([visible.new_ones(*visible.shape[:-1], shared), visible], -1)  # [..., S + M]
        q = split(F.linear(h_rows, w_q, b_q)).expand(batch, -1, -1, -1, -1)  # [B, C, H, M or 1, dh]
        mask = mask[:, None] if end is not None else mask  # [C, 1, 1, S + M] or [M, S + M]
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        rows = rows + self.attn.out_proj(out.transpose(-3, -2).flatten(-2))  # [B, C, M or 1, W]
        rows = rows + self.mlp(self.ln_2(rows))
        if end is not None:
            return None, rows.squeeze(-2)
        head_out = F.scaled_dot_product_attention(split(F.linear(h_head, w_q, b_q)), k_head, v_head, is_causal=True)
        head = head + self.attn.out_proj(head_out.transpose(-3, -2).flatten(-2))
        return head + self.mlp(self.ln_2(head)), rows


class TextTransformer(nn.Module):
    """Holds the text blocks under the name `resblocks`, as CLIP and the official checkpoints do."""

    def __init__(self, width: int, heads: int, layers: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([TextBlock(width, heads, mlp_ratio) for _ in range(layers)])


class VPTextEncoder(nn.Module):
    """CLIP's text tower with video-conditional prompting before the blocks named by `prompt_generation_levels`.

    With no levels it is CLIP's plain text encoder (ViFi-CLIP, vanilla CLIP).

    Args:
        text: CLIP text tower config.
        embed_dim: joint embedding width E (the context tokens arrive in E dimensions).
        n_ctx: number of learnable prompt positions (1..n_ctx) that the prompt generation rewrites.
        prompt_generation_levels: 1-based text block indices; level j runs before block index j-1.
        im_stop_grad: no gradient from the text side into the context tokens.
    """

    def __init__(
        self,
        text: CLIPTextCfg,
        embed_dim: int,
        *,
        n_ctx: int = 0,
        prompt_generation_levels: Sequence[int] = (),
        im_stop_grad: bool = True,
    ) -> None:
        super().__init__()
        levels = tuple(prompt_generation_levels)
        if levels and max(levels) > text.layers:
            raise ValueError(
                f"prompt_generation_layer_level {list(levels)} goes beyond the {text.layers} text blocks of this CLIP; "
                f"use levels in 1..{text.layers}, e.g. prompt_generation_layer_level=[{text.layers}] for the last block"
            )
        if levels and n_ctx < 1:
            raise ValueError("video-conditional prompting needs n_ctx >= 1 learnable prompt positions")
        self.n_ctx = n_ctx
        self.levels = levels
        self.im_stop_grad = im_stop_grad
        self.positional_embedding = nn.Parameter(torch.empty(text.context_length, text.width))
        self.transformer = TextTransformer(text.width, text.heads, text.layers, text.mlp_ratio)
        self.ln_final = LayerNorm(text.width)
        self.text_projection = nn.Parameter(torch.empty(text.width, embed_dim))
        if levels:
            self.prompt_generation_layer = nn.ModuleList(
                [PromptGenerationLayer(text.width, text.heads, embed_dim, text.mlp_ratio) for _ in levels]
            )
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=text.width**-0.5)
        self.fast = fast_path_default()
        """Share the video-independent blocks and compute only the rows that matter (see the module docstring)."""

    @property
    def num_prefix_blocks(self) -> int:
        """Blocks that run before the first prompt-generation level (all of them without levels)."""
        return self.levels[0] - 1 if self.levels else len(self.transformer.resblocks)

    def prefix_tensors(self) -> list[Tensor]:
        """The parameters that `encode_prefix` reads (to key a cache on)."""
        tensors = [self.positional_embedding]
        for block in self.transformer.resblocks[: self.num_prefix_blocks]:
            tensors.extend(block.parameters())
        return tensors

    @torch.no_grad()
    def init_prompt_generation_from_clip(self) -> None:
        """Copy CLIP text block (level-1) into each prompt-generation layer (`prompt_generation_layer_init=clip`)."""
        for layer, level in zip(self.prompt_generation_layer if self.levels else [], self.levels, strict=True):
            layer.init_from_text_block(self.transformer.resblocks[level - 1])

    def encode_prefix(self, prompts: Tensor) -> SharedPrompts:
        """Prompt embeddings [C, L, W] -> their hidden states after the video-independent blocks."""
        shared = 1 + self.n_ctx
        x = prompts + self.positional_embedding[: prompts.shape[1]]
        head, tail = x[:1, :shared], x[None, :, shared:]  # every prompt's first S rows are the same: keep one
        for block in self.transformer.resblocks[: self.num_prefix_blocks]:
            head, tail = block.forward_shared_head(head, tail, None)
        return SharedPrompts(head, tail)

    def encode_rest(
        self, prefix: SharedPrompts, tokenized_prompts: Tensor, context_tokens: Sequence[Tensor] | None = None
    ) -> Tensor:
        """Finish the fast text encoder from `encode_prefix`'s output (shared by all videos): the blocks from the
        first prompt-generation level on, the shared head once per video (see the module docstring).

        Args:
            prefix: the hidden states after the prefix blocks.
            tokenized_prompts: [C, context_length] token ids (the end token has the largest id).
            context_tokens: one [B, K, E] tensor per prompt-generation level, in level order.

        Returns:
            Text features [B, C, E] with levels, [C, E] without.
        """
        head, tail = prefix
        shared = head.shape[1]
        end = tokenized_prompts.argmax(dim=-1).to(tail.device) - shared  # [C] the end token's row in the tail
        if int(end.min()) < 0:
            raise ValueError(f"a prompt ends at position {int(end.min()) + shared}, inside the {shared} shared ones")
        if not self.levels:
            return self.ln_final(tail[0, torch.arange(tail.shape[1], device=tail.device), end]) @ self.text_projection
        self._check_context(context_tokens)
        batch = context_tokens[0].shape[0]
        blocks = self.transformer.resblocks
        level_index = {level - 1: m for m, level in enumerate(self.levels)}
        head = head.expand(batch, -1, -1)  # [B, S, W]: from the first level on every video has its own
        for index in range(self.num_prefix_blocks, len(blocks)):
            if index in level_index:
                m = level_index[index]
                prompts = self._generate_prompts(head[:, 1:], context_tokens[m], self.prompt_generation_layer[m], batch)
                head = torch.cat([head[:, :1], prompts], dim=1)
            last = index == len(blocks) - 1
            head, tail = blocks[index].forward_shared_head(head, tail, end if last else None)
        return self.ln_final(tail) @ self.text_projection  # [B, C, E]

    def _check_context(self, context_tokens: Sequence[Tensor] | None) -> None:
        if context_tokens is None or len(context_tokens) != len(self.levels):
            raise ValueError(f"expected {len(self.levels)} context-token tensors, one per prompt-generation level")

    def _generate_prompts(self, rows: Tensor, context: Tensor, layer: PromptGenerationLayer, batch: int) -> Tensor:
        """Prompt rows [B*C, n_ctx, W] rewritten from each video's context tokens [B, K, E] -> [B*C, n_ctx, W]."""
        if self.im_stop_grad:
            context = context.detach()
        width = rows.shape[-1]
        queries = rows.reshape(batch, -1, width)  # [B, C*n_ctx, W]: a video's prompts of all classes share keys
        return layer(queries, context).reshape(-1, self.n_ctx, width)

    def forward(
        self, prompts: Tensor, tokenized_prompts: Tensor, context_tokens: Sequence[Tensor] | None = None
    ) -> Tensor:
        """Prompt embeddings [C, L, W] (L <= context_length) -> text features [B, C, E] ([C, E] without levels).

        Args:
            prompts: [C, L, W] the class prompts (`PromptLearner`).
            tokenized_prompts: [C, context_length] token ids (the end token has the largest id).
            context_tokens: one [B, K, E] tensor per prompt-generation level, in level order.
        """
        if self.fast:
            return self.encode_rest(self.encode_prefix(prompts), tokenized_prompts, context_tokens)
        if not self.levels:
            return self._forward_plain(prompts, tokenized_prompts, None)
        self._check_context(context_tokens)
        videos = range(context_tokens[0].shape[0])
        return torch.stack(
            [self._forward_plain(prompts, tokenized_prompts, [c[i : i + 1] for c in context_tokens]) for i in videos]
        )

    def _forward_plain(self, prompts: Tensor, tokenized_prompts: Tensor, context: Sequence[Tensor] | None) -> Tensor:
        """Every block on the prompts [C, L, W] of one video (context: one [1, K, E] per level) -> [C, E]."""
        level_index = {level - 1: m for m, level in enumerate(self.levels)}
        mask = causal_mask(prompts.shape[1], prompts.device)
        x = prompts + self.positional_embedding[: prompts.shape[1]]
        for index, block in enumerate(self.transformer.resblocks):
            if index in level_index:
                m = level_index[index]
                prompt_rows = self._generate_prompts(
                    x[:, 1 : 1 + self.n_ctx], context[m], self.prompt_generation_layer[m], 1
                )
                x = torch.cat([x[:, :1], prompt_rows, x[:, 1 + self.n_ctx :]], dim=1)
            x = block(x, mask)
        end = tokenized_prompts.argmax(dim=-1).to(x.device)
        x = x[torch.arange(x.shape[0], device=x.device), end]  # [C, W]
        return self.ln_final(x) @ self.text_projection
