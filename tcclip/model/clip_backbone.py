"""CLIP backbone weights and tokenizer.

`load_clip_state_dict` returns CLIP's weights in OpenAI's layout (the one open_clip's `CLIP` class uses:
`visual.*`, `token_embedding.weight`, `positional_embedding`, `transformer.resblocks.*`, `ln_final.*`,
`text_projection`, `logit_scale`), whatever the source: open_clip's download of the OpenAI release, a local OpenAI
JIT archive, a plain state dict, an open_clip training checkpoint, or a random initialisation. Every floating
tensor is rounded through fp16, as the official code does when it builds the model
(docs/model.md, "Exactness").
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tcclip.model.config import CLIPCfg

__all__ = ["CLIPTokenizer", "build_tokenizer", "expected_clip_shapes", "load_clip_state_dict"]

# Entries that are not weights: OpenAI JIT archives' metadata, and the text causal mask (a TorchScript export of
# open_clip's CLIP keeps this non-persistent buffer in its state dict).
_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
# Top-level names of the text tower in open_clip's CustomTextCLIP layout (`text.` prefix), mapped back to OpenAI's.
_TEXT_TOWER_NAMES = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")


def _open_clip_model(cfg: CLIPCfg) -> torch.nn.Module:
    """open_clip's CLIP (QuickGELU, OpenAI layout) with the architecture of `cfg`, on the current default device."""
    from open_clip.model import CLIP

    vision, text = cfg.vision, cfg.text
    vision_cfg = {
        "layers": vision.layers,
        "width": vision.width,
        "head_width": vision.width // vision.heads,
        "mlp_ratio": vision.mlp_ratio,
        "patch_size": vision.patch_size,
        "image_size": vision.image_size,
    }
    text_cfg = {
        "context_length": text.context_length,
        "vocab_size": text.vocab_size,
        "width": text.width,
        "heads": text.heads,
        "layers": text.layers,
        "mlp_ratio": text.mlp_ratio,
    }
    return CLIP(cfg.embed_dim, vision_cfg, text_cfg, quick_gelu=True)


