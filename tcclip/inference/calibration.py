"""Calibrated probabilities and a stored rejection threshold (design: docs/open_set.md).

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017) divides the model's
log-probabilities by one scalar T fitted on a validation list by negative log-likelihood. It is applied to the log of
the *view-averaged* probabilities, the quantity the predictor reports: `softmax(log p / T)` with
`p = mean_v softmax(z_v)`. With one view this is exactly `softmax(z / T)`; with several it is a monotone map of `p`,
so the ranking of the classes, and hence top-1, never changes.

The result lives next to the checkpoint in `<checkpoint>.calibration.json` (see `Calibration.to_json`), written by
`tcclip calibrate`, read by `tcclip.load_model` (which attaches it to the model as `model.calibration`), carried into
`tcclip export`'s `config.json`, and used by `tcclip predict` (temperature always, threshold with `--reject`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tcclip.utils.errors import UserError, check_format

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".calibration.json"
FORMAT = "tcclip-calibration"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Calibration:
    """What `tcclip calibrate` measured on a validation list, and what the predictor applies."""

    temperature: float = 1.0
    """T: calibrated probabilities are softmax(log p / T) of the view-averaged probabilities p."""
    score: str = "msp"
    """Rejection score the threshold belongs to (a name in `tcclip.inference.openset.SCORES`)."""
    threshold: float | None = None
    """Videos whose score is below this are "none of the above" (None: no threshold was chosen)."""
    target_recall: float | None = None
    """Fraction of the validation videos the threshold accepts (in-distribution recall)."""
    thresholds: dict[str, float] = field(default_factory=dict)
    """The threshold of every score at the same recall (`--reject-score` picks another one than `score`)."""
    class_names: tuple[str, ...] = ()
    """The class list the temperature and threshold were fitted for."""
    report: dict[str, Any] = field(default_factory=dict, compare=False)
    """Measurements: ECE/NLL before and after, number of videos, validation list, views."""
    checkpoint_sha256: str | None = None
    """Hash of the checkpoint file it was fitted on (a sidecar is refused for any other file)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be a finite number, got {self.threshold}")
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "thresholds", {str(k): float(v) for k, v in self.thresholds.items()})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "calibration") -> Calibration:
        check_format(
            d,
            name=FORMAT,
            version=FORMAT_VERSION,
            what="calibration record",
            path=source,
            fix="write it with `tcclip calibrate`",
        )
        known = {"temperature", "score", "threshold", "target_recall", "thresholds", "class_names", "report"}
        known.add("checkpoint_sha256")
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except (TypeError, ValueError) as err:
            raise UserError(f"invalid calibration record: {err}", path=source, fix="re-run `tcclip calibrate`") from err


# ------------------------------------------------------------------------------------------------- sidecar file


def sidecar_path(checkpoint: str | Path) -> Path:
    """`<checkpoint>.calibration.json`."""
    return Path(str(checkpoint) + SIDECAR_SUFFIX)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_sidecar(calibration: Calibration, checkpoint: str | Path) -> Path:
    from tcclip.utils.outputs import atomic_write

    text = (json.dumps(calibration.to_dict(), indent=2) + "\n").encode()
    return atomic_write(sidecar_path(checkpoint), lambda f: f.write(text), what="calibration record")


def read_sidecar(checkpoint: str | Path) -> Calibration | None:
    """The calibration stored next to `checkpoint`, or None. A sidecar fitted on another file is an error."""
    path = sidecar_path(checkpoint)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(
            f"not valid JSON ({err.msg})", path=path, line=err.lineno, fix="re-run `tcclip calibrate` or delete it"
        ) from err
    calibration = Calibration.from_dict(record, str(path))
    if calibration.checkpoint_sha256 is not None and calibration.checkpoint_sha256 != file_sha256(checkpoint):
        raise UserError(
            f"was fitted on another version of {Path(checkpoint).name} (the checkpoint's SHA-256 differs)",
            path=path,
            fix="re-run `tcclip calibrate` for this checkpoint, or delete the stale file",
        )
    return calibration


def attach(model: nn.Module, calibration: Calibration | None) -> nn.Module:
    """Give the model its calibration (`model.calibration`, read by the predictor); returns the model."""
    model.calibration = calibration
    return model


