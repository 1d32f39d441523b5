"""Checkpoints: the official layout, safe loading, our own formats, config overrides, WiSE-FT, conversion."""

from __future__ import annotations

import collections
import random
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tcclip.cli import commands as cli
from tcclip.cli.commands import run_command
from tcclip.model.clip_backbone import load_clip_state_dict
from tcclip.model.config import TCCLIPConfig
from tcclip.model.errors import ModelError
from tcclip.model.factory import build_model, create_model
from tcclip.model.official import (
    IGNORED_OFFICIAL_KEYS,
    NOT_IN_OFFICIAL,
    official_config_to_tcclip,
    to_official_state_dict,
)
from tcclip.model.weights import wise_ft
from tcclip.training.checkpoints import (
    CheckpointError,
    lightning_checkpoint,
    load_model,
    load_official_checkpoint,
    save_model,
)
from tcclip.training.safe_load import safe_load
from tcclip.utils.finite import NonFiniteError

NAMES = ["ApplyEyeMakeup", "brush_hair", "YoYo"]
CFG = TCCLIPConfig(
    arch="test-tiny", num_frames=3, context_token_k=4, tome_r=4, prompt_generation_layer_level=(2,), n_ctx=3
)
# The official (Hydra) config keys of CFG, plus keys that have nothing to do with the model.
OFFICIAL_CONFIG = {
    "trainer_name": "TCCLIP",
    "model_arch": "test-tiny",
    "num_frames": 3,
    "context_token_k": 4,
    "tome_r": 4,
    "tome_d": 0,
    "prompt_generation_layer_level": 2,
    "n_ctx": 3,
    "ctx_init": "a photo of a",
    "seed_token_a": 0.3,
    "positional_embedding_type": "space",
    "local_global_bias": True,
    "context_length": 30,
    "parse_ucf101": True,
    "lr": 8e-6,
    "data": {"train": {"root": "${output}/k400", "num_classes": 400}},
    "output": "/runs/x",
    "selected_option": "${hydra:runtime.choices}",  # an interpolation outside the model settings: kept as written
}
SEED = 11


class NotData:
    """A class an attacker could pickle; loading must refuse it."""

    def __init__(self) -> None:
        self.x = 1


class SneakyDict(collections.OrderedDict):
    pass


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> Path:
    """Random test-tiny CLIP weights as a file; create_model(seed=SEED) draws exactly these."""
    torch.manual_seed(SEED)
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    torch.save(load_clip_state_dict("test-tiny", None), path)
    return path


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(SEED)
    net = create_model(CFG, NAMES, clip_weights=None)
    with torch.no_grad():  # move the new parts away from their CLIP initialisation, as training would
        for name, p in net.named_parameters():
            if net.keeps_finetuned_in_wise_ft(name) and p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    return net.eval()


def official_file(path: Path, state: dict, config: dict | None = None, **extra) -> Path:
    payload = {"model": state, "optimizer": {}, "lr_scheduler": {}, "max_accuracy": 55.0, "epoch": 9}
    payload["config"] = OmegaConf.create(OFFICIAL_CONFIG if config is None else config)
    torch.save(payload | extra, path)
    return path


def clip_video(batch: int = 2) -> torch.Tensor:
    size = CFG.clip.vision.image_size
    return torch.randn(batch, CFG.num_frames, 3, size, size, generator=torch.Generator().manual_seed(0))


def assert_same_logits(a, b) -> None:
    with torch.no_grad():
        torch.testing.assert_close(a(clip_video()), b(clip_video()), rtol=0, atol=0)


# -- official layout -----------------------------------------------------------------------------------------------


