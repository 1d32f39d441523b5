"""Pictures of what TC-CLIP looked at: seed patches, context tokens and the top-k classes of one video.

`tcclip explain VIDEO --checkpoint CKPT --labels a,b,c --out DIR` runs the model once on one test view (the first
deterministic clip, centre crop) and writes:

- `seeds.png`: the sampled frames (as the model saw them, after resize and crop) in a grid, showing only the seed
  patches of the chosen layer in colour (per frame, the patches its class token attended to most: the informative
  tokens of the TC-CLIP paper, Sec. 3.2), and the other patches in grey;
- `context_tokens.png`: the same frames with one colour per context token: all patches, across all frames, whose
  seed tokens were merged into that token (the paper's temporal context summarisation, Sec. 3.2); patches in no
  token are greyed out;
- `top_k.png`: a bar chart of the most probable classes; `summary.png`: the three together;
- `explanation.json`: the numbers behind the pictures (frame indices, seed indices, token of every patch, top-k);
- with `--format gif` or `both`: `explain.gif`, one animation frame per video frame (frame | seeds | tokens).
"""

from __future__ import annotations

import json
import logging
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from tcclip.inference.clips import VideoInput, make_test_transform, sample_frames
from tcclip.inference.predictions import Prediction, top_k_predictions
from tcclip.inference.scoring import evaluating, model_input_size, model_num_frames, use_labels
from tcclip.utils.outputs import staged_files

log = logging.getLogger(__name__)

TOKEN_ALPHA = 0.6
"""Weight of a context token's colour in its patches."""
DIM = 0.4
"""Brightness of the grey drawn over patches that are not seeds / in no context token."""
GREY_FLOOR = 20.0
"""Added to that grey so that black areas stay distinguishable from the gaps between frames."""


@dataclass
class Explanation:
    """The model's view of one video and what one of its layers selected and merged."""

    video: str
    """Where the video came from (its path, or `<frames>` for decoded frames)."""
    frames: Tensor
    """uint8 [T, S, S, 3]: the sampled frames after the test resize and crop, before normalisation."""
    frame_indices: list[int]
    """Index of every sampled frame in the video."""
    layer: int
    """0-based vision layer whose seeds and context tokens are shown."""
    num_layers: int
    patch_size: int
    seed_indices: Tensor
    """long [T, s]: the seed patches of every frame (0..P-1, row-major over the patch grid), best first."""
    merge_sources: Tensor
    """[K, T*P] 0/1: patch t*P + p (of the layer's input) is part of context token k."""
    predictions: list[Prediction]
    """Top-k classes of this one view."""

    @property
    def grid_size(self) -> int:
        return self.frames.shape[1] // self.patch_size

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.merge_sources.shape[0]


def unnormalise(clip: Tensor) -> Tensor:
    """float [T, 3, S, S] normalised by the test transform -> uint8 [T, S, S, 3], the pixels the model saw."""
    from tcclip.data.transforms import MEAN, STD

    mean = torch.as_tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.as_tensor(STD, dtype=torch.float32).view(1, 3, 1, 1)
    pixels = clip.float().cpu() * std + mean  # [T, 3, S, S] in 0..255
    return pixels.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def explain(
    model: nn.Module,
    video: VideoInput,
    labels: Sequence[str] | None = None,
    layer: int = -1,
    top_k: int = 5,
    backend: str | None = None,
) -> Explanation:
    """Run the model on one test view of `video` and collect the seeds and context tokens of `layer`.

    Args:
        model: a TC-CLIP model (from `tcclip.load_model`); the per-frame baselines have no context tokens.
        video: a file path or decoded uint8 frames [F, H, W, 3].
        labels: class names; replaces the model's list when different.
        layer: 0-based vision layer; negative counts from the last (-1, the default, is the last layer).
        top_k: classes kept in `predictions`.
        backend: video decoder, `torchcodec`, `pyav` or `decord` (default: torchcodec where it works, else pyav).
    """
    names = use_labels(model, labels)
    frames, indices = sample_frames(video, model_num_frames(model), clips=1, backend=backend)
    clip = make_test_transform(model_input_size(model), 1, model_num_frames(model))(frames)  # [1, T, 3, S, S]
    param = next(model.parameters())
    with evaluating(model):
        logits, details = model.forward_details(clip.to(device=param.device, dtype=param.dtype))
    if not details.seed_indices or not details.merge_sources:
        raise ValueError(
            f"this model ({getattr(model.cfg, 'model', type(model).__name__)}) has no context tokens to show; "
            "explain needs a TC-CLIP checkpoint"
        )
    num_layers = len(details.seed_indices)
    if not -num_layers <= layer < num_layers:
        raise ValueError(f"layer {layer} does not exist: the vision encoder has layers 0..{num_layers - 1}")
    layer %= num_layers
    probs = logits.float().softmax(-1)[0].cpu()
    return Explanation(
        video=str(video) if not isinstance(video, Tensor) else "<frames>",
        frames=unnormalise(clip[0]),
        frame_indices=list(indices),
        layer=layer,
        num_layers=num_layers,
        patch_size=int(model.cfg.clip.vision.patch_size),
        seed_indices=details.seed_indices[layer][0].cpu().long(),
        merge_sources=details.merge_sources[layer][0].cpu(),
        predictions=top_k_predictions(probs, names, top_k),
    )


