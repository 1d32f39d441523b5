"""Which split files exist, and what one protocol's split files are.

The official TC-CLIP release has annotation lists for six protocols, few-shot training lists for K = 2, 4, 8, 16
videos per class and base-to-novel training lists for the seeds 1, 2, 3. Those values are defined here, once: the
data modules check `data.protocol`, `data.shots` and `data.seed` against them, and the protocol table of the
experiments (`tcclip.experiments.protocols`) builds its grids on them.

A protocol of one dataset family is a training list (none for an evaluation-only protocol) and one or more
evaluation lists, each with its label files (:class:`SplitFiles`, :class:`ProtocolSplits`).

Plain data and small functions: no torch, no Lightning, nothing else from tcclip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

TRAINED_PROTOCOLS: tuple[str, ...] = ("zero_shot", "few_shot", "base2novel", "fully_supervised")
"""Protocols with a training list (zero-shot trains on Kinetics-400 and evaluates on the other datasets)."""
EVAL_SUBSETS: tuple[str, ...] = ("temporal", "static")
"""Evaluation-only class subsets of Kinetics-400 and SSv2 (classes that need motion, classes one frame suffices for)."""
PROTOCOLS: tuple[str, ...] = TRAINED_PROTOCOLS + EVAL_SUBSETS
"""Every value `data.protocol` accepts."""
SHOTS: tuple[int, ...] = (2, 4, 8, 16)
"""Few-shot K values (training videos per class) with official training lists."""
SEEDS: tuple[int, ...] = (1, 2, 3)
"""Base-to-novel training splits with official lists."""


@dataclass(frozen=True)
class SplitFiles:
    """An annotation list and the label files that go with it, relative to the splits directory."""

    name: str
    """"train", or the evaluation set's name ("split1", "base", "novel", "val", ...)."""
    annotations: str
    labels: str
    """Label CSV (class names)."""
    llm_labels: str | None = None
    """LLM-rephrased descriptions (JSON), if the release has them."""


@dataclass(frozen=True)
class ProtocolSplits:
    train: SplitFiles | None
    """None for evaluation-only protocols (zero-shot targets)."""
    val: tuple[SplitFiles, ...]
    test: tuple[SplitFiles, ...]


def check_choice(name: str, value: int, allowed: Sequence[int], family: str) -> int:
    """`value` if it is one of the official `allowed` values of `data.<name>`, else a ValueError naming them."""
    if value not in allowed:
        raise ValueError(
            f"{family}: data.{name}={value} has no official split; choose one of {', '.join(map(str, allowed))}"
        )
    return value


def base2novel_splits(
    folder: str, seed: int, base_labels: str, novel_labels: str, base_llm: str | None, novel_llm: str | None
) -> ProtocolSplits:
    """Official base-to-novel layout: train ``fs_base_s{seed}_train.txt``; validate on base; test on base and novel."""
    lists = f"datasets_splits/base2novel_splits/{folder}"
    base = SplitFiles("base", f"{lists}/base_val.txt", base_labels, base_llm)
    novel = SplitFiles("novel", f"{lists}/novel_val.txt", novel_labels, novel_llm)
    train = SplitFiles("train", f"{lists}/fs_base_s{seed}_train.txt", base_labels, base_llm)
    return ProtocolSplits(train, (base,), (base, novel))
