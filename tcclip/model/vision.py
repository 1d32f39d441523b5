"""Vision encoders: TC-CLIP's temporally contextualised ViT (spec 2) and the plain per-frame CLIP ViT (spec 4).

Both keep CLIP's parameter names with the attention split into `q_proj`, `k_proj`, `v_proj`, `out_proj`, the layout
of the official checkpoints, and work in any floating dtype (float64 after `.double()` for exactness checks, spec 9).

Shapes: B videos, T frames, N = 1 + P tokens per frame (class token first), D width, H heads, K context tokens,
s seed tokens per frame, E joint embedding width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tcclip.model.config import CLIPVisionCfg, TCCLIPConfig
from tcclip.model.layers import MLP, ExecutionPath, LayerNorm, linear
from tcclip.model.token_merging import summarise, take_rows

__all__ = [
    "FrameVisionEncoder",
    "TCAttention",
    "TCVisionEncoder",
    "VisionBlock",
    "VisionOutput",
    "clip_to_vision_state",
]


@dataclass
class VisionOutput:
    """What a vision encoder returns for a batch of videos."""

    video_embedding: Tensor
    """[B, E] mean over T of the last layer's class tokens after ln_post + proj, L2-normalised."""
    context_tokens: list[Tensor]
    """One [B, K, E] per requested readout layer (after ln_post + proj), in the requested order."""
    seed_indices: list[Tensor] | None = None
    """return_details only: one [B, T, s] per layer, patch indices 0..P-1 of each frame's seeds, best first."""
    merge_sources: list[Tensor] | None = None
    """return_details only: one [B, K, T*P] 0/1 per layer: input patch t*P+p was merged into context token k."""


_flash_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_attention_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _per_video(x: Tensor) -> Tensor:
    """[B, T, H, N, ...] -> [B, H, T*N, ...]: every query of a video in one sequence (a view for q-like layouts)."""
    return x.transpose(1, 2).flatten(2, 3)


class _ContextAttention(torch.autograd.Function):
    """Softmax attention of each frame's queries over [its own keys ; the video's context keys], in two parts.

    Part 1: frame t's N queries on its N keys (one flash call over B*T frames). Part 2: all T*N queries of a video
    on its K context keys (one flash call over B videos), so the context keys/values are never repeated per frame.
    With log-sum-exps l1, l2 (+ `shift` on the context logits) and l = logaddexp(l1, l2), the attention over all
    keys is o1 * exp(l1 - l) + o2 * exp(l2 - l). Backward: the flash backward kernel of each part, given the merged
    output and log-sum-exp, yields exactly that part's share of the gradients (its probabilities are
    exp(logit - l)); the shift's gradient follows from the context values' gradient and w2 = exp(l2 - l), so
    nothing is recomputed and only w2 ([B, T, H, N]) is kept besides the inputs, output and log-sum-exp.

    Inputs: q, k, v [B, T, H, N, dh]; k_ctx, v_ctx [B, H, K, dh]; shift [H] or None; scale. Outputs: the attention
    [B, T, H, N, dh] and the log-sum-exp [B, T, H, N] (no gradient).
    """

    @staticmethod
    def _context_part(q: Tensor, k_ctx: Tensor, v_ctx: Tensor, shift: Tensor | None, scale: float):
        b, t, h, n, _ = q.shape
        out, lse = _flash_attention(_per_video(q), k_ctx, v_ctx, 0.0, False, scale=scale)
        out = out.unflatten(2, (t, n)).transpose(1, 2)  # [B, T, H, N, dh]
        lse = lse.unflatten(2, (t, n)).transpose(1, 2)  # [B, T, H, N]
        return out, lse if shift is None else lse + shift.to(lse.dtype)[:, None]

    @staticmethod
    def forward(ctx, q, k, v, k_ctx, v_ctx, shift, scale):
        b, t = q.shape[:2]
        with torch.autocast("cpu", enabled=False):
            o1, l1 = _flash_attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), 0.0, False, scale=scale)
            o1, l1 = o1.unflatten(0, (b, t)), l1.unflatten(0, (b, t))
            o2, l2 = _ContextAttention._context_part(q, k_ctx, v_ctx, shift, scale)
            lse = torch.logaddexp(l1, l2)
            w2 = (l2 - lse).exp()[..., None]
            out = (o1 + w2 * (o2 - o1)).to(q.dtype)  # w1 * o1 + w2 * o2 with w1 = 1 - w2
        ctx.save_for_backward(q, k, v, k_ctx, v_ctx, shift, out, lse, w2[..., 0] if ctx.needs_input_grad[5] else None)
        ctx.scale = scale
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, _grad_lse):
        q, k, v, k_ctx, v_ctx, shift, out, lse, w2 = ctx.saved_tensors
        scale = ctx.scale
        b, t = q.shape[:2]
        with torch.autocast("cpu", enabled=False):
            g = grad_out.contiguous()
            gq, gk, gv = _flash_attention_backward(
                g.flatten(0, 1), q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), out.flatten(0, 1),
                lse.flatten(0, 1), 0.0, False, scale=scale,
            )  # fmt: skip
            lse_ctx = lse if shift is None else lse - shift.to(lse.dtype)[:, None]  # the part's own logits
            gq_ctx, gk_ctx, gv_ctx = _flash_attention_backward(
                _per_video(g).contiguous(), _per_video(q), k_ctx, v_ctx, _per_video(out).contiguous(),
                _per_video(lse_ctx).contiguous(), 0.0, False, scale=scale,
            )  # fmt: skip
            grad_q = gq.unflatten(0, (b, t)) + gq_ctx.unflatten(2, (t, q.shape[3])).transpose(1, 2)
            grad_shift = None
            if w2 is not None:
                # d shift = sum over queries i and context keys j of dS_ij = P_ij (dO_i.v_j - dO_i.O_i), per head;
                # sum_ij P_ij dO_i.v_j = sum_j v_j.dv_j and sum_j P_ij = w2_i.
                dot_out = (g * out).sum(-1, dtype=lse.dtype)  # [B, T, H, N]
                through_values = (v_ctx * gv_ctx).sum((0, 2, 3), dtype=lse.dtype)  # [H]
                grad_shift = (through_values - (w2 * dot_out).sum((0, 1, 3))).to(shift.dtype)
        return grad_q, gk.unflatten(0, (b, t)), gv.unflatten(0, (b, t)), gk_ctx, gv_ctx, grad_shift, None


