"""The Makefile's comments point to documents and sections that exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _headings(path: Path) -> set[str]:
    return {line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")}


def test_every_document_and_section_the_makefile_names_exists() -> None:
    comments = "\n".join(line for line in (REPO / "Makefile").read_text().splitlines() if line.startswith("#"))
    files = re.findall(r"\b((?:docs/[\w.-]+\.md)|README(?:\.md)?)\b", comments)
    assert "docs/datasets.md" in files  # the demo's explanation: the check below is not vacuous
    for name in files:
        assert (REPO / (name if name.endswith(".md") else f"{name}.md")).is_file(), f"Makefile names {name}"
    # `(docs/x.md, "Section")` and `README, "Section"` / `README "Section"`: the section is a heading of that file
    for name, section in re.findall(r"((?:docs/[\w.-]+\.md)|README(?:\.md)?),? \"([^\"]+)\"", comments):
        document = REPO / (name if name.endswith(".md") else f"{name}.md")
        assert section in _headings(document), f'Makefile names the section "{section}" of {name}, which has none'
