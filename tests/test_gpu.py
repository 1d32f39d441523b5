"""On a CUDA GPU (`pytest -m gpu`; skipped without one): the split context attention against float64 in fp32 and
bf16, values and gradients, and its memory against explicit attention; a bf16-mixed training step against fp32;
torch.compile against eager.

Tolerances are those of the dtype's rounding; whole-model comparisons in float32/bf16 are statistical or on the
loss only, since seed selection and merging flip on near-ties below float64 (docs/model.md, "Exactness").
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from oracle import reference_forward
from torch import Tensor

from tcclip.model import kernels
from tcclip.model.config import TCCLIPConfig
from tcclip.model.factory import create_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run with `pytest -m gpu` on one)"),
]

NAMES = ["ApplyEyeMakeup", "playing_guitar", "abseiling", "YoYo", "riding a bike"]
CFG = TCCLIPConfig(arch="test-tiny", num_frames=4, context_token_k=8, tome_r=4, prompt_generation_layer_level=(2,))
# ViT-B/16 attention shapes: 2 videos, 8 frames, 12 heads, 197 tokens per frame, 96 context tokens, head width 64.
SHAPE = {"b": 2, "t": 8, "h": 12, "n": 197, "k": 96, "dh": 64}


def _rel_err(actual: Tensor, expected: Tensor) -> float:
    return float((actual.double() - expected.double()).abs().max() / expected.double().abs().max().clamp_min(1e-30))


def _attention_inputs(dtype: torch.dtype, seed: int = 0) -> list[Tensor]:
    """q, k, v [B, T, H, N, dh], k_ctx, v_ctx [B, H, K, dh] as head-split views of projections, bias table [H, 1, 2]."""
    b, t, h, n, k, dh = SHAPE.values()
    gen = torch.Generator(device="cuda").manual_seed(seed)
    frames = [torch.randn(b, t, n, h * dh, device="cuda", generator=gen) for _ in range(3)]
    context = [torch.randn(b, k, h * dh, device="cuda", generator=gen) for _ in range(2)]
    qkv = [x.unflatten(-1, (h, dh)).transpose(-3, -2) for x in frames]
    ctx = [x.unflatten(-1, (h, dh)).transpose(-3, -2) for x in context]
    table = 0.5 * torch.randn(h, 1, 2, device="cuda", generator=gen)
    return [x.to(dtype).detach().requires_grad_() for x in (*qkv, *ctx)] + [table.requires_grad_()]


def _attention_and_grads(inputs: list[Tensor]) -> list[Tensor]:
    scale = SHAPE["dh"] ** -0.5
    grad_out = torch.randn(inputs[0].shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(9))
    assert kernels.split_context_supported(inputs[0])
    out, _ = kernels.frame_attention(*inputs, scale, class_scores=False)
    return [out, *torch.autograd.grad(out, inputs, grad_out.to(out.dtype))]


def _explicit_attention(inputs: list[Tensor]) -> Tensor:
    """The attention over [frame keys ; context keys] written out (the context keys copied per frame)."""
    q, k, v, k_ctx, v_ctx, table = inputs
    t, scale = q.shape[1], SHAPE["dh"] ** -0.5
    logits = torch.cat(
        [
            q @ k.transpose(-2, -1) * scale + table[..., :1].to(q.dtype),
            q @ k_ctx[:, None].transpose(-2, -1) * scale + table[..., 1:].to(q.dtype),
        ],
        dim=-1,
    )
    return logits.softmax(-1) @ torch.cat([v, v_ctx[:, None].expand(-1, t, -1, -1, -1)], dim=-2)


def _float64_reference(inputs: list[Tensor]) -> list[Tensor]:
    """`_explicit_attention` in float64, and its gradients."""
    exact = [x.detach().double().requires_grad_() for x in inputs]
    out = _explicit_attention(exact)
    grad_out = torch.randn(out.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(9))
    return [out, *torch.autograd.grad(out, exact, grad_out.double())]


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)], ids=["fp32", "bf16"])
def test_split_context_attention_on_cuda_equals_float64(dtype, rtol):
    """Within the dtype's rounding of float64: values and all gradients."""
    inputs = _attention_inputs(dtype)
    split = _attention_and_grads(inputs)
    exact = _float64_reference(inputs)
    for name, s, e in zip(["out", "q", "k", "v", "k_ctx", "v_ctx", "bias"], split, exact, strict=True):
        assert s.dtype == (torch.float32 if name == "bias" else dtype), name  # the bias table stays fp32
        assert _rel_err(s, e) <= rtol, f"{name}: split {_rel_err(s, e):.2e} from float64"