def model_calibration(model: nn.Module) -> Calibration | None:
    return getattr(model, "calibration", None)


def check_class_names(calibration: Calibration, names: Sequence[str], what: str = "calibration") -> bool:
    """Warn (once per call) when the model now scores other classes than the calibration was fitted for."""
    if calibration.class_names and tuple(names) != calibration.class_names:
        log.warning(
            "the %s was fitted for %d other classes (%s...); its temperature and threshold are not validated for "
            "this class list: re-run `tcclip calibrate` on a validation list of these classes",
            what,
            len(calibration.class_names),
            ", ".join(calibration.class_names[:3]),
        )
        return False
    return True


# ------------------------------------------------------------------------------------------------- the maths


def view_log_probabilities(view_logits: Tensor) -> Tensor:
    """log of the view-averaged softmax: view_logits [B, V, C] -> [B, C] (float64 inside for small probabilities)."""
    log_p = view_logits.double().log_softmax(-1)  # [B, V, C]
    return (log_p.logsumexp(1) - math.log(view_logits.shape[1])).to(view_logits.dtype)


def calibrated_probabilities(view_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """softmax(log p / T) with p the view-averaged softmax of view_logits [B, V, C]; [B, C] float32."""
    if temperature == 1.0:
        return view_logits.float().softmax(-1).mean(1)  # p itself, exactly as the uncalibrated predictor
    return (view_log_probabilities(view_logits.double()) / temperature).softmax(-1).float()


TEMPERATURE_BOUNDS = (0.05, 20.0)
"""The range a fitted temperature is kept in. Beyond 20 every probability is close to uniform (a list on which the
model is right no more often than chance, or too few videos, drives T towards infinity); below 0.05 they are all 0
or 1. The NLL is convex in 1/T, so the best T within the range is the unbounded optimum clamped to it."""


def fit_temperature(
    log_probs: Tensor, labels: Tensor, max_iter: int = 100, bounds: tuple[float, float] = TEMPERATURE_BOUNDS
) -> float:
    """The T in `bounds` minimising the NLL of softmax(log_probs / T) on labels: LBFGS on log T (so T stays
    positive), clamped to `bounds` (callers warn when it reaches one: `poor_fit_reasons`).

    Args:
        log_probs: [N, C] log-probabilities (or logits) of the validation videos.
        labels: [N] true classes.
    """
    if log_probs.shape[0] == 0:
        raise ValueError("no validation videos to fit a temperature on")
    x = log_probs.detach().double()
    y = labels.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    temperature = float(log_t.detach().exp())
    lo, hi = bounds
    if math.isnan(temperature):  # LBFGS left the finite range: the better end of the range
        nll = {t: float(torch.nn.functional.cross_entropy(x / t, y)) for t in (lo, hi)}
        return min(nll, key=nll.__getitem__)
    return min(max(temperature, lo), hi)


def poor_fit_reasons(temperature: float, nll_after: float, num_classes: int, top1: float) -> list[str]:
    """Why a fitted calibration should not be trusted (empty when it looks sound)."""
    reasons = []
    lo, hi = TEMPERATURE_BOUNDS
    if temperature >= hi or temperature <= lo:
        reasons.append(f"the temperature reached the bound {temperature:g} of the range {lo:g}..{hi:g}")
    chance_nll = math.log(num_classes)
    if nll_after > 0.9 * chance_nll:
        reasons.append(f"the calibrated NLL {nll_after:.3f} is close to that of uniform guessing ({chance_nll:.3f})")
    if top1 <= 100.0 / num_classes:
        reasons.append(f"top-1 {top1:.1f}% is no better than chance ({100.0 / num_classes:.1f}%)")
    return reasons


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Top-label ECE with `n_bins` equal-width confidence bins (torchmetrics' multiclass calibration error, L1)."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    return float(
        multiclass_calibration_error(
            probs.float(), labels.long(), num_classes=probs.shape[-1], n_bins=n_bins, norm="l1"
        )
    )


def negative_log_likelihood(probs: Tensor, labels: Tensor) -> float:
    picked = probs.double().gather(1, labels.long()[:, None]).clamp_min(1e-300)
    return float(-picked.log().mean())
