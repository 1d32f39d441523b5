"""`tcclip export CKPT OUT_DIR [--onnx]`: portable weights, a model card, and an ONNX graph.

- `model.safetensors` + `config.json` (`tcclip.training.portable`): loadable by `tcclip.load_model(OUT_DIR)` without
pickle.
- `README.md`: a model card (architecture, training data and protocol, metrics from the run's `results.json`,
  calibration, licence of the weights it derives from).
- `--onnx`: `model.onnx`, the network for the exported class list as one graph, `video [B, T, 3, S, S]` (normalised
  pixels, the fixed batch B given by `--onnx-batch`) -> `logits [B, C]`. The text side is part of the graph (TC-CLIP's
  prompts depend on the video), the class list is baked in. It is traced from the model's plain execution
  path (the same numbers as the default path, written with plain tensor operations, see docs/open_set.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tcclip.training.calibration_record import Calibration, model_calibration
from tcclip.training.hparams import flat_hyper_parameters
from tcclip.utils.errors import UserError
from tcclip.utils.outputs import check_output_folder, staged_folder

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
MODEL_CARD = "README.md"
OFFICIAL_LICENCE = (
    "These weights derive from the official TC-CLIP release (naver-ai/tc-clip), which is distributed under "
    "CC BY-NC 4.0: non-commercial use only, with attribution to Kim et al., ECCV 2024."
)
OPENAI_CLIP_NOTE = (
    "The network was initialised from OpenAI's CLIP weights (released under the MIT licence); the licence of the "
    "training videos applies to the fine-tuned weights as well."
)
RANDOM_INIT_NOTE = (
    "The network was trained from a random initialisation; only the licence of its training data applies."
)


# ------------------------------------------------------------------------------------------------ provenance


def checkpoint_provenance(path: Path) -> dict[str, Any]:
    """What the checkpoint file says about its origin (read safely, no weights kept): kind, hyper-parameters."""
    if path.is_dir():
        from tcclip.training.portable import read_config

        return dict(read_config(path).get("provenance") or {"kind": "export"})
    from tcclip.training.safe_load import safe_load

    obj = safe_load(path)
    if not isinstance(obj, Mapping):
        return {"kind": "unknown"}
    if "hyper_parameters" in obj:
        hp = flat_hyper_parameters(obj.get("hyper_parameters") or {})  # this release's layout or an earlier one
        keep = ("clip_weights", "init_checkpoint", "lr", "total_batch_size", "mixup", "label_smoothing")
        ours = obj.get("tcclip") if isinstance(obj.get("tcclip"), Mapping) else {}
        data_hp = obj.get("datamodule_hyper_parameters") or {}
        return {
            "kind": "lightning",
            "hyper_parameters": {k: _plain(hp[k]) for k in keep if k in hp},
            "epoch": obj.get("epoch"),
            "global_step": obj.get("global_step"),
            "train_class_names": list(ours.get("train_class_names") or []),
            "data": {k: _plain(v) for k, v in dict(data_hp).items()},
        }
    if "model" in obj:
        return {"kind": "official"}
    return {"kind": "tcclip"}


def _plain(value: Any) -> Any:
    """JSON-able copy of a hyper-parameter value (paths and tuples become strings and lists)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def find_run_file(checkpoint: Path, name: str, levels: int = 2) -> Path | None:
    """`name` in the checkpoint's folder or up to `levels` folders above (a Lightning run's log dir)."""
    folder = checkpoint.parent if checkpoint.is_file() else checkpoint
    for _ in range(levels + 1):
        if (folder / name).is_file():
            return folder / name
        folder = folder.parent
    return None


def training_config(checkpoint: Path) -> dict[str, Any]:
    """The `data` and `trainer.max_epochs` parts of the run's `config.yaml` (written by `tcclip fit`), if found."""
    path = find_run_file(checkpoint, "config.yaml")
    if path is None:
        return {}
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (OmegaConfBaseException, OSError, ValueError) as err:
        log.warning("%s: not read for the model card (%s)", path, err)
        return {}
    if not isinstance(raw, dict):
        return {}
    return {"file": str(path), "data": raw.get("data"), "max_epochs": (raw.get("trainer") or {}).get("max_epochs")}


def licence_note(provenance: Mapping[str, Any]) -> str:
    kind = provenance.get("kind")
    hp = provenance.get("hyper_parameters") or {}
    if kind == "official" or hp.get("init_checkpoint"):
        return OFFICIAL_LICENCE + (
            " (The run started from " + str(hp["init_checkpoint"]) + "; if that is not an official checkpoint, "
            "check its own licence.)"
            if hp.get("init_checkpoint")
            else ""
        )
    if kind == "lightning" and hp.get("clip_weights") is None:
        return RANDOM_INIT_NOTE
    if kind == "lightning":
        return OPENAI_CLIP_NOTE
    return (
        "The origin of these weights is not recorded in the checkpoint. If they derive from the official TC-CLIP "
        "release, its CC BY-NC 4.0 licence (non-commercial use only) applies."
    )


# ------------------------------------------------------------------------------------------------ model card


