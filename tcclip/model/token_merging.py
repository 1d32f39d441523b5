"""Context summarisation by bipartite soft matching (Token Merging, Bolya et al. 2023), as TC-CLIP uses it for
temporal context summarisation (paper: "Temporal Contextualization"; the schedule is in docs/model.md).

Everything is batched: tokens [B, n, D] with sizes [B, n, 1] (how many seed tokens each one stands for) and,
optionally, source maps [B, n, S] (0/1: which of S original tokens each one contains). Only the few merge steps
are a Python loop.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["bipartite_merge", "merge_schedule", "summarise", "take_rows"]


def merge_schedule(num_tokens: int, num_out: int, r: int) -> list[int]:
    """How many tokens each step merges to go from `num_tokens` down to `num_out` (official schedule).

    First floor((num_tokens - num_out) / r) steps of min(r, count // 2), then, while the count is above
    `num_out`, steps of min(count - num_out, count // 2). Empty when `num_tokens <= num_out`.
    """
    steps: list[int] = []
    count = num_tokens
    for _ in range(max(0, (num_tokens - num_out) // r)):
        steps.append(min(r, count // 2))
        count -= steps[-1]
    while count > num_out:
        steps.append(min(count - num_out, count // 2))
        count -= steps[-1]
    return steps


def take_rows(x: Tensor, index: Tensor) -> Tensor:
    """x [B, n, ...], index [B, m] -> [B, m, ...]: the rows `index` of each batch element.

    Through `index_select`, whose backward pass keeps only the index (a `gather` would keep all of x alive).
    """
    b, n = x.shape[:2]
    flat = (index + torch.arange(b, device=index.device)[:, None] * n).flatten()  # [B*m] row numbers of x.flatten(0, 1)
    return x.reshape(b * n, *x.shape[2:]).index_select(0, flat).view(b, index.shape[1], *x.shape[2:])


def _merge_sums(sums: Tensor, size: Tensor, r: int, source: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """One bipartite step on size-weighted sums (token = sum / size); see `bipartite_merge` for the rule.

    Carrying sums instead of means makes a merge a plain addition (no multiply and divide by sizes each step), and
    the cosine scores are the same: a sum and its mean point the same way. The scores only choose (indices), so
    they are computed without recording gradients.
    """
    n = sums.shape[1]
    if not 0 <= r <= n // 2:
        raise ValueError(f"cannot merge {r} of {n} tokens in one bipartite step (at most {n // 2})")
    with torch.no_grad():
        metric = sums / sums.norm(dim=-1, keepdim=True)  # unit-norm copy: dot products are cosine similarities
        scores = metric[:, 0::2] @ metric[:, 1::2].transpose(1, 2)  # [B, nA, nB]
        best_score, best_b = scores.max(dim=-1)  # [B, nA] each; the first maximum on a tie
        order = best_score.argsort(dim=-1, descending=True, stable=True)  # [B, nA] A tokens ranked, best first
        dst = best_b.gather(1, order[:, :r])  # [B, r] the B token each merged A token joins
        ranked_a = 2 * order  # positions of the ranked A tokens in the input

    sums_a = take_rows(sums, ranked_a)  # [B, nA, D] in ranked order: the first r merge, the rest stay
    size_a = take_rows(size, ranked_a)  # [B, nA, 1]
    sums_b = sums[:, 1::2].scatter_add(1, dst.unsqueeze(-1).expand(-1, -1, sums.shape[-1]), sums_a[:, :r])
    size_b = size[:, 1::2].scatter_add(1, dst.unsqueeze(-1), size_a[:, :r])
    sums_out = torch.cat([sums_a[:, r:], sums_b], dim=1)
    size_out = torch.cat([size_a[:, r:], size_b], dim=1)
    if source is None:
        return sums_out, size_out, None
    source_a = take_rows(source, ranked_a)
    source_b = source[:, 1::2].scatter_reduce(
        1, dst.unsqueeze(-1).expand(-1, -1, source.shape[-1]), source_a[:, :r], reduce="amax", include_self=True
    )  # [B, nB, S] OR of the 0/1 maps
    return sums_out, size_out, torch.cat([source_a[:, r:], source_b], dim=1)


def bipartite_merge(
    x: Tensor, size: Tensor, r: int, source: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One bipartite soft matching step merging `r` tokens away.

    Set A = even positions, set B = odd positions. Each A token picks its most cosine-similar B token (the first
    on an exact tie); the A tokens are ranked by that score, best first (stable: earlier A first on a tie), and the
    first `r` merge into their B token as a size-weighted mean.

    Args:
        x: [B, n, D] tokens.
        size: [B, n, 1] sizes.
        r: tokens to merge away, at most n // 2.
        source: optional [B, n, S] 0/1 source maps; a merged token's map is the OR of its parts'.

    Returns:
        (x, size, source) with n - r tokens: the unmerged A tokens in ranked order, then all B tokens in order.
    """
    sums, size, source = _merge_sums(x * size, size, r, source)
    return sums / size, size, source


def summarise(x: Tensor, num_out: int, r: int, source: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Merge tokens [B, n, D] down to `num_out` with `merge_schedule`, every token starting at size 1.

    Args:
        x: [B, n, D] tokens (the seed tokens, frame by frame).
        num_out: K, tokens to keep (no merging when n <= K).
        r: tokens merged per full step (tome_r).
        source: optional [B, n, S] 0/1 source maps to carry along.

    Returns:
        ([B, min(n, K), D] tokens, their [B, min(n, K), S] source maps or None).
    """
    steps = merge_schedule(x.shape[1], num_out, r)
    if not steps:
        return x, source
    sums, size = x, x.new_ones(x.shape[0], x.shape[1], 1)  # size 1: the sums are the tokens
    for step in steps:
        sums, size, source = _merge_sums(sums, size, step, source)
    return sums / size, source
