"""Checkpoints: safe loading of official TC-CLIP `.pth` files and of this project's own, WiSE-FT, conversion.

Formats read by `load_model`:

- Official release (the authors' published checkpoints): a `torch.save` dict with `model` (state dict, every key
  prefixed `module.` by DistributedDataParallel), `config` (omegaconf DictConfig), `optimizer`, `lr_scheduler`,
  `max_accuracy`, `epoch`.
  `prompt_learner.token_prefix` / `token_suffix` are ignored (rebuilt from the class names) and the token
  embedding table, which it lacks, comes from CLIP's weights.
- Lightning checkpoint (`.ckpt`) of `tcclip fit`: `state_dict` with the network's keys prefixed `model.`, and
  `hyper_parameters["model_config"]` = `TCCLIPConfig.to_dict()`.
- `save_model`'s file: `{"format": "tcclip", "model_config": ..., "state_dict": ..., "class_names": [...]}`.

`lightning_checkpoint` gives the Lightning layout with empty training state (what `tcclip convert-checkpoint`,
in `tcclip/inference/convert.py`, writes): `{"state_dict": {"model." + k: v}, "hyper_parameters": {"model_config":
cfg.to_dict()}, "pytorch-lightning_version": <installed lightning version>, "epoch": 0, "global_step": 0,
"optimizer_states": [], "lr_schedulers": []}` (no "loops": Lightning then restores no loop state), so both
`load_model` and `tcclip validate/test --ckpt_path` read it.

Every checkpoint file of the project is read by `safe_load` (Lightning's restores too, through
`tcclip.training.checkpoint_io`). Nothing is ever unpickled with `weights_only=False`: files are read with
`torch.load(weights_only=True)` and an explicit allow-list of the data-only omegaconf classes an official config
pickles; any other pickled global is refused with an error naming the file and the global. An official config is
taken as written: omegaconf interpolations (`${oc.env:...}` would read the environment) are never resolved, and a
model setting written as one is refused. Non-finite weights are refused (`tcclip.utils.finite`).
"""

from __future__ import annotations

import collections
import logging
import pickle
import typing
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tcclip.model.config import TCCLIPConfig
from tcclip.utils.errors import ConfigError, UserError
from tcclip.utils.finite import check_finite_state

__all__ = [
    "ALLOWED_TO_DIFFER",
    "IGNORED_OFFICIAL_KEYS",
    "NOT_IN_OFFICIAL",
    "CheckpointContents",
    "CheckpointError",
    "check_state_dict",
    "lightning_checkpoint",
    "load_model",
    "load_official_checkpoint",
    "official_config_to_tcclip",
    "read_checkpoint",
    "safe_load",
    "save_model",
    "to_official_state_dict",
    "wise_ft",
]

log = logging.getLogger(__name__)

