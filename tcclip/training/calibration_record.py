"""What a checkpoint carries about its own confidence: the `Calibration` record that `tcclip calibrate` measures,
and where it is kept.

Next to a checkpoint file it is the sidecar `<checkpoint>.calibration.json` (`write_sidecar` / `read_sidecar`; a
sidecar fitted on another version of the file, by SHA-256, is refused); in a `tcclip export` folder it is the
`calibration` entry of `config.json`. `tcclip.load_model` attaches it to the model it returns as
`model.calibration`. Fitting and applying it (temperature scaling, rejection scores) is `tcclip.inference.openset`.
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

from torch import nn

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