def test_split_context_attention_keeps_less_for_backward_than_explicit_attention():
    inputs = _attention_inputs(torch.bfloat16)
    peaks = {}
    for split in (True, False):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        if split:
            out, _ = kernels.frame_attention(*inputs, SHAPE["dh"] ** -0.5, class_scores=False)
        else:
            out = _explicit_attention(inputs)
        peaks[split] = torch.cuda.max_memory_allocated() - start
        del out
    assert peaks[True] < peaks[False], peaks


def _model(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(CFG, NAMES, clip_weights=None).to("cuda", dtype)


def _video(batch: int = 4, dtype: torch.dtype = torch.float32, seed: int = 1) -> Tensor:
    size = CFG.clip.vision.image_size
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, CFG.num_frames, 3, size, size, generator=gen).to("cuda", dtype)


def test_model_on_cuda_in_float64_equals_the_oracle():
    model = _model(torch.float64).eval()
    video = _video(dtype=torch.float64)
    with torch.no_grad():
        fast = model(video)
        model.set_fast_path(False)
        plain = model(video)
    oracle = reference_forward({k: v.cpu() for k, v in model.state_dict().items()}, CFG, NAMES, video.cpu()).logits
    assert _rel_err(fast.cpu(), oracle) <= 1e-8 and _rel_err(plain.cpu(), oracle) <= 1e-8


def test_bf16_mixed_training_step_matches_fp32():
    """Loss of one step under bf16 autocast against fp32 (fp32 weights both times), and a finite optimizer step."""
    video, labels = _video(batch=8), torch.arange(8, device="cuda") % len(NAMES)
    losses = {}
    for name, autocast in (("fp32", False), ("bf16", True)):
        model = _model().train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            logits = model(video)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert len(grads) > 50 and all(torch.isfinite(g).all() for g in grads), name
        optimizer.step()
        losses[name] = float(loss)
    assert abs(losses["bf16"] - losses["fp32"]) <= 0.05 * abs(losses["fp32"]), losses


def test_torch_compile_equals_eager_on_cuda():
    """The split attention with its backward through the fused kernels, compiled, against eager (fp32, no discrete
    choices involved), and the whole model compiled in float64 against eager."""
    inputs = _attention_inputs(torch.float32, seed=3)
    eager = _attention_and_grads(inputs)

    def attention(*args: Tensor) -> Tensor:
        return kernels.frame_attention(*args, SHAPE["dh"] ** -0.5, class_scores=False)[0]

    compiled_attention = torch.compile(attention)
    out = compiled_attention(*inputs)
    grad_out = torch.randn(out.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(9))
    compiled = [out, *torch.autograd.grad(out, inputs, grad_out)]
    for name, c, e in zip(["out", "q", "k", "v", "k_ctx", "v_ctx", "bias"], compiled, eager, strict=True):
        assert _rel_err(c, e) <= 1e-5, f"{name}: {_rel_err(c, e):.2e}"

    model = _model(torch.float64).eval()
    video = _video(dtype=torch.float64)
    with torch.no_grad():
        reference = model(video)
        model.image_encoder.compile()
        assert _rel_err(model(video), reference) <= 1e-8