def test_default_model_has_exactly_the_official_tensors(official_tensors):
    expected = official_tensors
    num_classes = expected["module.prompt_learner.token_prefix"][0]
    with torch.device("meta"):
        net = build_model(TCCLIPConfig(), [f"class {i}" for i in range(num_classes)])
    official = to_official_state_dict(net)
    assert {k: list(v.shape) for k, v in official.items()} == expected
    # ... and back: every official name is one of our tensors, minus the explicit exceptions.
    ours = set(net.state_dict())
    stripped = {k.removeprefix("module.") for k in expected}
    assert ours - stripped == set(NOT_IN_OFFICIAL)
    assert stripped - ours == set(IGNORED_OFFICIAL_KEYS)


def test_official_round_trip_is_the_identity(model, clip_file, tmp_path):
    state = to_official_state_dict(model)
    loaded = load_model(official_file(tmp_path / "tc.pth", state), NAMES, clip_weights=clip_file)
    again = to_official_state_dict(loaded)
    assert again.keys() == state.keys()
    assert all(torch.equal(again[k], state[k]) for k in state)
    assert not loaded.training
    assert_same_logits(loaded, model)


def test_load_official_checkpoint_strips_prefix_and_class_tensors(model, tmp_path):
    state, config = load_official_checkpoint(official_file(tmp_path / "tc.pth", to_official_state_dict(model)))
    assert set(state) == set(model.state_dict()) - set(NOT_IN_OFFICIAL)
    # Taken as written: interpolations are never resolved.
    assert config["trainer_name"] == "TCCLIP" and config["data"]["train"]["root"] == "${output}/k400"
    assert config["selected_option"] == "${hydra:runtime.choices}"


def test_official_config_mapping():
    assert official_config_to_tcclip(OFFICIAL_CONFIG) == {
        "model": "tc_clip",
        "arch": "test-tiny",
        "parse_class_names": True,
        "num_frames": 3,
        "positional_embedding_type": "space",
        "local_global_bias": True,
        "context_token_k": 4,
        "seed_token_a": 0.3,
        "tome_r": 4,
        "n_ctx": 3,
        "ctx_init": "a photo of a",
        "context_length": 30,
        "prompt_generation_layer_level": (2,),
    }
    assert official_config_to_tcclip({"model_arch": "ViT-B/16"})["arch"] == "ViT-B-16"
    assert official_config_to_tcclip({"prompt_generation_layer_level": [11, 12]})["prompt_generation_layer_level"] == (
        11,
        12,
    )
    vanilla = {"trainer_name": "ViFiCLIP", "zs_eval": True, "n_ctx": 4, "context_length": 30}
    assert official_config_to_tcclip(vanilla) == {"model": "clip", "context_length": 30}
    assert official_config_to_tcclip({"trainer_name": "ViFiCLIP", "zs_eval": False})["model"] == "vifi_clip"
    with pytest.raises(ModelError, match="tome_d"):
        official_config_to_tcclip({"trainer_name": "TCCLIP", "tome_d": 2})


# -- safety ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "culprit"),
    [
        ({"optimizer": NotData()}, "NotData"),
        ({"model": SneakyDict(w=torch.zeros(1))}, "SneakyDict"),
    ],
)
def test_unexpected_pickled_objects_are_refused(model, tmp_path, payload, culprit):
    path = official_file(tmp_path / "evil.pth", to_official_state_dict(model), **payload)
    with pytest.raises(CheckpointError, match=rf"(?s)evil\.pth.*refusing.*{culprit}"):
        load_official_checkpoint(path)
    with pytest.raises(CheckpointError, match=culprit):
        load_model(path, NAMES)


# -- strict keys, shapes and settings --------------------------------------------------------------------------


