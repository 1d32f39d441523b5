"""The package's shape, checked from the source: a few folders by concern, small modules and functions, and imports
that run one way.

    cli  ->  experiments, inference  ->  training  ->  data  ->  model
                                                       utils (below all but the model core)

The model core (`tcclip.model`) is plain torch: it imports nothing else from tcclip, and no Lightning, argparse,
jsonargparse or rich. Argument parsing lives in `tcclip.cli` only. Each rule is read from the files with `ast`, so a
new module is covered without being listed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from test_imports import PACKAGE, import_graph

MAX_TOP_LEVEL_ENTRIES = 8
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80

# tcclip.<folder> -> its rank; a module may import from its own folder and from folders of a lower rank. Folders of
# the same rank (experiments, inference) do not import each other.
LAYERS = {"utils": 0, "model": 1, "data": 2, "training": 3, "experiments": 4, "inference": 4, "cli": 5}

# Libraries the model core must not import (it is plain torch, usable without the rest of the suite; the layer rule
# keeps it from importing the rest of tcclip).
MODEL_CORE_FORBIDDEN = ("lightning", "pytorch_lightning", "argparse", "jsonargparse", "rich")
# Parsing command lines is the job of tcclip.cli alone.
PARSERS = ("argparse", "jsonargparse")

# What does not meet the rules yet, as "rule: where". The list only shrinks; an entry that no longer applies fails
# the test, so it is removed with the fix.
KNOWN: set[str] = set()


def _sources() -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


def _imported_roots(tree: ast.Module) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


def violations() -> set[str]:
    found: set[str] = set()
    for path, tree in _sources().items():
        rel = _rel(path)
        if len(path.read_text().splitlines()) > MAX_MODULE_LINES:
            found.add(f"module: {rel}")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                    found.add(f"function: {rel}:{node.name}")
        roots = _imported_roots(tree)
        if rel.startswith("tcclip/model/"):
            found.update(f"model core imports {r}: {rel}" for r in roots if r in MODEL_CORE_FORBIDDEN)
        elif not rel.startswith("tcclip/cli/") and roots & set(PARSERS):
            found.add(f"parser: {rel}")
    for module, targets in import_graph().items():
        parts = module.split(".")
        if len(parts) < 2:
            continue  # tcclip/__init__.py: the public API, lazily re-exported from any layer
        for target in targets:
            mine, theirs = parts[1], target.split(".")[1]
            if mine != theirs and (mine == "model" or LAYERS[theirs] >= LAYERS[mine]):
                found.add(f"layer: {module} -> {target}")
    return found


def test_every_folder_has_a_layer() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(LAYERS)


def test_top_level_is_small() -> None:
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    assert len(entries) <= MAX_TOP_LEVEL_ENTRIES, entries


def test_every_folder_says_what_it_owns_and_may_import() -> None:
    for folder in LAYERS:
        doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text())) or ""
        assert len(doc) > 100, f"tcclip/{folder}/__init__.py needs a docstring saying what the folder owns"
        if folder != "cli":
            assert "import" in doc, f"tcclip/{folder}/__init__.py: say what the folder may import"


def test_the_rules_see_what_they_check() -> None:
    # The checks are not vacuous: each kind of rule finds something in a deliberately bad tree.
    bad = ast.parse("import argparse\nimport lightning\nfrom tcclip.utils import errors\n")
    assert {"argparse", "lightning", "tcclip"} <= _imported_roots(bad)
    assert MAX_FUNCTION_LINES < 100 and MAX_MODULE_LINES <= 500
    graph = import_graph()
    assert "tcclip.model.config" in graph and "tcclip.cli.commands" in graph


@pytest.mark.parametrize("rule", ["module", "function", "layer", "parser", "model core"])
def test_structure_rules(rule: str) -> None:
    found = {v for v in violations() if v.startswith(rule)}
    known = {v for v in KNOWN if v.startswith(rule)}
    new = sorted(found - known)
    fixed = sorted(known - found)
    assert not new, f"{rule} rule broken (see this module's docstring): {new}"
    assert not fixed, f"fixed, so remove from KNOWN in tests/test_structure.py: {fixed}"
