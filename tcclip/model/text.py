"""Text side of TC-CLIP: class-name processing, the prompt learner and the video-conditional text encoder (spec 3).

The text encoder runs in two parts. The CLIP blocks before the first prompt-generation level see only the class
prompts, never the video, so they run once for the C classes (`encode_prefix`, [C, L, W]); the model keeps that
result cached between no-grad calls (see `TCCLIP`). The remaining blocks (`encode_rest`) run per video: with the
default level before the last block, only the n_ctx prompt rows of each (video, class) are rewritten and the last
block is evaluated at the end token alone (`TextBlock.forward_end_tokens`); otherwise batched over videos x classes
([B*C, L, W]). `VPTextEncoder.forward_reference` is the plain form (every block, every row, one video at a time).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tcclip.model.config import CLIPTextCfg
from tcclip.model.layers import MLP, LayerNorm

_CAPITAL = re.compile(r"([A-Z])")


def process_class_name(name: str, parse_camel_case: bool = True) -> str:
    """Turn a dataset class name into words (spec 3.1): `ApplyEyeMakeup` -> `Apply Eye Makeup`, `_` -> space."""
    if parse_camel_case:
        name = _CAPITAL.sub(r" \1", name).strip()
    return name.replace("_", " ")


class PromptTooLongError(ValueError):
    """A class name whose prompt has more tokens than the text encoder's context length."""

    def __init__(self, name: str, prompt: str, num_tokens: int, context_length: int, max_context_length: int):
        self.name, self.prompt, self.num_tokens = name, prompt, num_tokens
        self.context_length, self.max_context_length = context_length, max_context_length
        super().__init__(
            f"the prompt for class {name!r} ({prompt!r}) needs {num_tokens} tokens, more than "
            f"context_length={context_length}; use a larger context_length (CLIP allows up to "
            f"{max_context_length}) or a shorter class name"
        )


