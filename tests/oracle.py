"""The test oracle: a plain, slow implementation of the TC-CLIP forward pass, written independently of the model.

The tests check the model against it in float64 (both its fast and its plain path; docs/model.md, "Exactness").
It is used by the tests only (the benchmark's baseline is the model's own plain path). It shares no code with the
model: everything is spelled out with explicit loops over videos, frames, heads and tokens, full attention matrices,
and token merging done token by token. It reads weights from a state dict in the project's parameter layout (the
official checkpoint names minus `module.`, plus `prompt_learner.token_embedding.weight`) and computes in the dtype
of the video (the weights are cast to it).

Section names in comments refer to the TC-CLIP paper (Kim et al., ECCV 2024); docs/model.md maps its steps.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tcclip.model.config import TCCLIPConfig

__all__ = [
    "ReferenceOutput",
    "bipartite_merge_step",
    "merge_schedule",
    "process_class_name_reference",
    "reference_forward",
    "summarise_tokens",
    "tokenize_prompts_reference",
]

LN_EPS = 1e-5  # CLIP's LayerNorm epsilon (torch's default)


@dataclass
class ReferenceOutput:
    """Everything the reference computes for one batch."""

    logits: Tensor
    """[B, C] exp(logit_scale) * cosine(video embedding, text feature)."""
    video_embedding: Tensor
    """[B, E] L2-normalised."""
    text_features: Tensor
    """[B, C, E] L2-normalised (TC-CLIP: conditioned on each video; baselines: the same row for every video)."""
    context_tokens: list[Tensor]
    """One [B, K, E] per vision layer (after ln_post + proj), layer 0 first; empty for the baselines."""
    seed_indices: list[Tensor]
    """One [B, T, s] (long, patch indices 0..P-1, best first) per vision layer; empty for the baselines."""
    merge_sources: list[Tensor]
    """One [B, K, T*P] 0/1 per vision layer: input patch t*P+p ended up in context token k."""


# --------------------------------------------------------------------------------------------------------------
# Elementary operations, written out.
# --------------------------------------------------------------------------------------------------------------


class _Weights:
    """Reads tensors from the state dict, cast to the compute dtype."""

    def __init__(self, state_dict: Mapping[str, Tensor], dtype: torch.dtype) -> None:
        if state_dict and all(k.startswith("module.") for k in state_dict):
            state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
        self.sd = state_dict
        self.dtype = dtype

    def __contains__(self, name: str) -> bool:
        return name in self.sd

    def __call__(self, name: str) -> Tensor:
        if name not in self.sd:
            raise KeyError(f"reference_forward: the state dict has no tensor {name!r} (expected the tcclip layout)")
        return self.sd[name].detach().to(dtype=self.dtype, device="cpu")


def _layer_norm(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """LayerNorm over the last dim with the biased variance, as torch / CLIP define it."""
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + LN_EPS) * weight + bias


def _ln(w: _Weights, prefix: str, x: Tensor) -> Tensor:
    return _layer_norm(x, w(f"{prefix}.weight"), w(f"{prefix}.bias"))


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    y = x @ weight.T
    return y if bias is None else y + bias


def _softmax(logits: Tensor) -> Tensor:
    """Softmax over the last dim; -inf entries get probability 0."""
    shifted = logits - logits.max(dim=-1, keepdim=True).values
    e = torch.exp(shifted)
    return e / e.sum(dim=-1, keepdim=True)


def _mlp(w: _Weights, prefix: str, x: Tensor) -> Tensor:
    """CLIP's MLP: c_fc, QuickGELU, c_proj."""
    h = _linear(x, w(f"{prefix}.c_fc.weight"), w(f"{prefix}.c_fc.bias"))
    h = h * torch.sigmoid(1.702 * h)  # QuickGELU
    return _linear(h, w(f"{prefix}.c_proj.weight"), w(f"{prefix}.c_proj.bias"))


