"""CLIP's text tower with video-conditional prompting between its blocks (paper: "Video-conditional Prompting").

Plain (`fast=False`): for each video in turn, every class prompt runs every block at its full length, the prompt
vectors rewritten from that video's context tokens before each prompt-generation level (`_forward_plain`).

Fast (default), the same numbers in two halves: the blocks before the first prompt-generation level see only the
class prompts, never the video, so they run once for the C classes (`encode_prefix`, [C, L, W]; the model caches it
between no-grad calls, see `TCCLIP`). The remaining blocks (`encode_rest`) run batched over videos x classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tcclip.model.config import CLIPTextCfg
from tcclip.model.layers import MLP, LayerNorm, fast_path_default
from tcclip.model.prompting import PromptGenerationLayer

__all__ = ["TextBlock", "TextTransformer", "VPTextEncoder", "causal_mask"]


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

    def encode_prefix(self, prompts: Tensor) -> Tensor:
        """Prompt embeddings [C, L, W] -> hidden states [C, L, W] after the video-independent blocks."""
        length = prompts.shape[1]
        mask = causal_mask(length, prompts.device)
        x = prompts + self.positional_embedding[:length]
        for block in self.transformer.resblocks[: self.num_prefix_blocks]:
            x = block(x, mask)
        return x

    def encode_rest(
        self, prefix: Tensor, tokenized_prompts: Tensor, context_tokens: Sequence[Tensor] | None = None
    ) -> Tensor:
        """Finish the fast text encoder from `encode_prefix`'s output [C, L, W] (shared by all videos): the blocks
        from the first prompt-generation level on, batched over videos x classes.

        Args:
            prefix: [C, L, W] hidden states after the prefix blocks.
            tokenized_prompts: [C, context_length] token ids (the end token has the largest id).
            context_tokens: one [B, K, E] tensor per prompt-generation level, in level order.

        Returns:
            Text features [B, C, E] with levels, [C, E] without.
        """
        num_classes = tokenized_prompts.shape[0]
        end = tokenized_prompts.argmax(dim=-1).to(prefix.device)  # [C]
        classes = torch.arange(num_classes, device=prefix.device)
        if not self.levels:
            return self.ln_final(prefix[classes, end]) @ self.text_projection  # [C, E]
        self._check_context(context_tokens)
        batch = context_tokens[0].shape[0]
        blocks = self.transformer.resblocks
        level_index = {level - 1: m for m, level in enumerate(self.levels)}
        mask = causal_mask(prefix.shape[1], prefix.device)
        x = prefix.expand(batch, -1, -1, -1).flatten(0, 1)  # [B*C, L, W]: from here on every video has its own
        for index in range(self.num_prefix_blocks, len(blocks)):
            if index in level_index:
                m = level_index[index]
                layer = self.prompt_generation_layer[m]
                prompts = self._generate_prompts(x[:, 1 : 1 + self.n_ctx], context_tokens[m], layer, batch)
                x = torch.cat([x[:, :1], prompts, x[:, 1 + self.n_ctx :]], dim=1)
            x = blocks[index](x, mask)
        x = x.unflatten(0, (batch, num_classes))[:, classes, end]  # [B, C, W]
        return self.ln_final(x) @ self.text_projection

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