def expected_clip_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of the OpenAI-layout state dict of `arch` (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = _open_clip_model(CLIPCfg.from_name(arch))
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _round_through_fp16(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """fp32 copies of the tensors, floating ones rounded to the nearest fp16 number (docs/model.md, "Exactness")."""
    out = {}
    for name, t in state_dict.items():
        t = t.detach().cpu()
        out[name] = t.to(torch.float16).to(torch.float32) if t.is_floating_point() else t.clone()
    return out


def _is_torchscript_archive(path: Path) -> bool:
    """A TorchScript archive is a zip with a `code/` folder and `constants.pkl` (torch.save zips have neither)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _read_weights_file(path: Path) -> dict[str, Tensor]:
    """The raw state dict in a local file: OpenAI JIT archive, safetensors, plain or open_clip checkpoint."""
    if not path.is_file():
        raise FileNotFoundError(
            f"CLIP weights file {path} does not exist; pass an existing OpenAI JIT archive (e.g. ViT-B-16.pt), "
            "a state dict saved with torch.save, an open_clip checkpoint, 'openai' to download, or None for random"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    if _is_torchscript_archive(path):
        # OpenAI's release: a TorchScript archive. Loading it runs no Python pickle code.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, but it is the release's format
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    try:
        checkpoint: Any = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:  # pickled objects, not a torch file, truncated
        first = str(err).splitlines()[0] if str(err) else ""
        if "Weights only load failed" in first or "invalid load key" in first:
            first = "not a torch file, or one holding pickled Python objects"
        reason = f"{type(err).__name__}: {first}"
        raise ValueError(
            f"{path}: not a readable weights file ({reason}); expected an OpenAI JIT archive, "
            "a safetensors file, or a torch.save'd state dict of tensors (no pickled Python objects)"
        ) from err
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]  # open_clip training checkpoint
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path}: expected a state dict (name -> tensor) or a dict with a 'state_dict' entry")
    return dict(checkpoint)


def _to_openai_layout(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Strip DDP's `module.` prefix, drop non-weight entries, map open_clip's CustomTextCLIP `text.*` names back."""
    out = {}
    for name, tensor in state_dict.items():
        if name.startswith("module."):
            name = name[len("module.") :]
        if name in _NON_WEIGHT_KEYS:
            continue
        if name.startswith("text.") and name.split(".")[1] in _TEXT_TOWER_NAMES:
            name = name[len("text.") :]
        out[name] = tensor
    return out


def _validate(state_dict: Mapping[str, Tensor], arch: str, source: str) -> None:
    """Every expected tensor is there with the right shape, and nothing else is."""
    expected = expected_clip_shapes(arch)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors, first {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors, first {unexpected[0]!r}")
        raise ValueError(
            f"{source}: not a CLIP {arch} state dict in OpenAI layout ({'; '.join(parts)}); "
            f"pass weights of the {arch} architecture or set arch to the one the weights belong to"
        )
    for name, shape in expected.items():
        if tuple(state_dict[name].shape) != shape:
            raise ValueError(
                f"{source}: tensor {name!r} has shape {tuple(state_dict[name].shape)}, CLIP {arch} needs {shape}; "
                f"pass weights of the {arch} architecture or set arch to the one the weights belong to"
            )


def _download_openai(arch: str) -> Path:
    """Path of open_clip's cached download of OpenAI's weights for `arch` (downloads on first use)."""
    from open_clip import pretrained

    cfg = pretrained.get_pretrained_cfg(arch, "openai")
    if not cfg:
        known = pretrained.list_pretrained_models_by_tag("openai")
        raise ValueError(
            f"open_clip has no OpenAI weights for {arch!r} (it has them for {known}); "
            "pass a local weights file or weights=None for a random initialisation"
        )
    try:
        return Path(pretrained.download_pretrained(cfg))
    except (OSError, RuntimeError) as err:  # URLError, HF hub errors (FileNotFoundError) and checksum mismatches
        url = cfg.get("url", "")
        raise RuntimeError(
            f"could not download OpenAI's CLIP {arch} weights ({type(err).__name__}: {err}). Without internet, fetch "
            f"{url or 'the OpenAI CLIP archive'} on another machine and pass its local path as the CLIP weights "
            "(clip_weights=/path/to/file.pt; an OpenAI JIT archive, a state dict or an open_clip checkpoint all work)"
        ) from err


def load_clip_state_dict(arch: str, weights: str | Path | None) -> dict[str, Tensor]:
    """CLIP's weights for `arch` as an OpenAI-layout state dict of fp32 tensors rounded through fp16.

    Args:
        arch: an open_clip architecture name (`ViT-B-16`, ...) or `test-tiny`.
        weights: `"openai"` (open_clip's download of OpenAI's release, cached), a path to an OpenAI JIT archive,
            a safetensors file, a `torch.save`d OpenAI-layout state dict or an open_clip checkpoint (`state_dict`
            entry and `module.` prefixes are handled), or None for a random initialisation of `arch` (drawn from
            the caller's torch RNG).

    Raises:
        ValueError: the file is not a state dict of `arch` (names the file and the first mismatching key).
        RuntimeError: `"openai"` could not be downloaded (the message says how to pass a local file instead).
    """
    if weights is None:
        state_dict = _open_clip_model(CLIPCfg.from_name(arch)).state_dict()
        source = f"random CLIP {arch}"
    else:
        path = _download_openai(arch) if str(weights) == "openai" else Path(weights).expanduser()
        state_dict = _to_openai_layout(_read_weights_file(path))
        source = str(path)
    _validate(state_dict, arch, source)
    return _round_through_fp16(state_dict)


class CLIPTokenizer:
    """CLIP's BPE tokenizer (open_clip's `SimpleTokenizer`: lower-cased, whitespace-cleaned text).

    `encode` gives the BPE ids of a text without the start/end tokens; `tokenize` gives the padded rows that CLIP's
    text tower reads.
    """

    def __init__(self, context_length: int) -> None:
        from open_clip.tokenizer import SimpleTokenizer

        self.context_length = context_length
        self._bpe = SimpleTokenizer(context_length=context_length)
        self.sot_token_id: int = self._bpe.sot_token_id
        self.eot_token_id: int = self._bpe.eot_token_id
        self.vocab_size: int = self._bpe.vocab_size

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text`, without the start and end tokens."""
        return list(self._bpe.encode(text))

    def decode(self, ids: list[int]) -> str:
        return self._bpe.decode(ids)

    def tokenize(self, texts: list[str] | tuple[str, ...]) -> Tensor:
        """[len(texts), context_length] long: start token, BPE ids, end token, zero padding.

        Raises:
            ValueError: a text does not fit in `context_length` tokens (never cut silently).
        """
        rows = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > self.context_length:
                raise ValueError(
                    f"the text {text!r} is {len(ids)} tokens long with start and end tokens, more than "
                    f"context_length={self.context_length}; shorten it or raise context_length"
                )
            rows[i, : len(ids)] = torch.tensor(ids)
        return rows


def build_tokenizer(context_length: int) -> CLIPTokenizer:
    """A CLIP BPE tokenizer producing rows of `context_length` tokens."""
    return CLIPTokenizer(context_length)