class Tokenizer(Protocol):
    """What the prompt learner needs from a tokenizer (`clip_backbone.build_tokenizer` gives one)."""

    sot_token_id: int
    eot_token_id: int

    def encode(self, text: str) -> list[int]: ...


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

    def forward_end_tokens(self, shared: Tensor, prompt_rows: Tensor, prompt_start: int, end: Tensor) -> Tensor:
        """The block's output at each prompt's end token, for videos whose inputs differ only in the prompt rows.

        The same numbers as `forward` on every (video, class) sequence followed by picking the end-token rows, for
        far less work when nothing after this block reads other rows (the last block): under the causal mask the
        end token's output depends only on its own input and the keys/values of the positions up to it. So the
        query, out-projection and MLP run on one row per (video, class), and the keys/values of the shared rows
        once per class instead of once per video.

        Args:
            shared: [C, L, W] block input shared by all videos (the prompts after the video-independent blocks).
            prompt_rows: [B, C, n, W] each video's rows prompt_start .. prompt_start + n - 1, replacing `shared`'s.
            prompt_start: first rewritten position.
            end: [C] end-token position of each prompt (after the rewritten rows).

        Returns:
            [B, C, W] the block's output at the end tokens.
        """
        attn = self.attn
        if attn.bias_k is not None or not attn._qkv_same_embed_dim:
            raise ValueError("forward_end_tokens needs CLIP's text attention layout (packed in_proj, no bias_k/v)")
        batch, num_classes, n, width = prompt_rows.shape
        heads = attn.num_heads
        head_dim = width // heads
        lo, hi = prompt_start, prompt_start + n
        w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = attn.in_proj_bias.chunk(3)

        def project(t: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
            return F.linear(t, weight, bias).unflatten(-1, (heads, head_dim))  # [..., H, dh]

        classes = torch.arange(num_classes, device=shared.device)
        h = self.ln_1(shared)  # [C, L, W]
        h_rows = self.ln_1(prompt_rows)  # [B, C, n, W]
        q = project(h[classes, end], w_q, b_q) * head_dim**-0.5  # [C, H, dh] the end tokens' queries
        k, v = project(h, w_k, b_k), project(h, w_v, b_v)  # [C, L, H, dh]
        k_rows, v_rows = project(h_rows, w_k, b_k), project(h_rows, w_v, b_v)  # [B, C, n, H, dh]

        logits = torch.einsum("chd,clhd->chl", q, k)  # [C, H, L]
        after_end = torch.arange(shared.shape[1], device=shared.device) > end[:, None]  # [C, L] the causal mask row
        logits = logits.masked_fill(after_end[:, None], float("-inf"))
        logits_rows = torch.einsum("chd,bcnhd->bchn", q, k_rows)  # [B, C, H, n]
        shared_logits = torch.cat([logits[..., :lo], logits[..., hi:]], dim=-1)  # [C, H, L - n]
        probs = torch.cat([shared_logits.expand(batch, -1, -1, -1), logits_rows], dim=-1).softmax(dim=-1)
        v_shared = torch.cat([v[:, :lo], v[:, hi:]], dim=1)  # [C, L - n, H, dh]
        out = torch.einsum("bchl,clhd->bchd", probs[..., :-n], v_shared)
        out = out + torch.einsum("bchn,bcnhd->bchd", probs[..., -n:], v_rows)  # [B, C, H, dh]
        x = shared[classes, end] + attn.out_proj(out.flatten(-2))  # [B, C, W]
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    """Holds the text blocks under the name `resblocks`, as CLIP and the official checkpoints do."""

    def __init__(self, width: int, heads: int, layers: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([TextBlock(width, heads, mlp_ratio) for _ in range(layers)])


class PromptGenerationLayer(nn.Module):
    """Video-conditional prompt generation (spec 3.3): prompt tokens attend to a video's context tokens.

    The context tokens have the joint embedding width E. For CLIP ViTs E equals the text width W and the attention
    is laid out as CLIP's (`in_proj_weight`); when they differ (only in tiny test models) torch's
    MultiheadAttention keeps separate `q_proj_weight` / `k_proj_weight` / `v_proj_weight`.
    """

    def __init__(self, width: int, heads: int, context_width: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, kdim=context_width, vdim=context_width, batch_first=True)
        self.ln_1 = LayerNorm(width)
        self.ln_1_kv = LayerNorm(context_width)
        self.mlp = MLP(width, mlp_ratio)
        self.ln_2 = LayerNorm(width)

    def forward(self, ctx: Tensor, context_tokens: Tensor) -> Tensor:
        """ctx [B, Q, W] prompt tokens (any number Q per video), context_tokens [B, K, E] -> [B, Q, W].

        Every query attends independently, so the prompt tokens of all C classes of one video can share one
        call with Q = C * n_ctx: the same numbers as one call per class.
        """
        kv = self.ln_1_kv(context_tokens)
        ctx = ctx + self.attn(self.ln_1(ctx), kv, kv, need_weights=False)[0]
        return ctx + self.mlp(self.ln_2(ctx))

    @torch.no_grad()
    def init_from_text_block(self, block: TextBlock) -> None:
        """Start as a copy of a CLIP text block, `ln_1_kv` a copy of `ln_1` (spec 3.3).

        If the context width differs from the text width, the key/value maps and `ln_1_kv` cannot be copied and
        keep their initialisation; the query map, biases and everything else are copied.
        """
        if self.attn._qkv_same_embed_dim:
            self.attn.load_state_dict(block.attn.state_dict())
            self.ln_1_kv.load_state_dict(block.ln_1.state_dict())
        else:
            self.attn.q_proj_weight.copy_(block.attn.in_proj_weight[: self.attn.embed_dim])
            self.attn.in_proj_bias.copy_(block.attn.in_proj_bias)
            self.attn.out_proj.load_state_dict(block.attn.out_proj.state_dict())
        self.ln_1.load_state_dict(block.ln_1.state_dict())
        self.mlp.load_state_dict(block.mlp.state_dict())
        self.ln_2.load_state_dict(block.ln_2.state_dict())


def _rebuild_after_load(module: PromptLearner, incompatible_keys: object) -> None:
    """load_state_dict post-hook (a module-level function, so the module stays picklable)."""
    module._rebuild_fixed_embeddings()


class PromptLearner(nn.Module):
    """Learnable prompt vectors plus the fixed token embeddings of each class prompt (spec 3.2).

    The text of class c is `"{prompt_prefix} {template.format(name)}"`; the `n_ctx` tokens after the start token are
    replaced by the learnable `ctx`. The prefix text is `ctx_init`; when `ctx_init` has fewer than `n_ctx` tokens it
    is padded with placeholder words `X`, whose vectors start random (normal, std 0.02) instead of from the table.
    When it has more, the extra words stay fixed tokens of every prompt.

    Args:
        text: CLIP text tower config (vocabulary size and width of the token embedding table).
        tokenizer: CLIP BPE tokenizer.
        n_ctx: number of learnable vectors (0: a fixed prompt, as ViFi-CLIP and vanilla CLIP use).
        ctx_init: words that start the prompt and initialise the learnable vectors.
        context_length: prompt length in tokens.
        template: format string for the class part; `"{}."` for TC-CLIP / ViFi-CLIP, `"{}"` for vanilla CLIP.
        parse_class_names: split CamelCase class names into words.
    """

    token_prefix: Tensor
    token_suffix: Tensor
    tokenized_prompts: Tensor

    def __init__(
        self,
        text: CLIPTextCfg,
        tokenizer: Tokenizer,
        *,
        n_ctx: int,
        ctx_init: str,
        context_length: int,
        template: str = "{}.",
        parse_class_names: bool = True,
        class_names: Sequence[str] = (),
    ) -> None:
        super().__init__()
        if context_length > text.context_length:
            raise ValueError(
                f"context_length {context_length} exceeds the {text.context_length} positions of CLIP's text tower"
            )
        self.tokenizer = tokenizer
        self.n_ctx = n_ctx
        self.context_length = context_length
        self.max_context_length = text.context_length
        self.template = template
        self.parse_class_names = parse_class_names
        ctx_init = ctx_init.replace("_", " ").strip()
        self._init_ids = tokenizer.encode(ctx_init) if ctx_init else []
        placeholders = max(0, n_ctx - len(self._init_ids))
        self.prompt_prefix = " ".join([ctx_init] * bool(ctx_init) + ["X"] * placeholders)

        # Frozen: the table only supplies the fixed prompt parts and the initial `ctx`.
        self.token_embedding = nn.Embedding(text.vocab_size, text.width)
        self.token_embedding.weight.requires_grad_(False)
        self.ctx = nn.Parameter(torch.empty(n_ctx, text.width)) if n_ctx > 0 else None
        self._class_names: list[str] = []
        self.num_positions_used = 0
        """Positions up to the last end token over all prompts; the causal mask makes later ones irrelevant."""
        self.reset_ctx()
        self.set_class_names(class_names)
        # Loading weights (e.g. CLIP's token table) must refresh the fixed prompt embeddings built from the table.
        self.register_load_state_dict_post_hook(_rebuild_after_load)

    @torch.no_grad()
    def reset_ctx(self) -> None:
        """(Re)initialise `ctx` from the token embeddings of `ctx_init`; random normal (std 0.02) for placeholders."""
        if self.ctx is None:
            return
        nn.init.normal_(self.ctx, std=0.02)
        ids = self._init_ids[: self.n_ctx]
        if ids:
            index = torch.tensor(ids, device=self.ctx.device)
            self.ctx[: len(ids)] = self.token_embedding.weight[index].to(self.ctx.dtype)

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    def prompt_text(self, name: str) -> str:
        words = process_class_name(name, self.parse_class_names)
        return " ".join(p for p in (self.prompt_prefix, self.template.format(words)) if p)

    def tokenize(self, name: str) -> list[int]:
        """Token ids of the prompt for one class, padded with 0 to `context_length`."""
        ids = [self.tokenizer.sot_token_id, *self.tokenizer.encode(self.prompt_text(name)), self.tokenizer.eot_token_id]
        if len(ids) > self.context_length:
            raise PromptTooLongError(
                name, self.prompt_text(name), len(ids), self.context_length, self.max_context_length
            )
        return ids + [0] * (self.context_length - len(ids))

    def set_class_names(self, names: Sequence[str]) -> None:
        """Tokenise the prompts of `names` and rebuild the fixed prompt embeddings (non-persistent buffers)."""
        names = list(names)
        rows = [self.tokenize(n) for n in names]
        # The end token has the largest id; its last position is computed here so forward needs no device sync.
        self.num_positions_used = max((max(range(len(r)), key=r.__getitem__) + 1 for r in rows), default=0)
        self._class_names = names
        # Normal tensors even when called under torch.inference_mode (e.g. from an evaluation loop), so that a later
        # training step can use them.
        with torch.inference_mode(False):
            tokens = torch.tensor(rows, dtype=torch.long, device="cpu").reshape(len(names), self.context_length)
            self.register_buffer("tokenized_prompts", tokens.to(self.token_embedding.weight.device), persistent=False)
        self._rebuild_fixed_embeddings()

    @torch.no_grad()
    def _rebuild_fixed_embeddings(self) -> None:
        with torch.inference_mode(False):
            tokens = self.tokenized_prompts.to(self.token_embedding.weight.device)
            embedding = self.token_embedding(tokens)  # [C, context_length, W]
            self.register_buffer("token_prefix", embedding[:, :1].clone(), persistent=False)  # start token
            self.register_buffer("token_suffix", embedding[:, 1 + self.n_ctx :].clone(), persistent=False)

    def forward(self) -> Tensor:
        """Prompt embeddings [C, context_length, W]: start token, learnable vectors, the rest of the prompt."""
        if self.ctx is None:
            return torch.cat([self.token_prefix, self.token_suffix], dim=1)
        ctx = self.ctx.unsqueeze(0).expand(self.token_prefix.shape[0], -1, -1)  # [C, n_ctx, W]
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)


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
        self,
        prefix: Tensor,
        tokenized_prompts: Tensor,
        context_tokens: Sequence[Tensor] | None = None,
        shared: bool = True,
    ) -> Tensor:
        """Finish the text encoder from `encode_prefix`'s output.

        With the default single level before the last block, the per-video work is the prompt generation on the
        n_ctx prompt rows and `TextBlock.forward_end_tokens`: every other row stays shared by all videos.

        Args:
            prefix: [C, L, W] hidden states after the prefix blocks, shared by all videos; with `shared=False`
                [B*C, L, W], one copy per video (videos outer, see `forward_per_video`).
            tokenized_prompts: [C, context_length] token ids (the end token has the largest id).
            context_tokens: one [B, K, E] tensor per prompt-generation level, in level order.
            shared: whether `prefix` is shared by all videos.

        Returns:
            Text features [B, C, E] with levels, [C, E] without.
        """
        num_classes = tokenized_prompts.shape[0]
        end = tokenized_prompts.argmax(dim=-1).to(prefix.device)  # [C]
        classes = torch.arange(num_classes, device=prefix.device)
        if not self.levels:
            return self.ln_final(prefix[classes, end]) @ self.text_projection  # [C, E]
        if context_tokens is None or len(context_tokens) != len(self.levels):
            raise ValueError(f"expected {len(self.levels)} context-token tensors, one per prompt-generation level")
        batch = context_tokens[0].shape[0]
        blocks = self.transformer.resblocks
        level_index = {level - 1: m for m, level in enumerate(self.levels)}
        mask = causal_mask(prefix.shape[1], prefix.device)
        # x: the block input without the generated prompts, [C, L, W] while shared by all videos, else [B*C, L, W];
        # prompts: [B*C, n_ctx, W] generated prompt rows that replace x's rows 1..n_ctx.
        x, prompts = prefix, None
        for index in range(self.num_prefix_blocks, len(blocks)):
            if index in level_index:
                m = level_index[index]
                current = x[:, 1 : 1 + self.n_ctx] if prompts is None else prompts
                if shared and prompts is None:
                    current = current.expand(batch, -1, -1, -1).flatten(0, 1)  # [B*C, n_ctx, W]
                prompts = self._generate_prompts(current, context_tokens[m], self.prompt_generation_layer[m], batch)
            if index == len(blocks) - 1 and shared and prompts is not None:
                rows = prompts.unflatten(0, (batch, num_classes))  # [B, C, n_ctx, W]
                features = blocks[index].forward_end_tokens(x, rows, 1, end)  # [B, C, W]
                return self.ln_final(features) @ self.text_projection
            if shared:
                x = x.expand(batch, -1, -1, -1).flatten(0, 1)  # [B*C, L, W]: from here on every video has its own
                shared = False
            if prompts is not None:
                x = torch.cat([x[:, :1], prompts, x[:, 1 + self.n_ctx :]], dim=1)
                prompts = None
            x = blocks[index](x, mask)
        x = x.unflatten(0, (batch, num_classes))[:, classes, end]  # [B, C, W]
        return self.ln_final(x) @ self.text_projection

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
        """Prompt embeddings [C, L, W] (L <= context_length) -> text features [B, C, E] ([C, E] without levels)."""
        return self.encode_rest(self.encode_prefix(prompts), tokenized_prompts, context_tokens)

    def forward_per_video(
        self, prompts: Tensor, tokenized_prompts: Tensor, context_tokens: Sequence[Tensor] | None = None
    ) -> Tensor:
        """The same features computed without sharing the prefix: every (video, class) pair runs every block.

        Batched over videos; `forward_reference` is the same with a Python loop over videos.
        """
        if not self.levels:
            return self.forward(prompts, tokenized_prompts)
        batch = context_tokens[0].shape[0] if context_tokens else 0
        prompts = prompts.unsqueeze(0).expand(batch, -1, -1, -1).flatten(0, 1)  # [B*C, L, W]
        return self.encode_rest(self.encode_prefix(prompts), tokenized_prompts, context_tokens, shared=False)

    def forward_reference(
        self, prompts: Tensor, tokenized_prompts: Tensor, context_tokens: Sequence[Tensor] | None = None
    ) -> Tensor:
        """The straightforward text forward of spec 3.3, as the official code runs it (the reference path).

        For each video in turn (a Python loop), all C prompts at their full length run every block, with the
        prompt rows rewritten before each level from that video's context tokens. Shapes as `forward`.
        """
        if not self.levels:
            return self._forward_one(prompts, tokenized_prompts, None)
        if context_tokens is None or len(context_tokens) != len(self.levels):
            raise ValueError(f"expected {len(self.levels)} context-token tensors, one per prompt-generation level")
        videos = range(context_tokens[0].shape[0])
        return torch.stack(
            [self._forward_one(prompts, tokenized_prompts, [c[i : i + 1] for c in context_tokens]) for i in videos]
        )

    def _forward_one(self, prompts: Tensor, tokenized_prompts: Tensor, context: Sequence[Tensor] | None) -> Tensor:
        """All blocks on the prompts [C, L, W] of one video (context: one [1, K, E] per level) -> [C, E]."""
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
