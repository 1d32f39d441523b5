"""The progress bar of every command (rich): a label, a bar, what is done so far and the time left, on stderr.

Commands differ only in what they count (`unit`), whether the bar stays on screen when done (`transient`) and
whether there is one at all (`enabled`). When stderr is not a terminal rich draws nothing while the bar runs; a bar
that is not transient then prints its final line once at the end (a record in a log file).
"""

from __future__ import annotations

from typing import Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

Unit = Literal["items", "bytes", "seconds", "percent", "spinner"]


class _SecondsColumn(ProgressColumn):
    """Seconds done of the total, or only the seconds done when the total is unknown (a video without duration)."""

    def render(self, task: Task) -> Text:
        if task.total:
            return Text(f"{task.completed:.0f}/{task.total:.0f} s")
        return Text(f"{task.completed:.0f} s")


def progress_bar(
    label: str | None = None,
    *,
    unit: Unit = "items",
    eta: bool = True,
    console: Console | None = None,
    transient: bool = True,
    enabled: bool = True,
) -> Progress:
    """A rich `Progress` to use as a context manager, with `add_task`, `advance` and `update` as usual.

    Args:
        label: fixed text in front of the bar; by default each task's description.
        unit: what the bar counts: "items" (done/total), "bytes" (size and speed), "seconds" (of a video),
            "percent", or "spinner" (no bar: the total is unknown and nothing is counted).
        eta: show the time left.
        console: where to draw (default: stderr, so stdout stays the command's result).
        transient: clear the bar when done.
        enabled: False: no bar at all (quiet mode, a single item).
    """
    text = TextColumn(label if label is not None else "{task.description}")
    columns: list[ProgressColumn]
    if unit == "spinner":
        columns = [SpinnerColumn(), text]
    else:
        counts: dict[str, list[ProgressColumn]] = {
            "items": [MofNCompleteColumn()],
            "bytes": [DownloadColumn(), TransferSpeedColumn()],
            "seconds": [_SecondsColumn()],
            "percent": [TaskProgressColumn()],
        }
        if unit not in counts:
            raise ValueError(f"unknown progress unit {unit!r}; use items, bytes, seconds, percent or spinner")
        columns = [text, BarColumn(), *counts[unit]]
    if eta:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, console=console or Console(stderr=True), transient=transient, disable=not enabled)
