"""The prediction record (a video's top-k classes) and how `tcclip predict` prints it: a table per video, or
one JSON object per line (`--json`), failures included in order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NamedTuple

from rich.markup import escape
from torch import Tensor


class Prediction(NamedTuple):
    """One class of a video's top-k: unpacks as a `(label, probability)` pair."""

    label: str
    probability: float


def top_k_predictions(probabilities: Tensor, class_names: Sequence[str], k: int) -> list[Prediction]:
    """The k most probable classes of one video, most probable first."""
    values, indices = probabilities.topk(min(k, probabilities.numel()))
    return [Prediction(class_names[i], float(v)) for v, i in zip(values.tolist(), indices.tolist(), strict=True)]


def prediction_table(predictions: Sequence[Prediction]):
    from rich.table import Table

    table = Table(show_edge=False)
    table.add_column("#", justify="right")
    table.add_column("label")
    table.add_column("probability", justify="right")
    for rank, (label, prob) in enumerate(predictions, 1):
        table.add_row(str(rank), label, f"{prob:.4f}")
    return table


def report_failure(out, err, video: str, reason: str, as_json: bool) -> None:
    where = "" if video in reason else f"{video}: "  # decoder errors already name the file
    err.print(f"[red]failed:[/] {escape(where + reason)}", highlight=False)
    if as_json:
        out.file.write(json.dumps({"video": video, "error": reason}) + "\n")


def prediction_json(prediction: Prediction) -> dict[str, str | float]:
    return {"label": prediction.label, "probability": round(prediction.probability, 6)}
