"""Exported weights against the checkpoint, and the ONNX graph against eager PyTorch: agreement and CPU latency.

    python benchmarks/export_onnx.py                       # test-tiny network of configs/demo.yaml, random weights
    python benchmarks/export_onnx.py --ckpt runs/demo/.../last.ckpt --threads 1 --json out.json

1. `tcclip export` of the checkpoint; logits of `tcclip.load_model(OUT_DIR)` against the checkpoint's, in float64.
2. `tcclip export --onnx`; onnxruntime (CPU) against eager fp32 on `--videos` random videos: largest difference
   relative to the largest logit, and top-1 agreement.
3. Latency per clip (batch 1), median of `--repeats` timed calls after warm-up: eager on the default (fast) execution
   path, eager on the plain path (the one the graph is traced from), and onnxruntime; `--threads` threads each.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import tcclip
from tcclip.inference.export import export
from tcclip.model.config import TCCLIPConfig
from tcclip.model.factory import create_model
from tcclip.training.checkpoints import save_model

DEMO_NETWORK = TCCLIPConfig(
    arch="test-tiny", num_frames=8, positional_embedding_type="joint", context_token_k=8, tome_r=4,
    prompt_generation_layer_level=(2,),
)  # fmt: skip


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (caches, allocations)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@dataclass(frozen=True)
class Options:
    """What to measure.

    Args:
        ckpt: checkpoint to export (default: a random demo network)
        videos: videos whose predictions are compared
        repeats: timed runs per latency (the median is reported)
        threads: CPU threads of both runtimes
        json: also write every number to this file
    """

    ckpt: Path | None = None
    videos: int = 50
    repeats: int = 20
    threads: int = 1
    json: Path | None = None


def main(args: Options) -> None:
    """Export a checkpoint to ONNX and compare it with the eager model: agreement and latency.

    Args:
        args: the options
    """
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    work = Path(tempfile.mkdtemp(prefix="tcclip-export-"))
    ckpt = args.ckpt
    if ckpt is None:
        torch.manual_seed(0)
        ckpt = save_model(
            create_model(DEMO_NETWORK, [f"class {i}" for i in range(10)], clip_weights=None), work / "m.pt"
        )
    start = time.perf_counter()
    out = export(ckpt, work / "exported", onnx=True)
    export_seconds = time.perf_counter() - start

    original = tcclip.load_model(ckpt)
    exported = tcclip.load_model(out)
    cfg = exported.cfg
    size = cfg.clip.vision.image_size
    g = torch.Generator().manual_seed(0)
    videos = torch.randn(args.videos, cfg.num_frames, 3, size, size, generator=g)
    with torch.no_grad():
        a, b = original.double()(videos[:8].double()), exported.double()(videos[:8].double())
    float64_diff = float((a - b).abs().max())
    exported.float()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
    worst, agree = 0.0, 0
    with torch.no_grad():
        for i in range(args.videos):
            clip = videos[i : i + 1]
            eager = exported(clip)
            onnx = torch.from_numpy(session.run(["logits"], {"video": clip.numpy()})[0])
            worst = max(worst, float((onnx - eager).abs().max() / eager.abs().max()))
            agree += int(onnx.argmax() == eager.argmax())

    clip = videos[:1]
    with torch.no_grad():
        fast = median_seconds(lambda: exported(clip), args.repeats)
        exported.set_fast_path(False)
        reference = median_seconds(lambda: exported(clip), args.repeats)
        exported.set_fast_path(True)
    onnx_latency = median_seconds(lambda: session.run(["logits"], {"video": clip.numpy()}), args.repeats)
    result = {
        "network": f"{cfg.model} {cfg.arch} T={cfg.num_frames} C={len(exported.class_names)}",
        "float64_max_abs_diff_export_vs_checkpoint": float64_diff,
        "onnx_max_relative_diff": worst,
        "onnx_top1_agreement": f"{agree}/{args.videos}",
        "export_seconds_with_onnx": export_seconds,
        "threads": args.threads,
        "latency_ms_eager_fast": 1000 * fast,
        "latency_ms_eager_plain": 1000 * reference,
        "latency_ms_onnxruntime": 1000 * onnx_latency,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }
    table = Table(title=f"export and ONNX: {result['network']}, CPU, {args.threads} thread(s)")
    table.add_column("measurement")
    table.add_column("value", justify="right")
    table.add_row("float64 max |logit difference|, export vs checkpoint", f"{float64_diff:.3g}")
    table.add_row("onnxruntime vs eager fp32, max difference / max |logit|", f"{worst:.2e}")
    table.add_row("top-1 agreement", result["onnx_top1_agreement"])
    table.add_row("latency per clip, eager (fast path)", f"{1000 * fast:.2f} ms")
    table.add_row("latency per clip, eager (plain path)", f"{1000 * reference:.2f} ms")
    table.add_row("latency per clip, onnxruntime", f"{1000 * onnx_latency:.2f} ms")
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    from tcclip.cli.typed import run

    sys.exit(run(main, sys.argv[1:], "python benchmarks/export_onnx.py", epilog=__doc__.split("\n", 1)[1]))
