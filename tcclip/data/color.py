"""Colour jitter on uint8 frames: torchvision's four tensor ops, same values, a fraction of the time.

The training recipe jitters brightness, contrast, saturation and hue with torchvision's ``ColorJitter`` semantics on
uint8 frames: every op computes in float32 and truncates back to uint8 before the next one. torchvision's
``adjust_hue`` does this through a generic RGB -> HSV -> RGB round trip (a dozen full-size temporaries and an int64
gather) and dominates the training transforms on prepared (small, fast-decoding) videos. This module computes the
same numbers with fewer passes:

- the four ops run on one float32 copy holding whole numbers; ``floor`` after each op stands for the truncation to
  uint8 (the values are clamped to [0, 255] first, so floor and truncation agree), so there is one conversion in
  and one out instead of two per op;
- every float32 operation that rounds is the one torchvision performs, with the same operands in the same order,
  so the results are the same numbers, not approximations;
- hue: a hue shift keeps each pixel's largest and smallest channel levels (HSV keeps V and S; that torchvision's
  float round trip gives them back exactly is checked for every (max, min) pair in the tests) and recomputes only
  the middle channel; the new hue sector says which channel receives the max, the min and the middle value.

Design note: docs/decoding.md ("Training transforms").
"""

from __future__ import annotations

import torch
from torch import Tensor

GREY_WEIGHTS: tuple[float, float, float] = (0.2989, 0.587, 0.114)
"""ITU-R 601 luma weights, as torchvision's ``rgb_to_grayscale``."""


def _grey(x: Tensor) -> Tensor:
    """floor of the luma of float [..., 3, H, W] -> [..., 1, H, W] (torchvision's order of operations)."""
    r, g, b = x.unbind(dim=-3)
    return r.mul(GREY_WEIGHTS[0]).add_(g, alpha=GREY_WEIGHTS[1]).add_(b, alpha=GREY_WEIGHTS[2]).floor_().unsqueeze(-3)


def _blend_(x: Tensor, other: Tensor | float, ratio: float) -> Tensor:
    """In place: ``floor(clamp(ratio x + (1 - ratio) other, 0, 255))`` as torchvision's blend on uint8."""
    x.mul_(ratio)
    if isinstance(other, Tensor):
        x.add_(other, alpha=1.0 - ratio)
    return x.clamp_(0, 255).floor_()


def brightness_(x: Tensor, factor: float) -> Tensor:
    """In place on float32 whole numbers [..., 3, H, W]: torchvision's ``adjust_brightness`` on uint8."""
    return _blend_(x, 0.0, factor)


def contrast_(x: Tensor, factor: float) -> Tensor:
    """In place: ``adjust_contrast`` on uint8; the grey level blended in is each image's own mean grey."""
    mean = torch.mean(_grey(x), dim=(-3, -2, -1), keepdim=True)
    return _blend_(x, mean, factor)


def saturation_(x: Tensor, factor: float) -> Tensor:
    """In place: ``adjust_saturation`` on uint8 (blend with each pixel's floored grey level)."""
    return _blend_(x, _grey(x), factor)


