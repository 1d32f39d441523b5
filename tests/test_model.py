"""The assembled networks on the tiny preset: shapes, logits, the text-prefix cache, gradients, CLIP initialisation."""

from __future__ import annotations

import pytest
import torch

from tcclip.model.clip_backbone import build_tokenizer, load_clip_state_dict
from tcclip.model.config import TCCLIPConfig
from tcclip.model.factory import create_model
from tcclip.model.tcclip import TCCLIP, VanillaCLIP, ViFiCLIP

NAMES = ["ApplyEyeMakeup", "brush_hair", "YoYo"]
CFG = TCCLIPConfig(arch="test-tiny", num_frames=3, context_token_k=4, tome_r=4, prompt_generation_layer_level=(2,))


def tiny(cfg: TCCLIPConfig = CFG, names=NAMES, seed: int = 0):
    torch.manual_seed(seed)
    return create_model(cfg, names, clip_weights=None)


def video(batch: int = 2, cfg: TCCLIPConfig = CFG, dtype=torch.float32, seed: int = 1) -> torch.Tensor:
    size = cfg.clip.vision.image_size
    return torch.randn(batch, cfg.num_frames, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize(("kind", "cls"), [("tc_clip", TCCLIP), ("vifi_clip", ViFiCLIP), ("clip", VanillaCLIP)])
def test_logit_shapes(kind, cls):
    model = tiny(CFG.replace(model=kind))
    assert type(model) is cls
    logits, details = model.forward_details(video())
    assert logits.shape == (2, len(NAMES)) and torch.isfinite(logits).all()
    assert details.video_embedding.shape == (2, CFG.clip.embed_dim)
    assert len(details.context_tokens) == (1 if kind == "tc_clip" else 0)


def test_baseline_prompts():
    assert tiny(CFG.replace(model="vifi_clip")).prompt_learner.prompt_text("YoYo") == "a photo of a Yo Yo."
    assert tiny(CFG.replace(model="clip")).prompt_learner.prompt_text("YoYo") == "Yo Yo"


def test_random_init_is_reproducible():
    a, b = tiny(seed=3).state_dict(), tiny(seed=3).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_logits_are_scaled_cosines():
    model = tiny().double().eval()
    with torch.no_grad():
        logits, out = model.forward_details(video(dtype=torch.float64))
        text = model.encode_text(out.context_tokens)  # [B, C, E]
    text = text / text.norm(dim=-1, keepdim=True)
    expected = model.logit_scale.exp() * (out.video_embedding[:, None] * text).sum(-1)
    torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)


def test_readout_layer_alignment():
    # Level j reads vision layer Lv - Lt + j - 1: both levels of the 2+2-layer tiny model, in order.
    model = tiny(CFG.replace(prompt_generation_layer_level=(1, 2)))
    assert model.readout_layers == (0, 1)
    assert tiny().readout_layers == (1,)


def test_shared_prefix_cache_matches_per_video_path():
    model = tiny(CFG.replace(prompt_generation_layer_level=(2,))).double().eval()
    clip = video(batch=3, dtype=torch.float64)
    with torch.no_grad():
        cached = model(clip)
        prefix = model._text_cache.value
        again = model(clip)
        assert model._text_cache.value is prefix  # reused, not recomputed
        model.set_fast_path(False)
        plain = model(clip)
    torch.testing.assert_close(cached, plain, rtol=1e-10, atol=1e-12)
    assert torch.equal(cached, again)


def test_prefix_cache_invalidated_by_in_place_update():
    model = tiny().double().eval()
    clip = video(dtype=torch.float64)
    with torch.no_grad():
        before = model(clip)
        model.text_encoder.transformer.resblocks[0].mlp.c_fc.weight.mul_(1.5)  # like an optimizer step
        after = model(clip)
        model.set_fast_path(False)
        plain = model(clip)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, plain, rtol=1e-10, atol=1e-12)


