"""Text side of TC-CLIP: class-name processing, the prompt learner and the video-conditional text encoder (spec 3).

The text encoder runs in two parts. The CLIP blocks before the first prompt-generation level see only the class
prompts, never the video, so they run once for the C classes (`encode_prefix`, [C, L, W]); the remaining blocks run
batched over videos x classes (`encode_rest`, [B*C, L, W]) with the prompt positions rewritten from each video's
context tokens. The model keeps the prefix result cached between no-grad calls (see `TCCLIP`).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tcclip.model.config import CLIPTextCfg

_CAPITAL = re.compile(r"([A-Z])")


def process_class_name(name: str, parse_camel_case: bool = True) -> str:
    """Turn a dataset class name into words (spec 3.1): `ApplyEyeMakeup` -> `Apply Eye Makeup`, `_` -> space."""
    if parse_camel_case:
        name = _CAPITAL.sub(r" \1", name).strip()
    return name.replace("_", " ")


class Tokenizer(Protocol):
    """What the prompt learner needs from a tokenizer (`clip_backbone.build_tokenizer` gives one)."""

    sot_token_id: int
    eot_token_id: int

    def encode(self, text: str) -> list[int]: ...


class LayerNorm(nn.LayerNorm):
    """LayerNorm in the input's dtype; fp16/bf16 inputs are normalised in fp32 (so `.double()` stays float64)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            weight = None if self.weight is None else self.weight.float()
            bias = None if self.bias is None else self.bias.float()
            return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)
        return super().forward(x)


class QuickGELU(nn.Module):
    """CLIP's activation: x * sigmoid(1.702 x)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def _mlp(width: int, mlp_ratio: float) -> nn.Sequential:
    hidden = int(width * mlp_ratio)
    return nn.Sequential(
        OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(hidden, width))])
    )


def causal_mask(length: int, device: torch.device | None = None) -> Tensor:
    """Boolean [length, length] mask, True where attention is not allowed (a key after the query)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu_(1)


class TextBlock(nn.Module):
    """CLIP's causal residual attention block (pre-norm, QuickGELU MLP)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = LayerNorm(width)
        self.mlp = _mlp(width, mlp_ratio)
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
        self.mlp = _mlp(width, mlp_ratio)
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
            raise ValueError(
                f"the prompt for class {name!r} ({self.prompt_text(name)!r}) needs {len(ids)} tokens, more than "
                f"context_length={self.context_length}; use a larger context_length (CLIP allows up to "
                f"{self.max_context_length}) or a shorter class name"
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
        self, prefix: Tensor, tokenized_prompts: Tensor, context_tokens: Sequence[Tensor] | None = None
    ) -> Tensor:
        """Finish the text encoder from `encode_prefix`'s output.

        Args:
            prefix: [C, L, W] hidden states after the prefix blocks (or [B*C, L, W], videos outer, see
                `forward_per_video`).
            tokenized_prompts: [C, context_length] token ids (the end token has the largest id).
            context_tokens: one [B, K, E] tensor per prompt-generation level, in level order.

        Returns:
            Text features [B, C, E] with levels, [C, E] without.
        """
        num_classes = tokenized_prompts.shape[0]
        x = prefix
        if self.levels:
            if context_tokens is None or len(context_tokens) != len(self.levels):
                raise ValueError(f"expected {len(self.levels)} context-token tensors, one per prompt-generation level")
            batch = context_tokens[0].shape[0]
            if x.shape[0] == num_classes:
                x = x.unsqueeze(0).expand(batch, -1, -1, -1).flatten(0, 1)  # [B*C, L, W], videos outer
            mask = causal_mask(x.shape[1], x.device)
            level_index = {level - 1: m for m, level in enumerate(self.levels)}
            for index in range(self.num_prefix_blocks, len(self.transformer.resblocks)):
                if index in level_index:
                    m = level_index[index]
                    x = self._generate_prompts(x, context_tokens[m], self.prompt_generation_layer[m], batch)
                x = self.transformer.resblocks[index](x, mask)
            x = x.unflatten(0, (batch, num_classes))  # [B, C, L, W]
            end = tokenized_prompts.argmax(dim=-1).to(x.device)  # [C]
            x = x[:, torch.arange(num_classes, device=x.device), end]  # [B, C, W]
        else:
            end = tokenized_prompts.argmax(dim=-1).to(x.device)
            x = x[torch.arange(num_classes, device=x.device), end]  # [C, W]
        return self.ln_final(x) @ self.text_projection

    def _generate_prompts(self, x: Tensor, context: Tensor, layer: PromptGenerationLayer, batch: int) -> Tensor:
        """Rewrite positions 1..n_ctx of x [B*C, L, W] from the video's context tokens [B, K, E]."""
        if self.im_stop_grad:
            context = context.detach()
        width = x.shape[-1]
        ctx = x[:, 1 : 1 + self.n_ctx].reshape(batch, -1, width)  # [B, C*n_ctx, W]: a video's prompts share keys
        ctx = layer(ctx, context).reshape(-1, self.n_ctx, width)  # [B*C, n_ctx, W]
        return torch.cat([x[:, :1], ctx, x[:, 1 + self.n_ctx :]], dim=1)

    def forward(
        self, prompts: Tensor, tokenized_prompts: Tensor, context_tokens: Sequence[Tensor] | None = None
    ) -> Tensor:
        """Prompt embeddings [C, L, W] (L <= context_length) -> text features [B, C, E] ([C, E] without levels)."""
        return self.encode_rest(self.encode_prefix(prompts), tokenized_prompts, context_tokens)

    def forward_per_video(
        self, prompts: Tensor, tokenized_prompts: Tensor, context_tokens: Sequence[Tensor] | None = None
    ) -> Tensor:
        """The same features computed without sharing the prefix: every (video, class) pair runs every block.

        Slower; kept as the straightforward form of spec 3.3 to check the shared-prefix path against.
        """
        if not self.levels:
            return self.forward(prompts, tokenized_prompts)
        batch = context_tokens[0].shape[0] if context_tokens else 0
        prompts = prompts.unsqueeze(0).expand(batch, -1, -1, -1).flatten(0, 1)  # [B*C, L, W]
        return self.encode_rest(self.encode_prefix(prompts), tokenized_prompts, context_tokens)