def hue_(x: Tensor, shift: float) -> Tensor:
    """``adjust_hue`` on uint8: float32 whole numbers [..., 3, H, W] -> the same, hue shifted by ``shift`` turns.

    Writes into ``x``. The hue and the middle channel are computed with torchvision's float32 operations on the
    0..1 scale (the same operands in the same order); the max and min levels are copied.
    """
    if not -0.5 <= shift <= 0.5:
        raise ValueError(f"hue shift must be in [-0.5, 0.5], got {shift}")
    if not x.is_contiguous():
        return x.copy_(hue_(x.contiguous(), shift))
    # A frame at a time: the dozen temporaries stay small enough for the allocator to reuse them (large ones come
    # back as fresh pages, and the page faults cost more than the arithmetic) and stay in cache.
    images = x.view(-1, *x.shape[-3:])
    step = max(1, HUE_CHUNK_PIXELS // (x.shape[-1] * x.shape[-2]))
    for chunk in images.split(step):
        _hue_chunk_(chunk, shift)
    return x


HUE_CHUNK_PIXELS = 1 << 16
"""Pixels per chunk of :func:`hue_` (at least one whole image)."""


def _hue_chunk_(x: Tensor, shift: float) -> Tensor:
    """:func:`hue_` on contiguous float32 whole numbers [N, 3, H, W], in place."""
    # Only arithmetic on whole planes: torch.where, comparisons and remainder cost several times a multiply here.
    # Selections are products with 0/1 masks and sums with zeros, which change no value.
    r, g, b = x.unbind(dim=-3)
    top = torch.maximum(torch.maximum(r, g), b)
    bottom = torch.minimum(torch.minimum(r, g), b)
    unit = x.mul(1.0 / 255.0)  # torchvision's uint8 -> float conversion
    vmax, vmin = top.mul(1.0 / 255.0), bottom.mul(1.0 / 255.0)  # the same numbers as max/min of ``unit``
    spread = vmax - vmin
    # torchvision divides by 1 where max == min; then the numerator is 0 and so is the quotient by any positive
    # number, and otherwise vmax, spread >= 1/255: a tiny floor changes no value.
    sat = spread / vmax.clamp_min(_TINY)
    rc, gc, bc = (vmax.unsqueeze(-3) - unit).div_(spread.clamp_min(_TINY).unsqueeze_(-3)).unbind(dim=-3)
    # Sector-relative hue in sixths: R max -> bc - gc, else G max -> 2 + rc - bc, else 4 + gc - rc.
    r_max = _is_zero(top - r)
    g_max = _is_zero(top - g).mul_(1.0 - r_max)
    b_max = (1.0 - r_max).sub_(g_max)
    hue = (bc - gc).mul_(r_max).add_(rc.add(2.0).sub_(bc).mul_(g_max)).add_(gc.add(4.0).sub_(rc).mul_(b_max))
    hue = hue.mul_(1.0 / 6.0).add_(1.0)
    hue = _frac_(hue).add_(shift)  # fmod(h, 1) for h >= 0, then remainder(h, 1), exactly
    hue = _frac_(hue)
    # HSV -> RGB: sector i and position f in it; the middle value is q = (1 - s f) v (odd i) or t = (s f + 1 - s) v.
    h6 = hue.mul_(6.0)
    sector = torch.floor(h6)  # 0..6; h6 rounded up to 6.0 acts as sector 0 below
    sxf = h6.sub_(sector).mul_(sat)
    half = sector.mul(0.5).floor_()  # i // 2
    odd = sector - half * 2.0
    middle = sxf.neg().add_(1.0).mul_(odd).add_(sxf.add_(sat.neg_().add_(1.0)).mul_(1.0 - odd))
    middle = middle.mul_(vmax).clamp_(0.0, 1.0).mul_(255.999).floor_()  # torchvision's float -> uint8
    # HSV -> RGB gives R, G, B = (v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q) in sectors 0..5,
    # with v the max and p the min: sector i puts the max on channel ((i + 1) // 2) mod 3, the min on channel
    # (i // 2 + 2) mod 3 and the middle value on the third.
    max_channel = _mod3_(sector.add_(1.0).mul_(0.5).floor_())
    min_channel = _mod3_(half.add_(2.0))
    to_top, to_bottom = top.sub_(middle), bottom.sub_(middle)
    for c, out in enumerate((r, g, b)):  # x's old values are no longer needed
        out.copy_(middle).addcmul_(to_top, _is_zero(max_channel - c)).addcmul_(to_bottom, _is_zero(min_channel - c))
    return x


_TINY = 1e-30


def _is_zero(d: Tensor) -> Tensor:
    """1.0 where the whole number ``d`` is 0, else 0.0 (in place)."""
    return d.abs_().clamp_max_(1.0).neg_().add_(1.0)


def _frac_(h: Tensor) -> Tensor:
    """In place ``h - floor(h)``: equals fmod(h, 1) for h >= 0 and remainder(h, 1) (both exact), faster."""
    return h.sub_(torch.floor(h))


def _mod3_(v: Tensor) -> Tensor:
    """In place ``v mod 3`` for whole numbers 0..5."""
    return v.sub_((v - 2.0).clamp_(0.0, 1.0).mul_(3.0))


def color_jitter(
    frames: Tensor, brightness: float, contrast: float, saturation: float, hue: float, order: tuple[int, ...]
) -> Tensor:
    """uint8 [..., 3, H, W] -> uint8: the four ops in ``order`` (0 brightness, 1 contrast, 2 saturation, 3 hue),
    the same values as torchvision's ``adjust_*`` applied one after the other on uint8.

    Contrast blends with each image's (each [3, H, W]'s) mean grey level, so frames of a clip stay independent.
    """
    if frames.dtype != torch.uint8 or frames.ndim < 3 or frames.shape[-3] != 3:
        raise ValueError(f"expected uint8 RGB frames [..., 3, H, W], got {frames.dtype} {tuple(frames.shape)}")
    if min(brightness, contrast, saturation) < 0:
        raise ValueError(f"jitter factors must be non-negative, got {brightness}, {contrast}, {saturation}")
    if len(set(order)) != len(order) or not set(order) <= {0, 1, 2, 3}:
        raise ValueError(f"jitter order must be a permutation of 0..3 (or of some of them), got {order}")
    x = frames.to(torch.float32, memory_format=torch.contiguous_format)  # planar: whole-plane ops vectorise
    for op in order:
        if op == 0:
            x = brightness_(x, brightness)
        elif op == 1:
            x = contrast_(x, contrast)
        elif op == 2:
            x = saturation_(x, saturation)
        else:
            x = hue_(x, hue)
    return x.to(torch.uint8)
