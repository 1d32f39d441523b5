"""The test oracle (tests/oracle.py): its own pieces, and the model checked against it in float64.

Exactness is checked in float64, to 1e-8 relative; seeds and merges are discrete choices on float scores, so they
only agree when both sides compute in float64 (docs/model.md, "Exactness").
"""

from __future__ import annotations

import math

import pytest
import torch
from oracle import (
    bipartite_merge_step,
    merge_schedule,
    process_class_name_reference,
    reference_forward,
    summarise_tokens,
    tokenize_prompts_reference,
)
from torch import Tensor

from tcclip.model.config import TCCLIPConfig

CLASS_NAMES = ["ApplyEyeMakeup", "playing_guitar", "abseiling", "YoYo", "riding a bike", "Jump Rope"]


def _assert_close(actual: Tensor, expected: Tensor, rtol: float = 1e-8, what: str = "") -> None:
    """Relative agreement, scaled by the largest magnitude (logits near 0 are not over-weighted)."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.abs().max().clamp_min(1e-30)
    err = (actual.to(expected.dtype) - expected).abs().max()
    assert err <= rtol * scale, f"{what}: max abs error {float(err):.3e} > {rtol:g} * {float(scale):.3e}"


# --------------------------------------------------------------------------------------------------------------
# Token merging (temporal context summarisation).
# --------------------------------------------------------------------------------------------------------------


def test_merge_schedule_follows_the_official_schedule() -> None:
    assert merge_schedule(16 * 58, 96, 100) == [100] * 8 + [32]  # ViT-B/16, T=16: 928 seeds (docs/model.md)
    assert merge_schedule(12, 6, 2) == [2, 2, 2]
    assert merge_schedule(12, 4, 5) == [5, 3]  # one step of r, then min(count - K, count // 2)
    assert merge_schedule(32, 5, 5) == [5, 5, 5, 5, 5, 2]
    assert merge_schedule(10, 2, 100) == [5, 2, 1]  # capped at count // 2: 10 -> 5 -> 3 -> 2
    assert merge_schedule(4, 4, 2) == []


def _tokens(*rows: tuple[float, float]) -> list[Tensor]:
    return [torch.tensor(r, dtype=torch.float64) for r in rows]


# Positions 0, 2, 4 form set A, positions 1, 3 set B.
#   A0 = (1, 0)    best B0 = (1, 0.1)  cos 0.995
#   A1 = (0, 1)    best B1 = (0.2, 1)  cos 0.981
#   A2 = (0.05, 1) best B1             cos 0.989
# so the A order by score is A0, A2, A1 (not the position order).
HAND_TOKENS = ((1.0, 0.0), (1.0, 0.1), (0.0, 1.0), (0.2, 1.0), (0.05, 1.0))


def test_merge_step_one_token_hand_computed() -> None:
    tokens = _tokens(*HAND_TOKENS)
    out, sizes, sources = bipartite_merge_step(tokens, [1.0] * 5, [[i] for i in range(5)], r=1)
    # A0 merges into B0; unmerged A in score order (A2 before A1), then B0, B1.
    expected = _tokens((0.05, 1.0), (0.0, 1.0), (1.0, 0.05), (0.2, 1.0))
    assert len(out) == 4
    for got, want in zip(out, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    assert sizes == [1.0, 1.0, 2.0, 1.0]
    assert sources == [[4], [2], [0, 1], [3]]


def test_merge_step_two_tokens_hand_computed() -> None:
    tokens = _tokens(*HAND_TOKENS)
    out, sizes, sources = bipartite_merge_step(tokens, [1.0] * 5, [[i] for i in range(5)], r=2)
    # A0 -> B0 and A2 -> B1; A1 stays.
    expected = _tokens((0.0, 1.0), (1.0, 0.05), (0.125, 1.0))
    for got, want in zip(out, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    assert sizes == [1.0, 2.0, 2.0]
    assert sources == [[2], [0, 1], [3, 4]]


def test_merge_step_is_size_weighted_and_scores_ignore_sizes() -> None:
    tokens = _tokens(*HAND_TOKENS)
    out, sizes, _ = bipartite_merge_step(tokens, [3.0, 1.0, 1.0, 2.0, 5.0], [[i] for i in range(5)], r=2)
    # Same choices as with unit sizes (scores use the tokens only); B0 = (3*A0 + 1*B0) / 4, B1 = (2*B1 + 5*A2) / 7.
    torch.testing.assert_close(out[1], torch.tensor([1.0, 0.025], dtype=torch.float64), rtol=0, atol=1e-15)
    torch.testing.assert_close(out[2], torch.tensor([0.65 / 7, 1.0], dtype=torch.float64), rtol=0, atol=1e-15)
    assert sizes == [1.0, 4.0, 7.0]


def test_summarise_tokens_gives_means_of_a_partition() -> None:
    gen = torch.Generator().manual_seed(0)
    tokens = list(torch.randn(23, 5, generator=gen, dtype=torch.float64))
    out, sizes, sources = summarise_tokens(tokens, k=6, r=4)
    assert len(out) == 6
    assert sorted(i for group in sources for i in group) == list(range(23))
    for token, size, group in zip(out, sizes, sources, strict=True):
        assert size == len(group)
        torch.testing.assert_close(token, torch.stack([tokens[i] for i in group]).mean(0), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------------------
# Class names and prompts.
# --------------------------------------------------------------------------------------------------------------


def test_class_name_processing() -> None:
    assert process_class_name_reference("ApplyEyeMakeup") == "Apply Eye Makeup"
    assert process_class_name_reference("ApplyEyeMakeUp") == "Apply Eye Make Up"
    assert process_class_name_reference("playing_guitar") == "playing guitar"
    assert process_class_name_reference("PlayingDaf", parse_camel_case=False) == "PlayingDaf"


def test_over_long_prompt_is_an_error() -> None:
    with pytest.raises(ValueError, match="context_length=8"):
        tokenize_prompts_reference(["a photo of a very long class name indeed."], context_length=8)
    (row,) = tokenize_prompts_reference(["a photo of a cat."], context_length=10)  # 8 tokens with start and end
    assert len(row) == 10 and row[8:] == [0, 0] and row.index(max(row)) == 7


# --------------------------------------------------------------------------------------------------------------
# Vanilla CLIP against open_clip (checks the plain parts: patches, attention, layer norms, causal text, pooling).
# --------------------------------------------------------------------------------------------------------------


def _tiny_open_clip(seed: int):
    """open_clip's CLIP with the test-tiny shapes, fp16-exact float64 weights with perturbed layer norms."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    clip_cfg = TCCLIPConfig(arch="test-tiny").clip
    v, t = clip_cfg.vision, clip_cfg.text
    torch.manual_seed(seed)
    model = CLIP(
        clip_cfg.embed_dim,
        CLIPVisionCfg(
            layers=v.layers,
            width=v.width,
            head_width=v.width // v.heads,
            patch_size=v.patch_size,
            image_size=v.image_size,
            mlp_ratio=v.mlp_ratio,
        ),
        CLIPTextCfg(
            context_length=t.context_length,
            vocab_size=t.vocab_size,
            width=t.width,
            heads=t.heads,
            layers=t.layers,
            mlp_ratio=t.mlp_ratio,
        ),
        quick_gelu=True,
    ).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name or name.startswith("ln_"):
                p.add_(0.1 * torch.randn_like(p))
            p.copy_(p.half().double())  # fp16-exact weights, as CLIP's (docs/model.md)
    return model.eval()