OFFICIAL_PREFIX = "module."
LIGHTNING_PREFIX = "model."
IGNORED_OFFICIAL_KEYS = ("prompt_learner.token_prefix", "prompt_learner.token_suffix")
"""Official tensors that depend on the class list; rebuilt from the class names instead."""
NOT_IN_OFFICIAL = ("prompt_learner.token_embedding.weight",)
"""Our tensors that official checkpoints lack; they come from CLIP's weights."""
ALLOWED_TO_DIFFER = frozenset({"num_frames", "context_length", "parse_class_names"})
"""Config fields an override may change relative to the checkpoint: they do not change what a weight means.
(`num_frames` only with the `space` positional embedding; a `joint` table is per frame.)"""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be loaded as asked; the message names the file and the fix.

    A `UserError` (the CLI prints it as one paragraph and exits 2) and, for callers that catch it so, a `ValueError`.
    """


# -- safe unpickling -------------------------------------------------------------------------------------------


def _allowed_globals() -> list[Any]:
    """The non-tensor classes that an official checkpoint's pickled omegaconf config needs, and nothing else.

    All are plain data containers: omegaconf's config containers, their metadata records and value nodes, the
    builtin types / `typing.Any` that omegaconf stores as metadata (`ref_type`, `object_type`, `key_type`), and the
    pathlib paths that a `PathNode` (or a Lightning checkpoint's hyper-parameters) may hold.
    """
    import pathlib

    from omegaconf import DictConfig, ListConfig, nodes
    from omegaconf.base import ContainerMetadata, Metadata

    value_nodes = [
        getattr(nodes, n)
        for n in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode")
        if hasattr(nodes, n)
    ]
    return [
        DictConfig,
        ListConfig,
        ContainerMetadata,
        Metadata,
        *value_nodes,
        typing.Any,
        dict,
        list,
        tuple,
        set,
        int,
        float,
        bool,
        str,
        bytes,
        type(None),
        collections.defaultdict,
        collections.OrderedDict,
        pathlib.PurePosixPath,
        pathlib.PosixPath,
        pathlib.PureWindowsPath,
        pathlib.WindowsPath,
    ]


def _global_name(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "typing"
    name = getattr(obj, "__qualname__", None) or getattr(obj, "_name", None) or repr(obj)
    return f"{module}.{name}"


def _refused_globals(path: Path) -> list[str]:
    """Globals pickled in `path` that are not on the allow-list (empty if the file cannot be scanned)."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - a file the scanner cannot parse names no global; it is reported as unreadable
        return []
    allowed = {_global_name(g) for g in _allowed_globals()} | {"builtins.NoneType", "typing.Any"}
    return sorted(g for g in found if g not in allowed)


def safe_load(path: str | Path, mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` with the omegaconf allow-list; other pickled objects are refused.

    Args:
        path: the file.
        mmap: map the tensors' storage instead of reading it (cheap inspection of large files).

    Raises:
        CheckpointError: no such file, not a checkpoint (random bytes, a truncated file), or unsafe pickled objects.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file; give the .ckpt / .pth file inside it")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with torch.serialization.safe_globals(_allowed_globals()):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
        except pickle.UnpicklingError as err:
            refused = _refused_globals(path)
            if not refused:
                raise _not_a_checkpoint(path, err) from err
            raise CheckpointError(
                f"{path}: refusing to load: the file contains pickled objects of {', '.join(refused)}, which are not "
                "on the allow-list of data-only types (tensors, containers, numbers, strings and omegaconf configs); "
                "unpickling it could run arbitrary code. Re-save the weights as a plain state dict (dict of tensors) "
                "if you trust the file"
            ) from err
        except Exception as err:  # noqa: BLE001 - malformed bytes make the unpickler fail in arbitrary ways
            raise _not_a_checkpoint(path, err) from err


def _not_a_checkpoint(path: Path, err: BaseException) -> CheckpointError:
    size = path.stat().st_size
    if size == 0:
        what = "it is empty (0 bytes): a save that was interrupted, or a failed copy"
    elif zipfile.is_zipfile(path):
        what = "it is a zip archive torch cannot read as a checkpoint (damaged)"
    else:
        with open(path, "rb") as f:
            head = f.read(2)
        # torch.save writes a zip archive; its legacy format starts with a pickle protocol mark (0x80).
        if head[:1] == b"\x80":
            what = f"its pickled data cannot be read ({type(err).__name__}); the file is damaged or truncated"
        else:
            what = "it is neither a torch zip archive nor a pickle: not a checkpoint, or truncated"
    return CheckpointError(
        f"{path}: not a checkpoint: {what}",
        fix="Give a .ckpt written by `tcclip fit` or an official TC-CLIP .pth; re-copy it if it is damaged.",
    )


# -- official checkpoints ------------------------------------------------------------------------------------------


def _config_to_dict(config: Any, source: str) -> dict[str, Any]:
    """An omegaconf DictConfig (or a dict) as a plain dict, every value as written: interpolations stay strings.

    A config inside a downloaded file is untrusted: resolving `${oc.env:NAME}` would copy an environment variable
    into the model settings, the converted checkpoint and messages. `official_config_to_tcclip` refuses such strings
    in the settings it reads; the other keys (data paths, Hydra's own) are never used.
    """
    if config is None:
        return {}
    from omegaconf import DictConfig, OmegaConf

    if isinstance(config, DictConfig):
        out = OmegaConf.to_container(config, resolve=False, throw_on_missing=False)
        return {str(k): v for k, v in out.items()}
    if isinstance(config, Mapping):
        return dict(config)
    raise CheckpointError(f"{source}: 'config' is a {type(config).__name__}, expected an omegaconf DictConfig or dict")


def _is_interpolation(value: Any) -> bool:
    if isinstance(value, str):
        return "${" in value
    if isinstance(value, (list, tuple)):
        return any(_is_interpolation(v) for v in value)
    if isinstance(value, Mapping):
        return any(_is_interpolation(v) for v in value.values())
    return False


def _setting(config: Mapping[str, Any], key: str, source: str) -> Any:
    """`config[key]` as written (None when absent); an interpolation is refused, never resolved."""
    value = config.get(key)
    if _is_interpolation(value):
        raise CheckpointError(
            f"{source}: model setting {key!r} is an omegaconf interpolation ({value!r}); tcclip never resolves "
            "interpolations from a file (they can read environment variables and other files)",
            fix=f"Give {key} as a plain value in a YAML file (`tcclip convert-checkpoint ... --config model.yaml`).",
        )
    return value


def load_official_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read an official TC-CLIP checkpoint safely.

    Returns:
        The state dict without the `module.` prefix and without the class-list tensors (`IGNORED_OFFICIAL_KEYS`),
        and the config as a plain dict (official key names; `{}` if the file has none).
    """
    obj = safe_load(path)
    if not isinstance(obj, Mapping) or not isinstance(obj.get("model"), Mapping):
        keys = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path}: not an official TC-CLIP checkpoint (expected a dict with 'model'; got {keys})")
    state = _strip_official_keys(obj["model"], str(path))
    check_finite_state(state, path)
    return state, _config_to_dict(obj.get("config"), str(path))


def _strip_official_keys(state: Mapping[str, Any], source: str) -> dict[str, Tensor]:
    """Drop DDP's `module.` prefix (all keys or none must have it) and the ignored class-list tensors."""
    prefixed = [k.startswith(OFFICIAL_PREFIX) for k in state]
    if any(prefixed) and not all(prefixed):
        odd = next(k for k in state if not k.startswith(OFFICIAL_PREFIX))
        raise CheckpointError(f"{source}: some keys start with {OFFICIAL_PREFIX!r} and some do not (e.g. {odd!r})")
    out = {}
    for key, value in state.items():
        name = key[len(OFFICIAL_PREFIX) :] if any(prefixed) else key
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{source}: model entry {key!r} is a {type(value).__name__}, not a tensor")
        if name not in IGNORED_OFFICIAL_KEYS:
            out[name] = value
    return out


# Official config keys that map one to one onto TCCLIPConfig fields (same names in both).
_SAME_NAME_KEYS = (
    "num_frames",
    "positional_embedding_type",
    "local_global_bias",
    "context_token_k",
    "seed_token_a",
    "tome_r",
    "n_ctx",
    "ctx_init",
    "context_length",
    "prompt_generation_layer_level",
    "prompt_generation_layer_init",
    "im_stop_grad",
)


def official_config_to_tcclip(config: Mapping[str, Any], source: str = "official config") -> dict[str, Any]:
    """TCCLIPConfig field overrides from an official (Hydra) config dict; keys it lacks are left to the defaults.

    Mapped: `trainer_name` (`TCCLIP` -> model `tc_clip`; `ViFiCLIP` -> `vifi_clip`, or `clip` when `zs_eval` is
    true, the official vanilla-CLIP setting), `model_arch` (`ViT-B/16` -> arch `ViT-B-16`), `parse_ucf101` ->
    `parse_class_names`, and the same-name keys `num_frames`, `positional_embedding_type`, `local_global_bias`,
    `context_token_k`, `seed_token_a`, `tome_r`, `n_ctx`, `ctx_init`, `context_length`,
    `prompt_generation_layer_level` (int or list), `prompt_generation_layer_init`, `im_stop_grad`.
    The TC-CLIP keys are read only for `TCCLIP` (ViFi-CLIP configs carry none of them).

    Values are taken as written; a setting written as an omegaconf interpolation (`${...}`) is refused.

    Raises:
        CheckpointError: an interpolation; a setting this implementation does not have (`tome_d` != 0: a merge
            count that changes from layer to layer; an unknown `trainer_name`).
    """
    out: dict[str, Any] = {}

    def get(key: str) -> Any:
        return _setting(config, key, source)

    trainer = get("trainer_name")
    if trainer is not None:
        if trainer == "TCCLIP":
            out["model"] = "tc_clip"
        elif trainer == "ViFiCLIP":
            out["model"] = "clip" if get("zs_eval") else "vifi_clip"
        else:
            raise CheckpointError(f"official trainer_name {trainer!r} is not supported (TCCLIP or ViFiCLIP)")
    if get("model_arch") is not None:
        out["arch"] = str(get("model_arch")).replace("/", "-")
    if get("parse_ucf101") is not None:
        out["parse_class_names"] = bool(get("parse_ucf101"))
    if get("num_frames") is not None:
        out["num_frames"] = int(get("num_frames"))
    if out.get("model", "tc_clip") == "tc_clip":
        if get("tome_d") not in (None, 0):
            raise CheckpointError(f"official tome_d={get('tome_d')} (a varying merge count) is not supported")
        for key in _SAME_NAME_KEYS:
            if get(key) is not None:
                out[key] = get(key)
        level = out.get("prompt_generation_layer_level")
        if level is not None:
            out["prompt_generation_layer_level"] = tuple(level) if isinstance(level, (list, tuple)) else (int(level),)
    elif get("context_length") is not None:
        out["context_length"] = int(get("context_length"))
    return out


def to_official_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's tensors under the official names (`module.` prefix), as the official code would save them.

    Includes the class-list tensors `token_prefix` / `token_suffix` of the current class names; leaves out the
    token embedding table (`NOT_IN_OFFICIAL`), which official checkpoints do not hold.
    """
    state = {k: v for k, v in model.state_dict().items() if k not in NOT_IN_OFFICIAL}
    state["prompt_learner.token_prefix"] = model.prompt_learner.token_prefix.detach()
    state["prompt_learner.token_suffix"] = model.prompt_learner.token_suffix.detach()
    return {OFFICIAL_PREFIX + k: v for k, v in state.items()}


# -- loading into a model --------------------------------------------------------------------------------------


def check_state_dict(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Exactly the model's keys, with the model's shapes; errors list the offending names."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} missing tensors ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})"
        )
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (", ..." if len(unexpected) > 5 else "")
        problems.append(f"{len(unexpected)} unexpected tensors ({shown})")
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches ({'; '.join(wrong[:5])})")
    if problems:
        cfg = getattr(model, "cfg", None)
        raise CheckpointError(
            f"{source}: does not fit the {getattr(cfg, 'model', '?')} / {getattr(cfg, 'arch', '?')} model: "
            f"{'; '.join(problems)}. Check the model settings (arch, positional_embedding_type, num_frames, "
            "prompt_generation_layer_level, n_ctx, local_global_bias) against the ones the checkpoint was trained with"
        )


@dataclass(frozen=True)
class CheckpointContents:
    """What a checkpoint file says about a network.

    Attributes:
        kind: `official`, `lightning` (a `tcclip fit` .ckpt or a converted one) or `tcclip` (`save_model`).
        state_dict: the network's tensors under our names (no `module.` / `model.` prefix), all finite.
        model_config: the TCCLIPConfig fields the file specifies (an official config: only those it names).
        class_names: the class names stored with the weights, if any.
        raw: the whole loaded object (Lightning's training state included).
    """

    kind: str
    state_dict: dict[str, Tensor]
    model_config: dict[str, Any]
    class_names: list[str] | None
    raw: Mapping[str, Any]


def read_checkpoint(path: str | Path) -> CheckpointContents:
    """Read any checkpoint this project knows (the one parser of checkpoint files; see the module docstring).

    Raises:
        CheckpointError: unsafe, unreadable or unknown file, or non-finite weights (named).
    """
    path = Path(path)
    obj = safe_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got a {type(obj).__name__}")
    hparams = obj.get("hyper_parameters")
    hparams = hparams if isinstance(hparams, Mapping) else {}
    if isinstance(obj.get("state_dict"), Mapping) and "model_config" not in obj:
        # A Lightning checkpoint; one saved without hyper-parameters specifies no model settings.
        state = {}
        skipped = 0
        for key, value in obj["state_dict"].items():
            if key.startswith(LIGHTNING_PREFIX):
                state[key[len(LIGHTNING_PREFIX) :]] = value
            else:
                skipped += 1  # the Lightning module's own tensors (not the network)
        if not state:
            raise CheckpointError(f"{path}: Lightning checkpoint without any '{LIGHTNING_PREFIX}*' tensors")
        if skipped:
            log.info(
                "%s: %d state_dict entries outside '%s' are not network weights; not loaded", path, skipped, "model."
            )
        # The training classes, where the Lightning module stores them (`TCCLIPModule.on_save_checkpoint`).
        ours = obj.get("tcclip")
        names = hparams.get("class_names") or (ours.get("train_class_names") if isinstance(ours, Mapping) else None)
        kind, config = "lightning", dict(hparams.get("model_config") or {})
    elif "model_config" in obj and isinstance(obj.get("state_dict"), Mapping):
        names = obj.get("class_names")
        kind, state, config = "tcclip", dict(obj["state_dict"]), dict(obj["model_config"])
    elif isinstance(obj.get("model"), Mapping):
        state = _strip_official_keys(obj["model"], str(path))
        config = official_config_to_tcclip(_config_to_dict(obj.get("config"), str(path)), str(path))
        kind, names = "official", None  # only the settings the official config names
    else:
        raise CheckpointError(
            f"{path}: unknown checkpoint layout (top-level keys {sorted(map(str, obj))}); expected an official "
            "TC-CLIP checkpoint ('model', 'config'), a tcclip Lightning checkpoint ('state_dict', "
            "'hyper_parameters') or a file written by save_model"
        )
    check_finite_state(state, path)
    return CheckpointContents(kind, state, config, list(names) if names else None, obj)


def _apply_overrides(config: dict[str, Any], overrides: Mapping[str, Any], source: str) -> TCCLIPConfig:
    """The checkpoint's config with `overrides`; an override that contradicts it is an error (ALLOWED_TO_DIFFER).

    Fields the checkpoint does not specify (an official config without that key) take the override freely.
    """
    names = {f.name for f in fields(TCCLIPConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise CheckpointError(f"unknown model settings {unknown}; valid ones: {sorted(names)}")
    saved = TCCLIPConfig.from_dict(config)
    wanted = saved.replace(**overrides)
    for name in overrides:
        old, new = getattr(saved, name), getattr(wanted, name)
        if old == new:
            continue
        if name not in config:
            log.info("%s: %s=%r (the checkpoint does not say)", source, name, new)
            continue
        joint_frames = name == "num_frames" and saved.positional_embedding_type == "joint"
        if name not in ALLOWED_TO_DIFFER or joint_frames:
            raise CheckpointError(
                f"{source}: the checkpoint was trained with {name}={old!r}, the override asks for {name}={new!r}; "
                f"drop the override (only {sorted(ALLOWED_TO_DIFFER)} may differ"
                + (", and num_frames not with a joint positional embedding)" if joint_frames else ")")
            )
        log.info("%s: %s=%r overrides the checkpoint's %r", source, name, new, old)
    return wanted


def load_model(
    checkpoint: str | Path,
    class_names: Sequence[str] | None,
    clip_weights: str | Path | None = None,
    **overrides: Any,
) -> nn.Module:
    """An eval-mode network from an official `.pth`, a tcclip Lightning `.ckpt` or a `save_model` file.

    Args:
        checkpoint: the file.
        class_names: classes of the logits; None uses the names stored in the checkpoint (if it has any).
        clip_weights: where the token embedding table of an official checkpoint comes from (`"openai"` when None;
            see `create_model`). Our own checkpoints hold every tensor and ignore it.
        **overrides: TCCLIPConfig fields; only `ALLOWED_TO_DIFFER` may contradict the checkpoint's config.

    Raises:
        CheckpointError: unsafe or unknown file, config contradictions, key or shape mismatches.
    """
    from tcclip.data.labels import as_class_names
    from tcclip.model.factory import build_model, create_model

    class_names = as_class_names(class_names)  # a string, numbers or repeats are refused as --labels are
    path = Path(checkpoint)
    contents = read_checkpoint(path)
    kind, state, stored_names = contents.kind, contents.state_dict, contents.class_names
    try:
        cfg = _apply_overrides(contents.model_config, overrides, str(path))
    except ConfigError as err:  # a setting stored in the checkpoint (or an override) of the wrong type or range
        err.path = err.path or path
        err.fix = "The checkpoint's model_config (or an override) holds this value; fix it there."
        raise
    if class_names is None:
        if stored_names is None:
            raise CheckpointError(
                f"{path}: stores no class names; give them: --labels / --label-file on the command line, "
                "class_names=[...] in Python"
            )
        class_names = stored_names
    if kind == "official":
        model = create_model(cfg, class_names, clip_weights=clip_weights or "openai")
        own = model.state_dict()
        state = {**state, **{k: own[k] for k in NOT_IN_OFFICIAL if k in own}}
    else:
        if clip_weights is not None:
            log.info("%s holds every tensor; clip_weights=%s is not needed and not used", path, clip_weights)
        model = build_model(cfg, class_names)
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True)
    return model.eval()


def save_model(model: nn.Module, path: str | Path) -> Path:
    """Write `{"format": "tcclip", "model_config", "state_dict", "class_names"}`, readable by `load_model`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(
        {
            "format": "tcclip",
            "model_config": model.cfg.to_dict(),
            "state_dict": state,
            "class_names": model.class_names,
        },
        path,
    )
    return path


# -- WiSE-FT ---------------------------------------------------------------------------------------------------


def wise_ft(
    finetuned: Mapping[str, Tensor],
    initial: Mapping[str, Tensor],
    weight: float,
    keep: Callable[[str], bool],
) -> dict[str, Tensor]:
    """WiSE-FT (Wortsman et al., CVPR 2022): (1 - weight) * initial + weight * finetuned, tensor by tensor.

    Args:
        finetuned: the fine-tuned state dict.
        initial: the state dict the fine-tuning started from (CLIP-initialised), same keys and shapes.
        weight: w in [0, 1]; 1 gives the fine-tuned model, 0 the initial one.
        keep: names that keep the fine-tuned value (`model.keeps_finetuned_in_wise_ft`).

    Non-floating tensors and tensors equal in both keep the fine-tuned value exactly. The mix is computed in
    float64 and stored in the fine-tuned tensor's dtype.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"WiSE-FT weight must be in [0, 1], got {weight}")
    missing, extra = sorted(set(finetuned) - set(initial)), sorted(set(initial) - set(finetuned))
    if missing or extra:
        raise ValueError(
            f"WiSE-FT needs the same tensors in both: only fine-tuned {missing[:5]}, only initial {extra[:5]}"
        )
    out = {}
    for name, ft in finetuned.items():
        init = initial[name]
        if tuple(ft.shape) != tuple(init.shape):
            raise ValueError(f"WiSE-FT: {name} has shape {tuple(ft.shape)} fine-tuned, {tuple(init.shape)} initial")
        init = init.to(ft.device)
        if keep(name) or not ft.is_floating_point() or torch.equal(ft, init.to(ft.dtype)):
            out[name] = ft
        else:
            out[name] = ((1.0 - weight) * init.double() + weight * ft.double()).to(ft.dtype)
    return out


# -- the Lightning layout --------------------------------------------------------------------------------------


def _lightning_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("lightning", "pytorch-lightning"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "0.0.0"


def lightning_checkpoint(model: nn.Module) -> dict[str, Any]:
    """A Lightning-style checkpoint dict of `model` with empty training state (see the module docstring)."""
    return {
        "state_dict": {LIGHTNING_PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()},
        "hyper_parameters": {"model_config": model.cfg.to_dict()},
        "pytorch-lightning_version": _lightning_version(),
        "epoch": 0,
        "global_step": 0,
        "optimizer_states": [],
        "lr_schedulers": [],
    }
