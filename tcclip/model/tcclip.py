"""The networks: TC-CLIP and the two per-frame baselines, ViFi-CLIP and vanilla CLIP.

All three share the text tower layout and the common interface: `set_class_names`, `class_names`,
`forward(video [B, T, 3, H, W]) -> logits [B, C]`, `forward_details(video) -> (logits, VisionOutput)`,
`is_new_parameter(name)` and `keeps_finetuned_in_wise_ft(name)`. Build them with `tcclip.model.create_model`, which
also loads the CLIP weights; the constructors here leave every tensor at a random initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tcclip.model.clip_backbone import build_tokenizer
from tcclip.model.config import TCCLIPConfig
from tcclip.model.layers import fast_path_default, set_fast_path
from tcclip.model.prompting import PromptLearner, Tokenizer
from tcclip.model.text import SharedPrompts, VPTextEncoder
from tcclip.model.vision import FrameVisionEncoder, TCVisionEncoder, VisionOutput

# Parameter-name prefixes of the parts TC-CLIP adds to CLIP (trained with a 10x learning rate, as in the official
# training recipe).
NEW_PARAMETER_PREFIXES = ("prompt_learner.", "text_encoder.prompt_generation_layer.")


class _TextCache:
    """The text-prefix result of the last no-grad call, with what it was computed from.

    Valid while every input tensor is still the same storage at the same version and the autocast setting is the
    same: an optimizer step or `load_state_dict` bumps the version counter (in-place writes), `.to()` /
    `.double()` / `set_class_names` make new storage. The aliases kept here hold the old storages alive, so an
    address cannot be reused by another tensor while the entry exists.
    """

    def __init__(self, inputs: Sequence[Tensor], value: SharedPrompts) -> None:
        self.aliases = [t.detach() for t in inputs]
        self.versions = [_version(t) for t in inputs]
        self.autocast = _autocast_state(inputs[0].device)
        self.value = value

    def matches(self, inputs: Sequence[Tensor]) -> bool:
        return (
            len(inputs) == len(self.aliases)
            and _autocast_state(inputs[0].device) == self.autocast
            and all(
                t.data_ptr() == a.data_ptr()
                and t.dtype == a.dtype
                and t.device == a.device
                and t.shape == a.shape
                and _version(t) == v
                for t, a, v in zip(inputs, self.aliases, self.versions, strict=True)
            )
        )


def _autocast_state(device: torch.device) -> tuple[bool, torch.dtype | None]:
    if not torch.is_autocast_enabled(device.type):
        return (False, None)
    return (True, torch.get_autocast_dtype(device.type))


def _version(t: Tensor) -> int:
    # Inference-mode tensors have no version counter, and cannot be written in place outside inference mode.
    return 0 if t.is_inference() else t._version


class _VideoTextModel(nn.Module):
    """What the three networks share: the text tower, the prompts, the logit scale and the text-prefix cache."""

    image_encoder: nn.Module

    def __init__(self, cfg: TCCLIPConfig, prompt_learner: PromptLearner, text_encoder: VPTextEncoder) -> None:
        super().__init__()
        self.cfg = cfg
        self.prompt_learner = prompt_learner
        self.text_encoder = text_encoder
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self._text_cache: _TextCache | None = None
        self.fast = fast_path_default()
        """Fast path (default) or plain path; change it with `set_fast_path`, which sets every submodule alike."""

    def set_fast_path(self, enabled: bool) -> None:
        """Compute on the fast path (default) or on the plain path: the same numbers, computed two ways.

        The plain path is the straightforward form, as the official code computes it: explicit vision attention
        matrices with the context keys/values repeated per frame, CLIP's MLP through autograd, and the whole text
        encoder at the full prompt length once per video, nothing shared or cached. The fast path fuses and shares
        (docs/model.md); the tests check that both agree in float64, logits and gradients.
        """
        set_fast_path(self, enabled)  # the text cache stays: it is checked on use and the plain path skips it

    # -- classes -----------------------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return self.prompt_learner.class_names

    def set_class_names(self, names: Sequence[str]) -> None:
        """Use `names` as the classes of the logits (rebuilds the fixed prompt parts; weights are untouched)."""
        self.prompt_learner.set_class_names(names)
        self._text_cache = None

    # -- text --------------------------------------------------------------------------------------------------
    def _text_prefix_inputs(self) -> list[Tensor]:
        pl = self.prompt_learner
        tensors = [pl.token_prefix, pl.token_suffix, pl.tokenized_prompts]
        if pl.ctx is not None:
            tensors.append(pl.ctx)
        return tensors + self.text_encoder.prefix_tensors()

    def _text_prefix(self) -> SharedPrompts:
        """Hidden states of the class prompts (positions 0..L'-1) after the video-independent text blocks.

        L' stops at the last end token of the class list: under the causal mask later positions cannot change any
        end-token feature, so dropping them gives the same features for less work.
        """
        pl = self.prompt_learner
        if torch.is_grad_enabled():
            self._text_cache = None  # training: one pass (and one backward) per batch, never reused
            return self.text_encoder.encode_prefix(pl()[:, : pl.num_positions_used])
        inputs = self._text_prefix_inputs()
        if self._text_cache is None or not self._text_cache.matches(inputs):
            self._text_cache = None  # release the old storages before computing
            value = self.text_encoder.encode_prefix(pl()[:, : pl.num_positions_used])
            self._text_cache = _TextCache(inputs, value)
        return self._text_cache.value

    def encode_text(self, context_tokens: Sequence[Tensor] | None = None) -> Tensor:
        """Unnormalised text features: [B, C, E] with video-conditional prompting, else [C, E]."""
        pl = self.prompt_learner
        if not pl.class_names:
            raise ValueError("the model has no class names: call set_class_names([...]) first")
        if not self.fast:
            return self.text_encoder(pl(), pl.tokenized_prompts, context_tokens)
        return self.text_encoder.encode_rest(self._text_prefix(), pl.tokenized_prompts, context_tokens)

    def _logits(self, video_embedding: Tensor, text_features: Tensor) -> Tensor:
        """exp(logit_scale) * cosine: video_embedding [B, E] (unit norm), text [B, C, E] or [C, E] -> [B, C]."""
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        if text_features.dim() == 2:
            cosine = video_embedding @ text_features.t()
        else:
            cosine = torch.einsum("be,bce->bc", video_embedding, text_features)
        return self.logit_scale.exp() * cosine

    # -- forward -----------------------------------------------------------------------------------------------
    def forward(self, video: Tensor) -> Tensor:
        """video [B, T, 3, H, W] normalised pixels -> logits [B, C]."""
        return self._forward(video, return_details=False)[0]

    def forward_details(self, video: Tensor) -> tuple[Tensor, VisionOutput]:
        """Logits [B, C] and the vision encoder's output with the per-layer details (seeds, merge sources)."""
        return self._forward(video, return_details=True)

    def _forward(self, video: Tensor, return_details: bool) -> tuple[Tensor, VisionOutput]:
        raise NotImplementedError

    # -- parameter groups --------------------------------------------------------------------------------------
    def is_new_parameter(self, name: str) -> bool:
        """True for the parts TC-CLIP adds to CLIP (prompt learner, prompt-generation layers): 10x learning rate."""
        return name.startswith(NEW_PARAMETER_PREFIXES)

    def keeps_finetuned_in_wise_ft(self, name: str) -> bool:
        """True for tensors WiSE-FT leaves at the fine-tuned value: the new parts and the local-global bias (they
        have no zero-shot CLIP value to interpolate with)."""
        return self.is_new_parameter(name) or name.endswith("local_global_bias_table")


class TCCLIP(_VideoTextModel):
    """TC-CLIP: temporally contextualised vision encoder + video-conditional prompting.

    Args:
        cfg: model config (`cfg.model` should be `tc_clip`).
        class_names: initial class list (can be set later with `set_class_names`).
        tokenizer: CLIP BPE tokenizer (default: `build_tokenizer(cfg.context_length)`).
    """

    def __init__(self, cfg: TCCLIPConfig, class_names: Sequence[str] = (), tokenizer: Tokenizer | None = None) -> None:
        clip = cfg.clip
        levels = cfg.prompt_generation_layer_level
        prompt_learner = PromptLearner(
            clip.text,
            tokenizer or build_tokenizer(cfg.context_length),
            n_ctx=cfg.n_ctx,
            ctx_init=cfg.ctx_init,
            context_length=cfg.context_length,
            parse_class_names=cfg.parse_class_names,
            class_names=class_names,
        )
        text_encoder = VPTextEncoder(
            clip.text, clip.embed_dim, n_ctx=cfg.n_ctx, prompt_generation_levels=levels, im_stop_grad=cfg.im_stop_grad
        )
        super().__init__(cfg, prompt_learner, text_encoder)
        # Level j reads vision layer Lv - Lt + j - 1: aligned from the end, so the last text block reads the last
        # vision layer (the official mapping when Lv == Lt).
        self.readout_layers = tuple(clip.vision.layers - clip.text.layers + j - 1 for j in levels)
        if min(self.readout_layers) < 0:
            raise ValueError(
                f"prompt_generation_layer_level {list(levels)} maps to vision layers {list(self.readout_layers)}: the "
                f"vision tower has only {clip.vision.layers} layers for {clip.text.layers} text blocks"
            )
        self.image_encoder = TCVisionEncoder(clip.vision, clip.embed_dim, cfg)

    def _forward(self, video: Tensor, return_details: bool) -> tuple[Tensor, VisionOutput]:
        out = self.image_encoder(video, readout_layers=self.readout_layers, return_details=return_details)
        text = self.encode_text(out.context_tokens)  # [B, C, E]
        return self._logits(out.video_embedding, text), out


class ViFiCLIP(_VideoTextModel):
    """ViFi-CLIP: CLIP's image encoder per frame, frame embeddings averaged; fixed prompt `"{ctx_init} {name}."`."""

    template = "{}."

    def __init__(self, cfg: TCCLIPConfig, class_names: Sequence[str] = (), tokenizer: Tokenizer | None = None) -> None:
        clip = cfg.clip
        prompt_learner = PromptLearner(
            clip.text,
            tokenizer or build_tokenizer(cfg.context_length),
            n_ctx=0,
            ctx_init=self._ctx_init(cfg),
            context_length=cfg.context_length,
            template=self.template,
            parse_class_names=cfg.parse_class_names,
            class_names=class_names,
        )
        super().__init__(cfg, prompt_learner, VPTextEncoder(clip.text, clip.embed_dim))
        self.image_encoder = FrameVisionEncoder(clip.vision, clip.embed_dim, cfg)

    @staticmethod
    def _ctx_init(cfg: TCCLIPConfig) -> str:
        return cfg.ctx_init

    def _forward(self, video: Tensor, return_details: bool) -> tuple[Tensor, VisionOutput]:
        out = self.image_encoder(video)
        return self._logits(out.video_embedding, self.encode_text()), out

    def is_new_parameter(self, name: str) -> bool:
        return False  # nothing is added to CLIP


class VanillaCLIP(ViFiCLIP):
    """Zero-shot CLIP: per-frame image encoder, frame embeddings averaged; the prompt is the class name alone."""

    template = "{}"

    @staticmethod
    def _ctx_init(cfg: TCCLIPConfig) -> str:
        return ""