def _open_clip_to_tcclip_layout(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """OpenAI/open_clip names -> the tcclip layout (vision attention split into q/k/v/out)."""
    out: dict[str, Tensor] = {}
    for name, value in sd.items():
        if name.startswith("visual."):
            rest = name[len("visual.") :]
            if ".attn.in_proj_" in rest:
                kind = rest.rsplit("_", 1)[1]  # weight / bias
                base = rest.split(".attn.")[0]
                for part, chunk in zip(("q", "k", "v"), value.chunk(3, dim=0), strict=True):
                    out[f"image_encoder.{base}.attn.{part}_proj.{kind}"] = chunk
            else:
                out[f"image_encoder.{rest}"] = value
        elif name == "token_embedding.weight":
            out["prompt_learner.token_embedding.weight"] = value
        elif name == "logit_scale":
            out[name] = value
        else:
            out[f"text_encoder.{name}"] = value
    return out


def test_vanilla_clip_reference_matches_open_clip() -> None:
    import open_clip

    model = _tiny_open_clip(seed=0)
    cfg = TCCLIPConfig(model="clip", arch="test-tiny", num_frames=2)
    gen = torch.Generator().manual_seed(1)
    video = torch.randn(2, 2, 3, 32, 32, generator=gen, dtype=torch.float64)
    names = CLASS_NAMES[:4]

    ref = reference_forward(_open_clip_to_tcclip_layout(model.state_dict()), cfg, names, video)

    with torch.no_grad():
        frames = model.encode_image(video.flatten(0, 1), normalize=False).unflatten(0, (2, 2))  # [B, T, E]
        video_emb = torch.nn.functional.normalize(frames.mean(1), dim=-1)
        texts = [process_class_name_reference(n) for n in names]
        text_emb = model.encode_text(open_clip.tokenize(texts), normalize=True)
        logits = model.logit_scale.exp() * video_emb @ text_emb.T
    _assert_close(ref.video_embedding, video_emb, what="video embedding")
    _assert_close(ref.logits, logits, what="logits")


# --------------------------------------------------------------------------------------------------------------
# The model against the oracle (float64; docs/model.md, "Exactness").
# --------------------------------------------------------------------------------------------------------------

NEW_PARAMETER_MARKERS = ("local_global_bias_table", "prompt_learner.ctx", "prompt_generation_layer")


def _fast_model(cfg: TCCLIPConfig, class_names: list[str], seed: int) -> torch.nn.Module:
    """A random-weight fast model in float64 whose new parameters are perturbed so that they matter."""
    from tcclip.model.factory import create_model

    torch.manual_seed(seed)
    model = create_model(cfg, class_names, clip_weights=None).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "local_global_bias_table" in name:
                p.add_(0.5 * torch.randn_like(p))  # a visible bias: frame vs context keys
            elif any(marker in name for marker in NEW_PARAMETER_MARKERS):
                p.add_(0.05 * torch.randn_like(p))
    return model


def _video(cfg: TCCLIPConfig, batch: int, seed: int) -> Tensor:
    size = cfg.clip.vision.image_size
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.num_frames, 3, size, size, generator=gen, dtype=torch.float64)


