"""Open-set rejection: the four scores, operating points, and "none of the above" from predict."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import tcclip
from tcclip.cli import main as cli_main
from tcclip.inference.openset import (
    NONE_OF_THE_ABOVE,
    SCORES,
    OpenSetPrediction,
    auroc,
    fpr_at_recall,
    logit_scale,
    rejection_score,
    threshold_for_recall,
)
from tcclip.inference.predict import predict
from tcclip.model.config import TCCLIPConfig
from tcclip.model.factory import create_model
from tcclip.training.calibration_record import Calibration, attach, write_sidecar
from tcclip.training.checkpoints import save_model
from tcclip.utils.errors import UserError

CLASSES = ["run", "jump", "swim", "climb"]
TINY = TCCLIPConfig(
    arch="test-tiny", num_frames=4, positional_embedding_type="joint", context_token_k=8, tome_r=4,
    prompt_generation_layer_level=(2,),
)  # fmt: skip


def tiny_model():
    torch.manual_seed(0)
    return create_model(TINY, CLASSES, clip_weights=None).eval()


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_scores_against_plain_numpy():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=(6, 2, 5))  # 6 videos, 2 views, 5 classes
    scale = 20.0
    logits = torch.from_numpy(z).float()
    expected = {
        "msp": _softmax(z).mean(1).max(-1),
        "max_logit": z.mean(1).max(-1),
        "energy": np.log(np.exp(z.mean(1)).sum(-1)),
        "mcm": _softmax(z / scale / 1.0).mean(1).max(-1),
    }
    for name in SCORES:
        np.testing.assert_allclose(rejection_score(name, logits, scale).numpy(), expected[name], rtol=1e-5)
    # msp after temperature T: softmax(log p / T) of the view-averaged p
    p = _softmax(z).mean(1)
    np.testing.assert_allclose(
        rejection_score("msp", logits, scale, temperature=2.0).numpy(), _softmax(np.log(p) / 2.0).max(-1), rtol=1e-5
    )
    with pytest.raises(ValueError, match="unknown rejection score"):
        rejection_score("entropy", logits, scale)


def test_threshold_for_recall_is_the_largest_that_reaches_it():
    g = torch.Generator().manual_seed(1)
    for n in (1, 7, 20, 101):
        scores = torch.randn(n, generator=g)
        for recall in (0.5, 0.9, 0.95, 1.0):
            t = threshold_for_recall(scores, recall)
            accepted = (scores >= t).double().mean().item()
            assert accepted >= recall - 1e-12
            higher = scores[scores > t]
            if higher.numel():  # the next larger candidate accepts too few
                assert (scores >= higher.min()).double().mean().item() < recall


def test_auroc_and_fpr_against_pair_counting():
    g = torch.Generator().manual_seed(2)
    ind = torch.randn(40, generator=g) + 1.0
    ood = torch.randn(30, generator=g)
    ood[:3] = ind[:3]  # ties count one half
    pairs = (ind[:, None] > ood[None]).double() + 0.5 * (ind[:, None] == ood[None]).double()
    assert auroc(ind, ood) == pytest.approx(pairs.mean().item(), abs=1e-6)
    t = torch.sort(ind, descending=True).values[37]  # 38 of 40 = 95% accepted
    assert fpr_at_recall(ind, ood, 0.95) == pytest.approx((ood >= t).double().mean().item())
    assert auroc(ind + 100, ood) == 1.0 and fpr_at_recall(ind + 100, ood) == 0.0


def test_predict_reject_none_of_the_above():
    model = tiny_model()
    frames = torch.randint(0, 256, (12, 40, 48, 3), dtype=torch.uint8)
    plain = predict(model, frames, top_k=2, views="1x1")
    scale = logit_scale(model)  # a logit is scale * cosine: max_logit lies in [-scale, scale]
    low = predict(
        model, frames, top_k=2, views="1x1", reject=True, reject_threshold=-0.999 * scale, reject_score="max_logit"
    )
    assert isinstance(low, OpenSetPrediction)
    assert low.label == plain[0].label and not low.rejected and low.top_k == plain
    high = predict(model, [frames, frames], views="1x1", reject_threshold=1.0, reject_score="msp")
    assert [h.label for h in high] == [NONE_OF_THE_ABOVE] * 2 and all(h.rejected for h in high)
    assert high[0].score == pytest.approx(plain[0].probability, rel=1e-6)  # msp is the top probability
    with pytest.raises(UserError, match="no rejection threshold"):
        predict(model, frames, reject=True)
    # the stored operating point: the calibration's threshold for the calibrated score, or any other stored one
    # mcm >= 1/C always; energy <= scale + log C always (the ends of their ranges)
    top = scale + math.log(len(CLASSES))
    stored = Calibration(score="mcm", threshold=0.25 + 1e-9, thresholds={"energy": top}, class_names=tuple(CLASSES))
    attach(model, stored)
    assert not predict(model, frames, views="1x1", reject=True).rejected
    assert predict(model, frames, views="1x1", reject=True, reject_score="energy").rejected


def test_predict_command_with_reject(tmp_path, capsys):
    from tcclip.data.synth import render_video, write_video

    video = write_video(tmp_path / "a.mp4", render_video("MoveLeft", 10, 32, 32, np.random.default_rng(0)))
    ckpt = save_model(tiny_model(), tmp_path / "tiny.pt")
    base = ["predict", str(video), "--checkpoint", str(ckpt), "--workers", "0", "--json", "--views", "1x1"]
    assert cli_main([*base, "--reject"]) == 2  # nothing stored yet: a clear error
    assert "tcclip calibrate" in capsys.readouterr().err
    write_sidecar(Calibration(score="msp", threshold=0.999, class_names=tuple(CLASSES)), ckpt)
    assert cli_main([*base, "--reject"]) == 0
    record = json.loads(capsys.readouterr().out.strip())
    assert record["label"] == NONE_OF_THE_ABOVE and record["rejected"] is True
    assert record["score"]["threshold"] == 0.999 and record["score"]["name"] == "msp"
    assert cli_main([*base, "--reject-threshold", "0.25001"]) == 0  # overrides the stored threshold (msp >= 1/4)
    record = json.loads(capsys.readouterr().out.strip())
    assert record["label"] == record["predictions"][0]["label"] and not record["rejected"]
    assert tcclip.load_model(ckpt).calibration.threshold == 0.999