def test_missing_extra_and_misshaped_tensors_are_named(model, clip_file, tmp_path):
    good = to_official_state_dict(model)
    missing = {k: v for k, v in good.items() if k != "module.text_encoder.ln_final.bias"}
    with pytest.raises(CheckpointError, match=r"1 missing tensors \(text_encoder\.ln_final\.bias\)"):
        load_model(official_file(tmp_path / "a.pth", missing), NAMES, clip_weights=clip_file)
    extra = good | {"module.text_encoder.surprise": torch.zeros(2)}
    with pytest.raises(CheckpointError, match="unexpected tensors \\(text_encoder.surprise\\)"):
        load_model(official_file(tmp_path / "b.pth", extra), NAMES, clip_weights=clip_file)
    misshaped = good | {"module.prompt_learner.ctx": torch.zeros(5, CFG.clip.text.width)}
    with pytest.raises(CheckpointError, match=r"prompt_learner\.ctx: checkpoint \(5, 64\) vs model \(3, 64\)"):
        load_model(official_file(tmp_path / "c.pth", misshaped), NAMES, clip_weights=clip_file)


def test_override_contradicting_the_checkpoint_is_an_error(model, tmp_path):
    path = save_model(model, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"tome_r=4.*tome_r=5"):
        load_model(path, NAMES, tome_r=5)
    with pytest.raises(CheckpointError, match="unknown model settings"):
        load_model(path, NAMES, frames=8)
    assert load_model(path, NAMES, num_frames=5, context_length=40).cfg.num_frames == 5  # allowed to differ


def test_overrides_fill_what_an_official_config_does_not_say(model, clip_file, tmp_path):
    path = official_file(tmp_path / "tc.pth", to_official_state_dict(model), config={"model_arch": "test-tiny"})
    settings = {"num_frames": 3, "context_token_k": 4, "tome_r": 4, "n_ctx": 3, "prompt_generation_layer_level": (2,)}
    assert_same_logits(load_model(path, NAMES, clip_weights=clip_file, **settings), model)
    with pytest.raises(CheckpointError, match=r"arch='test-tiny'.*arch='ViT-B-16'"):
        load_model(path, NAMES, clip_weights=clip_file, arch="ViT-B-16", **settings)


# -- our formats -----------------------------------------------------------------------------------------------


def test_save_model_round_trip(model, tmp_path):
    loaded = load_model(save_model(model, tmp_path / "m.pt"), class_names=None)
    assert loaded.class_names == NAMES and loaded.cfg == model.cfg and not loaded.training
    assert_same_logits(loaded, model)


def test_lightning_checkpoint_loads(model, tmp_path):
    ckpt = lightning_checkpoint(model)
    ckpt["state_dict"]["val_top1.total"] = torch.zeros(())  # a LightningModule's own tensors are not the network's
    ckpt["tcclip"] = {"train_class_names": NAMES, "best": None}  # what TCCLIPModule.on_save_checkpoint adds
    ckpt["datamodule_hyper_parameters"] = {"root": Path("/data/k400")}  # paths are data, allowed
    torch.save(ckpt, tmp_path / "last.ckpt")
    assert load_model(tmp_path / "last.ckpt", None).class_names == NAMES
    loaded = load_model(tmp_path / "last.ckpt", ["walk", "run"])
    assert loaded.class_names == ["walk", "run"]
    model_state = model.state_dict()
    assert all(torch.equal(v, model_state[k]) for k, v in loaded.state_dict().items())


def test_convert_checkpoint_command(model, clip_file, tmp_path):
    src = official_file(tmp_path / "tc.pth", to_official_state_dict(model))
    out = tmp_path / "converted.ckpt"
    assert run_command("convert-checkpoint", [str(src), str(out), "--clip-weights", str(clip_file)]) == 0
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["hyper_parameters"]["model_config"] == CFG.to_dict()
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 0 and ckpt["pytorch-lightning_version"]
    assert all(k.startswith("model.") for k in ckpt["state_dict"])
    assert_same_logits(load_model(out, NAMES), model)


