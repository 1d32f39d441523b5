"""Vision encoders: TC-CLIP's temporally contextualised ViT (paper: "Temporal Contextualization") and the plain
per-frame CLIP ViT of the baselines (ViFi-CLIP, vanilla CLIP).

Both keep CLIP's parameter names with the attention split into `q_proj`, `k_proj`, `v_proj`, `out_proj`, the layout
of the official checkpoints, and work in any floating dtype (float64 after `.double()` for the exactness checks,
docs/model.md).

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
from tcclip.model.layers import MLP, LayerNorm
from tcclip.model.tc_attention import TCAttention
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

    def forward(self, frames: Tensor, class_only: bool = False) -> Tensor:
        """Plain CLIP block on every frame: [B, T, N, D] -> [B, T, N, D] ([B, T, 1, D], the class tokens, with
        `class_only`: the same rows, the others left out)."""
        h = self.ln_1(frames)
        if class_only:
            frames = frames[:, :, :1] + self.attn.attend(h[:, :, :1], self.attn.keys_values(h))[0]
        else:
            frames = frames + self.attn(h)[0]
        return frames + self.mlp(self.ln_2(frames))

    def forward_tc(
        self,
        frames: Tensor,
        context: Tensor | None,
        num_seeds: int,
        num_context: int,
        tome_r: int,
        track_sources: bool,
        class_only: bool = False,
    ) -> _LayerResult:
        """One TC layer: context infusion, seed selection, context summarisation, MLP (docs/model.md).

        Args:
            frames: [B, T, N, D] frame tokens.
            context: [B, K, D] context tokens of the previous layer, or None (layer 0).
            num_seeds: s, seed tokens per frame.
            num_context: K, context tokens to produce.
            tome_r: tokens merged per bipartite step.
            track_sources: also return the seed indices and the merge source maps.
            class_only: compute only the rows that a last layer's readout needs: the class tokens and the seeds
                (the same numbers); the frames returned are then the class tokens, [B, T, 1, D].
        """
        b, t, n, d = frames.shape
        num_patches = n - 1
        h = self.ln_1(frames)
        kv = self.attn.keys_values(h, None if context is None else self.ln_1(context))
        # Informative token selection: the s patches with the highest class-token attention in each frame, best first.
        attended, scores = self.attn.attend(h[:, :, :1] if class_only else h, kv, class_scores=True)
        seeds = scores.topk(num_seeds, dim=-1, sorted=True).indices  # [B, T, s]
        # Temporal context summarisation: the seed tokens, frame by frame in seed order, merged down to K tokens.
        rows = (seeds + 1 + torch.arange(t, device=seeds.device)[:, None] * n).flatten(1)  # [B, T*s]: t*N + 1 + p
        if class_only:  # context infusion for the seed rows alone
            h_seeds = take_rows(h.flatten(1, 2), rows).unflatten(1, (t, num_seeds))  # [B, T, s, D]
            seed_tokens = take_rows(frames.flatten(1, 2), rows) + self.attn.attend(h_seeds, kv)[0].flatten(1, 2)
            frames = frames[:, :, :1] + attended
        else:
            frames = frames + attended  # context infusion: the incoming context tokens serve as keys/values only
            seed_tokens = take_rows(frames.flatten(1, 2), rows)  # [B, T*s, D]
        sources = None
        if track_sources:
            patch_ids = seeds + torch.arange(t, device=seeds.device)[:, None] * num_patches  # t*P + p, [B, T, s]
            sources = frames.new_zeros(b, t * num_seeds, t * num_patches)
            sources.scatter_(2, patch_ids.reshape(b, t * num_seeds, 1), 1.0)  # one-hot rows
        new_context, sources = summarise(seed_tokens, num_context, tome_r, sources)  # [B, K, D]

        # MLP residual on the frame tokens and the new context tokens as one sequence: token-wise, so the same as
        # applying it to each, but one product per weight (and one weight gradient, not two summed).
        tokens = torch.cat([frames.flatten(1, 2), new_context], dim=1)  # [B, T*N + K, D]
        tokens = tokens + self.mlp(self.ln_2(tokens))
        num_frame_tokens = frames.shape[1] * frames.shape[2]
        frames, new_context = tokens[:, :num_frame_tokens].unflatten(1, frames.shape[1:3]), tokens[:, num_frame_tokens:]
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

    `in_proj_weight` / `in_proj_bias` are split into q, k, v (three equal row blocks, as CLIP packs them).
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
        """CLIP's patch, class and positional embedding per frame: [B, T, 3, H, W] -> [B, T, N, D] after ln_pre."""
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
        """CLIP's readout, ln_post then proj, [..., D] -> [..., E]."""
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
    """TC-CLIP's vision encoder (paper: "Temporal Contextualization"): every layer summarises seed tokens of all
    frames into K context tokens that the next layer's frames attend to."""

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
            class_only = i == num_layers - 1  # the last layer: only the rows read out (class tokens, seeds)
            result = self._run_block(
                block.forward_tc,
                frames, context, self.num_seeds, self.context_token_k, self.tome_r, return_details, class_only,
            )  # fmt: skip
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
    """CLIP's image encoder applied to every frame, frame embeddings averaged (ViFi-CLIP, vanilla CLIP)."""

    def __init__(self, vision: CLIPVisionCfg, embed_dim: int, cfg: TCCLIPConfig | None = None) -> None:
        joint = cfg.num_frames if cfg is not None and cfg.positional_embedding_type == "joint" else None
        super().__init__(vision, embed_dim, joint, None)

    def forward(self, video: Tensor, readout_layers: Sequence[int] = (), return_details: bool = False) -> VisionOutput:
        """Encode videos [B, T, 3, H, W]; there are no context tokens, seeds or merges."""
        if readout_layers:
            raise ValueError("the per-frame encoder has no context tokens to read out")
        frames = self.embed(video)
        for i, block in enumerate(self.blocks):
            frames = self._run_block(block, frames, i == len(self.blocks) - 1)  # last: class tokens only
        embedding = self.readout(frames[:, :, 0]).mean(dim=1)  # per-frame embeddings, mean over T
        return VisionOutput(video_embedding=F.normalize(embedding, dim=-1), context_tokens=[])
