"""Optimisation helpers: learning-rate schedule, gradient accumulation from the global batch, parameter groups.

The recipe of the paper's experiments (its implementation details; see docs/protocols.md): AdamW, weight decay on
every trainable tensor, x10 learning rate for the newly initialised parts, cosine decay per optimiser step with a
linear warm-up from 0 and a floor `lr_min`, and an effective batch of `total_batch_size` whatever the hardware.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from tcclip.training.hparams import Optimization
from tcclip.utils.errors import ConfigError

log = logging.getLogger(__name__)


def warmup_cosine_lr(step: int, *, base_lr: float, lr_min: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate after `step` optimiser steps.

    Warm-up: `base_lr * step / warmup_steps` (starts at exactly 0). After it, the cosine runs over the whole
    schedule, not only the part after the warm-up, as in the official release (timm's `CosineLRScheduler`
    with `warmup_prefix=False`): `lr_min + (base_lr - lr_min) * (1 + cos(pi * step / total_steps)) / 2`.
    So the curve drops slightly where warm-up ends (to ~0.98 * base_lr for 5 of 50 epochs). From
    `total_steps` on it stays at `lr_min`. `lr_min` is an absolute floor, the same for every parameter group.

    Args:
        step: optimiser steps taken so far (0 for the first step).
        base_lr: peak learning rate of this parameter group.
        lr_min: floor reached at the end of the schedule.
        warmup_steps: length of the linear warm-up in optimiser steps (0 for none).
        total_steps: length of the whole schedule in optimiser steps.
    """
    if step < 0 or total_steps < 1 or warmup_steps < 0:
        raise ValueError(f"bad schedule: step={step}, warmup_steps={warmup_steps}, total_steps={total_steps}")
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    if step >= total_steps:
        return lr_min
    return lr_min + 0.5 * (base_lr - lr_min) * (1.0 + math.cos(math.pi * step / total_steps))


@dataclass
class WarmupCosine:
    """`warmup_cosine_lr` as a multiplicative factor of `base_lr`, for `torch.optim.lr_scheduler.LambdaLR`.

    A dataclass rather than a closure so that `LambdaLR.state_dict()` stores its numbers with the checkpoint.
    """

    base_lr: float
    lr_min: float
    warmup_steps: int
    total_steps: int

    def __call__(self, step: int) -> float:
        if self.base_lr == 0:
            return 0.0
        lr = warmup_cosine_lr(
            step, base_lr=self.base_lr, lr_min=self.lr_min, warmup_steps=self.warmup_steps, total_steps=self.total_steps
        )
        return lr / self.base_lr


def warmup_cosine_scheduler(optimizer: Optimizer, *, lr_min: float, warmup_steps: int, total_steps: int) -> LambdaLR:
    """A per-step `LambdaLR` that follows `warmup_cosine_lr` in every parameter group (each from its own lr)."""
    factors = [
        WarmupCosine(group["lr"], lr_min=lr_min, warmup_steps=warmup_steps, total_steps=total_steps)
        for group in optimizer.param_groups
    ]
    return LambdaLR(optimizer, lr_lambda=factors)


def schedule_steps(
    num_batches_per_epoch: int, accumulate_grad_batches: int, max_epochs: int, warmup_epochs: float
) -> tuple[int, int]:
    """(warm-up steps, total steps) of the schedule, counted in optimiser steps.

    One epoch of `num_batches_per_epoch` batches (per device) makes `ceil(num_batches / accumulate)` optimiser
    steps: Lightning also steps on the last, incomplete accumulation of an epoch.
    """
    if num_batches_per_epoch < 1 or accumulate_grad_batches < 1 or max_epochs < 1:
        raise ValueError(
            f"cannot build a schedule from {num_batches_per_epoch} batches per epoch, "
            f"accumulation {accumulate_grad_batches}, {max_epochs} epochs"
        )
    steps_per_epoch = math.ceil(num_batches_per_epoch / accumulate_grad_batches)
    return round(warmup_epochs * steps_per_epoch), steps_per_epoch * max_epochs


def accumulation_steps(total_batch_size: int, per_device_batch_size: int, world_size: int) -> int:
    """Gradient-accumulation steps so that `per_device_batch_size * world_size * steps == total_batch_size`.

    Args:
        total_batch_size: the effective batch the recipe asks for (`tcclip.experiments.protocols.RECIPES`).
        per_device_batch_size: videos per device per forward pass (the data module's `batch_size`).
        world_size: devices x nodes.

    Raises:
        ValueError: if the total batch is not a multiple of one forward pass over all devices.
    """
    if total_batch_size < 1 or per_device_batch_size < 1 or world_size < 1:
        raise ValueError(
            f"batch sizes must be positive: total_batch_size={total_batch_size}, "
            f"per-device batch_size={per_device_batch_size}, devices x nodes={world_size}"
        )
    per_step = per_device_batch_size * world_size
    if total_batch_size % per_step:
        raise ConfigError(
            "model.optim.total_batch_size",
            f"{total_batch_size} is not divisible by data batch_size {per_device_batch_size} x {world_size} device(s)"
            f" = {per_step}",
            fix=f"Choose data.init_args.batch_size and trainer.devices so that their product divides "
            f"{total_batch_size}, or set model.optim.total_batch_size to a multiple of {per_step}.",
        )
    return total_batch_size // per_step