# ----------------------------------------------------------------------------------------------- patch maps


def seed_mask(seed_indices: Tensor, grid_size: int) -> Tensor:
    """bool [T, g, g]: True at the seed patches. `seed_indices` is [T, s] with row-major patch indices."""
    mask = torch.zeros(seed_indices.shape[0], grid_size * grid_size, dtype=torch.bool)
    mask.scatter_(1, seed_indices.long(), True)
    return mask.view(-1, grid_size, grid_size)


def token_map(merge_sources: Tensor, num_frames: int, grid_size: int) -> Tensor:
    """long [T, g, g]: the context token every patch was merged into, -1 for patches in none.

    Args:
        merge_sources: [K, T*P] 0/1, patch t*P + p in token k; a patch is in at most one token.
    """
    sources = merge_sources.bool()
    if (sources.sum(0) > 1).any():
        raise ValueError("merge_sources puts a patch into more than one context token; they must be disjoint")
    member = sources.any(0)  # [T*P]
    tokens = torch.where(member, sources.to(torch.uint8).argmax(0), -1)
    return tokens.view(num_frames, grid_size, grid_size)


def token_palette(num_tokens: int) -> np.ndarray:
    """uint8 [K, 3]: well-separated colours, hues spaced by the golden ratio so neighbours differ."""
    from matplotlib.colors import hsv_to_rgb

    k = np.arange(num_tokens)
    hsv = np.stack([(k * 0.618033988749895) % 1.0, np.where(k % 2, 0.65, 0.95), np.where(k % 3 == 1, 0.75, 1.0)], 1)
    return (hsv_to_rgb(hsv) * 255).round().astype(np.uint8)


def _to_pixels(patch_map: Tensor, patch_size: int) -> np.ndarray:
    """[T, g, g] -> [T, g*patch, g*patch]: every patch value repeated over its pixels."""
    return patch_map.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2).numpy()


def _grey(pixels: np.ndarray) -> np.ndarray:
    """float [..., 3] -> float [..., 1]: a dark grey that keeps the shapes visible but says "not selected"."""
    return pixels.mean(-1, keepdims=True) * DIM + GREY_FLOOR


def overlay_seeds(frames: Tensor, seed_indices: Tensor, patch_size: int) -> np.ndarray:
    """uint8 [T, S, S, 3]: the seed patches exactly as the model saw them, every other patch greyed out."""
    grid = frames.shape[1] // patch_size
    inside = _to_pixels(seed_mask(seed_indices, grid), patch_size)  # [T, S, S]
    out = frames.numpy().astype(np.float32)
    out = np.where(inside[..., None], out, _grey(out))
    return out.round().clip(0, 255).astype(np.uint8)


