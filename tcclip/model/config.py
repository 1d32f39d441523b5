"""Model hyper-parameters: the CLIP architecture and the TC-CLIP options, as frozen dataclasses."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from tcclip.model.errors import ModelConfigError

ModelKind = Literal["tc_clip", "vifi_clip", "clip"]


@dataclass(frozen=True)
class CLIPVisionCfg:
    """Vision tower of a CLIP ViT."""

    image_size: int = 224
    """Input resolution in pixels (square)."""
    patch_size: int = 16
    """Side of one patch in pixels."""
    width: int = 768
    """Token width D."""
    layers: int = 12
    """Number of transformer blocks L."""
    heads: int = 12
    """Attention heads per block."""
    mlp_ratio: float = 4.0
    """Hidden width of the MLP relative to `width`."""

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"vision width {self.width} is not divisible by heads {self.heads}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """P, patches per frame."""
        return self.grid_size**2


@dataclass(frozen=True)
class CLIPTextCfg:
    """Text tower of CLIP."""

    context_length: int = 77
    """Rows of CLIP's positional table (the prompt length used may be shorter)."""
    vocab_size: int = 49408
    """BPE vocabulary size."""
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"text width {self.width} is not divisible by heads {self.heads}")


@dataclass(frozen=True)
class CLIPCfg:
    """A whole CLIP model: both towers and the joint embedding width E."""

    embed_dim: int = 512
    vision: CLIPVisionCfg = field(default_factory=CLIPVisionCfg)
    text: CLIPTextCfg = field(default_factory=CLIPTextCfg)

    @classmethod
    def from_name(cls, name: str) -> CLIPCfg:
        """A named preset: an open_clip architecture name (`ViT-B-16`, ...) or `test-tiny`."""
        if name == "test-tiny":
            return cls(
                embed_dim=32,
                vision=CLIPVisionCfg(image_size=32, patch_size=8, width=64, layers=2, heads=2),
                text=CLIPTextCfg(width=64, heads=2, layers=2),
            )
        import open_clip

        raw = open_clip.get_model_config(name)
        if raw is None:
            raise ValueError(f"unknown CLIP architecture {name!r}; try one of ViT-B-16, ViT-B-32, ViT-L-14, test-tiny")
        v, t = raw["vision_cfg"], raw["text_cfg"]
        if not isinstance(v.get("layers"), int):
            raise ValueError(f"{name!r} is not a ViT (TC-CLIP needs a transformer vision tower)")
        vision_width = v["width"]
        return cls(
            embed_dim=raw["embed_dim"],
            vision=CLIPVisionCfg(
                image_size=v["image_size"],
                patch_size=v["patch_size"],
                width=vision_width,
                layers=v["layers"],
                heads=v.get("heads", vision_width // v.get("head_width", 64)),
                mlp_ratio=v.get("mlp_ratio", 4.0),
            ),
            text=CLIPTextCfg(
                context_length=t.get("context_length", 77),
                vocab_size=t.get("vocab_size", 49408),
                width=t["width"],
                heads=t["heads"],
                layers=t["layers"],
                mlp_ratio=t.get("mlp_ratio", 4.0),
            ),
        )


def _bad(name: str, message: str) -> ModelConfigError:
    """A `ModelConfigError` (a ValueError) naming the setting as a config file spells it."""
    return ModelConfigError(
        f"model_config.{name}",
        message,
        fix=f"Fix model.model_config.{name} in the config (or the checkpoint's setting).",
    )


@dataclass(frozen=True)
class TCCLIPConfig:
    """Everything that defines a TC-CLIP (or baseline) network, apart from the class list and weights.

    Field names follow the official release's config keys where it has one, so an official
    checkpoint's config can be compared key by key.
    """

    model: ModelKind = "tc_clip"
    """Which network: `tc_clip`, `vifi_clip` (per-frame CLIP, both towers tuned) or `clip` (vanilla zero-shot)."""
    arch: str = "ViT-B-16"
    """CLIP architecture: an open_clip name or `test-tiny`."""
    num_frames: int = 16
    """T, frames per clip (only the joint positional embedding depends on it)."""
    positional_embedding_type: Literal["space", "joint"] = "space"
    """`space`: CLIP's table on every frame; `joint`: a learned [T, N, D] table."""
    local_global_bias: bool = True
    """Learnable per-head bias on frame keys vs context keys (layers >= 1)."""
    context_token_k: int = 96
    """K, context tokens produced by every layer."""
    seed_token_a: float = 0.3
    """Fraction of each frame's patches kept as seeds: s = int(P * a)."""
    tome_r: int = 100
    """Tokens merged per bipartite matching step."""
    n_ctx: int = 4
    """Learnable prompt vectors."""
    ctx_init: str = "a photo of a"
    """Words whose token embeddings initialise the learnable prompt vectors."""
    context_length: int = 30
    """Prompt length in tokens (77 for the LLM-rephrased labels)."""
    prompt_generation_layer_level: tuple[int, ...] = (12,)
    """1-based text block indices before which the video-conditional prompt generation runs."""
    prompt_generation_layer_init: Literal["clip", "random"] = "clip"
    """Initialise each prompt-generation layer from CLIP text block (level-1), or randomly."""
    im_stop_grad: bool = True
    """Stop gradients from the text side into the context tokens."""
    parse_class_names: bool = True
    """Split CamelCase names into words (`ApplyEyeMakeup` -> `Apply Eye Makeup`), as the official `parse_ucf101`."""

    def __post_init__(self) -> None:
        self._check_types()
        if self.model not in ("tc_clip", "vifi_clip", "clip"):
            raise _bad("model", f"must be tc_clip, vifi_clip or clip, got {self.model!r}")
        if self.positional_embedding_type not in ("space", "joint"):
            raise _bad("positional_embedding_type", f"must be space or joint, got {self.positional_embedding_type!r}")
        if self.prompt_generation_layer_init not in ("clip", "random"):
            raise _bad(
                "prompt_generation_layer_init", f"must be clip or random, got {self.prompt_generation_layer_init!r}"
            )
        if not 0.0 < self.seed_token_a <= 1.0:
            raise _bad("seed_token_a", f"must be in (0, 1], got {self.seed_token_a}")
        for name in ("context_token_k", "tome_r", "num_frames", "n_ctx", "context_length"):
            if getattr(self, name) < 1:
                raise _bad(name, f"must be >= 1, got {getattr(self, name)}")
        if isinstance(self.prompt_generation_layer_level, int):
            object.__setattr__(self, "prompt_generation_layer_level", (self.prompt_generation_layer_level,))
        else:
            object.__setattr__(self, "prompt_generation_layer_level", tuple(self.prompt_generation_layer_level))
        if not self.prompt_generation_layer_level or min(self.prompt_generation_layer_level) < 1:
            raise _bad("prompt_generation_layer_level", "must list 1-based text block indices")
        if list(self.prompt_generation_layer_level) != sorted(set(self.prompt_generation_layer_level)):
            raise _bad("prompt_generation_layer_level", "must be strictly increasing")

    def _check_types(self) -> None:
        """Every field of the type its default has: a string where a number belongs (a hand-edited config, a
        checkpoint written elsewhere) is named here instead of failing in a comparison deep in the network."""
        for f in fields(self):
            value, default = getattr(self, f.name), f.default
            if isinstance(default, bool):
                ok, kind = isinstance(value, bool), "true or false"
            elif isinstance(default, int):
                ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
            elif isinstance(default, float):
                ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
            elif isinstance(default, str):
                ok, kind = isinstance(value, str), "a string"
            else:  # the tuple of block indices
                items = value if isinstance(value, (list, tuple)) else [value]
                ok = all(isinstance(v, int) and not isinstance(v, bool) for v in items)
                kind = "integers (a list of block indices)"
            if not ok:
                raise _bad(f.name, f"must be {kind}, got {type(value).__name__} {value!r}")

    @property
    def clip(self) -> CLIPCfg:
        return CLIPCfg.from_name(self.arch)

    def num_seeds(self, num_patches: int) -> int:
        """s, seed tokens per frame."""
        return int(num_patches * self.seed_token_a)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["prompt_generation_layer_level"] = list(self.prompt_generation_layer_level)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TCCLIPConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ModelConfigError(
                "model_config",
                f"unknown settings {sorted(unknown)}",
                fix=f"The settings are {', '.join(sorted(names))}.",
            )
        return cls(**d)

    def replace(self, **changes: Any) -> TCCLIPConfig:
        return replace(self, **changes)
