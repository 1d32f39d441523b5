"""The fast path against the plain path and the test oracle (float64; docs/model.md, "Exactness").

The fast path shares the text prefix across the batch, runs the vision attention through fused kernels (the context
keys kept apart) and a memory-lean MLP backward; the plain path is the straightforward form. Both must give the same
logits and the same gradients.
"""

from __future__ import annotations

import pytest
import torch
from oracle import explicit_context_attention, reference_forward
from torch import Tensor

from tcclip.model import kernels
from tcclip.model.config import TCCLIPConfig
from tcclip.model.factory import create_model
from tcclip.model.layers import MLP
from tcclip.model.tc_attention import TCAttention

NAMES = ["ApplyEyeMakeup", "playing_guitar", "abseiling", "YoYo", "riding a bike"]
CFG = TCCLIPConfig(arch="test-tiny", num_frames=3, context_token_k=6, tome_r=2, prompt_generation_layer_level=(2,))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread (on a busy machine, OpenMP threads wait for each other far longer than they work)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(cfg: TCCLIPConfig = CFG, seed: int = 0) -> torch.nn.Module:
    """A random float64 model whose new parameters are perturbed so that they matter."""
    torch.manual_seed(seed)
    model = create_model(cfg, NAMES, clip_weights=None).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "local_global_bias_table" in name:
                p.add_(0.5 * torch.randn_like(p))
            elif name.startswith(("prompt_learner.ctx", "text_encoder.prompt_generation_layer")):
                p.add_(0.05 * torch.randn_like(p))
    return model


def _video(cfg: TCCLIPConfig = CFG, batch: int = 2, seed: int = 1) -> Tensor:
    size = cfg.clip.vision.image_size
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.num_frames, 3, size, size, generator=gen, dtype=torch.float64)


def _assert_close(actual: Tensor, expected: Tensor, rtol: float = 1e-8, scale: float | None = None) -> None:
    """Agreement relative to the largest magnitude of `expected` (or to `scale`)."""
    scale = float(expected.detach().abs().max()) if scale is None else scale
    err = float((actual - expected).detach().abs().max())
    assert err <= rtol * max(scale, 1e-30), f"max abs error {err:.3e} > {rtol:g} * {scale:.3e}"


@pytest.mark.parametrize("levels", [(2,), (1, 2), (1,)], ids=["last-level", "two-levels", "first-level"])
def test_fast_path_plain_path_and_oracle_give_the_same_logits(levels):
    cfg = CFG.replace(prompt_generation_layer_level=levels)
    model = _model(cfg).eval()
    video = _video(cfg)
    with torch.no_grad():
        fast = model(video)
        model.set_fast_path(False)
        plain = model(video)
    oracle = reference_forward(model.state_dict(), cfg, NAMES, video).logits
    _assert_close(fast, oracle)
    _assert_close(plain, oracle)


@pytest.mark.parametrize("kind", ["vifi_clip", "clip"])
def test_baselines_give_the_same_logits_on_both_paths(kind):
    model = _model(CFG.replace(model=kind)).eval()
    video = _video()
    with torch.no_grad():
        fast = model(video)
        model.set_fast_path(False)
        _assert_close(model(video), fast)


def _gradients(model: torch.nn.Module, video: Tensor, path: str) -> dict[str, Tensor]:
    model.zero_grad(set_to_none=True)
    model.set_fast_path(path == "fast")
    model(video).logsumexp(dim=-1).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_fast_and_plain_training_steps_give_the_same_gradients(checkpointing):
    model = _model(CFG.replace(prompt_generation_layer_level=(1, 2))).train()
    video = _video()
    reference = _gradients(model, video, "plain")
    model.image_encoder.gradient_checkpointing = checkpointing
    fast = _gradients(model, video, "fast")
    assert fast.keys() == reference.keys() and len(fast) > 50
    # Some gradients are zero up to rounding (a key bias shifts all logits of a query alike): compare those on the
    # scale of the whole gradient.
    floor = 1e-6 * max(float(g.abs().max()) for g in reference.values())
    for name, grad in reference.items():
        _assert_close(fast[name], grad, scale=max(float(grad.abs().max()), floor))


def test_plain_path_does_not_cache_and_fast_path_reuses_the_prefix():
    model = _model().eval()
    video = _video()
    with torch.no_grad():
        model.set_fast_path(False)
        model(video)
        assert model._text_cache is None
        model.set_fast_path(True)
        model(video)
        prefix = model._text_cache.value
        model(video)
        assert model._text_cache.value is prefix