def test_convert_checkpoint_with_yaml_config(model, clip_file, tmp_path):
    src = official_file(tmp_path / "tc.pth", to_official_state_dict(model), config={"trainer_name": "TCCLIP"})
    yaml = tmp_path / "model.yaml"
    yaml.write_text("model_arch: test-tiny\nnum_frames: 3\ncontext_token_k: 4\ntome_r: 4\nn_ctx: 3\n"
                    "prompt_generation_layer_level: 2\n")  # fmt: skip
    out = tmp_path / "converted.ckpt"
    assert (
        run_command("convert-checkpoint", [str(src), str(out), "--config", str(yaml), "--clip-weights", str(clip_file)])
        == 0
    )
    assert_same_logits(load_model(out, NAMES), model)


def test_convert_checkpoint_reports_bad_input(tmp_path, capsys):
    assert cli.main(["convert-checkpoint", str(tmp_path / "nope.pth"), str(tmp_path / "out.ckpt")]) == 2
    err = capsys.readouterr().err
    assert "nope.pth" in err and "no such checkpoint file" in err and "Traceback" not in err
    assert not (tmp_path / "out.ckpt").exists()


def test_convert_checkpoint_to_an_unwritable_place_is_a_clear_error(model, clip_file, tmp_path, capsys):
    src = official_file(tmp_path / "tc.pth", to_official_state_dict(model))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "converted.ckpt"
    assert cli.main(["convert-checkpoint", str(src), str(out), "--clip-weights", str(clip_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tcclip convert-checkpoint: error: {out}: cannot write the converted checkpoint")
    assert "Traceback" not in err and err.count("\n") == 1


# -- untrusted official configs: never resolved ------------------------------------------------------------------

SECRET = "s3cr3t-value-that-must-not-leak"


def test_interpolations_in_an_official_config_are_never_resolved(model, clip_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TCCLIP_TEST_SECRET", SECRET)
    state = to_official_state_dict(model)
    # In a model setting: refused, naming the key, and the secret is nowhere.
    evil = official_file(
        tmp_path / "evil.pth", state, config=OFFICIAL_CONFIG | {"ctx_init": "${oc.env:TCCLIP_TEST_SECRET}"}
    )
    _, config = load_official_checkpoint(evil)
    assert config["ctx_init"] == "${oc.env:TCCLIP_TEST_SECRET}" and SECRET not in repr(config)
    with pytest.raises(CheckpointError, match="'ctx_init' is an omegaconf interpolation") as info:
        load_model(evil, NAMES, clip_weights=clip_file)
    assert SECRET not in str(info.value)
    out = tmp_path / "evil.ckpt"
    assert cli.main(["convert-checkpoint", str(evil), str(out), "--clip-weights", str(clip_file)]) == 2
    captured = capsys.readouterr()
    assert "ctx_init" in captured.err and SECRET not in captured.err + captured.out and not out.exists()

    # The same setting given as a plain value in a YAML file: converts, and the secret is not in the file.
    yaml = tmp_path / "model.yaml"
    yaml.write_text("ctx_init: a photo of a\n")
    assert (
        run_command(
            "convert-checkpoint", [str(evil), str(out), "--config", str(yaml), "--clip-weights", str(clip_file)]
        )
        == 0
    )
    assert SECRET.encode() not in out.read_bytes()
    assert_same_logits(load_model(out, NAMES), model)

    # Elsewhere in the config (not a model setting): loads, value kept as written, secret nowhere.
    elsewhere = OFFICIAL_CONFIG | {"output": "${oc.env:TCCLIP_TEST_SECRET}"}
    quiet = official_file(tmp_path / "quiet.pth", state, config=elsewhere)
    loaded = load_model(quiet, NAMES, clip_weights=clip_file)
    assert SECRET not in repr(loaded.cfg)
    assert run_command("convert-checkpoint", [str(quiet), str(out), "--clip-weights", str(clip_file)]) == 0
    assert SECRET.encode() not in out.read_bytes()


# -- files that are not checkpoints, and non-finite weights ----------------------------------------------------


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        (bytes(range(256)) * 8, "not a checkpoint: it is neither a torch zip archive nor a pickle"),
        (b"", "it is empty (0 bytes)"),
    ],
)
def test_files_that_are_not_checkpoints(tmp_path, content, phrase):
    path = tmp_path / "weights.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(phrase)) as info:
        load_model(path, NAMES)
    assert "unsafe" not in str(info.value) and "arbitrary code" not in str(info.value)
    assert str(info.value).startswith(f"{path}: ")


def test_truncated_checkpoint_is_not_a_checkpoint(model, tmp_path):
    whole = save_model(model, tmp_path / "whole.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_model(cut, NAMES)
    with pytest.raises(CheckpointError, match="is a folder"):
        load_model(tmp_path, NAMES)


def test_non_finite_weights_are_refused_naming_file_and_tensor(model, clip_file, tmp_path):
    name = "text_encoder.ln_final.weight"
    official = to_official_state_dict(model)
    official["module." + name] = official["module." + name].clone()
    official["module." + name][1] = float("nan")
    path = official_file(tmp_path / "nan.pth", official)
    with pytest.raises(NonFiniteError, match=rf"(?s)nan\.pth.*{re.escape(name)} \(1 NaN of 64 values\)"):
        load_model(path, NAMES, clip_weights=clip_file)
    ckpt = lightning_checkpoint(model)
    ckpt["state_dict"]["model." + name] = torch.full_like(ckpt["state_dict"]["model." + name], float("inf"))
    torch.save(ckpt, tmp_path / "inf.ckpt")
    with pytest.raises(NonFiniteError, match=rf"inf\.ckpt: .*{re.escape(name)} \(64 Inf of 64 values\)"):
        load_model(tmp_path / "inf.ckpt", NAMES)


# -- WiSE-FT ---------------------------------------------------------------------------------------------------


def test_wise_ft_numerics():
    initial = {"a": torch.tensor([0.0, 10.0]), "keep": torch.tensor([1.0]), "n": torch.tensor([3]), "s": torch.ones(2)}
    finetuned = {"a": torch.tensor([1.0, 0.0]), "keep": torch.tensor([2.0]), "n": torch.tensor([4]), "s": torch.ones(2)}
    mixed = wise_ft(finetuned, initial, 0.7, keep=lambda name: name == "keep")
    torch.testing.assert_close(mixed["a"], torch.tensor([0.7, 3.0]))
    assert torch.equal(mixed["keep"], finetuned["keep"]) and torch.equal(mixed["n"], finetuned["n"])
    assert torch.equal(mixed["s"], finetuned["s"])
    assert all(torch.equal(wise_ft(finetuned, initial, 1.0, lambda n: False)[k], v) for k, v in finetuned.items())
    with pytest.raises(ValueError, match="same tensors"):
        wise_ft(finetuned, {"a": initial["a"]}, 0.5, keep=lambda name: False)


def test_wise_ft_on_a_model_keeps_the_new_parts(model):
    torch.manual_seed(SEED)
    initial = create_model(CFG, NAMES, clip_weights=None).state_dict()
    finetuned = model.state_dict()
    mixed = wise_ft(finetuned, initial, 0.7, keep=model.keeps_finetuned_in_wise_ft)
    for name in ("prompt_learner.ctx", "image_encoder.transformer.resblocks.1.attn.local_global_bias_table"):
        assert torch.equal(mixed[name], finetuned[name])
    assert torch.equal(mixed["text_encoder.ln_final.weight"], finetuned["text_encoder.ln_final.weight"])  # unchanged


def test_any_garbage_is_reported_as_not_a_checkpoint(tmp_path):
    rng = random.Random(0)
    for i in range(200):
        path = tmp_path / f"junk{i}.ckpt"
        head = rng.choice([b"", b"\x80\x02", b"\x80\x04", b"PK\x03\x04"])  # bare, pickle-like, zip-like
        path.write_bytes(head + rng.randbytes(rng.randint(1, 4096)))
        with pytest.raises(CheckpointError, match=f"junk{i}.ckpt: not a checkpoint"):
            safe_load(path)
