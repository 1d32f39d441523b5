"""Speed of the fast path against the plain path, side by side in one run.

    python benchmarks/throughput.py                      # CPU, fp32, ViT-B/16, T=16 (what `make benchmark-speed` runs)
    python benchmarks/throughput.py --quick              # tiny settings: checks that everything runs, in a minute
    python benchmarks/throughput.py --device cuda --dtype bf16 --train-batch 8 --copied-keys --json speed.json

Prints one markdown table: evaluation clips/s at 51 and 400 classes, training step time and peak memory at batch 4
(51 classes; `--train-batch`), for the fast path and the plain path (`model.set_fast_path`), their ratios, the
achieved GFLOP/s against a measured matmul peak, the float64 logit difference between the paths and their fp32 top-1
agreement. With `--copied-keys`, a second table sets the fast path's TC attention with the context keys kept apart
(the default) beside its fallback that copies them next to every frame's keys (`kernels.copied_context_keys`):
eval clips/s, train step time and peak memory. Weights are random (CLIP's architecture, `clip_weights=None`): speed
does not depend on their values.

Method:
- Evaluation: steady state, all variants on the same model, interleaved; the best of `--repeats` timed calls of
  a batch after one warm-up call (which also fills the fast path's per-class-list text cache, as in an evaluation
  loop over a dataset). Best-of, because other processes share the machine: the fastest call is the one least
  disturbed, alike for every variant.
- Training step: forward, cross-entropy on random labels, backward and an AdamW step (the official betas, eps and
  weight decay); the best of `--train-repeats` steps after one warm-up step. Each path runs in a fresh
  subprocess. Peak memory on the CPU: the peak resident set (VmHWM, reset once model, optimiser and batch exist)
  minus the resident set at that point, i.e. activations, gradients, AdamW state and allocator slack, from one
  more fresh process that runs one step with glibc's default malloc (freed large blocks return to the system at
  once, so the resident set follows the live memory). On a GPU: `torch.cuda.max_memory_allocated` minus the
  memory allocated at that point.
- FLOPs: `torch.utils.flop_counter` (matmuls, convolutions, attention; this script registers the formula of the CPU
  flash-attention kernel, which the counter lacks), counted on one extra call; GFLOP/s = FLOPs / best time.
- Matmul peak: the best of several n x n matmuls in the run's dtype on the same device and thread count, through
  torch.matmul and (CPU, fp32) through oneDNN as the fast path's `linear` does; measured at the start and the end.
- CPU runs re-execute the script with glibc malloc keeping freed memory in the process (`MALLOC_MMAP_MAX_=0`,
  `MALLOC_TRIM_THRESHOLD_`), for every path alike: by default every large tensor is a fresh mmap whose pages fault
  in again at each step (measured: 20 s of page faults in a 90 s training step). `--system-malloc` keeps the
  defaults.
- bf16 (`--dtype bf16`) runs the model under `torch.autocast` with fp32 weights, as mixed-precision training does.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from tcclip.model import kernels
from tcclip.model.config import TCCLIPConfig
from tcclip.model.factory import create_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}
PATHS = ("fast", "plain")
COPIED = "fast, copied keys"
"""The fast path with the context keys copied next to every frame's (its fallback), for the side-by-side table."""
# Words for made-up class names of one to three words, about as long in tokens as Kinetics-400's.
_WORDS = (
    "playing riding throwing making cleaning dancing climbing eating juggling washing folding catching brushing "
    "cutting pushing pulling shooting skiing surfing swimming tying walking guitar bike horse ball cake windows tree "
    "rope dishes snow hair skateboard drums water paper dog car trampoline paint wood glass bowling archery yoga"
).split()


@dataclass(frozen=True)
class Settings:
    """What one run measures."""

    arch: str
    frames: int
    context_token_k: int
    tome_r: int
    class_counts: tuple[int, int]
    eval_batch: int
    train_batch: int
    train_classes: int
    repeats: int
    train_repeats: int
    f64_frames: int
    f64_batch: int
    agreement_videos: int
    matmul_size: int

    def model_config(self, frames: int | None = None) -> TCCLIPConfig:
        return TCCLIPConfig(
            arch=self.arch,
            num_frames=frames or self.frames,
            context_token_k=self.context_token_k,
            tome_r=self.tome_r,
            prompt_generation_layer_level=(TCCLIPConfig(arch=self.arch).clip.text.layers,),
        )