class TCAttention(nn.Module):
    """Per-frame multi-head attention whose keys/values are the frame's tokens plus the video's context tokens.

    With no context tokens this is CLIP's attention, one frame at a time. With context tokens (spec 2.3b) the
    queries of frame t attend over [frame t's N tokens ; the K context tokens], and the optional local-global bias
    adds b_local (per head) to the frame-key logits and b_global to the context-key logits.

    Execution paths (`execution_path`, see `tcclip.model.layers`):

    - `fast`: fused attention kernels that never materialise the [T, H, N, N + K] probabilities. On the CPU with
      context tokens (`_ContextAttention`), the frame keys and the context keys go to two flash-attention calls:
      each frame's queries on its own N keys, and all T*N queries of a video on its K context keys (projected
      once per video, never repeated per frame). Their log-sum-exps merge the two into the softmax over all
      N + K keys, and the local-global bias enters as a shift of the context log-sum-exp; the backward pass runs
      the flash backward kernel on each part with the merged output and log-sum-exp. Elsewhere (CUDA, or no
      context): `F.scaled_dot_product_attention` (flash / memory-efficient) with the context keys/values copied
      next to each frame's and the bias as an additive [H, 1, N + K] mask (2*T*K*D more elements per video and
      layer; CUDA's memory-efficient kernel gives the mask its gradient). The class-token row for seed selection
      is computed on its own (one query per frame, no gradient, as only the ranking is used).
    - `reference`: the official form: context keys/values repeated per frame, explicit logits, softmax and
      probabilities; the seed scores are read from those probabilities.
    """

    def __init__(self, width: int, heads: int, local_global_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)
        if local_global_bias:
            # [heads, 1, 2]: (b_local, b_global) per head; not in CLIP, so it keeps this initialisation.
            self.local_global_bias_table = nn.Parameter(torch.empty(heads, 1, 2))
            nn.init.trunc_normal_(self.local_global_bias_table, std=0.02)
        else:
            self.register_parameter("local_global_bias_table", None)
        self.execution_path: ExecutionPath = "fast"
        self.split_context_keys = True  # False: the CPU fast path copies the context keys per frame (as on CUDA)

    def _split_heads(self, x: Tensor) -> Tensor:
        """[..., M, D] -> [..., H, M, D/H] (a view)."""
        return x.unflatten(-1, (self.heads, -1)).transpose(-3, -2)

    def _key_bias(self, num_frame_keys: int, num_context: int, dtype: torch.dtype) -> Tensor | None:
        """[H, N + K] additive logit bias: b_local on the frame keys, b_global on the context keys (or None)."""
        if self.local_global_bias_table is None or num_context == 0:
            return None
        table = self.local_global_bias_table.to(dtype)  # [H, 1, 2]
        return torch.cat([table[..., 0].expand(-1, num_frame_keys), table[..., 1].expand(-1, num_context)], dim=-1)

    def forward(
        self, x: Tensor, context: Tensor | None = None, class_scores: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Attention output for the frame tokens, and optionally the class-token attention over the patches.

        Args:
            x: [B, T, N, D] layer-normed frame tokens (the queries).
            context: [B, K, D] layer-normed context tokens (keys/values shared by all frames), or None.
            class_scores: also return the class-token query's attention probabilities on the frame's P patch keys,
                averaged over heads (spec 2.3c).

        Returns:
            ([B, T, N, D] output, [B, T, P] class-token scores or None).
        """
        b, t, n, d = x.shape
        scale = (d // self.heads) ** -0.5
        q, k, v, k_ctx, v_ctx = self._project(x, context)  # q/k/v [B, T, H, N, dh], k/v_ctx [B, H, K, dh] or None
        if self._split_context_keys(x, context):
            out, scores = self._attend_split(q, k, v, k_ctx, v_ctx, scale, class_scores)
        else:
            if k_ctx is not None:  # every frame attends to the same context keys/values: repeat them per frame
                k = torch.cat([k, k_ctx.unsqueeze(1).expand(-1, t, -1, -1, -1)], dim=-2)  # [B, T, H, N + K, dh]
                v = torch.cat([v, v_ctx.unsqueeze(1).expand(-1, t, -1, -1, -1)], dim=-2)
            bias = self._key_bias(n, k.shape[-2] - n, q.dtype)  # [H, N + K] or None
            if self.execution_path == "reference":
                logits = (q * scale) @ k.transpose(-2, -1)  # [B, T, H, N, N + K]
                if bias is not None:
                    logits = logits + bias[:, None]
                probs = logits.softmax(dim=-1)
                out = probs @ v  # [B, T, H, N, dh]
                scores = probs[..., 0, 1:n].mean(dim=2).detach() if class_scores else None
            else:
                mask = None if bias is None else bias[None, :, None]  # [1, H, 1, N + K]: over frames and queries
                out = F.scaled_dot_product_attention(
                    q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), mask, scale=scale
                ).unflatten(0, (b, t))  # [B, T, H, N, dh]
                scores = self._class_patch_scores(q[..., 0, :], k, bias, scale, n) if class_scores else None
        matmul = F.linear if self.execution_path == "reference" else linear
        out = matmul(out.transpose(-3, -2).flatten(-2), self.out_proj.weight, self.out_proj.bias)  # [B, T, N, D]
        return out, scores

    def _split_context_keys(self, x: Tensor, context: Tensor | None) -> bool:
        """Whether the fast path attends to frame and context keys in two kernel calls (`_ContextAttention`)."""
        return (
            self.split_context_keys
            and self.execution_path == "fast"
            and context is not None
            and x.device.type == "cpu"
            and x.dtype.is_floating_point
        )

    def _attend_split(
        self, q: Tensor, k: Tensor, v: Tensor, k_ctx: Tensor, v_ctx: Tensor, scale: float, class_scores: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Attention with the context keys kept apart (see the class docstring): [B, T, H, N, dh] and the scores."""
        n = q.shape[-2]
        table = self.local_global_bias_table
        # Only b_global - b_local matters: a shift shared by all keys of a query leaves the softmax unchanged.
        shift = None if table is None else table[:, 0, 1] - table[:, 0, 0]  # [H]
        out, lse = _ContextAttention.apply(q, k, v, k_ctx, v_ctx, shift, scale)  # [B, T, H, N, dh], [B, T, H, N]
        scores = None
        if class_scores:
            with torch.no_grad():  # p(class query -> patch j) = exp(logit - lse), the frame keys carrying no shift
                logits = (q[..., :1, :] @ k[..., 1:n, :].transpose(-2, -1)).squeeze(-2) * scale  # [B, T, H, P]
                scores = (logits - lse[..., :1].to(logits.dtype)).exp().mean(dim=2)
        return out, scores

    def _project(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, ...]:
        """Queries, keys and values per head, and the context keys/values (projected once per video) or None."""
        matmul = F.linear if self.execution_path == "reference" else linear  # the reference path: torch's default
        q, k, v = (self._split_heads(matmul(x, m.weight, m.bias)) for m in (self.q_proj, self.k_proj, self.v_proj))
        if context is None:
            return q, k, v, None, None
        k_ctx, v_ctx = (self._split_heads(matmul(context, m.weight, m.bias)) for m in (self.k_proj, self.v_proj))
        return q, k, v, k_ctx, v_ctx

    @staticmethod
    @torch.no_grad()
    def _class_patch_scores(q_cls: Tensor, keys: Tensor, bias: Tensor | None, scale: float, n: int) -> Tensor:
        """Head-averaged attention probabilities of each frame's class query on its P patch keys: [B, T, P].

        Normalised over all keys the query sees (frame and context, bias included), as in the attention itself.
        Only their ranking is used (the seeds are indices), so no gradient is recorded.

        Args:
            q_cls: [B, T, H, dh] class-token queries.
            keys: [B, T, H, N (+ K), dh] the keys each frame attends to.
            bias: [H, N (+ K)] additive logit bias or None.
            n: N, the frame's own keys (class key first).
        """
        logits = (q_cls.unsqueeze(-2) @ keys.transpose(-2, -1)).squeeze(-2) * scale  # [B, T, H, N (+ K)]
        if bias is not None:
            logits = logits + bias
        return logits.softmax(dim=-1)[..., 1:n].mean(dim=2)  # patch columns (not the class key), mean over heads


@dataclass
class _LayerResult:
    frames: Tensor
    context: Tensor | None
    seeds: Tensor | None
    sources: Tensor | None


class VisionBlock(nn.Module):
    """CLIP's pre-norm residual block with split q/k/v attention, run plainly or as a TC layer."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, local_global_bias: bool = False) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = TCAttention(width, heads, local_global_bias)
        self.ln_2 = LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio)

    def forward(self, frames: Tensor) -> Tensor:
        """Plain CLIP block on every frame: [B, T, N, D] -> [B, T, N, D]."""
        frames = frames + self.attn(self.ln_1(frames))[0]
        return frames + self.mlp(self.ln_2(frames))

    def forward_tc(
        self,
        frames: Tensor,
        context: Tensor | None,
        num_seeds: int,
        num_context: int,
        tome_r: int,
        track_sources: bool,
    ) -> _LayerResult:
        """One TC layer (spec 2.3 a-f).

        Args:
            frames: [B, T, N, D] frame tokens.
            context: [B, K, D] context tokens of the previous layer, or None (layer 0).
            num_seeds: s, seed tokens per frame.
            num_context: K, context tokens to produce.
            tome_r: tokens merged per bipartite step.
            track_sources: also return the seed indices and the merge source maps.
        """
        b, t, n, d = frames.shape
        num_patches = n - 1
        h_context = None if context is None else self.ln_1(context)
        attended, scores = self.attn(self.ln_1(frames), h_context, class_scores=True)
        frames = frames + attended  # d. the incoming context tokens served as keys/values only

        # c. Seeds: the s patches with the highest class-token attention in each frame, best first.
        seeds = scores.topk(num_seeds, dim=-1, sorted=True).indices  # [B, T, s]
        # e. Seed tokens frame by frame, each frame's in seed order, merged down to K context tokens.
        rows = seeds + 1 + torch.arange(t, device=seeds.device)[:, None] * n  # [B, T, s] token t*N + 1 + p
        seed_tokens = take_rows(frames.flatten(1, 2), rows.flatten(1))  # [B, T*s, D]
        sources = None
        if track_sources:
            patch_ids = seeds + torch.arange(t, device=seeds.device)[:, None] * num_patches  # t*P + p, [B, T, s]
            sources = frames.new_zeros(b, t * num_seeds, t * num_patches)
            sources.scatter_(2, patch_ids.reshape(b, t * num_seeds, 1), 1.0)  # one-hot rows
        new_context, sources = summarise(seed_tokens, num_context, tome_r, sources)  # [B, K, D]

        # f. MLP residual on the frame tokens and the new context tokens (token-wise, so applied to each).
        frames = frames + self.mlp(self.ln_2(frames))
        new_context = new_context + self.mlp(self.ln_2(new_context))
        return _LayerResult(frames, new_context, seeds if track_sources else None, sources)


class VisionTransformer(nn.Module):
    """Holds the blocks under the name `resblocks`, as CLIP and the official checkpoints do."""

    def __init__(self, blocks: Sequence[VisionBlock]) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(blocks)


def clip_to_vision_state(
    clip_state: Mapping[str, Tensor], layers: int, joint_frames: int | None = None
) -> dict[str, Tensor]:
    """CLIP's `visual.*` tensors (OpenAI layout) renamed to the vision encoders' layout.

    `in_proj_weight` / `in_proj_bias` are split into q, k, v (three equal row blocks, in that order, spec 1).
    With `joint_frames=T` the positional table becomes the joint [T, N, D] table, CLIP's repeated T times.
    The local-global bias is not in CLIP and is absent from the result.
    """
    prefix = "visual."
    visual = {k[len(prefix) :]: v for k, v in clip_state.items() if k.startswith(prefix)}
    out: dict[str, Tensor] = {}
    for name, tensor in visual.items():
        if name.endswith(".attn.in_proj_weight") or name.endswith(".attn.in_proj_bias"):
            base, kind = name.rsplit(".in_proj_", 1)
            for part, chunk in zip(("q", "k", "v"), tensor.chunk(3, dim=0), strict=True):
                out[f"{base}.{part}_proj.{kind}"] = chunk.clone()
        elif name == "positional_embedding" and joint_frames is not None:
            out[name] = tensor.unsqueeze(0).repeat(joint_frames, 1, 1)  # [T, N, D]
        else:
            out[name] = tensor.clone()
    found = {int(k.split(".")[2]) for k in out if k.startswith("transformer.resblocks.")}
    if found != set(range(layers)):
        raise ValueError(f"the CLIP state dict has vision blocks {sorted(found)}, the encoder has {layers}")
    return out


class _CLIPViT(nn.Module):
    """CLIP ViT parts shared by both encoders: patch/class/positional embedding, blocks, ln_post, proj."""

    def __init__(self, vision: CLIPVisionCfg, embed_dim: int, joint_frames: int | None, bias_from_layer: int | None):
        super().__init__()
        width, scale = vision.width, vision.width**-0.5
        num_tokens = 1 + vision.num_patches
        self.patch_size = vision.patch_size
        self.joint_frames = joint_frames
        self.conv1 = nn.Conv2d(3, width, kernel_size=vision.patch_size, stride=vision.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        pos_shape = (num_tokens, width) if joint_frames is None else (joint_frames, num_tokens, width)
        self.positional_embedding = nn.Parameter(scale * torch.randn(pos_shape))
        self.ln_pre = LayerNorm(width)
        self.transformer = VisionTransformer(
            [
                VisionBlock(width, vision.heads, vision.mlp_ratio, bias_from_layer is not None and i >= bias_from_layer)
                for i in range(vision.layers)
            ]
        )
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, embed_dim))
        self.gradient_checkpointing = False
        """Recompute each block's activations in the backward pass instead of storing them (saves memory)."""

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.resblocks

    def _run_block(self, fn, *args):
        """Call a block, through activation checkpointing when it is on and gradients are being recorded."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def embed(self, video: Tensor) -> Tensor:
        """Spec 2.1-2.2: [B, T, 3, H, W] pixels -> [B, T, N, D] tokens after ln_pre."""
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be [B, T, 3, H, W], got {tuple(video.shape)}")
        b, t = video.shape[:2]
        patches = self.conv1(video.flatten(0, 1))  # [B*T, D, H/p, W/p]
        patches = patches.flatten(2).transpose(1, 2).unflatten(0, (b, t))  # [B, T, P, D], row-major patches
        cls = self.class_embedding.to(patches.dtype).expand(b, t, 1, -1)
        x = torch.cat([cls, patches], dim=2)  # [B, T, N, D]
        pos = self.positional_embedding.to(x.dtype)
        if pos.shape[-2] != x.shape[2]:
            raise ValueError(f"frames give {x.shape[2] - 1} patches, the positional table has {pos.shape[-2] - 1}")
        if pos.dim() == 3 and pos.shape[0] != t:
            raise ValueError(f"the joint positional embedding is for {pos.shape[0]} frames, the video has {t}")
        return self.ln_pre(x + pos)  # [N, D] broadcasts over frames; [T, N, D] is per frame

    def readout(self, tokens: Tensor) -> Tensor:
        """Spec 2.4: ln_post then proj, [..., D] -> [..., E]."""
        return self.ln_post(tokens) @ self.proj

    def load_from_clip(self, clip_state: Mapping[str, Tensor]) -> None:
        """Load CLIP's vision weights (OpenAI layout, `load_clip_state_dict`); the local-global bias is kept."""
        mapped = clip_to_vision_state(clip_state, len(self.blocks), self.joint_frames)
        missing, unexpected = self.load_state_dict(mapped, strict=False)
        not_in_clip = [k for k in missing if not k.endswith(".attn.local_global_bias_table")]
        if not_in_clip or unexpected:
            raise ValueError(
                f"CLIP vision weights do not fit the encoder: missing {not_in_clip[:3]}, unexpected {unexpected[:3]}"
            )


class TCVisionEncoder(_CLIPViT):
    """TC-CLIP's vision encoder (spec 2): every layer summarises seed tokens of all frames into K context tokens
    that the next layer's frames attend to."""

    def __init__(self, vision: CLIPVisionCfg, embed_dim: int, cfg: TCCLIPConfig) -> None:
        joint = cfg.num_frames if cfg.positional_embedding_type == "joint" else None
        super().__init__(vision, embed_dim, joint, 1 if cfg.local_global_bias else None)
        self.num_seeds = cfg.num_seeds(vision.num_patches)
        if self.num_seeds < 1:
            raise ValueError(
                f"seed_token_a={cfg.seed_token_a} keeps no seed of {vision.num_patches} patches; raise seed_token_a"
            )
        self.context_token_k = cfg.context_token_k
        self.tome_r = cfg.tome_r

    def forward(self, video: Tensor, readout_layers: Sequence[int] = (), return_details: bool = False) -> VisionOutput:
        """Encode videos.

        Args:
            video: [B, T, 3, H, W] normalised pixels.
            readout_layers: 0-based layer indices whose context tokens are returned (after ln_post + proj).
            return_details: also return every layer's seed indices and merge source maps.
        """
        num_layers = len(self.blocks)
        if any(not 0 <= i < num_layers for i in readout_layers):
            raise ValueError(f"readout_layers {list(readout_layers)} must be in 0..{num_layers - 1}")
        frames = self.embed(video)
        context = None
        context_by_layer: dict[int, Tensor] = {}
        seeds, sources = [], []
        for i, block in enumerate(self.blocks):
            result = self._run_block(
                block.forward_tc, frames, context, self.num_seeds, self.context_token_k, self.tome_r, return_details
            )
            frames, context = result.frames, result.context
            if i in readout_layers:
                context_by_layer[i] = self.readout(context)  # [B, K, E]
            if return_details:
                seeds.append(result.seeds)
                sources.append(result.sources)
        embedding = self.readout(frames[:, :, 0]).mean(dim=1)  # last layer's class tokens, mean over T
        return VisionOutput(
            video_embedding=F.normalize(embedding, dim=-1),
            context_tokens=[context_by_layer[i] for i in readout_layers],
            seed_indices=seeds if return_details else None,
            merge_sources=sources if return_details else None,
        )


class FrameVisionEncoder(_CLIPViT):
    """CLIP's image encoder applied to every frame, frame embeddings averaged (ViFi-CLIP, vanilla CLIP; spec 4)."""

    def __init__(self, vision: CLIPVisionCfg, embed_dim: int, cfg: TCCLIPConfig | None = None) -> None:
        joint = cfg.num_frames if cfg is not None and cfg.positional_embedding_type == "joint" else None
        super().__init__(vision, embed_dim, joint, None)

    def forward(self, video: Tensor, readout_layers: Sequence[int] = (), return_details: bool = False) -> VisionOutput:
        """Encode videos [B, T, 3, H, W]; there are no context tokens, seeds or merges."""
        if readout_layers:
            raise ValueError("the per-frame encoder has no context tokens to read out")
        frames = self.embed(video)
        for block in self.blocks:
            frames = self._run_block(block, frames)
        embedding = self.readout(frames[:, :, 0]).mean(dim=1)  # per-frame embeddings, mean over T
        return VisionOutput(video_embedding=F.normalize(embedding, dim=-1), context_tokens=[])
