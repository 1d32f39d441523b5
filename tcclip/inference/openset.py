"""How far to believe an answer: calibrated probabilities, and "none of the above" when a video matches none of the
class names well enough (design and measurements: docs/open_set.md).

Calibration. Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017) divides the
model's log-probabilities by one scalar T fitted on a validation list by negative log-likelihood. It is applied to the
log of the *view-averaged* probabilities, the quantity the predictor reports: `softmax(log p / T)` with
`p = mean_v softmax(z_v)`. With one view this is exactly `softmax(z / T)`; with several it is a monotone map of `p`,
so the ranking of the classes, and hence top-1, never changes. ECE and NLL measure it.

Open-set rejection. Four scores, each higher for videos that look in-distribution:

- `msp`: maximum softmax probability (Hendrycks & Gimpel, ICLR 2017), of the calibrated view-averaged
  probabilities (`calibrated_probabilities`);
- `max_logit`: the largest logit, averaged over views (Hendrycks et al., "Scaling out-of-distribution detection
  for real-world settings", ICML 2022);
- `energy`: the negative free energy logsumexp(z) of the view-averaged logits (Liu et al., NeurIPS 2020);
- `mcm`: maximum concept matching (Ming et al., NeurIPS 2022): the largest softmax of the cosine similarities
  between the video and the class prompts at a temperature tau (`MCM_TEMPERATURE`), averaged over views. TC-CLIP's
  logits are exp(logit_scale) * cosine, so the cosines are the logits divided by the model's scale.

A video is accepted when its score is >= the threshold; `tcclip calibrate` picks the threshold on a validation list
so that a chosen fraction of in-distribution videos is accepted (`threshold_for_recall`). What `tcclip calibrate`
measured travels with the weights as a `Calibration` record (`tcclip.training.calibration_record`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tcclip.training.calibration_record import Calibration, check_class_names, model_calibration
from tcclip.utils.errors import UserError

SCORES = ("msp", "max_logit", "energy", "mcm")
DEFAULT_SCORE = "msp"
"""The score `tcclip calibrate` stores unless told otherwise (see the table in the README and docs/open_set.md)."""
MCM_TEMPERATURE = 1.0
"""tau of maximum concept matching, on cosine similarities (the value of Ming et al.)."""
NONE_OF_THE_ABOVE = "none of the above"


# ----------------------------------------------------------------------------------------------- calibration


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


# ----------------------------------------------------------------------------------------------- scores


def logit_scale(model: nn.Module) -> float:
    """exp(logit_scale): the factor between the model's logits and its cosine similarities."""
    return float(model.logit_scale.detach().exp())


def rejection_score(
    name: str, view_logits: Tensor, scale: float, temperature: float = 1.0, mcm_temperature: float = MCM_TEMPERATURE
) -> Tensor:
    """One score per video from its per-view logits [B, V, C]; higher means more in-distribution. [B] float32.

    Args:
        name: one of `SCORES`.
        view_logits: the model's logits of every view of every video.
        scale: exp(logit_scale) of the model (`logit_scale(model)`), used by `mcm` only.
        temperature: calibration temperature, used by `msp` only.
        mcm_temperature: tau of `mcm`.
    """
    z = view_logits.float()
    if name == "msp":
        return calibrated_probabilities(z, temperature).max(-1).values
    if name == "max_logit":
        return z.mean(1).max(-1).values
    if name == "energy":
        return z.mean(1).logsumexp(-1)
    if name == "mcm":
        cosine = z.double() / scale
        return (cosine / mcm_temperature).softmax(-1).mean(1).max(-1).values.float()
    raise ValueError(f"unknown rejection score {name!r}; choose one of {', '.join(SCORES)}")


def all_scores(view_logits: Tensor, scale: float, temperature: float = 1.0) -> dict[str, Tensor]:
    return {name: rejection_score(name, view_logits, scale, temperature) for name in SCORES}


# ----------------------------------------------------------------------------------------------- operating points


def threshold_for_recall(scores: Tensor, recall: float = 0.95) -> float:
    """The largest threshold that accepts (score >= threshold) at least `recall` of these in-distribution scores."""
    if not 0.0 < recall <= 1.0:
        raise ValueError(f"recall must be in (0, 1], got {recall}")
    if scores.numel() == 0:
        raise ValueError("no in-distribution scores to choose a threshold from")
    ranked = scores.double().flatten().sort(descending=True).values
    k = math.ceil(recall * ranked.numel() - 1e-9)  # accept the k best
    return float(ranked[max(k, 1) - 1])


def fpr_at_recall(id_scores: Tensor, ood_scores: Tensor, recall: float = 0.95) -> float:
    """Fraction of out-of-distribution videos accepted at the threshold that accepts `recall` of the others."""
    threshold = threshold_for_recall(id_scores, recall)
    return float((ood_scores.double() >= threshold).double().mean())


def auroc(id_scores: Tensor, ood_scores: Tensor) -> float:
    """Area under the ROC curve of telling in-distribution (positive) from out-of-distribution videos."""
    from torchmetrics.functional.classification import binary_auroc

    scores = torch.cat([id_scores.double().flatten(), ood_scores.double().flatten()])
    target = torch.cat([torch.ones(id_scores.numel()), torch.zeros(ood_scores.numel())]).long()
    return float(binary_auroc(scores, target))


# ----------------------------------------------------------------------------------------------- the decision


