"""Evaluation arithmetic: multi-view class probabilities, one evaluation set's accuracy, a confusion-matrix figure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from tcclip.utils.finite import check_finite_logits


def multi_view_probabilities(model: nn.Module, video: Tensor, what: str = "a batch of videos") -> Tensor:
    """Class probabilities of multi-view videos: softmax of every view's logits, averaged over the views.

    The official evaluation sums the per-view softmax; the mean (sum / V) ranks classes identically and stays a
    probability.
    Views run one at a time to bound memory (4 clips x 3 crops for fully-supervised testing).

    Args:
        model: maps [B, T, 3, S, S] to logits [B, C].
        video: [B, V, T, 3, S, S].
        what: whose logits these are, for the error message.

    Returns:
        [B, C] float32.

    Raises:
        NonFiniteError: a view's logits hold NaN / Inf (no answer is better than an arbitrary one).
    """
    if video.dim() != 6:
        raise ValueError(f"expected video [B, V, T, 3, S, S], got shape {tuple(video.shape)}")
    num_views = video.shape[1]
    total: Tensor | None = None
    for v in range(num_views):
        logits = model(video[:, v])
        check_finite_logits(logits, what)
        probs = logits.float().softmax(dim=-1)
        total = probs if total is None else total + probs
    return total / num_views


class SetMetrics(nn.Module):
    """Accuracy of one evaluation set: top-1, top-5 and the confusion matrix (per-class accuracy, video count).

    torchmetrics sums the states over processes at `compute()`, so every video counts once in DDP as long as the
    sampler does not pad (the data side guarantees that).
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")
        self.confusion = MulticlassConfusionMatrix(num_classes)

    def update(self, probs: Tensor, labels: Tensor) -> None:
        self.top1.update(probs, labels)
        self.top5.update(probs, labels)
        self.confusion.update(probs, labels)

    def compute(self) -> dict[str, Any]:
        """Percentages (rounded to 1e-4) and counts; `confusion` [C, C]: rows true class, columns predicted."""
        confusion = self.confusion.compute()
        per_class_total = confusion.sum(dim=1)
        per_class = torch.where(
            per_class_total > 0, 100.0 * confusion.diagonal() / per_class_total.clamp(min=1), torch.nan
        )
        return {
            "top1": round(100.0 * float(self.top1.compute()), 4),
            "top5": round(100.0 * float(self.top5.compute()), 4),
            "num_videos": int(per_class_total.sum()),
            "per_class_top1": [round(x, 4) for x in per_class.tolist()],
            "confusion": confusion,
        }

    def reset(self) -> None:
        self.top1.reset()
        self.top5.reset()
        self.confusion.reset()


def confusion_figure(confusion: Tensor, class_names: Sequence[str], title: str) -> Figure:
    """A matplotlib figure of a row-normalised confusion matrix (class names on the axes up to 40 classes).

    A bare `Figure` (no pyplot): no global backend or figure registry is touched.
    """
    counts = confusion.detach().float().cpu()
    norm = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    n = len(class_names)
    side = min(4 + 0.25 * n, 16)
    fig = Figure(figsize=(side, side))
    ax = fig.add_subplot()
    ax.imshow(norm.numpy(), vmin=0, vmax=1, cmap="Blues")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 40:
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), class_names, fontsize=7)
    fig.tight_layout()
    return fig
