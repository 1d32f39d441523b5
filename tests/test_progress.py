"""The commands' one progress bar (`tcclip.utils.progress`): what each unit shows, and that it can be off."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from tcclip.utils.progress import progress_bar


def _final_line(**kwargs) -> tuple[str, object]:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False, color_system=None)
    return out, progress_bar(console=console, transient=False, **kwargs)


@pytest.mark.parametrize(
    ("unit", "total", "done", "shown"),
    [
        ("items", 7, 3, "3/7"),
        ("seconds", 90.0, 30.0, "30/90 s"),
        ("seconds", None, 12.0, "12 s"),
        ("percent", 4, 1, "25%"),
    ],
)
def test_a_finished_bar_prints_what_it_counted(unit, total, done, shown) -> None:
    out, bar = _final_line(label="work", unit=unit)
    with bar:
        task = bar.add_task("ignored: the label is fixed", total=total)
        bar.update(task, completed=done)
    text = out.getvalue()
    assert text.startswith("work ") and shown in text and "ignored" not in text


def test_the_description_is_the_label_by_default_and_bytes_show_size_and_speed() -> None:
    out, bar = _final_line(unit="bytes", eta=False)
    with bar:
        task = bar.add_task("archive.zip", total=2_000_000)
        bar.update(task, completed=1_000_000)
    text = out.getvalue()
    # size done/total, then the speed (unknown after an instant: "?")
    assert text.startswith("archive.zip ") and text.rstrip().endswith("1.0/2.0 MB ?")


def test_a_disabled_bar_prints_nothing_and_a_transient_one_leaves_nothing() -> None:
    out, bar = _final_line(enabled=False)
    with bar:
        bar.advance(bar.add_task("x", total=2))
    assert out.getvalue() == ""
    out = io.StringIO()
    with progress_bar(console=Console(file=out, force_terminal=False)) as bar:
        bar.advance(bar.add_task("x", total=2))
    assert out.getvalue().strip() == ""


def test_an_unknown_unit_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown progress unit 'frames'"):
        progress_bar(unit="frames")  # type: ignore[arg-type]