def model_card(
    model: nn.Module,
    provenance: Mapping[str, Any],
    results: Mapping[str, Any] | None,
    train_config: Mapping[str, Any],
    calibration: Calibration | None,
    onnx_file: str | None,
) -> str:
    """The export's README.md: how to load it, then one section each for the architecture, the training, the
    metrics, the calibration, the ONNX graph (with `--onnx`) and the licence."""
    cfg = model.cfg
    lines = [
        f"# TC-CLIP video classifier ({cfg.model}, {cfg.arch}, {len(model.class_names)} classes)",
        "",
        "Exported with `tcclip export`. Load it without pickle:",
        "",
        "```python",
        "import tcclip",
        'model = tcclip.load_model("THIS_DIRECTORY")',
        'tcclip.predict(model, "clip.mp4", top_k=3)',
        "```",
        "",
        "## Architecture",
        "",
        *_architecture(cfg, list(model.class_names)),
        "",
        "## Training data and protocol",
        "",
        *_training(provenance, train_config),
        "",
        "## Metrics",
        "",
        *_metrics(results),
        "",
        "## Calibration and rejection",
        "",
        *_calibration(calibration),
    ]
    if onnx_file:
        lines += [
            "",
            "## ONNX",
            "",
            f"`{onnx_file}`: video [B, T, 3, S, S] float32 -> logits [B, C] for the class list above (baked in).",
        ]
    lines += ["", "## Licence", "", licence_note(provenance), ""]
    return "\n".join(lines)


def _architecture(cfg: Any, names: list[str]) -> list[str]:
    clip = cfg.clip
    return [
        f"- Network: `{cfg.model}` (TC-CLIP: Temporally Contextualized CLIP, Kim et al., ECCV 2024), CLIP `{cfg.arch}`:"
        f" {clip.vision.image_size} px frames, patch {clip.vision.patch_size}, vision width {clip.vision.width} x "
        f"{clip.vision.layers} layers, text width {clip.text.width} x {clip.text.layers} layers, embedding "
        f"{clip.embed_dim}.",
        f"- Input: {cfg.num_frames} frames per clip, normalised with CLIP's mean and std; output: one logit per class.",
        f"- TC-CLIP options: context tokens K={cfg.context_token_k}, seed fraction {cfg.seed_token_a}, merge step "
        f"{cfg.tome_r}, positional embedding `{cfg.positional_embedding_type}`, prompt generation before text "
        f"block(s) {list(cfg.prompt_generation_layer_level)}, {cfg.n_ctx} learnable prompt vectors.",
        f"- Full settings: `model_config` in `config.json`. Classes ({len(names)}): "
        + ", ".join(f"`{n}`" for n in names[:40])
        + (" ..." if len(names) > 40 else ""),
    ]


def _training(provenance: Mapping[str, Any], train_config: Mapping[str, Any]) -> list[str]:
    kind = provenance.get("kind")
    if kind == "official":
        return ["- Converted from an official TC-CLIP release checkpoint; see the paper for its training data."]
    if kind != "lightning":
        return ["- Not recorded in the checkpoint."]
    lines = []
    hp = provenance.get("hyper_parameters") or {}
    data = train_config.get("data") or provenance.get("data") or {}
    if data:
        lines.append(f"- Data module: `{json.dumps(_plain(data), sort_keys=True)}`")
    if train_config.get("max_epochs") is not None:
        lines.append(f"- Configured epochs: {train_config['max_epochs']}")
    lines.append(f"- Checkpoint at epoch {provenance.get('epoch')}, step {provenance.get('global_step')}.")
    if hp:
        lines.append(f"- Hyper-parameters: `{json.dumps(hp, sort_keys=True)}`")
    train_names = provenance.get("train_class_names") or []
    if train_names:
        lines.append(f"- Trained on {len(train_names)} classes: " + ", ".join(train_names[:40]))
    return lines


def _metrics(results: Mapping[str, Any] | None) -> list[str]:
    if not results:
        return ["No `results.json` was found next to the checkpoint."]
    lines = ["| evaluation set | videos | top-1 (%) | top-5 (%) |", "| --- | --- | --- | --- |"]
    for name, s in (results.get("sets") or {}).items():
        lines.append(f"| {name} | {s.get('num_videos', '')} | {s.get('top1', '')} | {s.get('top5', '')} |")
    meta = {k: results.get(k) for k in ("protocol", "dataset", "variant", "stage") if results.get(k) is not None}
    return [*lines, "", f"From the run's `results.json` ({json.dumps(meta)})."]


def _calibration(calibration: Calibration | None) -> list[str]:
    if calibration is None:
        return ["Not calibrated (`tcclip calibrate` fits a temperature and a rejection threshold)."]
    rep = calibration.report
    lines = [f"- Temperature T = {calibration.temperature:.4g} (fitted by NLL on a validation list)."]
    if "ece_before" in rep:
        lines.append(f"- ECE on that list: {rep['ece_before']:.4f} before, {rep['ece_after']:.4f} after.")
    if calibration.threshold is not None:
        lines.append(
            f'- Rejection ("none of the above"): score `{calibration.score}` >= {calibration.threshold:.6g}, '
            f"chosen to accept {100 * (calibration.target_recall or 0):.0f}% of the validation videos."
        )
    return lines


