"""Speed and memory of the fast path, the plain path and (given its folder) the official TC-CLIP code, side by side.

    python benchmarks/throughput.py                      # CPU, fp32, ViT-B/16, T=16 (what `make benchmark-speed` runs)
    python benchmarks/throughput.py --quick              # tiny settings: checks that everything runs, in a minute
    python benchmarks/throughput.py --official ~/tc-clip --baseline ~/tcclip-old --json speed.json
    python benchmarks/throughput.py --device cuda --dtype bf16 --train-batch 8

Prints one markdown table: evaluation clips/s at 51 and 400 classes, training step seconds and peak memory (51
classes), for this checkout's fast and plain paths (`model.set_fast_path`), optionally another checkout of this
project (`--baseline DIR`, imported through PYTHONPATH: e.g. a commit before a change) and the official code
(`--official DIR`, a checkout of github.com/naver-ai/tc-clip, imported at run time: its `clip/`, `trainers/` and
`tome/` need einops, timm, ftfy and regex). Below the table: the float64 logit difference between the paths and
their fp32 top-1 agreement. Weights are random (CLIP's architecture) and the same for every implementation: this
checkout's model is built with seed 0, its weights saved, and every other implementation loads them.

Method:
- Evaluation: one process per implementation keeps its model built; after one warm-up call per variant (which
  also fills the fast path's per-class-list text cache, as in an evaluation loop over a dataset), the variants'
  calls take turns, `repeats` rounds, and the best call counts. Best-of, because other processes share the
  machine: the fastest call is the one least disturbed, alike for every variant.
- Training step: forward, cross-entropy on random labels, backward and the optimizer step of the implementation's
  own training code (the paper's AdamW settings; this project builds torch's fused AdamW, the official code torch's
  default AdamW, a per-tensor loop on a CPU), each variant in a fresh process, the variants one after the other; a
  warm-up step, then `train_repeats` steps; this `train_rounds` times, the variants taking turns, and the best step
  of all counts. These processes run with glibc malloc keeping freed memory
  (`MALLOC_MMAP_MAX_=0`, `MALLOC_TRIM_THRESHOLD_`): by default every large tensor is a fresh mmap whose pages fault
  in again at each step.
- Peak memory (CPU): one more fresh process per variant runs one step with glibc's default malloc (freed large
  blocks return to the system at once, so the resident set follows the live memory): the peak resident set
  (VmHWM, reset once model, optimiser and batch exist) minus the resident set at that point, i.e. activations,
  gradients and AdamW state. On a GPU: `torch.cuda.max_memory_allocated` minus the memory allocated then.
- bf16 (`--dtype bf16`) runs the model under `torch.autocast` with fp32 weights, as mixed-precision training does.
"""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from speed_worker import ABLATIONS

from tcclip.cli.types import at_least
from tcclip.model.config import TCCLIPConfig
from tcclip.model.factory import create_model

WORKER = Path(__file__).with_name("speed_worker.py")
DTYPES = ("fp32", "bf16")
_MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}
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
    agreement_videos: int
    train_rounds: int = 1
    """Fresh processes per training row, the rows taking turns; the best step of all of them counts."""

    def model_config(self, frames: int | None = None) -> TCCLIPConfig:
        return TCCLIPConfig(
            arch=self.arch,
            num_frames=frames or self.frames,
            context_token_k=self.context_token_k,
            tome_r=self.tome_r,
            prompt_generation_layer_level=(TCCLIPConfig(arch=self.arch).clip.text.layers,),
        )