def test_set_fast_path_reaches_every_submodule_and_rejects_non_booleans():
    model = _model()
    model.set_fast_path(False)
    switches = {type(m).__name__: m.fast for m in model.modules() if hasattr(m, "fast")}
    assert switches == {"TCCLIP": False, "VPTextEncoder": False, "MLP": False, "TCAttention": False}
    assert sum(isinstance(m, MLP) for m in model.modules()) == 5  # 2 vision, 2 text blocks, 1 prompt generation
    with pytest.raises(TypeError, match="True or False"):
        model.set_fast_path("plain")


def test_fast_path_default_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("TCCLIP_FAST_PATH", "0")
    assert not MLP(8).fast and not TCAttention(8, 2, True).fast
    monkeypatch.setenv("TCCLIP_FAST_PATH", "1")
    assert MLP(8).fast
    monkeypatch.setenv("TCCLIP_FAST_PATH", "maybe")
    with pytest.raises(ValueError, match="TCCLIP_FAST_PATH must be 0 or 1"):
        MLP(8)


def _saved_bytes(fn, module: torch.nn.Module) -> int:
    """Bytes of the distinct activations (not `module`'s parameters) autograd keeps for the backward of `fn()`."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if t.numel() and storage.data_ptr() not in params:
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def test_lean_mlp_matches_autograd_and_keeps_fewer_activations():
    torch.manual_seed(0)
    mlp = MLP(8).double()
    x = torch.randn(5, 3, 8, dtype=torch.float64, requires_grad=True)
    more = torch.randn(10, 3, 8, dtype=torch.float64, requires_grad=True)
    grads, per_token = {}, {}
    for path in ("fast", "plain"):
        mlp.fast = path == "fast"
        out = mlp(x)
        grads[path] = torch.autograd.grad((out * out).sum(), [x, *mlp.parameters()])
        # Stored bytes per extra token (weight-sized tensors cancel out), in widths of the input.
        per_token[path] = (_saved_bytes(lambda: mlp(more), mlp) - _saved_bytes(lambda: mlp(x), mlp)) / (15 * 8 * 8)
    for fast, reference in zip(grads["fast"], grads["plain"], strict=True):
        _assert_close(fast, reference, rtol=1e-12)
    assert per_token == {"fast": 5, "plain": 13}  # input + pre-activation vs input + four hidden-sized tensors


def test_lean_mlp_under_autocast_gives_parameter_dtype_gradients():
    mlp = MLP(8)
    x = torch.randn(4, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mlp(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in mlp.parameters())
    assert x.grad.dtype == torch.float32


def test_fast_training_step_keeps_far_fewer_activations():
    model = _model(CFG.replace(num_frames=4, context_token_k=8, tome_r=4)).train()
    video = _video(CFG.replace(num_frames=4), batch=2)
    saved = {}
    for path in ("fast", "plain"):
        model.set_fast_path(path == "fast")
        saved[path] = _saved_bytes(lambda: model(video), model)
    assert saved["fast"] < 0.6 * saved["plain"], saved


def test_context_attention_in_two_parts_equals_one_softmax_with_gradients():
    gen = torch.Generator().manual_seed(0)
    b, t, h, n, k, dh = 2, 3, 2, 5, 4, 8
    shapes = [(b, t, h, n, dh)] * 3 + [(b, h, k, dh)] * 2 + [(h,)]
    inputs = [torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True) for s in shapes]
    # q, k, v as the encoder makes them: head-split views of [B, T, N, H*dh] projections (not contiguous)
    inputs[:3] = [x.detach().transpose(2, 3).contiguous().transpose(2, 3).requires_grad_() for x in inputs[:3]]
    grad_out = torch.randn(b, t, h, n, dh, generator=gen, dtype=torch.float64)
    out, lse = kernels.split_context_attention(*inputs, 0.3)
    expected, expected_lse = explicit_context_attention(*inputs, 0.3)
    _assert_close(out, expected, rtol=1e-12)
    _assert_close(lse, expected_lse, rtol=1e-12)
    grads = torch.autograd.grad(out, inputs, grad_out)
    expected_grads = torch.autograd.grad(expected, inputs, grad_out)
    for name, got, want in zip(["q", "k", "v", "k_ctx", "v_ctx", "shift"], grads, expected_grads, strict=True):
        assert got.shape == want.shape, name
        _assert_close(got, want, rtol=1e-12)


def test_context_attention_does_not_repeat_the_context_keys():
    """What the fast path keeps for backward grows with T*N and K, not with T*K (no per-frame context copies)."""
    model = _model(CFG.replace(num_frames=4, context_token_k=8, tome_r=4)).train()
    attn = next(m for m in model.modules() if isinstance(m, TCAttention) and m.local_global_bias_table is not None)
    x = torch.randn(2, 4, 17, 64, dtype=torch.float64)
    context = torch.randn(2, 8, 64, dtype=torch.float64)
    shapes = {}
    for split in (True, False):
        seen = shapes.setdefault(split, [])
        record = torch.autograd.graph.saved_tensors_hooks(
            lambda s, seen=seen: seen.append(tuple(s.shape)) or s, lambda s: s
        )
        attn.fast = split  # the plain form keeps the keys/values of every frame with the context's copied in
        with record:
            attn(x, context)
    assert not any(len(s) >= 3 and s[-2] == 17 + 8 for s in shapes[True])  # no keys of N + K rows per frame
    assert any(len(s) >= 3 and s[-2] == 17 + 8 for s in shapes[False])


@pytest.mark.parametrize("shape", [(2, 4, 8, 16), (68, 16), (5, 16), (16,)], ids=["batch", "rows", "few", "vec"])
def test_lean_mlp_in_float32_matches_torch(shape):
    """The lean MLP (forward and its own backward) against plain torch in float32."""
    torch.manual_seed(0)
    mlp = MLP(16)
    x = torch.randn(*shape, requires_grad=True)
    results = {}
    for path in ("fast", "plain"):
        mlp.fast = path == "fast"
        out = mlp(x)
        results[path] = (out, *torch.autograd.grad((out * out).sum(), [x, *mlp.parameters()]))
    for fast, reference in zip(results["fast"], results["plain"], strict=True):
        _assert_close(fast, reference, rtol=1e-5)
    with torch.no_grad():
        _assert_close(mlp(x), results["plain"][0], rtol=1e-5)


@pytest.mark.slow
def test_torch_compile_of_the_vision_encoder_gives_the_same_logits():
    model = create_model(CFG, NAMES, clip_weights=None).eval()
    video = _video().float()
    with torch.no_grad():
        eager = model(video)
        model.image_encoder.compile()
        _assert_close(model(video), eager, rtol=1e-4)


@pytest.mark.slow
def test_throughput_benchmark_quick_run(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"
    out = tmp_path / "speed.json"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", str(out)], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| variant | eval clips/s, 51 classes | eval clips/s, 400 classes |" in proc.stdout
    assert "| fast vs plain path |" in proc.stdout
    results = json.loads(out.read_text())
    assert results["float64"]["max_rel"] <= 1e-8
    variants = {"fast", "plain", "fast, plain vision attention", "fast, plain MLP", "fast, plain text"}
    assert set(results["train"]) == variants and all("step_seconds" in r for r in results["train"].values())
    assert {r["optimizer"] for r in results["train"].values()} == {"fused AdamW"}  # the training code's own
    assert "fast, plain, fast, plain vision attention, fast, plain MLP, fast, plain text: fused AdamW" in proc.stdout
    assert all(set(row) == variants for row in results["eval"].values())


def test_context_attention_in_bf16_stays_within_bf16_rounding():
    """CPU mixed precision: bf16 inputs (what autocast feeds it) against the float64 explicit attention."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(2, 3, 2, 17, 32)] * 3 + [(2, 2, 8, 32)] * 2 + [(2,)]
    exact = [torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True) for s in shapes]
    half = [x.detach().bfloat16().requires_grad_() for x in exact]
    grad_out = torch.randn(shapes[0], generator=gen, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = kernels.split_context_attention(*half, 32**-0.5)
    expected, _ = explicit_context_attention(*exact, 32**-0.5)
    assert out.dtype == torch.bfloat16
    _assert_close(out.double(), expected, rtol=2e-2)
    got = torch.autograd.grad(out, half, grad_out.bfloat16())
    want = torch.autograd.grad(expected, exact, grad_out)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.bfloat16
        _assert_close(g.double(), w, rtol=3e-2)