def _attention(
    query: Tensor,
    key_value: Tensor,
    q_map: tuple[Tensor, Tensor],
    k_map: tuple[Tensor, Tensor],
    v_map: tuple[Tensor, Tensor],
    out_map: tuple[Tensor, Tensor],
    heads: int,
    logit_bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Multi-head attention with explicit per-head matrices.

    Args:
        query: [Nq, D] (already layer-normed).
        key_value: [Nk, Dkv] (already layer-normed).
        q_map, k_map, v_map, out_map: (weight, bias) of the four linear maps.
        heads: number of heads; head_dim = D / heads, scale head_dim^-0.5.
        logit_bias: [heads, Nq, Nk] added to the logits before the softmax (masks, local-global bias).

    Returns:
        The output [Nq, D] and the attention probabilities [heads, Nq, Nk].
    """
    q = _linear(query, *q_map)  # [Nq, D]
    k = _linear(key_value, *k_map)  # [Nk, D]
    v = _linear(key_value, *v_map)  # [Nk, D]
    width = q.shape[-1]
    head_dim = width // heads
    scale = head_dim**-0.5
    head_outputs = []
    head_probs = []
    for h in range(heads):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        logits = (q[:, cols] @ k[:, cols].T) * scale  # [Nq, Nk]
        if logit_bias is not None:
            logits = logits + logit_bias[h]
        probs = _softmax(logits)
        head_probs.append(probs)
        head_outputs.append(probs @ v[:, cols])  # [Nq, head_dim]
    out = _linear(torch.cat(head_outputs, dim=-1), *out_map)
    return out, torch.stack(head_probs)


def _split_qkv_maps(w: _Weights, prefix: str) -> tuple[tuple[Tensor, Tensor], ...]:
    """q, k, v, out maps of an attention module, in either layout.

    Vision blocks use separate `q_proj/k_proj/v_proj/out_proj` linears (CLIP's in_proj in three); text blocks and
    prompt-generation layers use nn.MultiheadAttention's fused `in_proj_weight` (rows q, k, v in that order)
    or, when the key width differs from the query width, its separate `{q,k,v}_proj_weight`.
    """
    out_map = (w(f"{prefix}.out_proj.weight"), w(f"{prefix}.out_proj.bias"))
    if f"{prefix}.q_proj.weight" in w:
        return (
            (w(f"{prefix}.q_proj.weight"), w(f"{prefix}.q_proj.bias")),
            (w(f"{prefix}.k_proj.weight"), w(f"{prefix}.k_proj.bias")),
            (w(f"{prefix}.v_proj.weight"), w(f"{prefix}.v_proj.bias")),
            out_map,
        )
    bias = w(f"{prefix}.in_proj_bias")
    width = bias.shape[0] // 3
    biases = (bias[:width], bias[width : 2 * width], bias[2 * width :])
    if f"{prefix}.in_proj_weight" in w:
        weight = w(f"{prefix}.in_proj_weight")
        weights = (weight[:width], weight[width : 2 * width], weight[2 * width :])
    else:
        weights = tuple(w(f"{prefix}.{n}_proj_weight") for n in ("q", "k", "v"))
    return (
        (weights[0], biases[0]),
        (weights[1], biases[1]),
        (weights[2], biases[2]),
        out_map,
    )


# --------------------------------------------------------------------------------------------------------------
# Token merging (temporal context summarisation), one token at a time.
# --------------------------------------------------------------------------------------------------------------


def explicit_context_attention(q, k, v, k_ctx, v_ctx, shift, scale):
    """Plain attention over [frame keys ; context keys repeated per frame], the shift on the context logits.

    Shapes: q, k, v [B, T, H, N, D]; k_ctx, v_ctx [B, H, K, D]; shift [H]. Returns the output and the log-sum-exp
    of every query row (what the split kernels must reproduce).
    """
    t = q.shape[1]
    keys = torch.cat([k, k_ctx[:, None].expand(-1, t, -1, -1, -1)], dim=-2)
    values = torch.cat([v, v_ctx[:, None].expand(-1, t, -1, -1, -1)], dim=-2)
    logits = q @ keys.transpose(-2, -1) * scale
    logits = torch.cat([logits[..., : k.shape[-2]], logits[..., k.shape[-2] :] + shift[:, None, None]], dim=-1)
    return logits.softmax(-1) @ values, logits.logsumexp(-1)


def merge_schedule(num_tokens: int, k: int, r: int) -> list[int]:
    """How many tokens each bipartite step merges to go from `num_tokens` down to `k` (the official schedule)."""
    steps: list[int] = []
    count = num_tokens
    for _ in range(max(0, (num_tokens - k) // r)):
        merged = min(r, count // 2)
        steps.append(merged)
        count -= merged
    while count > k:
        merged = min(count - k, count // 2)
        steps.append(merged)
        count -= merged
    return steps


def bipartite_merge_step(
    tokens: list[Tensor], sizes: list[float], sources: list[list[int]], r: int
) -> tuple[list[Tensor], list[float], list[list[int]]]:
    """One step of bipartite soft matching that merges `r` tokens (Bolya et al. 2023).

    Args:
        tokens: the current tokens, each [D].
        sizes: how many original tokens each current token stands for.
        sources: for each current token, the ids of the original tokens it contains.
        r: number of A tokens to merge away (at most the number of B tokens).

    Returns:
        The new (tokens, sizes, sources): the unmerged A tokens, best score first, then every B token in
        its original order (merged B tokens are size-weighted means).
    """
    a_positions = list(range(0, len(tokens), 2))  # set A: even positions
    b_positions = list(range(1, len(tokens), 2))  # set B: odd positions
    if r > len(b_positions):
        raise ValueError(f"cannot merge {r} tokens with only {len(b_positions)} B tokens")
    unit = [x / torch.sqrt((x * x).sum()) for x in tokens]  # cosine similarity on a unit-norm copy

    # Each A token picks its most similar B token (the first one on an exact tie).
    best_score: list[float] = []
    best_b: list[int] = []
    for a in a_positions:
        scores = [float((unit[a] * unit[b]).sum()) for b in b_positions]
        j = max(range(len(scores)), key=lambda i: scores[i])
        best_score.append(scores[j])
        best_b.append(j)

    # A tokens sorted by their best score, highest first (stable: earlier position first on an exact tie).
    a_order = sorted(range(len(a_positions)), key=lambda i: best_score[i], reverse=True)
    merged_a, kept_a = a_order[:r], a_order[r:]

    new_tokens: list[Tensor] = []
    new_sizes: list[float] = []
    new_sources: list[list[int]] = []
    for i in kept_a:
        p = a_positions[i]
        new_tokens.append(tokens[p])
        new_sizes.append(sizes[p])
        new_sources.append(list(sources[p]))
    for j, b in enumerate(b_positions):
        members = [b] + [a_positions[i] for i in merged_a if best_b[i] == j]
        total_size = sum(sizes[m] for m in members)
        weighted_sum = sum(sizes[m] * tokens[m] for m in members)
        new_tokens.append(weighted_sum / total_size)
        new_sizes.append(total_size)
        new_sources.append(sorted(s for m in members for s in sources[m]))
    return new_tokens, new_sizes, new_sources


def summarise_tokens(tokens: list[Tensor], k: int, r: int) -> tuple[list[Tensor], list[float], list[list[int]]]:
    """Merge `tokens` down to `k` with `merge_schedule`; every token starts with size 1.

    Returns (tokens, sizes, sources), sources indexing the input list.
    """
    sizes = [1.0] * len(tokens)
    sources = [[i] for i in range(len(tokens))]
    for r_step in merge_schedule(len(tokens), k, r):
        tokens, sizes, sources = bipartite_merge_step(tokens, sizes, sources, r_step)
    return tokens, sizes, sources


# --------------------------------------------------------------------------------------------------------------
# Vision.
# --------------------------------------------------------------------------------------------------------------


def _embed_frame(w: _Weights, frame: Tensor, patch: int, pos: Tensor) -> Tensor:
    """Patch embedding + class token + positional embedding of one frame [3, H, W] -> [N, D] (CLIP's embedding)."""
    conv = w("image_encoder.conv1.weight")  # [D, 3, patch, patch]
    width = conv.shape[0]
    _, height, frame_width = frame.shape
    rows = []
    for i in range(height // patch):  # patches row by row, as the conv output flattens
        for j in range(frame_width // patch):
            pixels = frame[:, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch]  # [3, patch, patch]
            rows.append((conv.reshape(width, -1) * pixels.reshape(1, -1)).sum(dim=1))  # no bias
    tokens = torch.cat([w("image_encoder.class_embedding")[None], torch.stack(rows)])  # [N, D]
    return tokens + pos


def _positional_tables(w: _Weights, cfg: TCCLIPConfig, num_frames: int) -> list[Tensor]:
    """The [N, D] positional table of each frame: CLIP's for all, or the joint [T, N, D] table's rows."""
    table = w("image_encoder.positional_embedding")
    if table.dim() == 3:
        if cfg.positional_embedding_type != "joint":
            raise ValueError("the state dict has a joint [T, N, D] positional embedding but cfg says 'space'")
        if table.shape[0] != num_frames:
            raise ValueError(f"joint positional embedding is for {table.shape[0]} frames, the video has {num_frames}")
        return [table[t] for t in range(num_frames)]
    if cfg.positional_embedding_type == "joint":
        raise ValueError("cfg says positional_embedding_type='joint' but the state dict has a [N, D] table")
    return [table] * num_frames


def _tc_layer(
    w: _Weights,
    cfg: TCCLIPConfig,
    layer: int,
    frames: Tensor,
    context: Tensor | None,
) -> tuple[Tensor, Tensor, list[list[int]], list[list[int]]]:
    """One TC layer for one video (paper: "Temporal Contextualization").

    Args:
        frames: [T, N, D] frame tokens.
        context: [K, D] context tokens of the previous layer, or None for layer 0.

    Returns:
        New frame tokens [T, N, D], new context tokens [K, D], seed patch indices per frame (best first), and
        for each context token the ids t*P+p of the seed patches merged into it.
    """
    prefix = f"image_encoder.transformer.resblocks.{layer}"
    heads = cfg.clip.vision.heads
    num_frames, n, _ = frames.shape
    num_patches = n - 1
    s = cfg.num_seeds(num_patches)
    maps = _split_qkv_maps(w, f"{prefix}.attn")

    # a. ln_1 on the whole input (frame tokens and incoming context tokens).
    h_frames = _ln(w, f"{prefix}.ln_1", frames)
    h_context = None if context is None else _ln(w, f"{prefix}.ln_1", context)

    # b. Local-global bias (layers >= 1): b_local on the N frame keys, b_global on the K context keys.
    use_bias = cfg.local_global_bias and layer >= 1 and context is not None
    table = w(f"{prefix}.attn.local_global_bias_table") if use_bias else None  # [heads, 1, 2]

    attended = []
    seeds: list[list[int]] = []
    for t in range(num_frames):
        # b. Frame t's queries see frame t's tokens and all context tokens.
        key_value = h_frames[t] if h_context is None else torch.cat([h_frames[t], h_context])  # [N (+K), D]
        num_keys = key_value.shape[0]
        bias = torch.zeros(heads, n, num_keys, dtype=frames.dtype)
        if table is not None:
            for h in range(heads):
                bias[h, :, :n] = table[h, 0, 0]  # b_local
                bias[h, :, n:] = table[h, 0, 1]  # b_global
        out, probs = _attention(h_frames[t], key_value, *maps, heads=heads, logit_bias=bias)
        attended.append(out)

        # c. Seeds: class-token query row, the frame's P patch key columns, mean over heads, top s.
        scores = []
        for p in range(num_patches):
            scores.append(sum(float(probs[h, 0, 1 + p]) for h in range(heads)) / heads)
        ranked = sorted(range(num_patches), key=lambda p: scores[p], reverse=True)
        seeds.append(ranked[:s])

    # d. Residual on the frame tokens; the incoming context tokens are dropped.
    frames = frames + torch.stack(attended)  # [T, N, D]

    # e. Context summarisation: seed tokens frame by frame, each frame's in seed order, merged down to K.
    seed_tokens = [frames[t, 1 + p] for t in range(num_frames) for p in seeds[t]]
    seed_ids = [t * num_patches + p for t in range(num_frames) for p in seeds[t]]
    merged, _, sources = summarise_tokens(seed_tokens, cfg.context_token_k, cfg.tome_r)
    new_context = torch.stack(merged)  # [K, D]
    merged_ids = [[seed_ids[i] for i in group] for group in sources]

    # f. MLP residual on frame tokens and context tokens together.
    x = torch.cat([frames.reshape(num_frames * n, -1), new_context])  # [T*N + K, D]
    x = x + _mlp(w, f"{prefix}.mlp", _ln(w, f"{prefix}.ln_2", x))
    return x[: num_frames * n].reshape(num_frames, n, -1), x[num_frames * n :], seeds, merged_ids


def _readout(w: _Weights, tokens: Tensor) -> Tensor:
    """ln_post then proj (CLIP's readout): [M, D] -> [M, E]."""
    return _ln(w, "image_encoder.ln_post", tokens) @ w("image_encoder.proj")


def _tc_vision(w: _Weights, cfg: TCCLIPConfig, video: Tensor) -> dict[str, list]:
    """The TC vision encoder for every video, one at a time."""
    vision = cfg.clip.vision
    _, num_frames, _, _, _ = video.shape
    positional = _positional_tables(w, cfg, num_frames)
    result: dict[str, list] = {"embedding": [], "context": [], "seeds": [], "sources": []}
    for video_frames in video:
        # 1-2. Embed every frame, lay out frame-major, ln_pre.
        frames = torch.stack(
            [_embed_frame(w, video_frames[t], vision.patch_size, positional[t]) for t in range(num_frames)]
        )
        frames = _ln(w, "image_encoder.ln_pre", frames)  # [T, N, D]
        num_patches = frames.shape[1] - 1
        context = None
        per_layer_context, per_layer_seeds, per_layer_sources = [], [], []
        for layer in range(vision.layers):
            frames, context, seeds, merged_ids = _tc_layer(w, cfg, layer, frames, context)
            # 4. Readout of this layer: class tokens then context tokens, ln_post + proj.
            readout = _readout(w, torch.cat([frames[:, 0], context]))  # [T + K, E]
            class_tokens = readout[:num_frames]
            per_layer_context.append(readout[num_frames:])
            per_layer_seeds.append(torch.tensor(seeds, dtype=torch.long))
            sources = torch.zeros(len(merged_ids), num_frames * num_patches, dtype=video.dtype)
            for k, ids in enumerate(merged_ids):
                for i in ids:
                    sources[k, i] = 1
            per_layer_sources.append(sources)
        embedding = class_tokens.mean(dim=0)  # last layer's class tokens, mean over T
        result["embedding"].append(embedding / torch.sqrt((embedding * embedding).sum()))
        result["context"].append(per_layer_context)
        result["seeds"].append(per_layer_seeds)
        result["sources"].append(per_layer_sources)
    return result


def _frame_vision(w: _Weights, cfg: TCCLIPConfig, video: Tensor) -> list[Tensor]:
    """Plain CLIP image encoder per frame, frame embeddings averaged (ViFi-CLIP, vanilla CLIP)."""
    vision = cfg.clip.vision
    heads = vision.heads
    _, num_frames, _, _, _ = video.shape
    positional = _positional_tables(w, cfg, num_frames)
    embeddings = []
    for video_frames in video:
        frame_embeddings = []
        for t in range(num_frames):
            x = _ln(w, "image_encoder.ln_pre", _embed_frame(w, video_frames[t], vision.patch_size, positional[t]))
            for layer in range(vision.layers):
                prefix = f"image_encoder.transformer.resblocks.{layer}"
                h = _ln(w, f"{prefix}.ln_1", x)
                out, _ = _attention(h, h, *_split_qkv_maps(w, f"{prefix}.attn"), heads=heads)
                x = x + out
                x = x + _mlp(w, f"{prefix}.mlp", _ln(w, f"{prefix}.ln_2", x))
            frame_embeddings.append(_readout(w, x[0]))
        embedding = torch.stack(frame_embeddings).mean(dim=0)
        embeddings.append(embedding / torch.sqrt((embedding * embedding).sum()))
    return embeddings


# --------------------------------------------------------------------------------------------------------------
# Text.
# --------------------------------------------------------------------------------------------------------------


def process_class_name_reference(name: str, parse_camel_case: bool = True) -> str:
    """Official class-name parsing: a space before every capital letter (then strip), then `_` -> space."""
    if parse_camel_case:
        name = re.sub(r"([A-Z])", r" \1", name).strip()
    return name.replace("_", " ")


def _tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def tokenize_prompts_reference(texts: Sequence[str], context_length: int) -> list[list[int]]:
    """CLIP BPE: [start] + tokens + [end], zero-padded to `context_length`; too long is an error."""
    tokenizer = _tokenizer()
    rows = []
    for text in texts:
        ids = [tokenizer.sot_token_id, *tokenizer.encode(text), tokenizer.eot_token_id]
        if len(ids) > context_length:
            raise ValueError(
                f"the prompt {text!r} is {len(ids)} tokens long, more than context_length={context_length}; "
                "raise context_length (77 is CLIP's maximum) or shorten the class name"
            )
        rows.append(ids + [0] * (context_length - len(ids)))
    return rows


def _prompt_texts(cfg: TCCLIPConfig, class_names: Sequence[str]) -> list[str]:
    """The text of each class (learnable-prompt prefix for TC-CLIP, fixed templates for the baselines)."""
    names = [process_class_name_reference(c, cfg.parse_class_names) for c in class_names]
    if cfg.model == "clip":
        return names
    if cfg.model == "vifi_clip":
        return [f"a photo of a {c}." for c in names]
    # TC-CLIP: positions 1..n_ctx are replaced by the learnable vectors, so only the words after them matter.
    # "a photo of a" is 4 BPE tokens; for another ctx_init that is not exactly n_ctx tokens, use n_ctx
    # one-token placeholders (CLIP's BPE codes word by word, so the class-name tokens are the same).
    prefix = cfg.ctx_init
    if not prefix or len(_tokenizer().encode(prefix)) != cfg.n_ctx:
        prefix = " ".join(["X"] * cfg.n_ctx)
    return [f"{prefix} {c}." for c in names]


def _text_block(w: _Weights, prefix: str, x: Tensor, heads: int, causal_bias: Tensor) -> Tensor:
    """One causal CLIP text block on one prompt [L, W]."""
    h = _ln(w, f"{prefix}.ln_1", x)
    out, _ = _attention(h, h, *_split_qkv_maps(w, f"{prefix}.attn"), heads=heads, logit_bias=causal_bias)
    x = x + out
    return x + _mlp(w, f"{prefix}.mlp", _ln(w, f"{prefix}.ln_2", x))


def _prompt_generation(w: _Weights, index: int, ctx: Tensor, context_tokens: Tensor, heads: int) -> Tensor:
    """Video-conditional prompt generation: ctx = ctx + MHA(ln_1(ctx), ln_1_kv(context)); ctx = ctx + mlp(ln_2(ctx))."""
    prefix = f"text_encoder.prompt_generation_layer.{index}"
    query = _ln(w, f"{prefix}.ln_1", ctx)
    key_value = _ln(w, f"{prefix}.ln_1_kv", context_tokens)
    out, _ = _attention(query, key_value, *_split_qkv_maps(w, f"{prefix}.attn"), heads=heads)
    ctx = ctx + out
    return ctx + _mlp(w, f"{prefix}.mlp", _ln(w, f"{prefix}.ln_2", ctx))


def _token_embedding(w: _Weights) -> Tensor:
    for name in ("prompt_learner.token_embedding.weight", "text_encoder.token_embedding.weight"):
        if name in w:
            return w(name)
    raise KeyError("reference_forward: the state dict has no token embedding (prompt_learner.token_embedding.weight)")


def _encode_text(
    w: _Weights,
    cfg: TCCLIPConfig,
    token_ids: list[int],
    context_per_level: list[Tensor] | None,
) -> Tensor:
    """One prompt through the text tower (paper: "Video-conditional Prompting"); its L2-normalised feature [E].

    `context_per_level` (TC-CLIP only): the video's context tokens [K, E] for each prompt-generation level.
    """
    text = cfg.clip.text
    length = len(token_ids)
    table = _token_embedding(w)
    x = torch.stack([table[i] for i in token_ids])  # [L, W]
    if context_per_level is not None:
        x[1 : 1 + cfg.n_ctx] = w("prompt_learner.ctx")  # [start][n_ctx learnable][the rest]
    x = x + w("text_encoder.positional_embedding")[:length]

    causal = torch.zeros(length, length, dtype=x.dtype)
    for i in range(length):
        for j in range(i + 1, length):
            causal[i, j] = -math.inf  # a position sees itself and earlier positions only
    causal_bias = causal[None].expand(text.heads, length, length)

    for block in range(text.layers):
        level = block + 1  # 1-based: the level names the block it runs before
        if context_per_level is not None and level in cfg.prompt_generation_layer_level:
            m = cfg.prompt_generation_layer_level.index(level)
            x = x.clone()
            x[1 : 1 + cfg.n_ctx] = _prompt_generation(w, m, x[1 : 1 + cfg.n_ctx], context_per_level[m], text.heads)
        x = _text_block(w, f"text_encoder.transformer.resblocks.{block}", x, text.heads, causal_bias)

    x = _ln(w, "text_encoder.ln_final", x)
    end = max(range(length), key=lambda i: token_ids[i])  # the end token has the largest id
    feature = x[end] @ w("text_encoder.text_projection")
    return feature / torch.sqrt((feature * feature).sum())


# --------------------------------------------------------------------------------------------------------------
# The whole model.
# --------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def reference_forward(
    state_dict: Mapping[str, Tensor],
    cfg: TCCLIPConfig,
    class_names: Sequence[str],
    video: Tensor,
) -> ReferenceOutput:
    """The forward pass of TC-CLIP (or ViFi-CLIP / vanilla CLIP, by `cfg.model`), slowly and plainly.

    Args:
        state_dict: weights in the tcclip layout (`model.state_dict()`), including
            `prompt_learner.token_embedding.weight`.
        cfg: the model config.
        class_names: raw class names (processed as `process_class_name_reference`).
        video: [B, T, 3, H, W] normalised pixels; its dtype is the compute dtype.

    Returns:
        Logits, embeddings and the per-layer TC internals.
    """
    if video.dim() != 5 or video.shape[2] != 3:
        raise ValueError(f"video must be [B, T, 3, H, W], got {tuple(video.shape)}")
    if not video.dtype.is_floating_point:
        raise ValueError(f"video must be a float tensor, got {video.dtype}")
    video = video.detach().cpu()
    w = _Weights(state_dict, video.dtype)
    vision, text = cfg.clip.vision, cfg.clip.text
    if video.shape[-1] != vision.image_size or video.shape[-2] != vision.image_size:
        raise ValueError(f"frames must be {vision.image_size}x{vision.image_size}, got {tuple(video.shape[-2:])}")
    token_rows = tokenize_prompts_reference(_prompt_texts(cfg, class_names), cfg.context_length)
    logit_scale = torch.exp(w("logit_scale"))

    if cfg.model in ("vifi_clip", "clip"):
        video_embeddings = _frame_vision(w, cfg, video)
        class_features = torch.stack([_encode_text(w, cfg, ids, None) for ids in token_rows])  # [C, E]
        text_features = torch.stack([class_features] * len(video_embeddings))  # [B, C, E]
        empty: list[Tensor] = []
        context_tokens, seed_indices, merge_sources = empty, list(empty), list(empty)
    else:
        levels = cfg.prompt_generation_layer_level
        if max(levels) > text.layers:
            raise ValueError(
                f"prompt_generation_layer_level {levels} names a block beyond the {text.layers} text blocks"
            )
        readout_layers = [vision.layers - text.layers + level - 1 for level in levels]
        if min(readout_layers) < 0:
            raise ValueError(f"prompt_generation_layer_level {levels} maps to a vision layer below 0")
        tc = _tc_vision(w, cfg, video)
        video_embeddings = tc["embedding"]
        text_features = torch.stack(
            [
                torch.stack(
                    [
                        _encode_text(w, cfg, ids, [tc["context"][b][layer] for layer in readout_layers])
                        for ids in token_rows
                    ]
                )
                for b in range(len(video_embeddings))
            ]
        )  # [B, C, E]: every video runs every class through all text blocks (no sharing)
        context_tokens = [
            torch.stack([per_video[layer] for per_video in tc["context"]]) for layer in range(vision.layers)
        ]
        seed_indices = [torch.stack([per_video[layer] for per_video in tc["seeds"]]) for layer in range(vision.layers)]
        merge_sources = [
            torch.stack([per_video[layer] for per_video in tc["sources"]]) for layer in range(vision.layers)
        ]

    video_embedding = torch.stack(video_embeddings)  # [B, E]
    logits = torch.stack(
        [
            torch.stack(
                [logit_scale * (video_embedding[b] * text_features[b, c]).sum() for c in range(len(token_rows))]
            )
            for b in range(video_embedding.shape[0])
        ]
    )  # cosine (both unit norm) times exp(logit_scale)
    return ReferenceOutput(
        logits=logits,
        video_embedding=video_embedding,
        text_features=text_features,
        context_tokens=context_tokens,
        seed_indices=seed_indices,
        merge_sources=merge_sources,
    )
