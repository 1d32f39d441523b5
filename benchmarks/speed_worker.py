"""One implementation of TC-CLIP in a process of its own, for `benchmarks/throughput.py` (which starts it).

    python benchmarks/speed_worker.py '<job as JSON>'

Jobs:
- `eval`: build the model, then answer one JSON line on stdout per request line on stdin: `{"classes": n}` sets
  the class list (the first n names of the job's list); `{"path": p, "logits": bool}` times one no-grad forward
  pass (p: "fast", "plain" or one of ABLATIONS) of the job's batch. The model stays built between requests, so
  the calls of several processes can be interleaved by the caller.
- `train`: a warm-up step, then `train_repeats` timed steps (forward, cross-entropy, backward, and the optimizer
  step of the implementation's own training code, `build_optimizer`); prints the best step's seconds and the peak
  memory.
- `memory`: one step; prints the peak memory (the caller runs it with glibc's default malloc).

Implementations (`impl`): `tcclip`, whatever `import tcclip` finds (the caller sets PYTHONPATH to measure another
checkout; the answer names the file it imported), and `official`, the official TC-CLIP code imported from the folder
`official_dir` at run time (nothing of it is copied here). All load the same weights from the file `weights`
(this project's parameter names, which are the official ones).
"""

from __future__ import annotations

import contextlib
import json
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _plain(*class_names: str) -> Callable[[torch.nn.Module], None]:
    def apply(model: torch.nn.Module) -> None:
        for module in model.modules():
            if type(module).__name__ in class_names:
                module.fast = False

    return apply


ABLATIONS = {
    "fast, plain vision attention": _plain("TCAttention"),
    "fast, plain MLP": _plain("MLP"),
    "fast, plain text": _plain("TCCLIP", "VPTextEncoder"),
}
"""The fast path with one of its parts on its plain form: what that part gains, end to end."""


class _QuietLog:
    """The logger the official code's builders write to, silenced."""

    def info(self, *args: Any) -> None:
        pass


class _Config(dict):
    """The attribute-and-`get` config object the official code reads."""

    __getattr__ = dict.__getitem__


def _official_model(job: dict, state: dict[str, torch.Tensor], names: list[str]) -> tuple[torch.nn.Module, Any]:
    """The official TCCLIP with the weights `state`, built the way its training code builds it (fp32)."""
    sys.path.insert(0, job["official_dir"])
    try:
        from clip.model import CLIP  # the official code's modules, found in official_dir
        from trainers.tc_clip import TCCLIP
    except ImportError as err:
        raise SystemExit(
            f"cannot import the official TC-CLIP code from {job['official_dir']}: {err} (it needs einops, timm, ftfy "
            "and regex installed)"
        ) from err
    s = job["settings"]
    text_layers = len({k.split(".")[3] for k in state if k.startswith("text_encoder.transformer.resblocks.")})
    design = {
        "vision_model": "TCVisionTransformer", "vision_block": "TCAttentionBlock",
        "text_block": "ResidualAttentionBlock", "use_custom_attention": True, "context_length": s["context_length"],
        "temporal_length": s["frames"], "vision_depth": 0, "language_depth": 1, "vision_ctx": 0, "language_ctx": 0,
        "positional_embedding_type": "space", "local_global_bias": True, "context_token_k": s["context_token_k"],
        "seed_token_a": s["seed_token_a"], "tome_r": s["tome_r"], "tome_d": 0,
    }  # fmt: skip
    conv = state["image_encoder.conv1.weight"]
    grid = round((state["image_encoder.positional_embedding"].shape[-2] - 1) ** 0.5)
    width = state["text_encoder.ln_final.weight"].shape[0]
    clip_model = CLIP(
        state["text_encoder.text_projection"].shape[1], conv.shape[-1] * grid,
        len({k.split(".")[3] for k in state if k.startswith("image_encoder.transformer.resblocks.")}),
        conv.shape[0], conv.shape[-1], s["context_length"], state["prompt_learner.token_embedding.weight"].shape[0],
        width, width // 64, text_layers, design,
    )  # fmt: skip
    with torch.no_grad():
        clip_model.token_embedding.weight.copy_(state["prompt_learner.token_embedding.weight"])
    cfg = _Config(
        n_ctx=s["n_ctx"], ctx_init=s["ctx_init"], context_length=s["context_length"], opt_level="O0",
        im_stop_grad=True, prompt_generation_layer_level=[text_layers], prompt_generation_layer_init="clip",
    )  # fmt: skip

    with contextlib.redirect_stdout(sys.stderr):
        model = TCCLIP(cfg, names, clip_model, _QuietLog()).float()
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if "token_embedding" not in k}, False)
    if unexpected or set(missing) != {"prompt_learner.token_prefix", "prompt_learner.token_suffix"}:
        raise SystemExit(f"the weights do not fit the official model: missing {missing}, unexpected {unexpected}")

    def set_classes(new: list[str]) -> None:
        with contextlib.redirect_stdout(sys.stderr):
            model._rebuild_classnames(cfg, new, clip_model, _QuietLog())

    return model, set_classes


