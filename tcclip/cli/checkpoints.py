"""`tcclip export` and `tcclip convert-checkpoint`: typed functions over `tcclip.inference.export` / `.convert`."""

from __future__ import annotations

from pathlib import Path

from tcclip.utils.errors import UserError


def export(
    checkpoint: Path,
    out_dir: Path,
    *,
    labels: str | None = None,
    label_file: str | None = None,
    onnx: bool = False,
    onnx_batch: int = 1,
) -> int:
    """Write model.safetensors + config.json + README.md (model card), loadable without pickle by
    tcclip.load_model(OUT_DIR); with --onnx also model.onnx for a fixed class list.

    Args:
        checkpoint: a tcclip .ckpt, a save_model file, or an official .pth
        out_dir: output directory (created)
        labels: class names separated by commas (default: the checkpoint's own classes)
        label_file: CSV with an id,name header, or JSON {id: name}
        onnx: also write model.onnx (needs tcclip[onnx])
        onnx_batch: fixed batch size of the ONNX graph
    """
    from tcclip.cli.app_console import ModelOptions
    from tcclip.inference.export import export as write_export
    from tcclip.inference.predict import read_labels

    if onnx_batch < 1:
        raise UserError(f"--onnx-batch must be >= 1, got {onnx_batch}", fix="Give the graph's batch size, e.g. 1.")
    ModelOptions(str(checkpoint), labels, label_file)  # --labels and --label-file exclude each other
    names = read_labels(labels, label_file)
    out = write_export(checkpoint, out_dir, names, onnx=onnx, onnx_batch=onnx_batch)
    files = sorted(p.name for p in out.iterdir())  # the folder holds exactly what this export wrote
    print(f"wrote {out}: {', '.join(files)}")
    return 0


def convert_checkpoint(official: Path, out: Path, *, config: Path | None = None, clip_weights: str = "openai") -> int:
    """Convert an official TC-CLIP checkpoint into a tcclip Lightning checkpoint (state_dict + model_config),
    loadable by tcclip.load_model and by `tcclip validate/test --ckpt_path`.

    Args:
        official: official .pth (dict with 'model' and 'config')
        out: output .ckpt
        config: YAML with model settings (official keys like trainer_name/model_arch, or tcclip field names) that
            replace the ones read from the checkpoint's embedded config
        clip_weights: CLIP weights for the token embedding table
    """
    from tcclip.inference.convert import convert

    written, cfg, count = convert(official, out, config, clip_weights)
    print(f"wrote {written} ({cfg.model}, {cfg.arch}, {count} tensors)")
    return 0