def overlay_tokens(
    frames: Tensor, merge_sources: Tensor, patch_size: int, palette: np.ndarray | None = None, alpha=TOKEN_ALPHA
) -> np.ndarray:
    """uint8 [T, S, S, 3]: each patch tinted with the colour of its context token; patches in none greyed out."""
    num_frames, size = frames.shape[:2]
    tokens = _to_pixels(token_map(merge_sources, num_frames, size // patch_size), patch_size)  # [T, S, S]
    palette = token_palette(merge_sources.shape[0]) if palette is None else palette
    out = frames.numpy().astype(np.float32)
    member = tokens >= 0
    out = np.where(member[..., None], out, _grey(out))
    out[member] = (1 - alpha) * out[member] + alpha * palette[tokens[member]].astype(np.float32)
    return out.round().clip(0, 255).astype(np.uint8)


def frame_mosaic(images: np.ndarray, columns: int, pad: int = 2, scale: int = 1, fill: int = 255) -> np.ndarray:
    """uint8 [T, H, W, 3] -> one picture with the frames in rows of `columns`, each enlarged `scale` times."""
    images = images.repeat(scale, 1).repeat(scale, 2)
    count, height, width = images.shape[:3]
    rows = math.ceil(count / columns)
    mosaic = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, 3), fill, dtype=np.uint8)
    for i, image in enumerate(images):
        top, left = pad + (i // columns) * (height + pad), pad + (i % columns) * (width + pad)
        mosaic[top : top + height, left : left + width] = image
    return mosaic


# ----------------------------------------------------------------------------------------------- figures

_TILE_INCHES = 1.7
_MIN_TILE_PIXELS = 160  # tiny test models have 32 px frames: enlarge them so the patches stay visible


def _columns(num_frames: int) -> int:
    return min(num_frames, 8)


def _scale(size: int) -> int:
    return max(1, math.ceil(_MIN_TILE_PIXELS / size))


def _draw_frames(ax, images: np.ndarray, frame_indices: Sequence[int], title: str) -> None:
    columns, pad, scale = _columns(len(images)), 2, _scale(images.shape[1])
    ax.imshow(frame_mosaic(images, columns, pad, scale), interpolation="nearest")
    tile = images.shape[1] * scale + pad
    for i, index in enumerate(frame_indices):
        x, y = pad + (i % columns) * tile + 3 * scale, pad + (i // columns) * tile + 3 * scale
        ax.text(x, y, f"frame {index}", fontsize=7, color="white", va="top", ha="left",
                bbox={"facecolor": "black", "alpha": 0.55, "pad": 1.5, "linewidth": 0})  # fmt: skip
    ax.set_title(title, fontsize=9, loc="left")
    ax.set_axis_off()


def _layer_name(expl: Explanation) -> str:
    last = " (last)" if expl.layer == expl.num_layers - 1 else ""
    return f"layer {expl.layer}{last}"


def _seeds_title(expl: Explanation) -> str:
    seeds, patches = expl.seed_indices.shape[1], expl.grid_size**2
    return (
        f"Seed patches, {_layer_name(expl)}: in colour, the {seeds} of {patches} patches per frame\n"
        "that the frame's class token attends to most; grey: not a seed"
    )


def _tokens_title(expl: Explanation) -> str:
    return (
        f"Context tokens, {_layer_name(expl)}: one colour per token ({expl.num_tokens} tokens),\n"
        "on the seed patches of all frames that were merged into it"
    )


def _draw_top_k(ax, predictions: Sequence[Prediction]) -> None:
    labels = ["\n".join(textwrap.wrap(label, 24)) or "?" for label, _ in predictions]
    probs = [prob for _, prob in predictions]
    positions = np.arange(len(predictions))
    ax.barh(positions, probs, color="#3b75af")
    ax.set_yticks(positions, labels, fontsize=8)
    ax.invert_yaxis()  # most probable on top
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("probability", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    for y, prob in zip(positions, probs, strict=True):
        ax.text(prob + 0.02, y, f"{prob:.1%}", va="center", fontsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(f"Top-{len(predictions)} classes", fontsize=9, loc="left")


def _frames_figsize(expl: Explanation, panels: int = 1, extra_width: float = 0.0) -> tuple[float, float]:
    columns = _columns(expl.num_frames)
    rows = math.ceil(expl.num_frames / columns)
    return max(6.0, columns * _TILE_INCHES) + extra_width, panels * (rows * _TILE_INCHES + 0.5)


def render_seeds(expl: Explanation):
    """A matplotlib Figure: the frames in a grid, the layer's seed patches in colour and the rest grey."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=_frames_figsize(expl), layout="constrained")
    images = overlay_seeds(expl.frames, expl.seed_indices, expl.patch_size)
    _draw_frames(fig.add_subplot(), images, expl.frame_indices, _seeds_title(expl))
    return fig


def render_tokens(expl: Explanation):
    """A matplotlib Figure: the frames with every patch coloured by the context token it was merged into."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=_frames_figsize(expl), layout="constrained")
    images = overlay_tokens(expl.frames, expl.merge_sources, expl.patch_size)
    _draw_frames(fig.add_subplot(), images, expl.frame_indices, _tokens_title(expl))
    return fig


def render_top_k(expl: Explanation):
    """A matplotlib Figure: horizontal bars of the top-k class probabilities."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 0.45 * len(expl.predictions) + 1.0), layout="constrained")
    _draw_top_k(fig.add_subplot(), expl.predictions)
    return fig


def render_summary(expl: Explanation):
    """A matplotlib Figure: seeds above context tokens, the top-k bar chart beside them."""
    from matplotlib.figure import Figure

    width, height = _frames_figsize(expl, panels=2, extra_width=3.6)
    fig = Figure(figsize=(width, height), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=[width - 3.6, 3.6])
    _draw_frames(fig.add_subplot(grid[0, 0]), overlay_seeds(expl.frames, expl.seed_indices, expl.patch_size),
                 expl.frame_indices, _seeds_title(expl))  # fmt: skip
    _draw_frames(fig.add_subplot(grid[1, 0]), overlay_tokens(expl.frames, expl.merge_sources, expl.patch_size),
                 expl.frame_indices, _tokens_title(expl))  # fmt: skip
    _draw_top_k(fig.add_subplot(grid[:, 1]), expl.predictions)
    fig.suptitle(Path(expl.video).name if expl.video != "<frames>" else expl.video, fontsize=10)
    return fig


def render_gif_frames(expl: Explanation) -> list[np.ndarray]:
    """One uint8 picture per video frame: the frame, its seeds and its context-token colours side by side."""
    seeds = overlay_seeds(expl.frames, expl.seed_indices, expl.patch_size)
    tokens = overlay_tokens(expl.frames, expl.merge_sources, expl.patch_size)
    scale = _scale(expl.frames.shape[1])
    panels = np.stack([expl.frames.numpy(), seeds, tokens], 1)  # [T, 3 panels, S, S, 3]
    return [frame_mosaic(p, columns=3, pad=4, scale=scale) for p in panels]


def save_explanation(expl: Explanation, out_dir: str | Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Write the pictures (`png` and/or `gif`) and `explanation.json` into `out_dir`; returns the files written.

    All files appear together once all are complete (`tcclip.utils.outputs.staged_files`): never a half-drawn picture.
    """
    from PIL import Image, ImageDraw

    out = Path(out_dir)
    written: list[Path] = []
    with staged_files() as stage:
        if "png" in formats:
            figures = {"seeds": render_seeds, "context_tokens": render_tokens, "top_k": render_top_k}
            figures["summary"] = render_summary
            for name, render in figures.items():
                written.append(out / f"{name}.png")
                render(expl).savefig(stage(written[-1]), format="png", dpi=120, facecolor="white")
        if "gif" in formats:
            pictures = []
            for index, array in zip(expl.frame_indices, render_gif_frames(expl), strict=True):
                picture = Image.fromarray(array)
                ImageDraw.Draw(picture).text((8, 6), f"frame {index}", fill=(255, 255, 255), stroke_width=2,
                                             stroke_fill=(0, 0, 0))  # fmt: skip
                pictures.append(picture)
            written.append(out / "explain.gif")
            pictures[0].save(
                stage(written[-1]), format="GIF", save_all=True, append_images=pictures[1:], duration=500, loop=0
            )
        record = {
            "video": expl.video,
            "layer": expl.layer,
            "num_layers": expl.num_layers,
            "patch_size": expl.patch_size,
            "grid_size": expl.grid_size,
            "frame_indices": expl.frame_indices,
            "seed_indices": expl.seed_indices.tolist(),
            "token_of_patch": token_map(expl.merge_sources, expl.num_frames, expl.grid_size).tolist(),
            "predictions": [{"label": label, "probability": round(prob, 6)} for label, prob in expl.predictions],
        }
        # one key a line, arrays kept on their line: readable and still plain JSON
        written.append(out / "explanation.json")
        text = "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in record.items()) + "\n}\n"
        stage(written[-1]).write_text(text, encoding="utf-8")
    return written
