"""`tcclip explain`: the overlays mark exactly what the model selected and merged; the pictures get written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tcclip.cli.commands import run_command
from tcclip.data.synth import render_video, write_video
from tcclip.inference import explain as ex
from tcclip.inference.predict import load_clip_views
from tcclip.model.config import TCCLIPConfig
from tcclip.model.factory import create_model

CLASSES = ["move left", "move right", "grow", "shrink", "stand still"]
CFG = TCCLIPConfig(arch="test-tiny", num_frames=4, context_token_k=4, tome_r=4, prompt_generation_layer_level=(2,))


def shown_patches(overlay: np.ndarray, frames: np.ndarray, patch: int) -> np.ndarray:
    """bool [T, g, g]: the patches the overlay shows exactly as the model saw them (all others it greyed out)."""
    same = (overlay == frames).all(-1)  # [T, S, S]
    t, size = same.shape[:2]
    g = size // patch
    return same.reshape(t, g, patch, g, patch).all((2, 4))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model(CFG, CLASSES, clip_weights=None).eval()


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "grow.mp4"
    return write_video(path, render_video("Grow", 10, 48, 40, np.random.default_rng(1)))


@pytest.fixture(scope="module")
def expl(model, video) -> ex.Explanation:
    return ex.explain(model, video, layer=-1, top_k=3)


def test_seed_mask_and_token_map_are_row_major():
    mask = ex.seed_mask(torch.tensor([[0, 5], [3, 2]]), grid_size=3)
    assert mask.shape == (2, 3, 3)
    assert mask[0].nonzero().tolist() == [[0, 0], [1, 2]] and mask[1].nonzero().tolist() == [[0, 2], [1, 0]]
    sources = torch.zeros(2, 2 * 4)  # K=2 tokens, T=2 frames of a 2x2 grid
    sources[0, [0, 5]] = 1  # frame 0 patch 0 and frame 1 patch 1
    sources[1, [3]] = 1
    tokens = ex.token_map(sources, num_frames=2, grid_size=2)
    assert tokens.tolist() == [[[0, -1], [-1, 1]], [[-1, 0], [-1, -1]]]
    sources[1, 0] = 1
    with pytest.raises(ValueError, match="more than one"):
        ex.token_map(sources, 2, 2)


def test_seed_overlay_shows_exactly_the_given_patches():
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (3, 24, 24, 3), dtype=torch.uint8, generator=gen)
    seeds = torch.stack([torch.randperm(9, generator=gen)[:4] for _ in range(3)])  # grid 3x3, patch 8
    overlay = ex.overlay_seeds(frames, seeds, patch_size=8)
    assert np.array_equal(shown_patches(overlay, frames.numpy(), 8), ex.seed_mask(seeds, 3).numpy())


def test_overlay_marks_exactly_the_patches_the_model_selected(model, video, expl):
    """Independently of explain: run the model on the same view and compare with the pixels of the picture."""
    clip = load_clip_views(video, CFG.num_frames, CFG.clip.vision.image_size, views="1x1")
    with torch.no_grad():
        logits, details = model.forward_details(clip)
    last = len(details.seed_indices) - 1
    assert expl.layer == last
    seeds = details.seed_indices[last][0]  # [T, s]
    grid = CFG.clip.vision.grid_size
    expected = torch.zeros(CFG.num_frames, grid * grid, dtype=torch.bool)
    expected[torch.arange(CFG.num_frames)[:, None], seeds] = True
    overlay = ex.overlay_seeds(expl.frames, expl.seed_indices, expl.patch_size)
    marked = shown_patches(overlay, expl.frames.numpy(), CFG.clip.vision.patch_size)
    assert np.array_equal(marked.reshape(CFG.num_frames, -1), expected.numpy())
    assert marked.sum() == CFG.num_frames * CFG.num_seeds(grid * grid)
    # the frames shown are the model's input, un-normalised
    assert expl.frames.shape == (CFG.num_frames, CFG.clip.vision.image_size, CFG.clip.vision.image_size, 3)
    assert expl.predictions[0].label == CLASSES[int(logits[0].argmax())]


def test_token_colours_cover_exactly_the_merged_seed_patches(expl):
    """Every context token is drawn in its own colour on exactly the patches merged into it, and those are the seeds."""
    frames = expl.frames.numpy()
    overlay = ex.overlay_tokens(expl.frames, expl.merge_sources, expl.patch_size).astype(np.float32)
    palette = ex.token_palette(expl.num_tokens).astype(np.float32)
    tokens = ex.token_map(expl.merge_sources, expl.num_frames, expl.grid_size)
    assert torch.equal(tokens >= 0, ex.seed_mask(expl.seed_indices, expl.grid_size))
    p = expl.patch_size
    for t, row, col in (tokens >= 0).nonzero().tolist():
        k = int(tokens[t, row, col])
        pixels = frames[t, row * p : (row + 1) * p, col * p : (col + 1) * p].astype(np.float32)
        blend = (1 - ex.TOKEN_ALPHA) * pixels + ex.TOKEN_ALPHA * palette[k]
        assert np.abs(overlay[t, row * p : (row + 1) * p, col * p : (col + 1) * p] - blend).max() <= 0.5
    assert len(np.unique(palette, axis=0)) == expl.num_tokens


def test_layer_must_exist(model, video):
    assert ex.explain(model, video, layer=0).layer == 0
    with pytest.raises(ValueError, match="layers 0..1"):
        ex.explain(model, video, layer=2)


def test_cli_writes_pngs_a_gif_and_the_numbers(model, video, tmp_path):
    from tcclip.training import checkpoints

    ckpt = tmp_path / "tiny.ckpt"
    checkpoints.save_model(model, ckpt)
    out = tmp_path / "explain"
    args = [str(video), "--checkpoint", str(ckpt), "--labels", ",".join(CLASSES), "--out", str(out)]
    assert run_command("explain", [*args, "--format", "both", "--top-k", "3", "--device", "cpu"]) == 0
    for name in ("seeds", "context_tokens", "top_k", "summary"):
        with Image.open(out / f"{name}.png") as picture:
            assert picture.format == "PNG" and min(picture.size) > 100
    with Image.open(out / "explain.gif") as gif:
        assert gif.n_frames == CFG.num_frames
    record = json.loads((out / "explanation.json").read_text())
    assert record["layer"] == 1 and len(record["seed_indices"]) == CFG.num_frames
    assert [p["label"] for p in record["predictions"]] == [
        p.label for p in ex.explain(model, video, top_k=3).predictions
    ]


def test_cli_reports_an_unreadable_video(model, tmp_path):
    from tcclip.training import checkpoints

    ckpt = tmp_path / "tiny.ckpt"
    checkpoints.save_model(model, ckpt)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"nothing")
    argv = [str(bad), "--checkpoint", str(ckpt), "--labels", "a,b", "--out", str(tmp_path / "o")]
    assert run_command("explain", argv) == 1
