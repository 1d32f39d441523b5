"""The TC vision encoder and the per-frame encoder on the tiny CLIP (docs/model.md: where the paper's steps are)."""

from __future__ import annotations

import pytest
import torch

from tcclip.model.clip_backbone import _open_clip_model, load_clip_state_dict
from tcclip.model.config import TCCLIPConfig
from tcclip.model.tc_attention import TCAttention
from tcclip.model.vision import FrameVisionEncoder, TCVisionEncoder

# Tiny: P = 16 patches, s = 4 seeds per frame, T*s = 12 seeds merged down to K = 5 in 4 steps.
CFG = TCCLIPConfig(arch="test-tiny", num_frames=3, context_token_k=5, tome_r=2)


@pytest.fixture(scope="module")
def clip_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return load_clip_state_dict(CFG.arch, None)


def _encoder(clip_state, cfg: TCCLIPConfig = CFG, cls=TCVisionEncoder) -> TCVisionEncoder:
    clip = cfg.clip
    torch.manual_seed(1)
    enc = cls(clip.vision, clip.embed_dim, cfg)
    enc.load_from_clip(clip_state)
    if enc.transformer.resblocks[-1].attn.local_global_bias_table is not None:
        torch.manual_seed(4)
        with torch.no_grad():  # larger than the init, so that a wrong bias would show
            for block in enc.transformer.resblocks[1:]:
                block.attn.local_global_bias_table.normal_(std=0.5)
    return enc.double().eval()


