"""Calibration: temperature by NLL, ECE, top-1 never changes, the sidecar file, and `tcclip calibrate`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tcclip
from tcclip.cli import main as cli_main
from tcclip.inference.calibrate import fit_calibration
from tcclip.inference.openset import (
    calibrated_probabilities,
    expected_calibration_error,
    fit_temperature,
    view_log_probabilities,
)
from tcclip.inference.predict import predict
from tcclip.model.config import TCCLIPConfig
from tcclip.model.factory import create_model
from tcclip.training.calibration_record import Calibration, read_sidecar, sidecar_path, write_sidecar
from tcclip.training.checkpoints import lightning_checkpoint
from tcclip.utils.errors import UserError


def test_fit_temperature_recovers_the_generating_temperature():
    g = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(20000, 6, generator=g)
    labels = torch.multinomial((logits / 2.5).softmax(-1), 1, generator=g).squeeze(1)  # truly softmax(z / 2.5)
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.05)


def test_ece_against_plain_binning():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(5) * 0.5, size=500)
    labels = rng.integers(0, 5, size=500)
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, 16)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs((pred[inside] == labels[inside]).mean() - conf[inside].mean())
    got = expected_calibration_error(torch.from_numpy(probs).float(), torch.from_numpy(labels))
    assert got == pytest.approx(ece, abs=1e-5)


def test_calibration_never_changes_top1():
    g = torch.Generator().manual_seed(2)
    view_logits = 4.0 * torch.randn(300, 3, 10, generator=g)  # three views that often disagree
    plain = view_logits.softmax(-1).mean(1)
    for temperature in (0.05, 0.5, 1.0, 1.7, 20.0):
        calibrated = calibrated_probabilities(view_logits, temperature)
        assert torch.equal(calibrated.argmax(-1), plain.argmax(-1))
        torch.testing.assert_close(calibrated.sum(-1), torch.ones(300))
    # one view: exactly softmax(z / T)
    one = view_logits[:, :1]
    torch.testing.assert_close(calibrated_probabilities(one, 2.0), (one[:, 0] / 2.0).softmax(-1))
    torch.testing.assert_close(view_log_probabilities(view_logits).exp(), plain)


def test_fit_calibration_lowers_ece_of_an_overconfident_model():
    g = torch.Generator().manual_seed(3)
    true_logits = 1.5 * torch.randn(2000, 1, 8, generator=g)
    labels = torch.multinomial(true_logits[:, 0].softmax(-1), 1, generator=g).squeeze(1)
    overconfident = 4.0 * true_logits  # what the model reports
    cal = fit_calibration(overconfident, labels, [f"c{i}" for i in range(8)], scale=100.0, target_recall=0.9)
    rep = cal.report
    assert cal.temperature == pytest.approx(4.0, rel=0.1)
    assert rep["ece_after"] < rep["ece_before"] / 3 and rep["nll_after"] < rep["nll_before"]
    assert rep["top1_after"] == rep["top1_before"]
    assert set(cal.thresholds) == {"msp", "max_logit", "energy", "mcm"} and cal.threshold == cal.thresholds["msp"]


def test_sidecar_round_trip_and_refusals(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"weights v1")
    from tcclip.training.calibration_record import file_sha256

    cal = Calibration(temperature=1.3, threshold=0.5, class_names=("a", "b"), checkpoint_sha256=file_sha256(ckpt))
    path = write_sidecar(cal, ckpt)
    assert path == sidecar_path(ckpt) and path.name == "model.ckpt.calibration.json"
    assert read_sidecar(ckpt) == cal
    ckpt.write_bytes(b"weights v2")  # the checkpoint was replaced: the old calibration must not be used
    with pytest.raises(UserError, match="SHA-256"):
        read_sidecar(ckpt)
    path.write_text('{"format": "tcclip-calibration",\n "temperature": }')
    with pytest.raises(UserError, match=r"calibration.json:2"):
        read_sidecar(ckpt)
    path.write_text(json.dumps({"format": "tcclip-calibration", "temperature": -1}))
    with pytest.raises(UserError, match="temperature"):
        read_sidecar(ckpt)


def test_calibrate_command_end_to_end(tmp_path, data_synth, own_tmpdir):
    names = ["MoveLeft", "MoveRight", "MoveUp"]
    cfg = TCCLIPConfig(
        arch="test-tiny", num_frames=4, positional_embedding_type="joint", context_token_k=8, tome_r=4,
        prompt_generation_layer_level=(2,),
    )  # fmt: skip
    torch.manual_seed(0)
    model = create_model(cfg, names, clip_weights=None)
    ckpt = lightning_checkpoint(model)
    ckpt["tcclip"] = {"train_class_names": names}
    torch.save(ckpt, tmp_path / "tiny.ckpt")
    (tmp_path / "cfg.yaml").write_text(
        "data:\n  class_path: tcclip.data.families.Synthetic\n  init_args:\n    protocol: zero_shot\n"
        "    num_workers: 0\n    batch_size: 4\n    num_clip: 2\n    backend: pyav\n"
    )
    args = ["calibrate", "--config", str(tmp_path / "cfg.yaml"), "--ckpt_path", str(tmp_path / "tiny.ckpt")]
    root = ["--data.init_args.root", str(data_synth)]
    assert cli_main([*args, *root, "--quiet"]) == 2  # val.txt holds 3 videos: fewer than the minimum
    assert cli_main([*args, *root, "--quiet", "--target-recall", "0.8", "--min-videos", "3"]) == 0
    stored = json.loads(sidecar_path(tmp_path / "tiny.ckpt").read_text())
    assert stored["report"]["num_videos"] == 3 and stored["report"]["views"] == 2  # val.txt: 1 video per class
    assert stored["report"]["top1_before"] == stored["report"]["top1_after"]
    assert stored["target_recall"] == 0.8 and stored["class_names"] == names
    loaded = tcclip.load_model(tmp_path / "tiny.ckpt")
    assert loaded.calibration.temperature == stored["temperature"]
    # predict applies the temperature: softmax(log p / T) of the view-averaged probabilities p
    frames = torch.randint(0, 256, (10, 32, 32, 3), dtype=torch.uint8)
    calibrated = predict(loaded, frames, top_k=3, views="2x1")
    tcclip.training.calibration_record.attach(loaded, None)
    plain = predict(loaded, frames, top_k=3, views="2x1")
    p = torch.tensor([prob for _, prob in sorted(plain)], dtype=torch.float64)
    expected = (p.log() / stored["temperature"]).softmax(-1)
    got = torch.tensor([prob for _, prob in sorted(calibrated)], dtype=torch.float64)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert [label for label, _ in calibrated] == [label for label, _ in plain]
    assert cli_main(["calibrate", "--config", str(tmp_path / "missing.yaml"), "--ckpt_path", str(tmp_path)]) == 2
    # The spellings of before calibrate ran through LightningCLI, and the new ones, give the same record.
    first = sidecar_path(tmp_path / "tiny.ckpt").read_bytes()
    old = ["--quiet", "--target-recall", "0.8", "--min-videos", "3", "--device", "cpu", "--set", "val"]
    assert cli_main([*args[:3], "--ckpt-path", args[4], *root, *old]) == 0
    assert sidecar_path(tmp_path / "tiny.ckpt").read_bytes() == first
    new = ["--quiet=true", "--target_recall", "0.8", "--min_videos", "3", "--trainer.accelerator", "cpu"]
    assert cli_main([*args, *root, *new, "--set_name", "val"]) == 0
    assert sidecar_path(tmp_path / "tiny.ckpt").read_bytes() == first
    assert list(own_tmpdir.iterdir()) == []  # a command without a run folder leaves nothing in the temp dir


def test_calibrate_translates_the_options_it_had_before_lightningcli():
    from tcclip.cli.calibrate import translate_old_options

    assert translate_old_options(["--target-recall=0.9", "--min-videos", "5", "--set", "a", "--quiet"]) == [
        "--target_recall=0.9", "--min_videos", "5", "--set_name", "a", "--quiet=true",
    ]  # fmt: skip
    assert translate_old_options(["--quiet", "false", "--ckpt-path", "x"]) == ["--quiet", "false", "--ckpt_path", "x"]
    assert translate_old_options(["--device", "cuda:1"]) == [
        "--trainer.accelerator", "gpu", "--trainer.devices", "[1]",
    ]  # fmt: skip
    assert translate_old_options(["--device=auto"]) == ["--trainer.accelerator", "auto"]
    with pytest.raises(UserError, match="--trainer.accelerator"):
        translate_old_options(["--device", "warp"])


def test_calibrate_is_a_lightningcli_command(capsys):
    with pytest.raises(SystemExit) as exited:  # LightningCLI's --help exits, as for tcclip fit --help
        cli_main(["calibrate", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--trainer.accelerator" in out and "--target_recall" in out and "--data" in out


def test_degenerate_calibration_sets_are_refused_and_the_temperature_is_bounded(caplog):
    from tcclip.inference.openset import TEMPERATURE_BOUNDS

    g = torch.Generator().manual_seed(0)
    names = ["a", "b", "c"]
    with pytest.raises(UserError, match="only 2 validation video"):
        fit_calibration(torch.randn(2, 1, 3, generator=g), torch.tensor([0, 1]), names, scale=100.0)
    with pytest.raises(UserError, match="all of one class \\('b'\\)"):
        fit_calibration(torch.randn(30, 1, 3, generator=g), torch.ones(30, dtype=torch.long), names, scale=100.0)
    # A model always confidently wrong: the NLL falls as T grows without end; the fit stops at the bound and warns.
    labels = torch.arange(30) % 3
    wrong = 10.0 * torch.nn.functional.one_hot((labels + 1) % 3, 3).float()[:, None]
    with caplog.at_level("WARNING", logger="tcclip.inference.calibrate"):
        cal = fit_calibration(wrong, labels, names, scale=100.0)
    assert cal.temperature == TEMPERATURE_BOUNDS[1]
    assert "reached the bound" in caplog.text and cal.report["warnings"]
    # the unbounded optimum, computed independently: NLL(T) decreasing on a grid up to the bound
    log_p = wrong[:, 0].log_softmax(-1).double()
    nll = [float(torch.nn.functional.cross_entropy(log_p / t, labels)) for t in (1.0, 5.0, 20.0)]
    assert nll[0] > nll[1] > nll[2]
