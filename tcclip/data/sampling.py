"""Which frames of a video to decode: segment sampling as in TSN (Wang et al., ECCV 2016), which TC-CLIP follows.

A video of F frames is cut into T equal segments and one frame is taken per segment.

Training (:func:`train_indices`): ``interval = F // T``; if ``interval > 0`` frame i is
``i * interval + r_i`` with ``r_i`` uniform in ``[0, interval)``, otherwise (F < T) frame i is
``round(i * F / T) % F`` with numpy's round-half-to-even (frames repeat). The rounding reaches F
when F < T / 2; like the official code, indices wrap modulo F, so that frame becomes frame 0.

Testing (:func:`test_indices`): ``interval = F / T`` (real) and frame i is
``int(i * interval + interval / 2)``, the middle of each segment, wrapped modulo F.

Multi-view testing, ``num_clip`` views. The default is deterministic and evenly shifted: view v
(0-based) takes the point at fraction ``(v + 0.5) / num_clip`` of every segment,

    frame i of view v = int(i * interval + (v + 0.5) / num_clip * interval) % F,

so the views tile each segment evenly and ``num_clip=1`` is exactly the single-view formula above
(``0.5 * interval`` equals ``interval / 2`` in floating point). With ``random_views=True`` every
view is instead drawn with the training rule, which is what the official code does for its
multi-view testing (results then depend on the seed).
"""

from __future__ import annotations

import numpy as np


def _check(num_video_frames: int, num_frames: int) -> None:
    if num_video_frames <= 0:
        raise ValueError(f"the video has no frames (num_video_frames={num_video_frames})")
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")


def train_indices(num_video_frames: int, num_frames: int, rng: np.random.Generator) -> list[int]:
    """One random frame per segment: ``num_frames`` indices in ``[0, num_video_frames)``."""
    _check(num_video_frames, num_frames)
    interval = num_video_frames // num_frames
    if interval > 0:
        offsets = rng.integers(0, interval, size=num_frames)
        return [i * interval + int(o) for i, o in enumerate(offsets)]
    # Fewer frames than segments: spread evenly, repeating frames. np.round rounds halves to even.
    return [int(x) % num_video_frames for x in np.round(np.arange(num_frames) * num_video_frames / num_frames)]


def test_indices(
    num_video_frames: int,
    num_frames: int,
    num_clip: int = 1,
    random_views: bool = False,
    rng: np.random.Generator | None = None,
) -> list[list[int]]:
    """``num_clip`` views of ``num_frames`` indices each (see the module docstring for the definition).

    Args:
        num_video_frames: F, frames in the video.
        num_frames: T, frames per view.
        num_clip: number of temporal views.
        random_views: draw every view with the training rule (official multi-view behaviour); needs ``rng``.
        rng: random generator for ``random_views``.
    """
    _check(num_video_frames, num_frames)
    if num_clip <= 0:
        raise ValueError(f"num_clip must be positive, got {num_clip}")
    if random_views:
        if rng is None:
            raise ValueError("random_views=True needs an rng (np.random.Generator)")
        return [train_indices(num_video_frames, num_frames, rng) for _ in range(num_clip)]
    interval = num_video_frames / num_frames
    views = []
    for v in range(num_clip):
        shift = (v + 0.5) / num_clip * interval  # == interval / 2 exactly when num_clip == 1
        views.append([int(i * interval + shift) % num_video_frames for i in range(num_frames)])
    return views


test_indices.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported into a test module