def param_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    *,
    lr: float,
    weight_decay: float,
    lr_10x: bool,
    is_new_parameter: Callable[[str], bool],
) -> list[dict]:
    """AdamW parameter groups: every trainable tensor gets `weight_decay` (the official recipe decays biases and
    norms too); the newly initialised ones (`is_new_parameter`) get `10 * lr` when `lr_10x` is on.

    Returns one or two groups, named "clip" and "new" (key `name`, for the learning-rate monitor); empty groups
    are left out.
    """
    base, new = [], []
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        (new if lr_10x and is_new_parameter(name) else base).append(param)
    groups = [
        {"name": "clip", "params": base, "lr": lr, "weight_decay": weight_decay},
        {"name": "new", "params": new, "lr": 10.0 * lr, "weight_decay": weight_decay},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("no trainable parameters: check the model.freeze_* options")
    return groups


_FUSED_ADAMW_DEVICES = ("cpu", "cuda")
"""Devices where `torch.optim.AdamW(fused=True)` has a kernel for every floating-point dtype."""


def build_optimizer(optim: Optimization, model: nn.Module, *, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over `param_groups` of `model` with `optim`'s betas, epsilon and weight decay.

    Args:
        optim: the recipe.
        model: has `named_parameters()` and `is_new_parameter(name)`; build the optimizer after moving it to its
            device (the fused update runs where the parameters are).
        fused: torch's fused AdamW, one pass over each tensor per step instead of about ten element-wise
            operations each (the same update up to floating-point rounding; on a CPU, where torch's default is a
            per-tensor loop, the step takes about a quarter of the time). None: fused wherever every trainable
            parameter is a floating-point tensor on a device that has the kernel.
    """
    groups = param_groups(
        model.named_parameters(),
        lr=optim.lr,
        weight_decay=optim.weight_decay,
        lr_10x=optim.lr_10x,
        is_new_parameter=model.is_new_parameter,
    )
    if fused is None:
        params = [p for g in groups for p in g["params"]]
        fused = all(p.device.type in _FUSED_ADAMW_DEVICES and p.is_floating_point() for p in params)
    betas = tuple(optim.betas)
    # Not fused: None, not False, which would also turn off torch's default foreach update on a GPU.
    optimizer = torch.optim.AdamW(
        groups, lr=optim.lr, betas=betas, eps=optim.eps, weight_decay=optim.weight_decay, fused=fused or None
    )
    if fused:
        optimizer.register_load_state_dict_post_hook(_stay_fused)
    return optimizer


def _stay_fused(optimizer: torch.optim.Optimizer) -> None:
    """After `load_state_dict`: keep the fused update for a state written by the unfused one (an older checkpoint).

    Loading takes every group setting from the saved state, `fused` too, and the unfused update keeps its step
    counts on the CPU where the fused kernel wants them beside the parameters, as float32.
    """
    for group in optimizer.param_groups:
        group["fused"] = True
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and "step" in state:
                state["step"] = torch.as_tensor(state["step"], dtype=torch.float32, device=p.device)


def fused_allowed(trainer: Any) -> bool:
    """Whether a fused optimizer works under `trainer`'s precision settings.

    Not under a gradient scaler (`trainer.precision=16-mixed`): a fused optimizer unscales its gradients itself.
    Not with `trainer.gradient_clip_val` under Lightning's mixed-precision plugins (`bf16-mixed` too): they refuse
    to clip the gradients of an optimizer that can unscale them.
    """
    from lightning.pytorch.plugins.precision import FSDPPrecision, MixedPrecision

    plugin = getattr(trainer, "precision_plugin", None)
    if getattr(plugin, "scaler", None) is not None:
        return False
    return not (getattr(trainer, "gradient_clip_val", None) and isinstance(plugin, (MixedPrecision, FSDPPrecision)))


def configure_optimizer(optim: Optimization, model: nn.Module, trainer: Any) -> dict[str, Any]:
    """`LightningModule.configure_optimizers` for `optim`: `build_optimizer` for `model` and a per-step
    `warmup_cosine_scheduler` as long as the run (`trainer.max_epochs`, or `trainer.max_steps` when shorter).

    The fused AdamW is left out where Lightning would refuse it (`fused_allowed`).
    """
    optimizer = build_optimizer(optim, model, fused=None if fused_allowed(trainer) else False)
    total = trainer.estimated_stepping_batches  # also loads the train dataloader
    if not math.isfinite(total):
        raise ValueError("the cosine schedule needs a finite run: set trainer.max_epochs or trainer.max_steps")
    warmup, full = schedule_steps(
        int(trainer.num_training_batches),
        trainer.accumulate_grad_batches,
        max(int(trainer.max_epochs or 1), 1),
        optim.warmup_epochs,
    )
    # With trainer.max_steps shorter than the epochs, the schedule ends with the run.
    scheduler = warmup_cosine_scheduler(
        optimizer, lr_min=optim.lr_min, warmup_steps=warmup, total_steps=min(full, int(total))
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def count_devices(accelerator: Any, devices: Any) -> int:
    """Processes per node that `Trainer(accelerator=..., devices=...)` will start, read before the Trainer exists
    (CPU: `devices` as given, 1 for "auto"; CUDA: the GPUs it selects, all for "auto" or -1)."""
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

    name = accelerator if isinstance(accelerator, str) else type(accelerator).__name__.lower()
    if name == "auto":
        name = "cuda" if CUDAAccelerator.is_available() else "cpu"
    if name in ("gpu", "cuda") or "cuda" in name:
        return len(CUDAAccelerator.parse_devices(-1 if devices == "auto" else devices) or [])
    if name == "cpu" or "cpu" in name:
        return int(CPUAccelerator.parse_devices(1 if devices == "auto" else devices))
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, (list, tuple)):
        return len(devices)
    return 1


def settle_accumulation(total_batch_size: int | None, per_device: int | None, world_size: int, given: int) -> int:
    """`trainer.accumulate_grad_batches` for an effective batch of `total_batch_size` (None: `given` as it is)."""
    if total_batch_size is None:
        return given
    if per_device is None:
        raise ConfigError(
            "model.optim.total_batch_size",
            "the data module has no `batch_size`: cannot derive gradient accumulation from it",
            fix="Set model.optim.total_batch_size: null and trainer.accumulate_grad_batches.",
        )
    if not all(isinstance(v, int) and v >= 1 for v in (total_batch_size, per_device, world_size)):
        return given  # out of range: the data module's and Optimization's own checks name it next
    steps = accumulation_steps(total_batch_size, int(per_device), world_size)
    if given not in (1, steps):
        raise ConfigError(
            "trainer.accumulate_grad_batches",
            f"{given} conflicts with model.optim.total_batch_size={total_batch_size} (which gives {steps} with "
            f"batch_size {per_device} x {world_size} device(s))",
            fix="Leave trainer.accumulate_grad_batches at 1, or set model.optim.total_batch_size: null.",
        )
    log.info(
        "effective batch %d = %d per device x %d device(s) x %d accumulation step(s)",
        total_batch_size,
        per_device,
        world_size,
        steps,
    )
    return steps


def accumulation_from_config(cfg: Any) -> int:
    """`trainer.accumulate_grad_batches` of a parsed `fit` config (jsonargparse's namespace, read with `get`):
    from `model.optim.total_batch_size`, `data.init_args.batch_size`, `trainer.devices` and `trainer.num_nodes`."""
    trainer = cfg.get("trainer")
    given = int(trainer.get("accumulate_grad_batches") or 1)
    optim = cfg.get("model.optim")
    total = optim.get("total_batch_size") if optim is not None else None
    if total is None:
        return given
    data = cfg.get("data.init_args") or cfg.get("data")
    per_device = data.get("batch_size") if data is not None and hasattr(data, "get") else None
    world = count_devices(trainer.get("accelerator", "auto"), trainer.get("devices", "auto"))
    return settle_accumulation(total, per_device, world * int(trainer.get("num_nodes") or 1), given)


def check_accumulation(total_batch_size: int | None, datamodule: Any, trainer: Any) -> None:
    """Refuse a Trainer whose accumulation does not make the recipe's effective batch (a Trainer built without
    `tcclip fit`, which sets it from `model.optim.total_batch_size`)."""
    per_device = getattr(datamodule, "batch_size", None)
    if total_batch_size is None or per_device is None:
        return
    made = int(per_device) * trainer.world_size * trainer.accumulate_grad_batches
    if made != total_batch_size:
        steps = accumulation_steps(total_batch_size, int(per_device), trainer.world_size)
        raise ValueError(
            f"model.optim.total_batch_size={total_batch_size}, but the Trainer makes batches of {made} (batch_size "
            f"{per_device} x {trainer.world_size} device(s) x accumulate_grad_batches "
            f"{trainer.accumulate_grad_batches}). Fix: build the Trainer with accumulate_grad_batches={steps} "
            "(`tcclip fit` does), or set model.optim.total_batch_size: null."
        )