# ------------------------------------------------------------------------------------------------ ONNX


def _stable_sort_to_topk(self, stable=None, dim: int = -1, descending: bool = False):
    """ONNX for `aten.sort.stable`: TopK over the whole axis, which breaks ties by the lower index, i.e. stably."""
    from onnxscript import opset18 as op

    n = op.Shape(self, start=dim, end=dim + 1) if dim not in (-1,) else op.Shape(self, start=-1)
    return op.TopK(self, n, axis=dim, largest=descending, sorted=True)


def export_onnx(model: nn.Module, path: str | Path, batch_size: int = 1) -> Path:
    """Write the network (current class list, fp32, CPU) as an ONNX graph `video [B, T, 3, S, S] -> logits [B, C]`."""
    try:
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError as err:
        raise UserError(
            "ONNX export needs the onnx extras", fix="pip install 'tcclip[onnx]' (onnx, onnxscript, onnxruntime)"
        ) from err
    import copy

    path = Path(path)
    # A copy on the CPU in fp32 on the plain execution path: plain tensor operations (the fast path calls
    # fused attention kernels the exporter does not translate) and no text cache (the graph must hold it all).
    net = copy.deepcopy(model).float().cpu().eval()
    net.set_fast_path(False)
    cfg = net.cfg
    size = cfg.clip.vision.image_size
    example = torch.zeros(batch_size, cfg.num_frames, 3, size, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(
            net,
            (example,),
            input_names=["video"],
            output_names=["logits"],
            dynamo=True,
            custom_translation_table={torch.ops.aten.sort.stable: _stable_sort_to_topk},
            verbose=False,
        )
    program.save(str(path), external_data=False)
    return path


# ------------------------------------------------------------------------------------------------ the command


def export(
    checkpoint: str | Path,
    out_dir: str | Path,
    class_names: Sequence[str] | None = None,
    onnx: bool = False,
    onnx_batch: int = 1,
) -> Path:
    """Export a checkpoint (any format `tcclip.load_model` reads) to `out_dir`; returns `out_dir`."""
    from tcclip.training.checkpoints import load_model
    from tcclip.training.portable import write_exported

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if not checkpoint.exists():
        raise UserError("no such checkpoint", path=checkpoint, fix="give a .ckpt, .pth or exported directory")
    if out_dir.resolve() == checkpoint.resolve() or checkpoint.resolve().is_relative_to(out_dir.resolve()):
        raise UserError("the output directory is (or holds) the input", path=out_dir, fix="choose another OUT_DIR")
    check_export_folder(out_dir)
    if onnx_batch < 1:
        raise UserError(f"--onnx-batch (onnx_batch=) must be >= 1, got {onnx_batch}", fix="e.g. 1")
    from tcclip.training.safe_load import CheckpointError

    try:
        model = load_model(checkpoint, class_names)
    except (CheckpointError, OSError) as err:
        raise UserError(f"cannot load the checkpoint: {err}", fix="give a checkpoint tcclip can load") from err
    calibration = model_calibration(model)
    provenance = checkpoint_provenance(checkpoint)
    results_path = find_run_file(checkpoint, "results.json")
    results = json.loads(results_path.read_text()) if results_path is not None else None
    card = model_card(model, provenance, results, training_config(checkpoint), calibration, ONNX_FILE if onnx else None)
    # Written into a temporary folder that then replaces OUT_DIR: an earlier export's files (a model.onnx of
    # another class list) never survive beside the new ones, and a failure leaves the earlier export whole.
    with staged_folder(out_dir, "OUT_DIR", EXPORT_FILES, what="export") as folder:
        write_exported(model, folder, calibration, extra={"provenance": provenance})
        if onnx:
            export_onnx(model, folder / ONNX_FILE, onnx_batch)
        (folder / MODEL_CARD).write_text(card)
    return out_dir


EXPORT_FILES = frozenset({"model.safetensors", "config.json", MODEL_CARD, ONNX_FILE})
"""Every file `tcclip export` writes; a folder holding only these (an earlier export) is replaced as a whole."""


def check_export_folder(out_dir: Path) -> None:
    """OUT_DIR is new, empty or an earlier export, and writable (before the checkpoint is loaded)."""
    if out_dir.is_dir() and any(out_dir.iterdir()) and not _is_previous_export(out_dir):
        # README.md and config.json are common names: never replace the files of an unrelated folder
        raise UserError(
            "exists and is not an empty folder or an earlier export",
            path=out_dir,
            fix="choose a new or empty OUT_DIR (an earlier `tcclip export` folder is replaced)",
        )
    check_output_folder(out_dir, "OUT_DIR", EXPORT_FILES)


def _is_previous_export(folder: Path) -> bool:
    from tcclip.training.portable import EXPORT_FORMAT

    try:
        return json.loads((folder / "config.json").read_text()).get("format") == EXPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False
