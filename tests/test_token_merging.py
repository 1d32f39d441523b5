"""Batched bipartite soft matching against the test oracle's token-by-token version, in float64."""

from __future__ import annotations

import pytest
import torch
from oracle import bipartite_merge_step, summarise_tokens

from tcclip.model.token_merging import bipartite_merge, merge_schedule, summarise


def _oracle_summarise(x: torch.Tensor, num_out: int, r: int):
    """The oracle per video: tokens [B, K, D] and, per video, the set of input positions in each token."""
    all_tokens, all_sources = [], []
    for video in x:
        tokens, _, sources = summarise_tokens(list(video), num_out, r)
        all_tokens.append(torch.stack(tokens))
        all_sources.append([set(s) for s in sources])
    return torch.stack(all_tokens), all_sources


def _as_sets(source: torch.Tensor) -> list[list[set[int]]]:
    return [[set(torch.nonzero(row).flatten().tolist()) for row in video] for video in source]


def test_schedule_of_the_default_model():
    assert merge_schedule(16 * 58, 96, 100) == [100] * 8 + [32]


@pytest.mark.parametrize(
    ("n", "k", "r", "expected"),
    [(10, 10, 3, []), (7, 12, 3, []), (11, 4, 3, [3, 3, 1]), (9, 2, 100, [4, 2, 1]), (8, 5, 1, [1, 1, 1])],
)
def test_schedule_edge_cases(n, k, r, expected):
    steps = merge_schedule(n, k, r)
    assert steps == expected
    assert n - sum(steps) == min(n, k)


@pytest.mark.parametrize(("batch", "n", "k", "r"), [(1, 12, 5, 3), (3, 17, 6, 4), (2, 40, 7, 10), (4, 9, 9, 2)])
def test_summarise_matches_the_oracle(batch, n, k, r):
    gen = torch.Generator().manual_seed(n * 100 + batch)
    x = torch.randn(batch, n, 8, dtype=torch.float64, generator=gen)
    source = torch.eye(n, dtype=torch.float64).expand(batch, n, n).clone()
    out, out_source = summarise(x, k, r, source)
    expected, expected_sources = _oracle_summarise(x, k, r)
    assert out.shape == (batch, min(n, k), 8)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert _as_sets(out_source) == expected_sources


def test_no_merging_when_there_are_at_most_k_tokens():
    x = torch.randn(2, 6, 4, dtype=torch.float64)
    out, source = summarise(x, 6, 2)
    assert torch.equal(out, x) and source is None


def test_exact_ties_keep_a_order_and_pick_the_first_b():
    # One-hot tokens of random length: every cosine is exactly 0 or 1, so most scores tie.
    gen = torch.Generator().manual_seed(0)
    n, d = 15, 3  # odd n: 8 A tokens, 7 B tokens
    directions = torch.randint(0, d, (2, n), generator=gen)
    x = torch.nn.functional.one_hot(directions, d).double() * torch.rand(2, n, 1, generator=gen, dtype=torch.float64)
    size = torch.rand(2, n, 1, generator=gen, dtype=torch.float64) + 0.5
    for r in (0, 3, 7):
        out, out_size, _ = bipartite_merge(x, size, r)
        for b in range(2):
            tokens, sizes, _ = bipartite_merge_step(list(x[b]), size[b, :, 0].tolist(), [[]] * n, r)
            torch.testing.assert_close(out[b], torch.stack(tokens), rtol=1e-14, atol=1e-14)
            torch.testing.assert_close(out_size[b, :, 0], torch.tensor(sizes, dtype=torch.float64))


def test_merging_is_differentiable():
    x = torch.randn(2, 20, 8, dtype=torch.float64, requires_grad=True)
    out, _ = summarise(x, 6, 5)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_too_many_merges_is_an_error():
    with pytest.raises(ValueError, match="at most 2"):
        bipartite_merge(torch.randn(1, 5, 3), torch.ones(1, 5, 1), 3)