FULL = Settings(
    arch="ViT-B-16",
    frames=16,
    context_token_k=96,
    tome_r=100,
    class_counts=(51, 400),
    eval_batch=2,
    train_batch=4,
    train_classes=51,
    repeats=3,
    train_repeats=2,
    f64_frames=16,
    f64_batch=1,
    agreement_videos=300,
    matmul_size=4096,
)
QUICK = Settings(
    arch="test-tiny",
    frames=4,
    context_token_k=8,
    tome_r=4,
    class_counts=(51, 400),
    eval_batch=2,
    train_batch=2,
    train_classes=51,
    repeats=2,
    train_repeats=1,
    f64_frames=4,
    f64_batch=2,
    agreement_videos=40,
    matmul_size=1024,
)
# The fp32 top-1 agreement runs on the tiny architecture (hundreds of ViT-B/16 videos through the plain path would
# take hours on a CPU). T=8, P=16, s=4: 32 seeds merged to K=8 in six steps, so seeds and merges both matter.
AGREEMENT_CFG = TCCLIPConfig(
    arch="test-tiny", num_frames=8, context_token_k=8, tome_r=4, prompt_generation_layer_level=(2,)
)


def class_names(count: int, seed: int = 0) -> list[str]:
    """`count` distinct made-up class names."""
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < count:
        name = " ".join(rng.choice(_WORDS) for _ in range(rng.choice((1, 2, 2, 3))))
        if name not in names:
            names.append(name)
    return names


def build_model(cfg: TCCLIPConfig, num_classes: int, device: torch.device, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(cfg, class_names(num_classes), clip_weights=None).to(device)


def random_video(cfg: TCCLIPConfig, batch: int, device: torch.device, dtype: torch.dtype, seed: int = 1):
    size = cfg.clip.vision.image_size
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.num_frames, 3, size, size, generator=gen).to(device=device, dtype=dtype)


# -- measuring -----------------------------------------------------------------------------------------------------
def _register_cpu_flash_attention_flops() -> None:
    """Teach the FLOP counter the CPU flash-attention kernels (it knows only the GPU ones)."""
    from torch.utils import flop_counter

    aten = torch.ops.aten
    if not hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        return
    if aten._scaled_dot_product_flash_attention_for_cpu in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    @flop_counter.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _counted_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of `fn()`. nn.MultiheadAttention's fused inference kernel is switched off while counting: the counter
    does not see its matmuls (the decomposed form does the same matmuls)."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops()


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype in (torch.bfloat16, torch.float16):
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> dict[str, float]:
    """GFLOP/s of the best of `repeats` n x n matmuls: torch.matmul, and on the CPU also through oneDNN (a route
    of the fast path's `linear`, much faster than the BLAS on some CPUs, slower on others)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    candidates = {"torch.matmul": lambda: a @ b}
    if device.type == "cpu" and dtype == torch.float32:
        candidates["oneDNN"] = lambda: kernels.linear(a, b)
    out = {}
    for name, fn in candidates.items():
        with kernels.cpu_matmul_route("onednn") if name == "oneDNN" else contextlib.nullcontext():
            for _ in range(2):
                fn()
            out[name] = 2 * n**3 / min(_timed(fn, device) for _ in range(repeats)) / 1e9
    return out


def use_path(model: torch.nn.Module, path: str) -> contextlib.AbstractContextManager:
    """Put `model` on `path` (`fast`, `plain` or COPIED); returns the context to call it in."""
    model.set_fast_path(path != "plain")
    return kernels.copied_context_keys() if path == COPIED else contextlib.nullcontext()


def eval_variants(
    model: torch.nn.Module, compiled: torch.nn.Module | None, copied: bool
) -> dict[str, tuple[torch.nn.Module, str]]:
    """Name -> (model to call, path)."""
    variants = {"fast": (model, "fast"), "plain": (model, "plain")}
    if copied:
        variants[COPIED] = (model, COPIED)
    if compiled is not None:
        variants["fast + torch.compile"] = (compiled, "fast")
    return variants


def measure_eval(variants: dict, video, device, dtype, repeats: int) -> dict[str, dict[str, float]]:
    """Median seconds per batch, clips/s and GFLOP per clip of every variant on the current class list."""
    batch = video.shape[0]
    times: dict[str, list[float]] = {name: [] for name in variants}
    flops = {}
    with torch.no_grad(), _autocast(device, dtype):

        def call(name: str) -> None:
            model, path = variants[name]
            with use_path(model, path):
                model(video)

        for name in variants:
            call(name)  # warm-up; the fast path caches the class list's text prefix here (and torch.compile compiles)
            flops[name] = _counted_flops(lambda name=name: call(name))
        for _ in range(repeats):
            for name in variants:  # interleaved, so that a busy moment of the machine hits all alike
                times[name].append(_timed(lambda name=name: call(name), device))
    out = {}
    for name in variants:
        seconds = min(times[name])
        out[name] = {
            "seconds_per_batch": seconds,
            "clips_per_s": batch / seconds,
            "gflop_per_clip": flops[name] / batch / 1e9,
            "gflops": flops[name] / seconds / 1e9,
        }
    return out


def _status_bytes(field: str) -> int:
    """A size from /proc/self/status (VmRSS, VmHWM, VmData), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise KeyError(field)


