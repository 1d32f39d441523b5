"""Text side: class-name processing, prompts, the prompt-generation layer and the shared-prefix text encoder."""

from __future__ import annotations

import pytest
import torch

from tcclip.model.clip_backbone import build_tokenizer
from tcclip.model.config import CLIPCfg
from tcclip.model.prompting import PromptLearner, process_class_name
from tcclip.model.text import VPTextEncoder

CLIP = CLIPCfg.from_name("test-tiny")
NAMES = ["ApplyEyeMakeup", "brush_hair", "YoYo", "abseiling"]


def make_prompt_learner(names=NAMES, **kwargs) -> PromptLearner:
    torch.manual_seed(0)
    args = {"n_ctx": 4, "ctx_init": "a photo of a", "context_length": 30} | kwargs
    return PromptLearner(CLIP.text, build_tokenizer(args["context_length"]), class_names=names, **args)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("ApplyEyeMakeup", "Apply Eye Makeup"),
        ("ApplyEyeMakeUp", "Apply Eye Make Up"),
        ("YoYo", "Yo Yo"),
        ("brush_hair", "brush hair"),
        ("Playing_Daf", "Playing  Daf"),  # the `_` becomes a space after the CamelCase split (the official order)
        ("abseiling", "abseiling"),
    ],
)
def test_process_class_name(raw, words):
    assert process_class_name(raw) == words


def test_process_class_name_without_camel_case_split():
    assert process_class_name("ApplyEyeMakeup_x", parse_camel_case=False) == "ApplyEyeMakeup x"


def test_prompt_layout():
    pl = make_prompt_learner()
    tok = build_tokenizer(30)
    assert pl.prompt_text("ApplyEyeMakeup") == "a photo of a Apply Eye Makeup."
    expected = [tok.sot_token_id, *tok.encode("a photo of a apply eye makeup."), tok.eot_token_id]
    assert pl.tokenized_prompts[0, : len(expected)].tolist() == expected
    assert pl.tokenized_prompts[0, len(expected) :].eq(0).all()
    prompts = pl()
    width = CLIP.text.width
    assert prompts.shape == (len(NAMES), 30, width)
    assert pl.token_prefix.shape == (len(NAMES), 1, width)
    assert pl.token_suffix.shape == (len(NAMES), 30 - 1 - 4, width)
    torch.testing.assert_close(prompts[:, 1:5], pl.ctx.expand(len(NAMES), -1, -1))
    assert pl.num_positions_used == int(pl.tokenized_prompts.argmax(-1).max()) + 1


def test_prompt_layout_fixed_parts():
    pl = make_prompt_learner()
    table = pl.token_embedding(pl.tokenized_prompts)
    torch.testing.assert_close(pl()[:, 5:], table[:, 5:])
    torch.testing.assert_close(pl()[:, :1], table[:, :1])


def test_ctx_initialised_from_ctx_init_words():
    pl = make_prompt_learner()
    ids = build_tokenizer(30).encode("a photo of a")
    torch.testing.assert_close(pl.ctx.detach(), pl.token_embedding.weight[ids])


def test_ctx_placeholders_when_ctx_init_is_short():
    pl = make_prompt_learner(n_ctx=6)
    ids = build_tokenizer(30).encode("a photo of a")
    assert pl.prompt_text("YoYo") == "a photo of a X X Yo Yo."
    torch.testing.assert_close(pl.ctx.detach()[:4], pl.token_embedding.weight[ids])
    assert pl.ctx.shape == (6, CLIP.text.width) and pl.token_suffix.shape[1] == 30 - 7


def test_token_embedding_is_frozen():
    pl = make_prompt_learner()
    assert not pl.token_embedding.weight.requires_grad and pl.ctx.requires_grad


def test_set_class_names_rebuilds_buffers():
    pl = make_prompt_learner()
    pl.set_class_names(["a", "b"])
    assert pl.class_names == ["a", "b"]
    assert pl.tokenized_prompts.shape == (2, 30) and pl.token_suffix.shape[0] == 2 and pl().shape[0] == 2
    assert "prompt_learner.token_prefix" not in {f"prompt_learner.{k}" for k in pl.state_dict()}


def test_loading_a_token_table_refreshes_fixed_parts():
    pl = make_prompt_learner()
    state = pl.state_dict()
    state["token_embedding.weight"] = torch.randn_like(state["token_embedding.weight"])
    pl.load_state_dict(state)
    torch.testing.assert_close(pl.token_prefix, state["token_embedding.weight"][pl.tokenized_prompts[:, :1]])