def _video(batch: int = 2, frames: int = CFG.num_frames, seed: int = 2) -> torch.Tensor:
    size = CFG.clip.vision.image_size
    return torch.randn(batch, frames, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _open_clip_double(clip_state) -> torch.nn.Module:
    model = _open_clip_model(CFG.clip)
    model.load_state_dict(clip_state)
    return model.double().eval()


def test_output_shapes(clip_state):
    enc = _encoder(clip_state)
    b, t, p = 2, CFG.num_frames, CFG.clip.vision.num_patches
    s, k, e = CFG.num_seeds(p), CFG.context_token_k, CFG.clip.embed_dim
    out = enc(_video(b), readout_layers=(1, 0), return_details=True)
    assert out.video_embedding.shape == (b, e)
    torch.testing.assert_close(out.video_embedding.norm(dim=-1), torch.ones(b, dtype=torch.float64))
    assert [c.shape for c in out.context_tokens] == [(b, k, e)] * 2
    assert [x.shape for x in out.seed_indices] == [(b, t, s)] * CFG.clip.vision.layers
    assert [x.shape for x in out.merge_sources] == [(b, k, t * p)] * CFG.clip.vision.layers
    plain = enc(_video(b), readout_layers=(1,))
    assert plain.seed_indices is None and plain.merge_sources is None
    torch.testing.assert_close(plain.context_tokens[0], out.context_tokens[0], rtol=0, atol=0)


def test_layer_0_is_open_clips_first_block_per_frame(clip_state):
    enc = _encoder(clip_state)
    ref = _open_clip_double(clip_state).visual
    video = _video()
    b, t = video.shape[:2]
    with torch.no_grad():
        tokens = enc.embed(video)  # [B, T, N, D]
        # open_clip's stem, frame by frame.
        patches = ref.conv1(video.flatten(0, 1)).flatten(2).transpose(1, 2)
        cls = ref.class_embedding.expand(b * t, 1, -1)
        expected_tokens = ref.ln_pre(torch.cat([cls, patches], dim=1) + ref.positional_embedding)
        torch.testing.assert_close(tokens.flatten(0, 1), expected_tokens, rtol=1e-12, atol=1e-12)

        result = enc.transformer.resblocks[0].forward_tc(tokens, None, 4, CFG.context_token_k, CFG.tome_r, False)
        expected = ref.transformer.resblocks[0](tokens.flatten(0, 1))
    torch.testing.assert_close(result.frames.flatten(0, 1), expected, rtol=1e-12, atol=1e-12)


def test_frame_encoder_is_open_clips_image_encoder_averaged_over_frames(clip_state):
    enc = _encoder(clip_state, cfg=CFG.replace(model="vifi_clip"), cls=FrameVisionEncoder)
    ref = _open_clip_double(clip_state)
    video = _video()
    with torch.no_grad():
        out = enc(video)
        frames = ref.encode_image(video.flatten(0, 1)).unflatten(0, video.shape[:2])
    expected = torch.nn.functional.normalize(frames.mean(dim=1), dim=-1)
    torch.testing.assert_close(out.video_embedding, expected, rtol=1e-12, atol=1e-12)
    assert out.context_tokens == [] and out.seed_indices is None


def _explicit_class_row(block, frames: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Head-averaged class-token attention over the P patches of each frame, written out: [B, T, P]."""
    attn = block.attn
    heads, width = attn.heads, frames.shape[-1]
    dh = width // heads
    h_frames, h_context = block.ln_1(frames), block.ln_1(context)
    b, t, n, _ = frames.shape
    rows = torch.zeros(b, t, n - 1, dtype=frames.dtype)
    for v in range(b):
        for f in range(t):
            q = attn.q_proj(h_frames[v, f, 0])  # [D]
            keys = attn.k_proj(torch.cat([h_frames[v, f], h_context[v]]))  # [N + K, D]
            for h in range(heads):
                cols = slice(h * dh, (h + 1) * dh)
                logits = keys[:, cols] @ q[cols] / dh**0.5
                logits[:n] += attn.local_global_bias_table[h, 0, 0]
                logits[n:] += attn.local_global_bias_table[h, 0, 1]
                rows[v, f] += torch.softmax(logits, dim=0)[1:n] / heads
    return rows


def test_seeds_are_the_top_s_of_the_class_token_attention_row(clip_state):
    enc = _encoder(clip_state)
    blocks = enc.transformer.resblocks
    s, k, r = enc.num_seeds, CFG.context_token_k, CFG.tome_r
    with torch.no_grad():
        layer0 = blocks[0].forward_tc(enc.embed(_video()), None, s, k, r, False)
        layer1 = blocks[1].forward_tc(layer0.frames, layer0.context, s, k, r, True)
        row = _explicit_class_row(blocks[1], layer0.frames, layer0.context)
    expected = torch.sort(row, dim=-1, descending=True, stable=True).indices[..., :s]
    assert torch.equal(layer1.seeds, expected)


def test_fused_and_explicit_attention_agree(clip_state):
    enc = _encoder(clip_state)
    video = _video()
    with torch.no_grad():
        fused = enc(video, readout_layers=(0, 1), return_details=True)
        for module in enc.modules():
            if isinstance(module, TCAttention):
                module.fast = False
        explicit = enc(video, readout_layers=(0, 1), return_details=True)
    torch.testing.assert_close(fused.video_embedding, explicit.video_embedding, rtol=1e-12, atol=1e-12)
    for a, b in zip(fused.context_tokens, explicit.context_tokens, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(fused.seed_indices, explicit.seed_indices, strict=True))


def test_a_video_gives_the_same_result_alone_and_in_a_batch(clip_state):
    enc = _encoder(clip_state)
    video = _video(batch=3)
    with torch.no_grad():
        batch = enc(video, readout_layers=(1,))
        alone = enc(video[1:2], readout_layers=(1,))
    torch.testing.assert_close(alone.video_embedding, batch.video_embedding[1:2], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(alone.context_tokens[0], batch.context_tokens[0][1:2], rtol=1e-12, atol=1e-12)


def test_merge_sources_partition_the_seed_patches(clip_state):
    enc = _encoder(clip_state)
    with torch.no_grad():
        out = enc(_video(), return_details=True)
    p = CFG.clip.vision.num_patches
    for seeds, sources in zip(out.seed_indices, out.merge_sources, strict=True):
        b, t, s = seeds.shape
        selected = torch.zeros(b, t * p, dtype=sources.dtype)
        selected.scatter_(1, (seeds + torch.arange(t)[:, None] * p).flatten(1), 1.0)
        assert set(sources.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(sources.sum(dim=1), selected)  # each selected patch in exactly one context token
        assert (sources.sum(dim=2) >= 1).all() and sources.sum(dim=(1, 2)).eq(t * s).all()


def test_every_parameter_gets_a_finite_gradient(clip_state):
    enc = _encoder(clip_state).float().train()
    out = enc(_video().float(), readout_layers=(0, 1))
    (out.video_embedding.sum() + sum(c.square().sum() for c in out.context_tokens)).backward()
    for name, param in enc.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


def test_gradient_checkpointing_gives_the_same_gradients(clip_state):
    video = _video()
    grads = []
    for checkpointing in (False, True):
        enc = _encoder(clip_state).train()
        enc.gradient_checkpointing = checkpointing
        out = enc(video, readout_layers=(1,))
        (out.video_embedding.sum() + out.context_tokens[0].sum()).backward()
        grads.append({n: p.grad for n, p in enc.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-12, atol=1e-12)


def test_joint_positional_embedding_starts_as_clips_table_repeated(clip_state):
    joint_cfg = CFG.replace(positional_embedding_type="joint")
    joint, space = _encoder(clip_state, joint_cfg), _encoder(clip_state)
    t, n, d = CFG.num_frames, 1 + CFG.clip.vision.num_patches, CFG.clip.vision.width
    assert joint.positional_embedding.shape == (t, n, d)
    assert all(torch.equal(joint.positional_embedding[i], space.positional_embedding) for i in range(t))
    video = _video()
    with torch.no_grad():
        torch.testing.assert_close(joint(video).video_embedding, space(video).video_embedding, rtol=0, atol=0)
        with pytest.raises(ValueError, match="joint positional embedding is for 3 frames, the video has 2"):
            joint(video[:, :2])


def test_local_global_bias_tables(clip_state):
    enc = _encoder(clip_state)
    names = [n for n, _ in enc.named_parameters() if "local_global_bias" in n]
    heads = CFG.clip.vision.heads
    assert names == [
        f"transformer.resblocks.{i}.attn.local_global_bias_table" for i in range(1, CFG.clip.vision.layers)
    ]
    assert enc.transformer.resblocks[1].attn.local_global_bias_table.shape == (heads, 1, 2)
    off = _encoder(clip_state, CFG.replace(local_global_bias=False))
    assert not [n for n, _ in off.named_parameters() if "local_global_bias" in n]


def test_loading_clip_keeps_the_bias_initialisation_and_splits_qkv(clip_state):
    torch.manual_seed(3)
    enc = TCVisionEncoder(CFG.clip.vision, CFG.clip.embed_dim, CFG)
    table = enc.transformer.resblocks[1].attn.local_global_bias_table.detach().clone()
    enc.load_from_clip(clip_state)
    assert torch.equal(enc.transformer.resblocks[1].attn.local_global_bias_table, table)
    attn, in_proj = enc.transformer.resblocks[1].attn, clip_state["visual.transformer.resblocks.1.attn.in_proj_weight"]
    assert torch.equal(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]), in_proj)


def test_parameter_names_and_shapes_match_the_official_checkpoint(official_tensors):
    official = official_tensors
    prefix = "module.image_encoder."
    expected = {k[len(prefix) :]: tuple(v) for k, v in official.items() if k.startswith(prefix)}
    cfg = TCCLIPConfig(arch="ViT-B-16")
    with torch.device("meta"):
        enc = TCVisionEncoder(cfg.clip.vision, cfg.clip.embed_dim, cfg)
    assert {k: tuple(v.shape) for k, v in enc.state_dict().items()} == expected


def test_bad_inputs_are_clear_errors(clip_state):
    enc = _encoder(clip_state)
    with pytest.raises(ValueError, match=r"readout_layers \[2\] must be in 0\.\.1"):
        enc(_video(), readout_layers=(2,))
    with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
        enc(_video()[0])