# The paper's model (ViT-B/16, T=16, K=96) with few repetitions and batch 1, so that the default table (this
# checkout's two paths and three ablations) takes about 25 minutes on one CPU thread.
FULL = Settings(
    arch="ViT-B-16",
    frames=16,
    context_token_k=96,
    tome_r=100,
    class_counts=(51, 400),
    eval_batch=1,
    train_batch=1,
    train_classes=51,
    repeats=3,
    train_repeats=3,
    f64_frames=16,
    agreement_videos=300,
    train_rounds=2,  # one step's time varies by 5-10% between processes on a 2-core host
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
    agreement_videos=40,
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


def build_model(cfg: TCCLIPConfig, num_classes: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(cfg, class_names(num_classes), clip_weights=None)


def random_video(cfg: TCCLIPConfig, batch: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    size = cfg.clip.vision.image_size
    return torch.randn(batch, cfg.num_frames, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(dtype)


# -- the implementations -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Impl:
    """One implementation: its name in the table, `tcclip` or `official`, and the folder it is imported from."""

    name: str
    kind: str
    directory: str | None = None

    def label(self) -> str:
        """How the records name this implementation's folder (never a path of the machine that measured)."""
        return (
            {"official": "<official checkout>", "tcclip": "<baseline checkout>"}[self.kind] if self.directory else "."
        )

    def public(self, source: str) -> str:
        """`source` (a file or folder the worker imported from) relative to this implementation's folder."""
        folder = Path(self.directory) if self.directory else Path(__file__).resolve().parents[1]
        try:
            relative = Path(source).resolve().relative_to(folder.resolve())
        except ValueError:  # this checkout installed elsewhere (e.g. a wheel): say where, not which folder
            return f"<installed>/{Path(*Path(source).parts[-2:])}"
        return str(Path(self.label()) / relative) if str(relative) != "." else self.label()

    def variants(self) -> list[str]:
        """Row names: the official code; another checkout's two paths; this checkout's two paths and ablations."""
        if self.kind == "official":
            return [self.name]
        if self.directory:
            return [f"{self.name}fast", f"{self.name}plain"]
        return ["fast", "plain", *ABLATIONS]

    def env(self, keep_freed_memory: bool) -> dict[str, str]:
        env = dict(os.environ)
        if self.kind == "tcclip" and self.directory:
            env["PYTHONPATH"] = os.pathsep.join([self.directory, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        for key, value in _MALLOC_ENV.items():
            if keep_freed_memory:
                env[key] = value
            else:
                env.pop(key, None)
        return env


def _path(variant: str) -> str:
    if variant in ABLATIONS:
        return variant
    return "plain" if variant.endswith("plain") else "fast"


def _job(args: Options, impl: Impl, settings: Settings, weights: Path, job: str, **extra: Any) -> str:
    cfg = settings.model_config()
    defaults = TCCLIPConfig()
    spec = {
        "job": job,
        "impl": impl.kind,
        "official_dir": impl.directory,
        "weights": str(weights),
        "device": args.device,
        "dtype": args.dtype,
        "threads": args.threads,
        "train_batch": args.train_batch,
        "train_repeats": settings.train_repeats,
        "class_names": class_names(max(settings.class_counts)),
        "settings": {
            **asdict(settings),
            "text_layers": cfg.clip.text.layers,
            "image_size": cfg.clip.vision.image_size,
            "context_length": cfg.context_length,
            "seed_token_a": cfg.seed_token_a,
            "n_ctx": defaults.n_ctx,
            "ctx_init": defaults.ctx_init,
        },
        **extra,
    }
    return json.dumps(spec)


class EvalWorker:
    """A `speed_worker.py` eval process: the model stays built, requests go one line at a time."""

    def __init__(self, args: Options, impl: Impl, settings: Settings, weights: Path) -> None:
        cmd = [sys.executable, str(WORKER), _job(args, impl, settings, weights, "eval")]
        self.impl = impl
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=impl.env(keep_freed_memory=True)
        )
        self.source = impl.public(self.ask(None)["source"])

    def ask(self, request: dict | None) -> dict:
        if request is not None:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.impl.name or 'tcclip'} eval worker stopped (see its error above)")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def measure_eval(args, impls: list[Impl], settings: Settings, weights: Path) -> tuple[dict, dict]:
    """Best seconds per batch and clips/s of every variant at each class count, and where each came from."""
    workers = [EvalWorker(args, impl, settings, weights) for impl in impls]
    sources = {w.impl.name.strip() or "tcclip": w.source for w in workers}
    print(f"  eval workers: {sources}", flush=True)
    results: dict[str, dict] = {}
    try:
        for count in settings.class_counts:
            times: dict[str, list[float]] = {}
            logits = {}
            for w in workers:
                w.ask({"classes": count})
                for variant in w.impl.variants():  # warm-up (fills the text cache), logits kept for the comparison
                    logits[variant] = torch.tensor(w.ask({"path": _path(variant), "logits": True})["logits"])
                    times[variant] = []
            for _ in range(settings.repeats):
                for w in workers:  # variants take turns, so that a busy moment of the machine hits all alike
                    for variant in w.impl.variants():
                        times[variant].append(w.ask({"path": _path(variant)})["seconds"])
            reference = logits["fast"]
            results[str(count)] = {
                variant: {
                    "seconds_per_batch": min(t),
                    "clips_per_s": settings.eval_batch / min(t),
                    "max_abs_logit_difference_to_fast": float((logits[variant] - reference).abs().max()),
                }
                for variant, t in times.items()
            }
            row = results[str(count)]
            speeds = ", ".join(f"{v} {r['clips_per_s']:.3g}" for v, r in row.items())
            print(f"  eval {count} classes, clips/s: {speeds}", flush=True)
    finally:
        for w in workers:
            w.close()
    return results, sources


def run_train_job(args, impl: Impl, settings: Settings, weights: Path, variant: str, job: str, **extra) -> dict:
    spec = _job(args, impl, settings, weights, job, path=_path(variant), **extra)
    proc = subprocess.run(
        [sys.executable, str(WORKER), spec], capture_output=True, text=True, env=impl.env(job == "train")
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0][:200]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "source" in result:
        result["source"] = impl.public(result["source"])
    return result


def measure_train(args, impls: list[Impl], settings: Settings, weights: Path) -> dict:
    """Step seconds (kept-heap malloc) and peak memory (default malloc) of every variant, each in fresh processes."""
    runs = [(impl, variant, False) for impl in impls for variant in impl.variants()]
    if args.checkpointing:
        runs.append((impls[0], "fast + checkpointing", True))
    tried: dict[str, list[dict]] = {variant: [] for _, variant, _ in runs}
    for _ in range(settings.train_rounds):
        for impl, variant, checkpointing in runs:
            result = run_train_job(args, impl, settings, weights, variant, "train", checkpointing=checkpointing)
            print(f"  train {variant}: {result}", flush=True)
            tried[variant].append(result)
    results: dict[str, dict] = {}
    for variant, attempts in tried.items():  # the best process of each row; an error only where all failed
        done = [r for r in attempts if "step_seconds" in r]
        seconds = [r["step_seconds"] for r in done]
        results[variant] = (
            dict(min(done, key=lambda r: r["step_seconds"]), step_seconds_per_process=seconds) if done else attempts[-1]
        )
    if args.device == "cpu":
        for impl, variant, checkpointing in runs:
            if "error" in results[variant]:
                continue
            memory = run_train_job(args, impl, settings, weights, variant, "memory", checkpointing=checkpointing)
            row = results[variant]
            row["peak_memory_bytes_kept_heap"] = row.pop("peak_memory_bytes")
            row.update(memory if "error" not in memory else {"memory_error": memory["error"]})
            print(f"  train {variant} memory: {memory}", flush=True)
    return results


def public_command(argv: Sequence[str]) -> str:
    """The command line as recorded: the other checkouts named by their labels, the JSON path relative to here."""
    labels = {"--baseline": "<baseline checkout>", "--official": "<official checkout>"}
    words, previous = ["python", "benchmarks/throughput.py"], ""
    for word in argv:
        option, _, value = word.partition("=")
        if previous in labels:
            word = labels[previous]
        elif option in labels and value:
            word = f"{option}={labels[option]}"
        elif previous == "--json" and os.path.isabs(word):
            word = os.path.relpath(word) if Path(word).resolve().is_relative_to(Path.cwd()) else Path(word).name
        words.append(word)
        previous = word if word.startswith("--") else ""
    return " ".join(words)


# -- exactness -----------------------------------------------------------------------------------------------------
def float64_difference(settings: Settings) -> dict[str, float]:
    """Max |logit difference| between the paths in float64 (and relative to the largest logit), batch 1."""
    cfg = settings.model_config(frames=settings.f64_frames)
    model = build_model(cfg, settings.class_counts[0]).double().eval()
    video = random_video(cfg, 1, torch.float64, seed=3)
    logits = {}
    with torch.no_grad():
        for path in ("fast", "plain"):
            model.set_fast_path(path == "fast")
            logits[path] = model(video)
    diff = float((logits["fast"] - logits["plain"]).abs().max())
    return {"max_abs": diff, "max_rel": diff / float(logits["plain"].abs().max())}


def top1_agreement(settings: Settings, batch: int = 50) -> dict[str, float]:
    """fp32 top-1 agreement of the paths over random videos, on the tiny architecture (see AGREEMENT_CFG)."""
    model = build_model(AGREEMENT_CFG, settings.class_counts[0]).eval()
    agree = total = 0
    max_diff = 0.0
    with torch.no_grad():
        for start in range(0, settings.agreement_videos, batch):
            count = min(batch, settings.agreement_videos - start)
            video = random_video(AGREEMENT_CFG, count, torch.float32, seed=100 + start)
            logits = {}
            for path in ("fast", "plain"):
                model.set_fast_path(path == "fast")
                logits[path] = model(video)
            agree += int((logits["fast"].argmax(-1) == logits["plain"].argmax(-1)).sum())
            max_diff = max(max_diff, float((logits["fast"] - logits["plain"]).abs().max()))
            total += count
    return {"videos": total, "agreement": agree / total, "max_abs_logit_difference": max_diff}


# -- reporting -----------------------------------------------------------------------------------------------------
def machine_description(args: Options) -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
        "threads": str(args.threads),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
    }
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _gain(numerator: float | None, denominator: float | None, target: tuple[str, float] | None = None) -> str:
    """numerator / denominator as "1.23x", with a check mark against `target` (">=" or "<=", bound)."""
    if numerator is None or denominator is None:
        return "—"
    value = numerator / denominator
    if target is None:
        return f"{value:.2f}x"
    kind, bound = target
    ok = value >= bound if kind == ">=" else value <= bound
    return f"{value:.2f}x {'✓' if ok else '✗'} ({kind} {bound:g}x)"


COMPARISONS = [
    ("fast vs plain path", "fast", "plain"),
    ("fused vision attention (fast vs fast with plain vision attention)", "fast", "fast, plain vision attention"),
    ("lean MLP (fast vs fast with plain MLP)", "fast", "fast, plain MLP"),
    ("shared text work (fast vs fast with plain text)", "fast", "fast, plain text"),
]


def render(results: dict) -> str:
    """The two markdown tables (measurements; gains and targets) and the notes under them."""
    s, machine, train = results["settings"], results["machine"], results["train"]
    counts = list(results["eval"])
    variants = list(results["eval"][counts[0]])
    clips = {c: {v: results["eval"][c][v]["clips_per_s"] for v in variants} for c in counts}
    step = {v: train.get(v, {}).get("step_seconds") for v in variants}
    memory = {v: train.get(v, {}).get("peak_memory_bytes") for v in variants}
    batch = f"batch {results['train_batch']}, {s['train_classes']} classes"

    def fmt(value: float | None, spec: str) -> str:
        return "—" if value is None else format(value, spec)

    header = [*(f"eval clips/s, {c} classes" for c in counts), f"train step s ({batch})", "train peak memory GB"]
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['threads']} threads"
        + (f", {machine['gpu']}" if "gpu" in machine else "")
        + f"; torch {machine['torch']} ({machine['cpu_capability']}); device {results['device']}, {results['dtype']}. "
        + f"Model: {s['arch']}, T={s['frames']}, K={s['context_token_k']}, eval batch {s['eval_batch']}, random "
        + f"weights (the same for every row). Measured {results['date']} in {results['seconds'] / 60:.0f} minutes: "
        + f"`{results['command']}`.",
        "",
        _row(["variant", *header]),
        _row(["---"] * (len(header) + 1)),
    ]
    for v in variants:
        cells = [fmt(clips[c][v], ".3g") for c in counts]
        cells += [fmt(step[v], ".3g"), fmt(None if memory[v] is None else memory[v] / 1e9, ".3g")]
        lines.append(_row([v, *cells]))
    comparisons = [row for row in COMPARISONS if row[2] in variants]
    official = results.get("official_name")
    if official:
        comparisons.insert(1, ("fast vs official code", "fast", official))
    baseline = [v for v in variants if v.startswith("baseline ")]
    comparisons += [(f"fast vs {v}" if v.endswith("fast") else f"plain vs {v}", v.split()[-1], v) for v in baseline]
    header = [*(f"eval speed-up, {c} classes" for c in counts), "train step speed-up", "train memory ratio"]
    lines += ["", _row(["comparison", *header]), _row(["---"] * (len(header) + 1))]
    for name, a, b in comparisons:
        targets = {"eval": (">=", 3.0), "step": (">=", 1.4), "memory": ("<=", 0.5)} if b == official else {}
        cells = [_gain(clips[c][a], clips[c][b], targets.get("eval") if c == counts[-1] else None) for c in counts]
        cells.append(_gain(step[b], step[a], targets.get("step")))
        cells.append(_gain(memory[a], memory[b], targets.get("memory")))
        lines.append(_row([name, *cells]))
    for name, row in train.items():
        if "error" in row:
            lines.append(f"Train step, {name}: {row['error']}")
    checkpointed = train.get("fast + checkpointing", {})
    if "step_seconds" in checkpointed:
        lines += [
            "",
            f"Fast path with activation checkpointing per vision block ({batch}): step "
            f"{checkpointed['step_seconds']:.3g} s, peak memory {checkpointed['peak_memory_bytes'] / 1e9:.3g} GB.",
        ]
    f64, agreement = results["float64"], results["agreement"]
    differences = ", ".join(
        f"{v} {max(r[v]['max_abs_logit_difference_to_fast'] for r in results['eval'].values()):.1e}"
        for v in variants
        if v != "fast"
    )
    lines += [
        "",
        f"Fast vs plain path: float64 max logit difference {f64['max_abs']:.1e} (relative {f64['max_rel']:.1e}; "
        f"{s['arch']}, T={s['f64_frames']}, batch 1, {counts[0]} classes); fp32 top-1 agreement "
        f"{agreement['agreement']:.1%} over {agreement['videos']} random videos (test-tiny, "
        f"T={AGREEMENT_CFG.num_frames}, K={AGREEMENT_CFG.context_token_k}). fp32 max logit difference to the fast "
        f"path in the eval calls: {differences} (in fp32, near-ties in seed selection and merging flip with the "
        "order of operations).",
        "",
        f"Eval: best of {s['repeats']} interleaved calls after a warm-up call (the fast path's text prefix is cached "
        f"per class list). Train step: forward, cross-entropy, backward and the optimizer step of each "
        f"implementation's own training code ({_optimizers(results)}), best of {s['train_repeats']} "
        f"steps after a warm-up step in each of {s.get('train_rounds', 1)} fresh processes per row, the rows taking "
        "turns; peak memory = peak resident set minus the resident "
        "set with model, optimiser and batch built, from a one-step process with glibc's default malloc (GPU: "
        "max_memory_allocated): activations, gradients, AdamW state. Speed-up = fast's clips/s over the other's "
        "(train: the other's step seconds over fast's); memory ratio = fast's over the other's.",
    ]
    if results.get("sources"):
        lines.append("Imported from: " + ", ".join(f"{k}: {v}" for k, v in results["sources"].items()) + ".")
    return "\n".join(lines)


def _optimizers(results: dict) -> str:
    """Which optimizer each training row stepped: "fast, plain, ...: fused AdamW; official: AdamW (...)"."""
    by_name: dict[str, list[str]] = {}
    for variant, row in results.get("train", {}).items():
        if "optimizer" in row:
            by_name.setdefault(row["optimizer"], []).append(variant)
    return "; ".join(f"{', '.join(v)}: {name}" for name, v in by_name.items()) or "AdamW"


# -- entry point ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    """What to measure.

    Args:
        device: cpu or cuda
        dtype: fp32, or bf16 (autocast)
        quick: tiny settings for a fast check that everything runs
        json: also write every number to this JSON file
        threads: CPU threads (default: torch's)
        checkpointing: also measure a fast-path training step with activation checkpointing per vision block
        train_batch: videos per training step (default: 1, quick: 2)
        official: also measure the official TC-CLIP code in this checkout
        baseline: also measure this project's checkout in this folder
        train_rounds: fresh processes per training row, the rows taking turns (default: 2, quick: 1)
    """

    device: str = "cpu"
    dtype: Literal["fp32", "bf16"] = "fp32"
    quick: bool = False
    json: Path | None = None
    threads: int | None = None
    checkpointing: bool = False
    train_batch: int | None = None
    official: Path | None = None
    baseline: Path | None = None
    train_rounds: Annotated[int, at_least(1)] | None = None


def main(args: Options) -> int:
    """Speed and memory of the fast and the plain path (and the official code), eval and train, side by side.

    Args:
        args: what to measure
    """
    settings = QUICK if args.quick else FULL
    if args.train_rounds is not None:
        settings = replace(settings, train_rounds=args.train_rounds)
    args = replace(
        args,
        threads=torch.get_num_threads() if args.threads is None else args.threads,
        train_batch=settings.train_batch if args.train_batch is None else args.train_batch,
    )
    torch.set_num_threads(args.threads)
    impls = [Impl("", "tcclip")]
    if args.baseline:
        impls.append(Impl("baseline ", "tcclip", str(args.baseline.resolve())))
    if args.official:
        impls.append(Impl("official", "official", str(args.official.resolve())))
    started = time.perf_counter()
    print(f"benchmarks/throughput.py: {settings.arch}, T={settings.frames}, {args.device}, {args.dtype}", flush=True)
    results: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": public_command(sys.argv[1:]),
        "device": args.device,
        "dtype": args.dtype,
        "settings": {**asdict(settings), "class_counts": list(settings.class_counts)},
        "machine": machine_description(args),
        "train_batch": args.train_batch,
        "official_name": "official" if args.official else None,
    }

    def save() -> None:  # after every stage, so that a run stopped early keeps what it measured
        results["seconds"] = time.perf_counter() - started
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2))

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.pt"
        torch.save(build_model(settings.model_config(), settings.train_classes).state_dict(), weights)
        # Training first, while nothing else holds memory: the training processes need the most.
        results["train"] = measure_train(args, impls, settings, weights)
        save()
        results["eval"], results["sources"] = measure_eval(args, impls, settings, weights)
        save()
    results["float64"] = float64_difference(settings)
    print(f"  float64: {results['float64']}", flush=True)
    results["agreement"] = top1_agreement(settings)
    print(f"  agreement: {results['agreement']}", flush=True)
    save()
    print()
    print(render(results))
    return 0


if __name__ == "__main__":
    from tcclip.cli.typed import run

    sys.exit(run(main, sys.argv[1:], "python benchmarks/throughput.py", epilog=__doc__.split("\n", 1)[1]))