def test_over_long_prompt_names_the_class_and_context_length():
    with pytest.raises(ValueError, match=r"(?s)'a very long class name.*context_length=10.*larger context_length"):
        make_prompt_learner(names=["short", "a very long class name that cannot fit"], context_length=10)


def test_vanilla_template_without_prefix():
    pl = make_prompt_learner(n_ctx=0, ctx_init="", template="{}")
    assert pl.ctx is None and pl.prompt_text("YoYo") == "Yo Yo"
    torch.testing.assert_close(pl(), pl.token_embedding(pl.tokenized_prompts))


def make_encoder(levels=(1, 2), dtype=torch.float64) -> tuple[PromptLearner, VPTextEncoder]:
    pl = make_prompt_learner()
    enc = VPTextEncoder(CLIP.text, CLIP.embed_dim, n_ctx=4, prompt_generation_levels=levels)
    enc.init_prompt_generation_from_clip()
    return pl.to(dtype), enc.to(dtype)


@pytest.mark.parametrize("levels", [(1,), (2,), (1, 2)])
def test_shared_prefix_equals_per_video_text_encoder(levels):
    pl, enc = make_encoder(levels)
    context = [torch.randn(3, 5, CLIP.embed_dim, dtype=torch.float64) for _ in levels]
    shared = enc(pl()[:, : pl.num_positions_used], pl.tokenized_prompts, context)
    enc.fast = False
    per_video = enc(pl(), pl.tokenized_prompts, context)
    assert shared.shape == (3, len(NAMES), CLIP.embed_dim)
    torch.testing.assert_close(shared, per_video, rtol=1e-12, atol=1e-12)


def test_text_features_depend_on_each_video_only():
    pl, enc = make_encoder()
    context = [torch.randn(3, 5, CLIP.embed_dim, dtype=torch.float64) for _ in range(2)]
    both = enc(pl(), pl.tokenized_prompts, context)
    alone = enc(pl(), pl.tokenized_prompts, [c[1:2] for c in context])
    torch.testing.assert_close(both[1:2], alone, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(both[0], both[1])


def test_im_stop_grad_blocks_context_gradient():
    pl, enc = make_encoder((2,))
    context = torch.randn(2, 5, CLIP.embed_dim, dtype=torch.float64, requires_grad=True)
    enc(pl(), pl.tokenized_prompts, [context]).sum().backward()
    assert context.grad is None
    enc.im_stop_grad = False
    enc(pl(), pl.tokenized_prompts, [context]).sum().backward()
    assert context.grad is not None and context.grad.abs().sum() > 0


def test_prompt_generation_layer_starts_as_its_clip_block():
    width = CLIP.text.width  # context tokens as wide as the text: CLIP's layout, everything is copied
    enc = VPTextEncoder(CLIP.text, width, n_ctx=4, prompt_generation_levels=(2,))
    enc.init_prompt_generation_from_clip()
    layer, block = enc.prompt_generation_layer[0], enc.transformer.resblocks[1]
    for name, tensor in block.state_dict().items():
        torch.testing.assert_close(layer.state_dict()[name], tensor)
    torch.testing.assert_close(layer.ln_1_kv.weight, block.ln_1.weight)


def test_prompt_generation_layer_with_narrower_context_copies_the_query_side():
    _, enc = make_encoder((2,))  # test-tiny: E = 32 < W = 64, separate q/k/v maps
    layer, block = enc.prompt_generation_layer[0], enc.transformer.resblocks[1]
    assert layer.attn.k_proj_weight.shape == (CLIP.text.width, CLIP.embed_dim)
    torch.testing.assert_close(layer.attn.q_proj_weight, block.attn.in_proj_weight[: CLIP.text.width])
    for name in ("ln_1.weight", "ln_2.bias", "mlp.c_fc.weight", "attn.out_proj.weight", "attn.in_proj_bias"):
        torch.testing.assert_close(layer.get_parameter(name), block.get_parameter(name))


def test_plain_text_encoder_shape():
    pl = make_prompt_learner(n_ctx=0, template="{}.")
    enc = VPTextEncoder(CLIP.text, CLIP.embed_dim)
    assert not hasattr(enc, "prompt_generation_layer")
    assert enc(pl(), pl.tokenized_prompts).shape == (len(NAMES), CLIP.embed_dim)


def test_runs_in_bfloat16_with_fp32_layer_norm():
    pl, enc = make_encoder(dtype=torch.bfloat16)
    context = [torch.randn(2, 5, CLIP.embed_dim, dtype=torch.bfloat16) for _ in range(2)]
    out = enc(pl(), pl.tokenized_prompts, context)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
