"""Few-shot and base/novel splits of a custom dataset, in the formats of the official files (`tcclip splits make`),
and the protocol lists of a synthetic dataset (`tcclip data synth`, the `Synthetic` data module).

Every draw uses ``numpy.random.default_rng([seed, kind, k])``, so each file depends only on the seed and its own K or
base-to-novel split, and nothing is written unless every file can be made.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tcclip.data.labels import (
    Annotation,
    annotations_text,
    csv_labels_text,
    read_annotations,
    read_class_names,
    write_json_labels,
)
from tcclip.data.protocol_splits import SEEDS, SHOTS
from tcclip.utils.errors import UserError
from tcclip.utils.outputs import atomic_write_texts

log = logging.getLogger(__name__)


class SplitMakingError(UserError, ValueError):
    """A list or an option of `tcclip splits make` cannot be used as given."""


FEW_SHOT_NAME = "train_few_shot_{shots}.txt"
B2N_DIR = "base2novel"
B2N_TRAIN_NAME = "fs_base_s{seed}_train.txt"


def _by_class(annotations: Sequence[Annotation]) -> dict[int, list[Annotation]]:
    groups: dict[int, list[Annotation]] = defaultdict(list)
    for a in annotations:
        groups[a.label].append(a)
    return groups


def sample_per_class(
    annotations: Sequence[Annotation],
    classes: Sequence[int],
    shots: int,
    rng: np.random.Generator,
    source: str = "",
    allow_fewer: bool = False,
) -> list[Annotation]:
    """``shots`` videos of every class in ``classes`` (in that order), drawn without replacement.

    Within a class the drawn videos keep their order in the list, so outputs are easy to diff. A class with fewer
    videos is an error, or, with ``allow_fewer``, contributes all of them.
    """
    groups = _by_class(annotations)
    picked: list[Annotation] = []
    for c in classes:
        videos = groups.get(c, [])
        if len(videos) < shots and not (allow_fewer and videos):
            raise SplitMakingError(
                f"class {c} has {len(videos)} videos, fewer than the {shots} shots asked for",
                path=source or None,
                fix="Ask for fewer shots, add videos of that class to the list, or pass --allow-fewer.",
            )
        chosen = np.sort(rng.choice(len(videos), size=min(shots, len(videos)), replace=False))
        picked.extend(videos[i] for i in chosen)
    return picked


def split_classes(num_classes: int, method: str = "first-half", seed: int = 0) -> tuple[list[int], list[int]]:
    """Base and novel class ids (each ascending). Base gets ceil(N/2) classes, as in the official splits.

    ``first-half``: base = ids 0..ceil(N/2)-1. ``seeded``: a random half chosen with ``seed``.
    """
    num_base = math.ceil(num_classes / 2)
    if method == "first-half":
        order = np.arange(num_classes)
    elif method == "seeded":
        order = np.random.default_rng([seed, 2]).permutation(num_classes)
    else:
        raise ValueError(f"unknown class split {method!r}; use 'first-half' or 'seeded'")
    return sorted(order[:num_base].tolist()), sorted(order[num_base:].tolist())


def _relabel(annotations: Sequence[Annotation], classes: Sequence[int]) -> list[Annotation]:
    # Official base/novel lists number classes by their position in the base/novel label file.
    new_id = {c: i for i, c in enumerate(classes)}
    return [Annotation(a.path, new_id[a.label]) for a in annotations if a.label in new_id]


def make_splits(
    full_list: str | os.PathLike,
    labels: str | os.PathLike,
    out_dir: str | os.PathLike,
    shots: Sequence[int] = SHOTS,
    seed: int = 0,
    base_novel: bool = False,
    eval_list: str | os.PathLike | None = None,
    class_split: str = "first-half",
    base_seeds: Sequence[int] = SEEDS,
    base_shots: int = 16,
    allow_fewer: bool = False,
) -> list[Path]:
    """Write few-shot and (optionally) base/novel splits of a custom dataset in the official formats.

    Output (inside ``out_dir``):
      - ``train_few_shot_{K}.txt``: K videos of every class from ``full_list`` (an independent draw per K).
      - with ``base_novel``: ``base2novel/base_labels.csv`` and ``novel_labels.csv`` (classes in ascending original
        id order), ``base2novel/fs_base_s{n}_train.txt`` (``base_shots`` videos per base class, seed ``n``),
        and, if ``eval_list`` is given, ``base2novel/base_val.txt`` / ``novel_val.txt`` (the eval list restricted to
        base / novel classes). Labels in these lists are re-indexed to the position of the class in the base / novel
        label file, as in the official files.

    Draws use ``numpy.random.default_rng([seed, kind, k])``, so each file depends only on the seed and its own K/n.
    With ``allow_fewer`` a class with fewer videos than asked contributes all it has (else it is an error).

    Returns:
        The written files.
    """
    if not shots and not base_novel:
        raise SplitMakingError(
            "nothing to make: no shots and no base/novel split", fix="Pass --shots K or --base-novel."
        )
    bad = [k for k in [*shots, base_shots] if k < 1]
    if bad:
        raise SplitMakingError(f"shots must be >= 1, got {bad[0]}", fix="Ask for at least one video per class.")
    if seed < 0:
        raise SplitMakingError(f"the seed must be >= 0, got {seed}", fix="Use a seed 0, 1, 2, ...")
    class_names = read_class_names(labels)
    annotations = read_annotations(full_list, num_classes=len(class_names))
    out_dir = Path(out_dir)
    # Everything is computed before anything is written: a failure (too few videos for one K) leaves no file.
    outputs: dict[Path, str] = {}
    all_classes = list(range(len(class_names)))
    for k in shots:
        rng = np.random.default_rng([seed, 0, k])
        picked = sample_per_class(annotations, all_classes, k, rng, str(full_list), allow_fewer)
        outputs[out_dir / FEW_SHOT_NAME.format(shots=k)] = annotations_text(picked)
    if base_novel:
        base, novel = split_classes(len(class_names), class_split, seed)
        b2n = out_dir / B2N_DIR
        for name, classes in (("base", base), ("novel", novel)):
            outputs[b2n / f"{name}_labels.csv"] = csv_labels_text([class_names[c] for c in classes])
        for n in base_seeds:
            rng = np.random.default_rng([seed, 1, n])
            picked = sample_per_class(annotations, base, base_shots, rng, str(full_list), allow_fewer)
            outputs[b2n / B2N_TRAIN_NAME.format(seed=n)] = annotations_text(_relabel(picked, base))
        if eval_list is not None:
            eval_annotations = read_annotations(eval_list, num_classes=len(class_names))
            for name, classes in (("base", base), ("novel", novel)):
                outputs[b2n / f"{name}_val.txt"] = annotations_text(_relabel(eval_annotations, classes))
        else:
            log.info("no eval list given: base2novel/base_val.txt and novel_val.txt were not written")
    return atomic_write_texts(outputs)


def make_synthetic_protocol_splits(synth_dir: str | os.PathLike) -> Path:
    """Protocol lists for a synthetic dataset (``labels.csv``, ``train.txt``, ``test.txt``), for smoke runs.

    Writes into ``<synth_dir>/splits`` and returns that folder: ``train_few_shot_{2,4,8,16}.txt`` (a class with fewer
    training videos gives all of them), ``base2novel/`` (3 seeds, up to 16 videos per base class, evaluated on
    ``test.txt``) and stand-in "LLM" descriptions (``llm_labels.json``, ``base2novel/{base,novel}_llm_labels.json``,
    one sentence built from each class name) so the LLM variants can run too.
    """
    synth_dir = Path(synth_dir)
    out_dir = synth_dir / "splits"
    labels = synth_dir / "labels.csv"
    class_names = read_class_names(labels)
    make_splits(
        synth_dir / "train.txt",
        labels,
        out_dir,
        shots=SHOTS,
        base_novel=len(class_names) >= 2,
        eval_list=synth_dir / "test.txt",
        allow_fewer=True,
    )
    files = {"llm_labels.json": class_names}
    if len(class_names) >= 2:
        for part in ("base", "novel"):
            files[f"{B2N_DIR}/{part}_llm_labels.json"] = read_class_names(out_dir / B2N_DIR / f"{part}_labels.csv")
    for name, names in files.items():
        write_json_labels(out_dir / name, [f"{n}: a video in which a shape does this: {_words(n)}" for n in names])
    return out_dir


def _words(camel: str) -> str:
    return "".join(f" {c.lower()}" if c.isupper() else c for c in camel).strip()
