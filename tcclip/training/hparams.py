"""The training hyper-parameters, as frozen dataclasses: `model.optim.*` and `model.loss.*` of a config.

The per-protocol numbers (peak and floor learning rate, warm-up, effective batch) have no defaults here: they come
from the experiment config, which `configs/generate.py` writes from the protocol table
(`tcclip.experiments.protocols.RECIPES`). What every protocol shares (AdamW's betas and epsilon, the weight decay,
x10 for the new parts, mixup / cutmix and label smoothing) are the defaults.

Settings of older releases, flat under `model.` (`model.lr`, `model.mixup`, ...), are named with their new spelling
by `check_legacy_keys` before a config is parsed; `flat_hyper_parameters` reads either layout from a checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from tcclip.utils.errors import ConfigError


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value!r}", fix=f"Fix {key}.")
    return float(value)


def _require(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(key, f"must be {rule}, got {value!r}", fix=f"Fix {key}.")


@dataclass(frozen=True)
class Optimization:
    """AdamW with a per-step linear warm-up then cosine schedule (`tcclip.training.schedule`), and the effective batch.

    Args:
        lr: peak learning rate of the CLIP parameters.
        lr_min: floor of the cosine schedule (absolute, for every group).
        warmup_epochs: linear warm-up length in epochs (may be fractional).
        total_batch_size: effective batch over all devices; the command line derives
            `trainer.accumulate_grad_batches` from it before the Trainer is built. null: the Trainer's as given.
        weight_decay: AdamW weight decay on every trainable tensor.
        betas: AdamW betas.
        eps: AdamW epsilon.
        lr_10x: ten times the learning rate for the new parts (prompt learner, prompt-generation layers).
    """

    lr: float
    lr_min: float
    warmup_epochs: float
    total_batch_size: int | None = None
    weight_decay: float = 0.001
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    lr_10x: bool = True

    def __post_init__(self) -> None:
        key = "model.optim."
        _require(_number(key + "lr", self.lr) > 0, key + "lr", "> 0 (the peak learning rate)", self.lr)
        lr_min = _number(key + "lr_min", self.lr_min)
        _require(0 <= lr_min <= self.lr, key + "lr_min", f">= 0 and <= model.optim.lr ({self.lr})", self.lr_min)
        for name in ("warmup_epochs", "weight_decay"):
            value = getattr(self, name)
            _require(_number(key + name, value) >= 0, key + name, ">= 0", value)
        _require(_number(key + "eps", self.eps) > 0, key + "eps", "> 0", self.eps)
        betas = self.betas
        ok = (
            isinstance(betas, (list, tuple))
            and len(betas) == 2
            and all(0 <= _number(key + "betas", b) < 1 for b in betas)
        )
        _require(ok, key + "betas", "two numbers in [0, 1)", betas)
        total = self.total_batch_size
        ok = total is None or (isinstance(total, int) and not isinstance(total, bool) and total >= 1)
        _require(
            ok,
            key + "total_batch_size",
            "an integer >= 1, or null (use trainer.accumulate_grad_batches as given)",
            total,
        )


@dataclass(frozen=True)
class Loss:
    """The training loss: mixup / cutmix with soft-target cross-entropy, or label-smoothing cross-entropy.

    Args:
        mixup: mixup / cutmix with soft-target cross-entropy; off: label-smoothing cross-entropy.
        mixup_alpha: Beta(alpha, alpha) of mixup.
        cutmix_alpha: Beta(alpha, alpha) of cutmix.
        mixup_switch_prob: probability of cutmix instead of mixup for a batch.
        label_smoothing: smoothing of the targets in both losses.
    """

    mixup: bool = True
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        key = "model.loss."
        for name in ("mixup_alpha", "cutmix_alpha"):
            value = getattr(self, name)
            _require(_number(key + name, value) > 0, key + name, "> 0", value)
        p = self.mixup_switch_prob
        _require(0 <= _number(key + "mixup_switch_prob", p) <= 1, key + "mixup_switch_prob", "in [0, 1]", p)
        s = self.label_smoothing
        _require(0 <= _number(key + "label_smoothing", s) < 1, key + "label_smoothing", "in [0, 1)", s)


def check_wise_ft_weight(weight: float | None) -> None:
    if weight is not None:
        _require(
            0.0 <= _number("model.wise_ft_weight", weight) <= 1.0, "model.wise_ft_weight", "in [0, 1] or null", weight
        )


def plain(value: Optimization | Loss | None) -> dict[str, Any] | None:
    """A dataclass as a dict of plain values (checkpoints are read with `weights_only=True`)."""
    return None if value is None else asdict(value)


# --------------------------------------------------------------------------------------------------------------------
# Older spellings
# --------------------------------------------------------------------------------------------------------------------

LEGACY_KEYS: dict[str, str] = {
    **{k: f"optim.{k}" for k in ("lr", "lr_min", "warmup_epochs", "total_batch_size")},
    **{k: f"optim.{k}" for k in ("weight_decay", "betas", "eps", "lr_10x")},
    **{k: f"loss.{k}" for k in ("mixup", "mixup_alpha", "cutmix_alpha", "mixup_switch_prob", "label_smoothing")},
}
"""Flat `model.<key>` of earlier releases -> its place under `model.`."""


def _legacy_error(old: str, where: str, path: str | Path | None = None) -> ConfigError:
    new = LEGACY_KEYS[old]
    return ConfigError(
        f"model.{old}",
        f"this setting is now model.{new} ({where})",
        path=path,
        fix=f"Write model.{new} instead (on the command line --model.{new}=...; in a config file `{new.split('.')[0]}:`"
        f" under `model:` with `{new.split('.')[1]}:` inside).",
    )


def config_paths(args: Iterable[str]) -> list[str]:
    """The files given with `--config F`, `--config=F`, `-c F` or `-c=F`."""
    words, files = list(args), []
    for i, word in enumerate(words):
        if word in ("--config", "-c") and i + 1 < len(words):
            files.append(words[i + 1])
        elif word.startswith(("--config=", "-c=")):
            files.append(word.split("=", 1)[1])
    return files


def check_legacy_keys(args: Iterable[str], default_files: Iterable[str] = ()) -> None:
    """Raise a `ConfigError` naming the new spelling for a flat `model.<key>` of an earlier release, on the command
    line (`--model.lr=...`) or in a config file (`model: {lr: ...}`); unreadable files are left to the parser."""
    words = [str(a) for a in args]
    for word in words:
        key = word.split("=", 1)[0]
        if key.startswith("--model.") and key.removeprefix("--model.") in LEGACY_KEYS:
            raise _legacy_error(key.removeprefix("--model."), "on the command line")
    for path in [*default_files, *config_paths(words)]:
        try:
            body = yaml.safe_load(Path(path).read_text())
        except (OSError, ValueError, yaml.YAMLError):
            continue
        model = body.get("model") if isinstance(body, Mapping) else None
        for old in model if isinstance(model, Mapping) else ():
            if old in LEGACY_KEYS:
                raise _legacy_error(old, "in a config file", path=path)


def flat_hyper_parameters(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's `hyper_parameters` with `optim` / `loss` spread out flat, as earlier releases stored them (both
    layouts read the same)."""
    flat = {k: v for k, v in hparams.items() if k not in ("optim", "loss")}
    for group in ("optim", "loss"):
        values = hparams.get(group)
        if isinstance(values, Mapping):
            flat.update(values)
    return flat
