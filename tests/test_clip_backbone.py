"""CLIP weights in every supported format load to the same OpenAI-layout state dict; the tokenizer wrapper."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from tcclip.model.clip_backbone import (
    _open_clip_model,
    build_tokenizer,
    expected_clip_shapes,
    load_clip_state_dict,
)
from tcclip.model.config import CLIPCfg

ARCH = "test-tiny"


@pytest.fixture(scope="module")
def tiny_clip() -> torch.nn.Module:
    """open_clip's tiny CLIP with random fp32 weights (not fp16-exact, so the rounding is visible)."""
    torch.manual_seed(0)
    return _open_clip_model(CLIPCfg.from_name(ARCH)).eval()


def _rounded(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.half().float() for k, v in model.state_dict().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype == torch.float32, k
        assert torch.equal(a[k], b[k]), k


def test_random_init_has_the_architecture_and_is_fp16_exact():
    torch.manual_seed(1)
    sd = load_clip_state_dict(ARCH, None)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_clip_shapes(ARCH)
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in sd and "token_embedding.weight" in sd
    for k, v in sd.items():
        assert torch.equal(v, v.half().float()), k
    torch.manual_seed(1)
    _assert_same(sd, load_clip_state_dict(ARCH, None))  # drawn from the caller's RNG


def _save_plain(model: torch.nn.Module, path: Path) -> None:
    torch.save(model.state_dict(), path)


def _save_open_clip_checkpoint(model: torch.nn.Module, path: Path) -> None:
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # saved from a DDP-wrapped model
    torch.save({"epoch": 3, "name": "run", "state_dict": state}, path)


def _save_safetensors(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def _save_jit(model: torch.nn.Module, path: Path) -> None:
    """A TorchScript archive like OpenAI's release, metadata entries included."""
    state = model.state_dict()
    model = _open_clip_model(CLIPCfg.from_name(ARCH))
    model.load_state_dict(state)
    del model.context_length, model.vocab_size  # plain ints in open_clip; tensors in OpenAI's archives
    for name, value in (("input_resolution", 32), ("context_length", 77), ("vocab_size", 49408)):
        model.register_buffer(name, torch.tensor(value))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(model).save(str(path))


@pytest.mark.parametrize(
    "save", [_save_plain, _save_open_clip_checkpoint, _save_safetensors, _save_jit], ids=lambda f: f.__name__[6:]
)
def test_local_file_formats_load_the_same_rounded_weights(tiny_clip, tmp_path, save):
    path = tmp_path / ("weights.safetensors" if save is _save_safetensors else "weights.pt")
    save(tiny_clip, path)
    _assert_same(load_clip_state_dict(ARCH, path), _rounded(tiny_clip))


def test_wrong_shape_names_the_file_and_the_key(tiny_clip, tmp_path):
    sd = dict(tiny_clip.state_dict())
    sd["visual.proj"] = torch.zeros(3, 3)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"bad\.pt.*'visual\.proj'.*shape"):
        load_clip_state_dict(ARCH, path)


def test_missing_key_names_the_file_and_the_key(tiny_clip, tmp_path):
    sd = dict(tiny_clip.state_dict())
    del sd["ln_final.bias"]
    path = tmp_path / "partial.pt"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"partial\.pt.*missing 1 tensors, first 'ln_final\.bias'"):
        load_clip_state_dict(ARCH, path)


class _Payload:
    pass


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": _Payload()}, path)
    with pytest.raises(ValueError, match=r"(?s)evil\.pt.*no pickled Python objects"):
        load_clip_state_dict(ARCH, path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_clip_state_dict(ARCH, tmp_path / "nope.pt")


def test_openai_download_failure_tells_how_to_pass_a_local_file(monkeypatch):
    from open_clip import pretrained

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(pretrained, "download_pretrained", offline)
    with pytest.raises(RuntimeError, match=r"ViT-B-16.*local path"):
        load_clip_state_dict("ViT-B-16", "openai")


def test_tokenizer_wraps_clip_bpe():
    tok = build_tokenizer(8)
    assert (tok.sot_token_id, tok.eot_token_id, tok.vocab_size) == (49406, 49407, 49408)
    assert tok.encode("A photo of a") == [320, 1125, 539, 320]  # lower-cased, no start/end tokens
    rows = tok.tokenize(["a photo of a dog."])
    assert rows.tolist() == [[49406, 320, 1125, 539, 320, 1929, 269, 49407]]
    with pytest.raises(ValueError, match="context_length=8"):
        tok.tokenize(["a photo of a very small dog."])
