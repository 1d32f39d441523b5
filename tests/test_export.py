"""`tcclip export`: safetensors + config.json + model card, loading without pickle, ONNX through onnxruntime."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

import tcclip
from tcclip.cli import main as cli_main
from tcclip.inference.export import OFFICIAL_LICENCE, RANDOM_INIT_NOTE, export, licence_note
from tcclip.model.config import TCCLIPConfig
from tcclip.model.factory import create_model
from tcclip.training.calibration_record import Calibration, write_sidecar
from tcclip.training.checkpoints import lightning_checkpoint, save_model
from tcclip.training.portable import load_exported, write_exported

CLASSES = ["run", "jump", "swim"]
TINY = TCCLIPConfig(
    arch="test-tiny",
    num_frames=4,
    positional_embedding_type="joint",
    context_token_k=8,
    tome_r=4,
    prompt_generation_layer_level=(2,),
)


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    model = create_model(TINY, CLASSES, clip_weights=None)
    with torch.no_grad():  # random but not initial values everywhere, so a tensor left at its init would show
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.set_class_names(CLASSES)  # the fixed prompt parts are computed from the (changed) token embedding
    return model.eval()


def videos(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, TINY.num_frames, 3, 32, 32, generator=g)


@pytest.fixture
def lightning_run(tmp_path) -> Path:
    """A Lightning-layout checkpoint in a run folder, with the results.json a `tcclip test` would leave there."""
    model = tiny_model()
    ckpt = lightning_checkpoint(model)
    ckpt["hyper_parameters"]["clip_weights"] = None
    ckpt["tcclip"] = {"train_class_names": CLASSES}
    run = tmp_path / "run" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(ckpt, run / "checkpoints" / "last.ckpt")
    results = {"protocol": "fully_supervised", "sets": {"split1": {"top1": 87.5, "top5": 100.0, "num_videos": 16}}}
    (run / "results.json").write_text(json.dumps(results))
    return run / "checkpoints" / "last.ckpt"


def test_exported_logits_equal_checkpoint_in_float64(tmp_path, lightning_run):
    out = export(lightning_run, tmp_path / "exported")
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "README.md"}
    from_ckpt = tcclip.load_model(lightning_run).double()
    from_dir = tcclip.load_model(out).double()
    assert from_dir.class_names == CLASSES  # stored in config.json
    x = videos(3).double()
    with torch.no_grad():
        assert torch.equal(from_ckpt(x), from_dir(x))
    state_a, state_b = from_ckpt.state_dict(), from_dir.state_dict()
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_loading_an_export_unpickles_nothing(tmp_path, monkeypatch):
    model = tiny_model(seed=3)
    out = export(save_model(model, tmp_path / "model.pt"), tmp_path / "exported")

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = load_exported(out)
    x = videos(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_model_card_and_config(tmp_path, lightning_run):
    out = export(lightning_run, tmp_path / "exported")
    card = (out / "README.md").read_text()
    assert "| split1 | 16 | 87.5 | 100.0 |" in card  # metrics from the run's results.json
    assert "test-tiny" in card and "4 frames per clip" in card
    assert RANDOM_INIT_NOTE in card  # clip_weights: null in the checkpoint
    config = json.loads((out / "config.json").read_text())
    assert config["model_config"] == TINY.to_dict()
    assert config["class_names"] == CLASSES and config["calibration"] is None
    assert config["provenance"]["kind"] == "lightning"


def test_licence_note_by_origin():
    assert "CC BY-NC 4.0" in licence_note({"kind": "official"})
    assert licence_note({"kind": "lightning", "hyper_parameters": {"init_checkpoint": "k400.pth"}}).startswith(
        OFFICIAL_LICENCE
    )
    assert "MIT" in licence_note({"kind": "lightning", "hyper_parameters": {"clip_weights": "openai"}})
    assert "CC BY-NC 4.0" in licence_note({"kind": "tcclip"})  # unknown origin: the warning is given


def test_calibration_travels_into_the_export(tmp_path, lightning_run):
    cal = Calibration(temperature=1.7, score="mcm", threshold=0.41, target_recall=0.95, class_names=tuple(CLASSES))
    write_sidecar(cal, lightning_run)
    assert tcclip.load_model(lightning_run).calibration == cal
    out = export(lightning_run, tmp_path / "exported")
    assert tcclip.load_model(out).calibration == cal
    assert json.loads((out / "config.json").read_text())["calibration"]["temperature"] == 1.7
    assert "T = 1.7" in (out / "README.md").read_text()


def test_export_command_and_its_errors(tmp_path, lightning_run, capsys):
    assert cli_main(["export", str(lightning_run), str(tmp_path / "out"), "--labels", "a,b"]) == 0
    assert tcclip.load_model(tmp_path / "out").class_names == ["a", "b"]
    from tcclip.data.synth import render_video, write_video

    video = write_video(tmp_path / "v.mp4", render_video("Grow", 8, 32, 32, np.random.default_rng(0)))
    capsys.readouterr()
    assert cli_main(["predict", str(video), "--checkpoint", str(tmp_path / "out"), "--workers", "0", "--json"]) == 0
    assert {p["label"] for p in json.loads(capsys.readouterr().out)["predictions"]} == {"a", "b"}
    assert cli_main(["export", str(tmp_path / "missing.ckpt"), str(tmp_path / "out2")]) == 2
    assert "missing.ckpt" in capsys.readouterr().err
    assert cli_main(["export", str(lightning_run), str(tmp_path / "out")]) == 0  # an earlier export: replaced
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "README.md").write_text("mine")
    assert cli_main(["export", str(lightning_run), str(tmp_path / "project")]) == 2
    assert (tmp_path / "project" / "README.md").read_text() == "mine"
    assert "not an empty folder or an earlier export" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    with pytest.raises(tcclip.utils.errors.UserError, match="tcclip export"):
        tcclip.load_model(tmp_path / "junk")
    (tmp_path / "out" / "config.json").write_text("{not json")
    with pytest.raises(tcclip.utils.errors.UserError, match="config.json:1"):
        tcclip.load_model(tmp_path / "out")


@pytest.mark.slow
def test_onnx_matches_eager_fp32(tmp_path, lightning_run):
    ort = pytest.importorskip("onnxruntime")
    out = export(lightning_run, tmp_path / "exported", onnx=True)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    model = tcclip.load_model(out)
    x = videos(50, seed=7)
    agree = 0
    for i in range(50):
        clip = x[i : i + 1]
        (onnx_logits,) = session.run(["logits"], {"video": clip.numpy()})
        with torch.no_grad():
            eager = model(clip)
        onnx_logits = torch.from_numpy(onnx_logits)
        assert (onnx_logits - eager).abs().max() <= 1e-4 * eager.abs().max()
        agree += int(onnx_logits.argmax() == eager.argmax())
    assert agree == 50


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_exported_files_get_the_usual_mode(tmp_path, lightning_run, umask):
    # Colleagues on a shared cluster load an export as they read any other file the owner writes: safetensors
    # writes its file readable by its owner only, which the export must not pass on.
    out = export(lightning_run, tmp_path / "exported")
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name
    direct = write_exported(tiny_model(), tmp_path / "direct")  # the Python API, outside a staged folder
    assert stat.S_IMODE((direct / "model.safetensors").stat().st_mode) == 0o666 & ~umask
