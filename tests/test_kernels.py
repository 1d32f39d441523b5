"""The fast path's attention kernels on their own: the log-sum-exp merge and the CUDA wrappers, run on the CPU with
plain-math stand-ins for the CUDA kernels (float64; docs/model.md, "The split context attention")."""

from __future__ import annotations

import pytest
import torch
from oracle import explicit_context_attention
from torch import Tensor

from tcclip.model import kernels

LSE_ALIGN = 32  # CUDA's memory-efficient kernel pads its log-sum-exp to a multiple of 32 rows


def _efficient_standin(q, k, v, bias, compute_log_sumexp, dropout_p, is_causal, *, scale):
    """Plain math with the contract of `aten._scaled_dot_product_efficient_attention`: [B, H, L, dh] inputs, the
    log-sum-exp padded to a multiple of 32 rows (NaN there: the padding must never be read), RNG state tensors."""
    assert bias is None and compute_log_sumexp and dropout_p == 0.0 and not is_causal
    logits = q @ k.transpose(-2, -1) * scale
    rows = q.shape[-2]
    lse = torch.full((*logits.shape[:-2], -(-rows // LSE_ALIGN) * LSE_ALIGN), float("nan"), dtype=q.dtype)
    lse[..., :rows] = logits.logsumexp(-1)
    return logits.softmax(-1) @ v, lse, torch.empty((), dtype=torch.long), torch.empty((), dtype=torch.long)


def _efficient_backward_standin(g, q, k, v, bias, out, lse, seed, offset, dropout_p, mask, is_causal, *, scale):
    """Plain math with the contract of the efficient kernel's backward: the given output and (padded) log-sum-exp
    define the probabilities and the row term, as in the fused kernel."""
    rows = q.shape[-2]
    assert lse.shape[-1] == -(-rows // LSE_ALIGN) * LSE_ALIGN, "the backward must get the padded layout back"
    assert bias is None and list(mask) == [True, True, True, False]
    probs = (q @ k.transpose(-2, -1) * scale - lse[..., :rows, None]).exp()
    grad_logits = probs * (g @ v.transpose(-2, -1) - (g * out).sum(-1, keepdim=True))
    return grad_logits @ k * scale, grad_logits.transpose(-2, -1) @ q * scale, probs.transpose(-2, -1) @ g, None


def _inputs(seed: int = 0, dtype=torch.float64) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    b, t, h, n, k, dh = 2, 3, 2, 5, 4, 8
    shapes = [(b, t, h, n, dh)] * 3 + [(b, h, k, dh)] * 2 + [(h,)]
    return [torch.randn(s, generator=gen, dtype=dtype, requires_grad=True) for s in shapes]


def test_merge_parts_equals_one_softmax_over_both_key_sets():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(3, 7, 8, generator=gen, dtype=torch.float64)
    k1, v1 = torch.randn(2, 3, 5, 8, generator=gen, dtype=torch.float64)
    k2, v2 = torch.randn(2, 3, 9, 8, generator=gen, dtype=torch.float64)
    l1, l2 = (q @ k1.transpose(-2, -1)).logsumexp(-1), (q @ k2.transpose(-2, -1)).logsumexp(-1)
    o1, o2 = (q @ k1.transpose(-2, -1)).softmax(-1) @ v1, (q @ k2.transpose(-2, -1)).softmax(-1) @ v2
    out, lse, w2 = kernels.merge_parts(o1, l1, o2, l2)
    logits = q @ torch.cat([k1, k2], 1).transpose(-2, -1)
    torch.testing.assert_close(out, logits.softmax(-1) @ torch.cat([v1, v2], 1), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(lse, logits.logsumexp(-1), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(w2, logits.softmax(-1)[..., 5:].sum(-1), rtol=1e-13, atol=1e-13)


def test_cuda_wrappers_with_plain_math_standins_give_the_explicit_attention_and_gradients(monkeypatch):
    """The CUDA branch (log-sum-exp padding, RNG state, merge, backward) runs here with plain-math kernels."""
    monkeypatch.setattr(kernels, "_EFFICIENT_OPS", (_efficient_standin, _efficient_backward_standin))
    monkeypatch.setitem(kernels._KERNELS, "cpu", kernels._KERNELS["cuda"])
    inputs = _inputs()
    grad_out = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out, lse = kernels.split_context_attention(*inputs, 0.3)
    expected, expected_lse = explicit_context_attention(*inputs, 0.3)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, expected_lse, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(out, inputs, grad_out)
    expected_grads = torch.autograd.grad(expected, inputs, grad_out)
    for name, got, want in zip(["q", "k", "v", "k_ctx", "v_ctx", "shift"], grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11, msg=name)


@pytest.mark.parametrize("context", [True, False], ids=["split", "no-context"])
def test_frame_attention_class_scores_are_the_class_row_of_the_softmax(context):
    q, k, v, k_ctx, v_ctx, _ = (x.detach() for x in _inputs(2))
    table = torch.randn(q.shape[2], 1, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    if not context:
        k_ctx = v_ctx = None
    with torch.no_grad():
        _, scores = kernels.frame_attention(q, k, v, k_ctx, v_ctx, table, 0.3, class_scores=True)
    t, n = q.shape[1], q.shape[-2]
    logits = q @ k.transpose(-2, -1) * 0.3
    if context:
        logits = torch.cat([logits + table[..., :1], q @ k_ctx[:, None].transpose(-2, -1) * 0.3 + table[..., 1:]], -1)
    expected = logits.softmax(-1)[..., 0, 1:n].mean(2)  # [B, T, P]
    assert scores.shape == (q.shape[0], t, n - 1)
    torch.testing.assert_close(scores, expected, rtol=1e-12, atol=1e-12)


def test_split_context_is_used_on_the_cpu_in_any_floating_dtype():
    q = torch.zeros(1, 1, 1, 2, 8)
    assert kernels.split_context_supported(q) and kernels.split_context_supported(q.double())
    assert not kernels.split_context_supported(q.long())
    assert not kernels.split_context_supported(q.to("meta"))  # no fused kernel with a log-sum-exp there