def test_prefix_cache_invalidated_by_load_state_dict_and_class_names():
    model = tiny().double().eval()
    other = tiny(seed=7).double().eval()
    clip = video(dtype=torch.float64)
    with torch.no_grad():
        model(clip)
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(model(clip), other(clip), rtol=1e-12, atol=1e-12)
        model.set_class_names(["a", "b"])
        other.set_class_names(["a", "b"])
        torch.testing.assert_close(model(clip), other(clip), rtol=1e-12, atol=1e-12)


def test_no_cache_while_training():
    model = tiny()
    model(video())
    assert model._text_cache is None


@pytest.mark.parametrize("kind", ["tc_clip", "vifi_clip"])
def test_every_trainable_parameter_gets_a_gradient(kind):
    model = tiny(CFG.replace(model=kind, prompt_generation_layer_level=(1, 2)))
    model(video()).logsumexp(-1).sum().backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert "prompt_learner.token_embedding.weight" not in trainable
    no_grad = [n for n, p in trainable.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    zero = [n for n, p in trainable.items() if p.grad is not None and p.grad.abs().sum() == 0]
    assert not no_grad and not zero


def test_prompt_vectors_and_generation_layer_start_from_clip():
    model = tiny()
    ids = build_tokenizer(30).encode(CFG.ctx_init)
    torch.testing.assert_close(model.prompt_learner.ctx.detach(), model.prompt_learner.token_embedding.weight[ids])
    layer, block = model.text_encoder.prompt_generation_layer[0], model.text_encoder.transformer.resblocks[1]
    torch.testing.assert_close(layer.mlp.c_fc.weight, block.mlp.c_fc.weight)
    torch.testing.assert_close(layer.ln_2.bias, block.ln_2.bias)


def test_clip_weights_are_loaded():
    torch.manual_seed(5)
    clip = load_clip_state_dict("test-tiny", None)
    torch.manual_seed(5)
    model = create_model(CFG, NAMES, clip_weights=None)
    state = model.state_dict()
    torch.testing.assert_close(state["prompt_learner.token_embedding.weight"], clip["token_embedding.weight"])
    name = "transformer.resblocks.1.attn.in_proj_weight"
    torch.testing.assert_close(state[f"text_encoder.{name}"], clip[name])
    torch.testing.assert_close(state["logit_scale"], clip["logit_scale"])
    width = CFG.clip.vision.width
    torch.testing.assert_close(
        state["image_encoder.transformer.resblocks.0.attn.k_proj.weight"],
        clip["visual.transformer.resblocks.0.attn.in_proj_weight"][width : 2 * width],
    )


def test_parameter_groups():
    model = tiny()
    new = {n for n, _ in model.named_parameters() if model.is_new_parameter(n)}
    generation = model.text_encoder.prompt_generation_layer.named_parameters(
        prefix="text_encoder.prompt_generation_layer"
    )
    assert new == {"prompt_learner.ctx", "prompt_learner.token_embedding.weight", *(n for n, _ in generation)}
    kept = {n for n, _ in model.named_parameters() if model.keeps_finetuned_in_wise_ft(n)}
    assert kept - new == {"image_encoder.transformer.resblocks.1.attn.local_global_bias_table"}
    vifi = tiny(CFG.replace(model="vifi_clip"))
    assert not any(vifi.is_new_parameter(n) for n, _ in vifi.named_parameters())


def test_missing_class_names_is_an_error():
    model = tiny(names=())
    with pytest.raises(ValueError, match="set_class_names"):
        model(video())


def test_level_beyond_the_text_tower_is_an_error():
    with pytest.raises(ValueError, match=r"prompt_generation_layer_level=\[2\]"):
        TCCLIP(CFG.replace(prompt_generation_layer_level=(12,)))


def test_prefix_cache_not_shared_between_autocast_and_full_precision():
    model = tiny().eval()
    clip = video()
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(clip)
        full = model(clip)
        model._text_cache = None
        fresh = model(clip)
    assert full.dtype == torch.float32 and torch.equal(full, fresh)
