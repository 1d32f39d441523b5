"""Top-1 accuracies (%) published for TC-CLIP with CLIP ViT-B/16 (ECCV 2024, model card of the official release).

These are facts to compare against, not code: `tcclip.experiments.results` puts each of our cells beside the matching
number.
Variants: "plain" (class names), "llm" (LLM-rephrased class names), "pretrained" (first trained on K400 in the
zero-shot protocol, then fine-tuned). SSv2 has no LLM labels: the paper's llm rows for SSv2 repeat the plain ones,
so they are not listed here.
"""

from __future__ import annotations

from tcclip.experiments.protocols import SHOTS as FEW_SHOT_SHOTS

# variant -> target dataset -> (mean, std) of top-1 over the three test splits.
ZERO_SHOT: dict[str, dict[str, tuple[float, float]]] = {
    "plain": {"hmdb51": (54.2, 0.7), "ucf101": (82.9, 0.6), "k600": (75.8, 0.5)},
    "llm": {"hmdb51": (56.0, 0.3), "ucf101": (85.4, 0.8), "k600": (78.1, 1.0)},
}

# variant -> dataset -> top-1 for K = 2, 4, 8, 16 (best evaluation accuracy over training).
FEW_SHOT: dict[str, dict[str, tuple[float, ...]]] = {
    "plain": {"hmdb51": (57.3, 62.3, 67.3, 68.6), "ucf101": (85.9, 89.9, 92.5, 94.6), "ssv2": (7.3, 8.6, 9.3, 14.0)},
    "llm": {"hmdb51": (58.6, 63.3, 65.5, 68.8), "ucf101": (86.8, 90.1, 92.0, 94.3)},
    "pretrained": {
        "hmdb51": (65.3, 68.5, 71.4, 73.0),
        "ucf101": (94.1, 95.6, 96.6, 97.3),
        "ssv2": (8.7, 10.1, 12.1, 15.2),
    },
}

# variant -> dataset -> (base, novel, harmonic mean), each averaged over seeds s1-s3.
BASE2NOVEL: dict[str, dict[str, tuple[float, float, float]]] = {
    "plain": {
        "k400": (78.9, 63.6, 70.4),
        "hmdb51": (73.3, 54.1, 62.2),
        "ucf101": (95.5, 78.0, 85.9),
        "ssv2": (17.5, 13.4, 15.2),
    },
    "llm": {"k400": (79.1, 65.4, 71.6), "hmdb51": (73.3, 59.1, 65.5), "ucf101": (95.4, 81.6, 88.0)},
    "pretrained": {"hmdb51": (79.4, 58.3, 67.2), "ucf101": (97.5, 84.5, 90.5), "ssv2": (19.6, 15.6, 17.4)},
}

# variant -> dataset -> metric -> value.
FULLY_SUPERVISED: dict[str, dict[str, dict[str, float]]] = {"plain": {"k400": {"top1": 85.2, "top5": 96.9}}}


def zero_shot(variant: str, dataset: str) -> tuple[float, float] | None:
    """Published (mean, std) over the three splits, or None when the paper has no such number."""
    return ZERO_SHOT.get(variant, {}).get(dataset)


def few_shot(variant: str, dataset: str, shots: int) -> float | None:
    """Published K-shot top-1, or None."""
    row = FEW_SHOT.get(variant, {}).get(dataset)
    if row is None or shots not in FEW_SHOT_SHOTS:
        return None
    return row[FEW_SHOT_SHOTS.index(shots)]


def base2novel(variant: str, dataset: str) -> tuple[float, float, float] | None:
    """Published (base, novel, HM), or None."""
    return BASE2NOVEL.get(variant, {}).get(dataset)


def fully_supervised(variant: str, dataset: str, metric: str) -> float | None:
    """Published fully-supervised top-1 or top-5, or None."""
    return FULLY_SUPERVISED.get(variant, {}).get(dataset, {}).get(metric)