def build(job: dict, names: list[str], device: torch.device) -> tuple[torch.nn.Module, Callable, Callable, str]:
    """(model, set_classes(names), forward(video, path) -> logits, file the implementation was imported from)."""
    state = torch.load(job["weights"], map_location="cpu")
    if job["impl"] == "official":
        model, set_classes = _official_model(job, state, names)

        def forward(video: torch.Tensor, path: str) -> torch.Tensor:
            return model(video)["logits"]

        return model.to(device), set_classes, forward, job["official_dir"]

    import tcclip
    from tcclip.model.config import TCCLIPConfig
    from tcclip.model.factory import create_model

    s = job["settings"]
    cfg = TCCLIPConfig(
        arch=s["arch"], num_frames=s["frames"], context_token_k=s["context_token_k"], tome_r=s["tome_r"],
        prompt_generation_layer_level=(s["text_layers"],),
    )  # fmt: skip
    model = create_model(cfg, names, clip_weights=None)
    model.load_state_dict(state)
    model.image_encoder.gradient_checkpointing = job.get("checkpointing", False)

    def forward(video: torch.Tensor, path: str) -> torch.Tensor:
        model.set_fast_path(path != "plain")
        if path in ABLATIONS:
            ABLATIONS[path](model)
        return model(video)

    return model.to(device), model.set_class_names, forward, tcclip.__file__


_LR = 2e-6
"""The few-shot recipe's learning rate (its value does not change a step's time)."""


def build_optimizer(job: dict, model: torch.nn.Module) -> tuple[torch.optim.Optimizer, str]:
    """(the optimizer each implementation's training code builds for `model`, what it is).

    The official code: its `build_optimizer` (torch's default AdamW: a per-tensor loop on a CPU, foreach on a GPU).
    This project: `tcclip.training.schedule.build_optimizer` (fused AdamW where the device has it); a checkout from
    before that function existed built torch's default AdamW, and gets it here.
    """
    betas, weight_decay = (0.9, 0.98), 0.001  # the paper's recipe, in both implementations
    if job["impl"] == "official":
        from utils.optimizer import build_optimizer as official_build  # from official_dir, on sys.path since build()

        config = _Config(lr=_LR, weight_decay=weight_decay, betas=betas, lr_10x=True)
        optimizer = official_build(_QuietLog(), config, model)
    else:
        try:
            from tcclip.training.hparams import Optimization
            from tcclip.training.schedule import build_optimizer as tcclip_build
        except ImportError:
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=_LR, betas=betas, eps=1e-8, weight_decay=weight_decay)
        else:
            # the recipe's own AdamW settings (its defaults), as `tcclip fit` uses them
            optimizer = tcclip_build(Optimization(lr=_LR, lr_min=_LR / 100, warmup_epochs=5), model)
    fused = any(g.get("fused") for g in optimizer.param_groups)
    return optimizer, "fused AdamW" if fused else "AdamW (torch's default)"


def _video(job: dict, batch: int, device: torch.device) -> torch.Tensor:
    s = job["settings"]
    gen = torch.Generator().manual_seed(1)
    return torch.randn(batch, s["frames"], 3, s["image_size"], s["image_size"], generator=gen).to(device)


def _autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def _status_bytes(field: str) -> int:
    """A size from /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def _reset_peak_resident() -> bool:
    """Reset the process's peak resident set (VmHWM) to the current one; False where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def evaluate(job: dict, device: torch.device, dtype: torch.dtype) -> None:
    names = job["class_names"]
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the answers only
        model, set_classes, forward, source = build(job, names, device)
    model.eval()
    video = _video(job, job["settings"]["eval_batch"], device)
    print(json.dumps({"ready": True, "source": source}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if "classes" in request:
            set_classes(names[: request["classes"]])
            print(json.dumps({"classes": request["classes"]}), flush=True)
            continue
        with torch.no_grad(), _autocast(device, dtype):
            path = request["path"]
            seconds, logits = _timed(lambda: forward(video, path), device)  # noqa: B023 (called right here)
        answer: dict[str, Any] = {"seconds": seconds}
        if request.get("logits"):
            answer["logits"] = logits.float().cpu().tolist()
        print(json.dumps(answer), flush=True)


def train(job: dict, device: torch.device, dtype: torch.dtype) -> dict:
    s = job["settings"]
    names = job["class_names"][: s["train_classes"]]
    model, _, forward, source = build(job, names, device)
    model.train()
    optimizer, optimizer_name = build_optimizer(job, model)
    video = _video(job, job["train_batch"], device)
    labels = torch.randint(0, len(names), (job["train_batch"],), generator=torch.Generator().manual_seed(2))
    labels = labels.to(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, dtype):
            logits = forward(video, job["path"])
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    else:  # building the model can peak higher than its result: the peak starts here where Linux allows it
        reset = _reset_peak_resident()
        baseline = _status_bytes("VmRSS")
    times = [_timed(step, device)[0] for _ in range(1 + (job["train_repeats"] if job["job"] == "train" else 0))]
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - baseline
    elif reset:
        peak = _status_bytes("VmHWM") - baseline
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline  # KiB
    result = {"peak_memory_bytes": peak, "source": source, "optimizer": optimizer_name}
    if job["job"] == "train":
        result.update(step_seconds=min(times[1:]), first_step_seconds=times[0])
    return result


def main() -> int:
    job = json.loads(sys.argv[1])
    torch.set_num_threads(job["threads"])
    device, dtype = torch.device(job["device"]), DTYPES[job["dtype"]]
    if job["job"] == "eval":
        evaluate(job, device, dtype)
        return 0
    try:
        result = train(job, device, dtype)
    except (RuntimeError, MemoryError) as err:
        if not isinstance(err, MemoryError) and "memory" not in str(err).lower():
            raise
        result = {"error": f"out of memory: {str(err)[:120]}"}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