def _reset_peak_resident() -> bool:
    """Reset the process's peak resident set (VmHWM) to the current one; False where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def train_worker(
    settings: Settings,
    path: str,
    checkpointing: bool,
    device: torch.device,
    dtype: torch.dtype,
    train_batch: int,
    timed: bool = True,
) -> dict:
    """One path's training steps in this (fresh) process: best step seconds, GFLOP per step, peak memory.

    With `timed=False` only one step runs (for its peak memory).
    """
    _register_cpu_flash_attention_flops()
    cfg = settings.model_config()
    model = build_model(cfg, settings.train_classes, device).train()
    model.image_encoder.gradient_checkpointing = checkpointing
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.001)
    video = random_video(cfg, train_batch, device, torch.float32)
    labels = torch.randint(0, settings.train_classes, (train_batch,), generator=torch.Generator().manual_seed(2))
    labels = labels.to(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, dtype), use_path(model, path):
            logits = model(video)
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    else:
        # Building the model can peak higher than its result: start the peak from here where Linux allows it.
        reset = _reset_peak_resident()
        baseline = _status_bytes("VmRSS")
    if timed:
        flops = _counted_flops(step)  # the warm-up step, counted
        times = [_timed(step, device) for _ in range(settings.train_repeats)]
    else:
        step()
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - baseline
    elif reset:
        peak = _status_bytes("VmHWM") - baseline
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline  # ru_maxrss is in KiB
    if not timed:
        return {"peak_memory_bytes": peak}
    return {"step_seconds": min(times), "gflop_per_step": flops / 1e9, "peak_memory_bytes": peak}


def measure_train(args: argparse.Namespace, path: str, checkpointing: bool) -> dict:
    """Run `train_worker` in fresh subprocesses (so that the peak memory is the path's own).

    On the CPU with the malloc settings that keep freed memory (see the method notes), the resident set grows to
    the heap's high-water mark, fragmentation included, so the peak memory comes from a second process with
    glibc's default malloc (freed large blocks go back to the system at once) running one step.
    """

    def run(timed: bool, system_malloc: bool) -> dict:
        cmd = [sys.executable, __file__, "--_train-worker", path, "--device", args.device, "--dtype", args.dtype]
        cmd += ["--threads", str(args.threads), "--train-batch", str(args.train_batch)]
        cmd += ["--quick"] if args.quick else []
        cmd += ["--checkpointing"] if checkpointing else []
        cmd += ["--system-malloc"] if system_malloc else []
        cmd += [] if timed else ["--_memory-only"]
        env = {k: v for k, v in os.environ.items() if not (system_malloc and k in _MALLOC_ENV)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"error": tail[0][:200]}
        return json.loads(proc.stdout.strip().splitlines()[-1])

    result = run(timed=True, system_malloc=args.system_malloc)
    if "error" not in result and args.device == "cpu" and not args.system_malloc:
        memory = run(timed=False, system_malloc=True)
        result["peak_memory_bytes_kept_heap"] = result["peak_memory_bytes"]
        result.update(memory if "error" not in memory else {"memory_error": memory["error"]})
    return result


def float64_difference(settings: Settings, device: torch.device) -> dict[str, float]:
    """Max |logit difference| between the paths in float64 (and relative to the largest logit)."""
    cfg = settings.model_config(frames=settings.f64_frames)
    model = build_model(cfg, settings.class_counts[0], device).double().eval()
    video = random_video(cfg, settings.f64_batch, device, torch.float64, seed=3)
    with torch.no_grad():
        logits = {}
        for path in PATHS:
            with use_path(model, path):
                logits[path] = model(video)
    diff = float((logits["fast"] - logits["plain"]).abs().max())
    return {"max_abs": diff, "max_rel": diff / float(logits["plain"].abs().max())}


def top1_agreement(settings: Settings, device: torch.device, batch: int = 50) -> dict[str, float]:
    """fp32 top-1 agreement of the paths over random videos, on the tiny architecture (see AGREEMENT_CFG)."""
    model = build_model(AGREEMENT_CFG, settings.class_counts[0], device).eval()
    agree = total = 0
    max_diff = 0.0
    with torch.no_grad():
        for start in range(0, settings.agreement_videos, batch):
            count = min(batch, settings.agreement_videos - start)
            video = random_video(AGREEMENT_CFG, count, device, torch.float32, seed=100 + start)
            logits = {}
            for path in PATHS:
                with use_path(model, path):
                    logits[path] = model(video)
            agree += int((logits["fast"].argmax(-1) == logits["plain"].argmax(-1)).sum())
            max_diff = max(max_diff, float((logits["fast"] - logits["plain"]).abs().max()))
            total += count
    return {"videos": total, "agreement": agree / total, "max_abs_logit_difference": max_diff}


# -- reporting -----------------------------------------------------------------------------------------------------
def machine_description(device: torch.device, threads: int) -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    info = {
        "cpu": cpu,
        "cores": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
        "threads": str(threads),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
    }
    if device.type == "cpu":
        torch.set_num_threads(threads)
        routes = kernels.cpu_matmul_routes()  # what the fast path's float32 matmuls take on this machine
        info["fp32_matmul_routes"] = ", ".join(
            f"{shape} forward {r['forward']} / backward {r['backward']}" for shape, r in routes.items()
        )
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _check(ok: bool | None) -> str:
    return "" if ok is None else (" ✓" if ok else " ✗")


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def render(results: dict) -> str:
    """The markdown table and the notes under it."""
    s, machine, peaks = results["settings"], results["machine"], results["matmul_peak_gflops"]
    peak = max(peaks.values())
    low, high = (str(c) for c in s["class_counts"])
    targets = {low: 1.3, high: 2.5}
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['threads']} threads"
        + (f", {machine['gpu']}" if "gpu" in machine else "")
        + f"; torch {machine['torch']} ({machine['cpu_capability']}); device {results['device']}, {results['dtype']}; "
        + f"malloc: {results.get('malloc', 'system default')}"
        + (f"; fast-path fp32 matmuls: {machine['fp32_matmul_routes']}" if "fp32_matmul_routes" in machine else "")
        + ".",
        f"Model: {s['arch']}, T={s['frames']}, K={s['context_token_k']}, random weights. "
        f"Matmul peak (n x n x n, n={s['matmul_size']} on CPU, twice that on GPU; best of the start and the end; "
        + ", ".join(f"{name} {value:.0f}" for name, value in peaks.items())
        + " GFLOP/s): the best, "
        + f"{peak:.0f} GFLOP/s, is the machine's peak below.",
        "",
        _row(["measurement", "fast", "plain", "fast vs plain", "target"]),
        _row(["---"] * 5),
    ]
    for classes, row in results["eval"].items():
        fast, ref = row["fast"], row["plain"]
        speedup = fast["clips_per_s"] / ref["clips_per_s"]
        target = targets.get(classes)
        lines.append(
            _row(
                [
                    f"eval clips/s, {classes} classes (batch {s['eval_batch']})",
                    f"{fast['clips_per_s']:.3g}",
                    f"{ref['clips_per_s']:.3g}",
                    f"{speedup:.2f}x faster{_check(None if target is None else speedup >= target)}",
                    f">= {target}x" if target else "",
                ]
            )
        )
        lines.append(
            _row(
                [
                    f"eval GFLOP per clip, {classes} classes",
                    f"{fast['gflop_per_clip']:.4g}",
                    f"{ref['gflop_per_clip']:.4g}",
                    f"{ref['gflop_per_clip'] / fast['gflop_per_clip']:.2f}x less work",
                    "",
                ]
            )
        )
    train = results["train"]
    fast, ref = train.get("fast", {}), train.get("plain", {})
    batch = f"batch {results['train_batch']}, {s['train_classes']} classes"
    if "step_seconds" in fast and "step_seconds" in ref:
        speedup = ref["step_seconds"] / fast["step_seconds"]
        ratio = fast["peak_memory_bytes"] / ref["peak_memory_bytes"]
        lines += [
            _row(
                [
                    f"train step seconds ({batch})",
                    f"{fast['step_seconds']:.3g}",
                    f"{ref['step_seconds']:.3g}",
                    f"{speedup:.2f}x faster{_check(speedup >= 1.5)}",
                    ">= 1.5x",
                ]
            ),
            _row(
                [
                    f"train clips/s ({batch})",
                    f"{results['train_batch'] / fast['step_seconds']:.3g}",
                    f"{results['train_batch'] / ref['step_seconds']:.3g}",
                    "",
                    "",
                ]
            ),
            _row(
                [
                    f"train peak memory GB ({batch})",
                    f"{fast['peak_memory_bytes'] / 1e9:.3g}",
                    f"{ref['peak_memory_bytes'] / 1e9:.3g}",
                    f"{ratio:.2f}x{_check(ratio <= 0.6)}",
                    "<= 0.6x",
                ]
            ),
            _row(
                [
                    "train GFLOP per step",
                    f"{fast['gflop_per_step']:.4g}",
                    f"{ref['gflop_per_step']:.4g}",
                    f"{ref['gflop_per_step'] / fast['gflop_per_step']:.2f}x less work",
                    "",
                ]
            ),
        ]
    for name, row in train.items():
        if "error" in row:
            lines.append(_row([f"train step ({name}, {batch})", row["error"], "", "", ""]))
    for classes, row in results["eval"].items():
        fast, ref = row["fast"], row["plain"]
        share = fast["gflops"] / peak
        check = classes == high
        lines.append(
            _row(
                [
                    f"achieved GFLOP/s, eval {classes} classes",
                    f"{fast['gflops']:.0f} ({share:.0%} of peak){_check(share >= 0.7) if check else ''}",
                    f"{ref['gflops']:.0f} ({ref['gflops'] / peak:.0%})",
                    "",
                    ">= 70% of peak" if check else "",
                ]
            )
        )
    if "step_seconds" in fast and "step_seconds" in ref:
        fast_rate = fast["gflop_per_step"] / fast["step_seconds"]
        ref_rate = ref["gflop_per_step"] / ref["step_seconds"]
        lines.append(
            _row(
                [
                    "achieved GFLOP/s, train step",
                    f"{fast_rate:.0f} ({fast_rate / peak:.0%} of peak)",
                    f"{ref_rate:.0f} ({ref_rate / peak:.0%})",
                    "",
                    "",
                ]
            )
        )
    f64, agreement = results["float64"], results["agreement"]
    lines += [
        _row(
            [
                f"float64 max logit difference ({s['arch']}, T={s['f64_frames']}, batch {s['f64_batch']}, "
                f"{low} classes)",
                f"{f64['max_abs']:.1e} (relative {f64['max_rel']:.1e}){_check(f64['max_rel'] <= 1e-8)}",
                "",
                "",
                "<= 1e-8 relative",
            ]
        ),
        _row(
            [
                f"fp32 top-1 agreement ({agreement['videos']} random videos; test-tiny, T={AGREEMENT_CFG.num_frames}, "
                f"K={AGREEMENT_CFG.context_token_k}, {low} classes)",
                f"{agreement['agreement']:.1%}{_check(agreement['agreement'] >= 0.99)}",
                "",
                "",
                ">= 99%",
            ]
        ),
    ]
    lines += render_copied_keys(results)
    extra = [name for name in next(iter(results["eval"].values())) if name not in (*PATHS, COPIED)]
    extra_train = [name for name in train if name not in (*PATHS, COPIED) and "step_seconds" in train[name]]
    if extra or extra_train:
        lines += ["", "Other fast-path variants, against the same plain path:", ""]
        lines += [_row(["variant", "measurement", "value", "vs plain"]), _row(["---"] * 4)]
        for name in extra:
            for classes, row in results["eval"].items():
                speedup = row[name]["clips_per_s"] / row["plain"]["clips_per_s"]
                share = row[name]["gflops"] / peak
                value = f"{row[name]['clips_per_s']:.3g} ({share:.0%} of peak)"
                lines.append(_row([name, f"eval clips/s, {classes} classes", value, f"{speedup:.2f}x faster"]))
        train_ref = train.get("plain", {})
        for name in extra_train:
            row = train[name]
            known = "step_seconds" in train_ref
            speedup = train_ref["step_seconds"] / row["step_seconds"] if known else float("nan")
            ratio = row["peak_memory_bytes"] / train_ref["peak_memory_bytes"] if known else float("nan")
            lines.append(
                _row([name, f"train step seconds ({batch})", f"{row['step_seconds']:.3g}", f"{speedup:.2f}x faster"])
            )
            lines.append(_row([name, "train peak memory GB", f"{row['peak_memory_bytes'] / 1e9:.3g}", f"{ratio:.2f}x"]))
    lines += [
        "",
        "Eval: best of timed batches after a warm-up call (the fast path's text prefix is cached per class list). "
        "Train step: forward, cross-entropy, backward and AdamW, best of the timed steps, each path in a fresh "
        "process; peak memory = peak resident set (VmHWM) minus the resident set with model, optimiser and batch "
        "built, from a one-step process with glibc's default malloc (GPU: max_memory_allocated): activations, "
        "gradients, AdamW state. FLOPs counted with torch.utils.flop_counter.",
    ]
    return "\n".join(lines)


def render_copied_keys(results: dict) -> list[str]:
    """The side-by-side table of the fast path's TC attention: context keys kept apart vs copied per frame."""
    train, evals = results["train"], results["eval"]
    if COPIED not in train and all(COPIED not in row for row in evals.values()):
        return []
    lines = [
        "",
        "Fast path, TC attention with the context keys kept apart (default) vs copied next to every frame's keys:",
        "",
        _row(["measurement", "split (default)", "copied keys", "split vs copied"]),
        _row(["---"] * 4),
    ]
    for classes, row in evals.items():
        if COPIED in row:
            split, copied = row["fast"]["clips_per_s"], row[COPIED]["clips_per_s"]
            lines.append(
                _row([f"eval clips/s, {classes} classes", f"{split:.3g}", f"{copied:.3g}", f"{split / copied:.2f}x"])
            )
    split, copied = train.get("fast", {}), train.get(COPIED, {})
    batch = f"batch {results['train_batch']}"
    if "step_seconds" in split and "step_seconds" in copied:
        lines.append(
            _row(
                [
                    f"train clips/s ({batch})",
                    f"{results['train_batch'] / split['step_seconds']:.3g}",
                    f"{results['train_batch'] / copied['step_seconds']:.3g}",
                    f"{copied['step_seconds'] / split['step_seconds']:.2f}x",
                ]
            )
        )
        lines.append(
            _row(
                [
                    f"train peak memory GB ({batch})",
                    f"{split['peak_memory_bytes'] / 1e9:.3g}",
                    f"{copied['peak_memory_bytes'] / 1e9:.3g}",
                    f"{split['peak_memory_bytes'] / copied['peak_memory_bytes']:.2f}x",
                ]
            )
        )
    if "error" in copied:
        lines.append(_row([f"train step ({batch})", "", copied["error"], ""]))
    return lines


# -- entry point ---------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="fp32 (default), bf16 (autocast)")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a fast check that everything runs")
    parser.add_argument("--json", type=Path, help="also write every number to this JSON file")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (default: torch's)")
    parser.add_argument(
        "--checkpointing",
        action="store_true",
        help="also measure a fast-path training step with activation checkpointing per vision block",
    )
    parser.add_argument(
        "--compile", action="store_true", help="also measure evaluation with torch.compile on the vision encoder"
    )
    parser.add_argument(
        "--copied-keys",
        action="store_true",
        help="also measure the fast path with the context keys copied per frame (its fallback), side by side",
    )
    parser.add_argument("--train-batch", type=int, help="videos per training step (default: 4, quick: 2)")
    parser.add_argument(
        "--system-malloc", action="store_true", help="keep glibc's default malloc settings (see the method notes)"
    )
    parser.add_argument("--_train-worker", dest="train_worker", choices=(*PATHS, COPIED), help=argparse.SUPPRESS)
    parser.add_argument("--_memory-only", dest="memory_only", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    settings = QUICK if args.quick else FULL
    if args.train_batch is None:
        args.train_batch = settings.train_batch
    if args.train_worker:
        if device.type == "cpu" and (available := _available_bytes()) is not None:
            # Stay clear of the machine's other users: fail this process rather than the machine.
            limit = _status_bytes("VmData") + max(available - 2 * 1024**3, 1024**3)
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        try:
            result = train_worker(
                settings, args.train_worker, args.checkpointing, device, dtype, args.train_batch, not args.memory_only
            )
        except RuntimeError as err:
            if "can't allocate memory" not in str(err) and "out of memory" not in str(err).lower():
                raise
            result = {"error": f"out of memory ({args.train_worker} path)"}
        print(json.dumps(result))
        return 0

    _register_cpu_flash_attention_flops()
    started = time.perf_counter()
    print(f"benchmarks/throughput.py: {settings.arch}, T={settings.frames}, {args.device}, {args.dtype}", flush=True)
    results: dict[str, Any] = {
        "device": args.device,
        "dtype": args.dtype,
        "settings": {**settings.__dict__, "class_counts": list(settings.class_counts)},
        "machine": machine_description(device, args.threads),
        "train_batch": args.train_batch,
        "malloc": " ".join(f"{k}={os.environ[k]}" for k in _MALLOC_ENV if k in os.environ) or "system default",
    }
    matmul_size = settings.matmul_size if device.type == "cpu" else 2 * settings.matmul_size
    peaks = matmul_peak(device, dtype, matmul_size)
    print(f"  matmul peak GFLOP/s: {peaks}", flush=True)

    # Training first, while this process holds little memory: the training subprocesses need the most.
    results["train"] = {}
    runs = [("fast", "fast", False), ("plain", "plain", False)]
    runs += [(COPIED, COPIED, False)] if args.copied_keys else []
    runs += [("fast + checkpointing", "fast", True)] if args.checkpointing else []
    for name, path, checkpointing in runs:
        results["train"][name] = row = measure_train(args, path, checkpointing)
        print(f"  train {name}: {row}", flush=True)

    cfg = settings.model_config()
    model = build_model(cfg, max(settings.class_counts), device).eval()
    compiled = None
    if args.compile:
        compiled = copy.deepcopy(model)
        compiled.image_encoder.compile()
    video = random_video(cfg, settings.eval_batch, device, torch.float32)
    results["eval"] = {}
    for count in settings.class_counts:
        for m in (model, compiled) if compiled is not None else (model,):
            m.set_class_names(class_names(count))
        row = measure_eval(eval_variants(model, compiled, args.copied_keys), video, device, dtype, settings.repeats)
        results["eval"][str(count)] = row
        print(f"  eval {count} classes, clips/s: " + ", ".join(f"{n} {v['clips_per_s']:.3g}" for n, v in row.items()))
    del model, compiled, video

    # Measured again at the end: on a shared machine the better of the two is closer to what the machine can do.
    results["matmul_peak_gflops"] = {k: max(v, peaks[k]) for k, v in matmul_peak(device, dtype, matmul_size).items()}
    print(f"  matmul peak GFLOP/s: {results['matmul_peak_gflops']}", flush=True)
    results["float64"] = float64_difference(settings, device)
    print(f"  float64: {results['float64']}", flush=True)
    results["agreement"] = top1_agreement(settings, device)
    print(f"  agreement: {results['agreement']}", flush=True)
    results["seconds"] = time.perf_counter() - started

    print()
    print(render(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


_MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}


def _keep_freed_memory(argv: Sequence[str]) -> None:
    """Re-execute this script with glibc malloc keeping freed memory (see the method notes), unless already so."""
    args = parse_args(argv)
    if platform.system() != "Linux" or args.device != "cpu" or args.system_malloc:
        return
    if all(os.environ.get(k) == v for k, v in _MALLOC_ENV.items()):
        return
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *argv], {**os.environ, **_MALLOC_ENV})


if __name__ == "__main__":
    _keep_freed_memory(sys.argv[1:])
    sys.exit(main())