# (num_frames, K, seed_token_a, tome_r, local_global_bias, positional_embedding_type, levels, classes)
# P = 16 for test-tiny, so s = int(16 * a); the comments give the merge schedule from T*s to K.
TC_CASES = [
    pytest.param(3, 6, 0.3, 2, True, "space", (2,), 5, id="T3-K6-r2"),  # s=4: 12 -> 6 in [2, 2, 2]
    pytest.param(4, 5, 0.5, 5, False, "joint", (1, 2), 3, id="T4-K5-r5-nobias-joint-2levels"),  # 32 -> 5: [5]*5+[2]
    pytest.param(1, 4, 0.75, 3, True, "space", (1, 2), 2, id="T1-K4-r3-2levels"),  # s=12: 12 -> 4 in [3, 3, 2]
    pytest.param(4, 8, 0.25, 4, True, "joint", (2,), 4, id="T4-K8-r4-joint"),  # s=4: 16 -> 8 in [4, 4]
    pytest.param(3, 4, 0.3, 5, True, "space", (1,), 6, id="T3-K4-r5-level1"),  # s=4: 12 -> 4 in [5, 3]
]


@pytest.mark.parametrize(("num_frames", "k", "a", "r", "bias", "pos", "levels", "num_classes"), TC_CASES)
def test_tc_clip_matches_reference(
    num_frames: int, k: int, a: float, r: int, bias: bool, pos: str, levels: tuple[int, ...], num_classes: int
) -> None:
    cfg = TCCLIPConfig(
        arch="test-tiny",
        num_frames=num_frames,
        context_token_k=k,
        seed_token_a=a,
        tome_r=r,
        local_global_bias=bias,
        positional_embedding_type=pos,
        prompt_generation_layer_level=levels,
    )
    names = CLASS_NAMES[:num_classes]
    model = _fast_model(cfg, names, seed=num_frames * 100 + k)
    video = _video(cfg, batch=2, seed=k)
    num_layers = cfg.clip.vision.layers

    ref = reference_forward(model.state_dict(), cfg, names, video)
    with torch.no_grad():
        logits = model(video)
        details = model.image_encoder(video, readout_layers=list(range(num_layers)), return_details=True)

    # Discrete choices first: a flip there explains any numeric difference below.
    assert details.seed_indices is not None and len(details.seed_indices) == num_layers
    for layer in range(num_layers):
        seeds = details.seed_indices[layer]
        assert torch.equal(seeds.long().cpu(), ref.seed_indices[layer]), f"seeds differ at layer {layer}"
    assert details.merge_sources is not None
    for layer in range(num_layers):
        sources = details.merge_sources[layer].to(torch.float64).cpu()
        assert torch.equal(sources, ref.merge_sources[layer]), f"merge sources differ at layer {layer}"
    for layer in range(num_layers):
        _assert_close(details.context_tokens[layer], ref.context_tokens[layer], what=f"context tokens layer {layer}")
    _assert_close(details.video_embedding, ref.video_embedding, what="video embedding")
    _assert_close(logits, ref.logits, what="logits")
    assert math.isfinite(float(ref.logits.abs().max()))


@pytest.mark.parametrize("kind", ["vifi_clip", "clip"])
def test_frame_baselines_match_reference(kind: str) -> None:
    cfg = TCCLIPConfig(model=kind, arch="test-tiny", num_frames=3)
    names = CLASS_NAMES[:4]
    model = _fast_model(cfg, names, seed=7)
    video = _video(cfg, batch=2, seed=8)
    ref = reference_forward(model.state_dict(), cfg, names, video)
    with torch.no_grad():
        logits = model(video)
    _assert_close(logits, ref.logits, what=f"{kind} logits")


@pytest.mark.slow
def test_tc_clip_vit_b16_shapes_match_reference() -> None:
    """Real ViT-B/16 shapes (E == text width, so the prompt-generation MHA is fused; 12 layers; P = 196)."""
    cfg = TCCLIPConfig(arch="ViT-B-16", num_frames=2, context_token_k=24, tome_r=20)  # 116 seeds -> 24 in 5 steps
    names = CLASS_NAMES[:2]
    model = _fast_model(cfg, names, seed=3)
    video = _video(cfg, batch=1, seed=0)
    ref = reference_forward(model.state_dict(), cfg, names, video)
    with torch.no_grad():
        logits = model(video)
        details = model.image_encoder(video, readout_layers=[cfg.clip.vision.layers - 1], return_details=True)
    assert torch.equal(details.seed_indices[-1].long().cpu(), ref.seed_indices[-1])
    _assert_close(details.context_tokens[0], ref.context_tokens[-1], what="last-layer context tokens")
    _assert_close(logits, ref.logits, what="logits")