@dataclass(frozen=True)
class Rejector:
    """Accepts a video when `score` >= `threshold`."""

    score: str
    threshold: float
    temperature: float = 1.0
    """Calibration temperature (changes `msp` only)."""
    scale: float = 100.0
    """exp(logit_scale) of the model (used by `mcm` only)."""

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"unknown rejection score {self.score!r}; choose one of {', '.join(SCORES)}")

    def __call__(self, view_logits: Tensor) -> tuple[Tensor, Tensor]:
        """Scores [B] and accepted [B] (bool) of videos given as per-view logits [B, V, C]."""
        scores = rejection_score(self.score, view_logits, self.scale, self.temperature)
        return scores, scores >= self.threshold

    @classmethod
    def for_model(cls, model: nn.Module, threshold: float | None = None, score: str | None = None) -> Rejector:
        """The model's stored operating point (`tcclip calibrate`), or `threshold` / `score` given here."""
        calibration: Calibration | None = model_calibration(model)
        stored: dict[str, float] = {}
        if calibration is not None:
            stored = dict(calibration.thresholds)
            if calibration.threshold is not None:
                stored[calibration.score] = calibration.threshold
        if score is None:
            score = calibration.score if calibration is not None and calibration.threshold is not None else None
            score = score or DEFAULT_SCORE
        if threshold is None:
            if score not in stored:
                raise UserError(
                    f"no rejection threshold for the {score!r} score is stored with this model",
                    fix="run `tcclip calibrate --config ... --ckpt_path ...` on a validation list, or pass "
                    "--reject-threshold (reject_threshold=) with the score's value to accept from",
                )
            check_class_names(calibration, model.class_names, "rejection threshold")
            threshold = stored[score]
        temperature = calibration.temperature if calibration is not None else 1.0
        scale = logit_scale(model)
        check_threshold(score, float(threshold), len(model.class_names), scale)
        return cls(score, float(threshold), temperature, scale)


def score_range(name: str, num_classes: int, scale: float) -> tuple[float, float]:
    """The values a score can take for `num_classes` classes: probabilities lie in [1/C, 1]; a logit is
    scale * cosine, in [-scale, scale]; logsumexp adds at most log C to the largest logit."""
    if name in ("msp", "mcm"):
        return 1.0 / num_classes, 1.0
    if name == "max_logit":
        return -scale, scale
    if name == "energy":
        return -scale, scale + math.log(num_classes)
    raise ValueError(f"unknown rejection score {name!r}; choose one of {', '.join(SCORES)}")


def check_threshold(score: str, threshold: float, num_classes: int, scale: float) -> None:
    """Refuse a rejection that cannot work: a probability score with one class (always 1), or a threshold outside
    what the score can take (it would accept or reject every video)."""
    if score in ("msp", "mcm") and num_classes < 2:
        raise UserError(
            f"with one class the {score!r} score is always 1, so it cannot reject anything",
            fix="Use --reject-score max_logit or energy (reject_score=), which measure how well a video matches "
            "the one class, or give more class names.",
        )
    if not math.isfinite(threshold):
        raise UserError(f"the rejection threshold must be a finite number, got {threshold}", fix="Give a number.")
    lo, hi = score_range(score, num_classes, scale)
    if threshold <= lo or threshold > hi:
        effect = "accepts every video" if threshold <= lo else "rejects every video"
        raise UserError(
            f"the {score!r} threshold {threshold:g} {effect}: with {num_classes} classes the score lies in "
            f"[{lo:.6g}, {hi:.6g}]",
            fix="Give --reject-threshold (reject_threshold=) a value inside that range, or run `tcclip calibrate` "
            "to choose one on a validation list.",
        )


@dataclass(frozen=True)
class OpenSetPrediction:
    """A video's answer with rejection: `label` is a class name or `NONE_OF_THE_ABOVE`."""

    label: str
    rejected: bool
    score: float
    """The rejection score's value for this video."""
    threshold: float
    score_name: str
    top_k: list
    """The k most probable classes (`Prediction`s), whether or not the video was rejected."""

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "rejected": self.rejected,
            "score": {"name": self.score_name, "value": round(self.score, 6), "threshold": round(self.threshold, 6)},
        }


def verdict_text(verdict: OpenSetPrediction) -> str:
    """One line for people: the answer and why (score against threshold)."""
    sign = "<" if verdict.rejected else ">="
    return f"-> {verdict.label} ({verdict.score_name} {verdict.score:.4g} {sign} threshold {verdict.threshold:.4g})"


def decide(rejector: Rejector, view_logits: Tensor, top_k: Sequence[Sequence]) -> list[OpenSetPrediction]:
    """One `OpenSetPrediction` per video from its per-view logits [B, V, C] and its top-k `Prediction`s."""
    scores, accepted = rejector(view_logits)
    out = []
    for score, ok, ranked in zip(scores.tolist(), accepted.tolist(), top_k, strict=True):
        label = ranked[0].label if ok else NONE_OF_THE_ABOVE
        out.append(OpenSetPrediction(label, not ok, float(score), rejector.threshold, rejector.score, list(ranked)))
    return out


def check_reject_options(reject: bool, reject_threshold: float | None, reject_score: str | None) -> None:
    """A rejection score without rejection asked for would be ignored: refuse it (the same for the CLI and API)."""
    if reject_score is not None and not reject and reject_threshold is None:
        raise UserError(
            f"--reject-score {reject_score} (reject_score=) chooses the score of the rejection, but no rejection is "
            "asked for",
            fix="Add --reject (reject=True) to reject with the stored threshold, or --reject-threshold "
            "(reject_threshold=) to give one.",
        )


def rejector_from_args(args, model: nn.Module) -> Rejector | None:
    check_reject_options(args.reject, args.reject_threshold, args.reject_score)
    if not (args.reject or args.reject_threshold is not None):
        return None
    return Rejector.for_model(model, args.reject_threshold, args.reject_score)
