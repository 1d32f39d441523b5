"""Video-conditional prompting (paper: "Video-conditional Prompting"): the class prompts with learnable vectors,
and the layer that rewrites those vectors from each video's context tokens.

`PromptLearner` builds the prompt embeddings of every class (start token, learnable vectors, the class text);
`PromptGenerationLayer` is the cross-attention block in which a video's prompt vectors attend to its context tokens.
The text encoder (`tcclip.model.text.VPTextEncoder`) runs them between its blocks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from tcclip.model.config import CLIPTextCfg
from tcclip.model.layers import MLP, LayerNorm

__all__ = ["PromptGenerationLayer", "PromptLearner", "PromptTooLongError", "Tokenizer", "process_class_name"]

_CAPITAL = re.compile(r"([A-Z])")


def process_class_name(name: str, parse_camel_case: bool = True) -> str:
    """A dataset class name as words, as the official code makes them: `ApplyEyeMakeup` -> `Apply Eye Makeup`,
    `_` -> space."""
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


class PromptGenerationLayer(nn.Module):
    """Video-conditional prompt generation: prompt tokens attend to a video's context tokens (a text block with
    cross-attention whose keys/values are the context tokens).

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
    def init_from_text_block(self, block: nn.Module) -> None:
        """Start as a copy of a CLIP text block (`text.TextBlock`), `ln_1_kv` a copy of `ln_1` (the official init).

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
    """Learnable prompt vectors plus the fixed token embeddings of each class prompt (CoOp-style prompt learning).

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
