"""Learning-rate schedule, gradient accumulation from the global batch, parameter groups (the paper's recipe)."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from tcclip.training.hparams import Optimization
from tcclip.training.schedule import (
    accumulation_from_config,
    accumulation_steps,
    build_optimizer,
    configure_optimizer,
    count_devices,
    param_groups,
    schedule_steps,
    settle_accumulation,
    warmup_cosine_lr,
    warmup_cosine_scheduler,
)


def test_warmup_is_linear_from_zero() -> None:
    lrs = [warmup_cosine_lr(s, base_lr=1e-3, lr_min=1e-5, warmup_steps=4, total_steps=20) for s in range(4)]
    assert lrs == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4])


def test_cosine_runs_over_the_whole_schedule_after_warmup() -> None:
    base, low = 1e-3, 1e-5
    for step in (4, 10, 15, 19):
        expected = low + 0.5 * (base - low) * (1 + math.cos(math.pi * step / 20))
        assert warmup_cosine_lr(step, base_lr=base, lr_min=low, warmup_steps=4, total_steps=20) == pytest.approx(
            expected
        )
    # Half-way through the run the cosine is at the middle between peak and floor.
    assert warmup_cosine_lr(10, base_lr=base, lr_min=low, warmup_steps=4, total_steps=20) == pytest.approx(
        (base + low) / 2
    )


def test_floor_is_reached_and_kept() -> None:
    for step in (20, 21, 1000):
        assert warmup_cosine_lr(step, base_lr=1e-3, lr_min=1e-5, warmup_steps=4, total_steps=20) == 1e-5


def test_scheduler_steps_x10_group_to_the_same_absolute_floor() -> None:
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-2}])
    sched = warmup_cosine_scheduler(opt, lr_min=1e-5, warmup_steps=2, total_steps=6)
    seen = []
    for _ in range(8):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for step, lrs in enumerate(seen):
        expected = [warmup_cosine_lr(step, base_lr=b, lr_min=1e-5, warmup_steps=2, total_steps=6) for b in (1e-3, 1e-2)]
        assert lrs == pytest.approx(expected)
    assert seen[0] == [0.0, 0.0]
    assert seen[-1] == pytest.approx([1e-5, 1e-5])


def test_scheduler_state_round_trips() -> None:
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sched = warmup_cosine_scheduler(opt, lr_min=0.0, warmup_steps=3, total_steps=10)
    for _ in range(5):
        opt.step()
        sched.step()
    opt2 = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched2 = warmup_cosine_scheduler(opt2, lr_min=0.0, warmup_steps=3, total_steps=10)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())


def test_schedule_steps_count_optimiser_steps() -> None:
    # 10 batches per epoch with accumulation 4 -> steps at batches 4, 8 and the incomplete 10th: 3 per epoch.
    assert schedule_steps(10, 4, max_epochs=50, warmup_epochs=5) == (15, 150)
    assert schedule_steps(8, 1, max_epochs=12, warmup_epochs=2) == (16, 96)


@pytest.mark.parametrize(
    ("total", "per_device", "world", "expected"),
    [(64, 8, 1, 8), (64, 8, 8, 1), (64, 4, 2, 8), (256, 16, 4, 4), (8, 8, 1, 1)],
)
def test_accumulation_matches_the_effective_batch(total: int, per_device: int, world: int, expected: int) -> None:
    steps = accumulation_steps(total, per_device, world)
    assert steps == expected
    assert steps * per_device * world == total


def test_accumulation_is_settled_from_the_recipe_before_the_trainer() -> None:
    from tcclip.utils.errors import ConfigError

    assert settle_accumulation(64, 8, 2, given=1) == 4
    assert settle_accumulation(64, 8, 2, given=4) == 4  # the same number given by hand is fine
    assert settle_accumulation(None, 8, 2, given=3) == 3  # no recipe total: the Trainer's as given
    with pytest.raises(ConfigError, match="trainer.accumulate_grad_batches: 3 conflicts"):
        settle_accumulation(64, 8, 2, given=3)
    with pytest.raises(ConfigError, match="model.optim.total_batch_size: the data module has no `batch_size`"):
        settle_accumulation(64, None, 1, given=1)
    with pytest.raises(ConfigError, match="model.optim.total_batch_size: 64 is not divisible"):
        settle_accumulation(64, 6, 1, given=1)


def test_accumulation_from_a_parsed_fit_config() -> None:
    from jsonargparse import Namespace

    def config(total, devices=2, nodes=1, given=1) -> Namespace:
        return Namespace(
            trainer=Namespace(accelerator="cpu", devices=devices, num_nodes=nodes, accumulate_grad_batches=given),
            model=Namespace(optim=None if total == "none" else Namespace(lr=1e-3, total_batch_size=total)),
            data=Namespace(class_path="x.Data", init_args=Namespace(batch_size=4)),
        )

    assert accumulation_from_config(config(64)) == 8  # 64 / (4 per device x 2 devices)
    assert accumulation_from_config(config(64, nodes=2)) == 4
    assert accumulation_from_config(config(None, given=3)) == 3
    assert accumulation_from_config(config("none", given=2)) == 2  # an evaluation config: no recipe


def test_devices_are_counted_as_the_trainer_will() -> None:
    assert count_devices("cpu", "auto") == 1
    assert count_devices("cpu", 3) == 3 and count_devices("cpu", "2") == 2
    if not torch.cuda.is_available():
        assert count_devices("auto", "auto") == 1


def test_accumulation_refuses_an_indivisible_batch() -> None:
    with pytest.raises(ValueError, match="not divisible.*batch_size"):
        accumulation_steps(64, 6, 1)
    with pytest.raises(ValueError, match="not divisible"):
        accumulation_steps(64, 8, 16)


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(2, 2)
        self.prompt = nn.Parameter(torch.zeros(3))
        self.frozen = nn.Parameter(torch.zeros(1), requires_grad=False)


def test_param_groups_x10_for_new_parameters_and_decay_everywhere() -> None:
    m = _Tiny()
    groups = param_groups(
        m.named_parameters(), lr=1e-3, weight_decay=1e-3, lr_10x=True, is_new_parameter=lambda n: n == "prompt"
    )
    assert [g["name"] for g in groups] == ["clip", "new"]
    assert groups[0]["params"] == [m.backbone.weight, m.backbone.bias]
    assert groups[1]["params"] == [m.prompt]
    assert [g["lr"] for g in groups] == [1e-3, 1e-2]
    assert all(g["weight_decay"] == 1e-3 for g in groups)


def test_param_groups_without_lr_10x_is_one_group() -> None:
    groups = param_groups(
        _Tiny().named_parameters(), lr=1e-3, weight_decay=1e-3, lr_10x=False, is_new_parameter=lambda n: True
    )
    assert len(groups) == 1 and len(groups[0]["params"]) == 3 and groups[0]["lr"] == 1e-3


class _TinyModel(_Tiny):
    def is_new_parameter(self, name: str) -> bool:
        return name == "prompt"


def _adamw_by_hand(p, grads, lr, betas, eps, weight_decay):
    """AdamW (Loshchilov & Hutter, with Adam's bias corrections) written out, in float64."""
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        p = p * (1 - lr * weight_decay)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        p = p - lr * m_hat / (v_hat.sqrt() + eps)
    return p


def test_the_optimizer_is_fused_adamw_and_takes_the_paper_s_steps() -> None:
    torch.manual_seed(0)
    model = _TinyModel().double()
    optim = Optimization(lr=1e-2, lr_min=0.0, warmup_epochs=0, weight_decay=0.05)
    optimizer = build_optimizer(optim, model)
    assert optimizer.defaults["fused"] is True  # on the CPU: one pass per tensor, not torch's per-tensor loop
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: [torch.randn_like(p) for _ in range(3)] for n, p in model.named_parameters() if p.requires_grad}
    for step in range(3):
        for n, p in model.named_parameters():
            p.grad = grads[n][step] if p.requires_grad else None
        optimizer.step()
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, start[n])
            continue
        lr = 1e-1 if n == "prompt" else 1e-2  # x10 for the new parts
        expected = _adamw_by_hand(start[n], grads[n], lr, (0.9, 0.98), 1e-8, 0.05)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-14)


def test_a_checkpoint_of_the_unfused_optimizer_resumes_in_the_fused_one() -> None:
    """Checkpoints written before the optimizer was fused carry the per-tensor loop's state: the same numbers."""
    torch.manual_seed(1)
    optim = Optimization(lr=1e-2, lr_min=0.0, warmup_epochs=0)
    models = [_TinyModel().double() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    old = build_optimizer(optim, models[0], fused=False)
    grads = [{n: torch.randn_like(p) for n, p in models[0].named_parameters()} for _ in range(4)]

    def step(model, optimizer, g):
        for n, p in model.named_parameters():
            p.grad = g[n] if p.requires_grad else None
        optimizer.step()

    for g in grads[:2]:
        step(models[0], old, g)
    models[1].load_state_dict(models[0].state_dict())
    resumed = build_optimizer(optim, models[1])
    resumed.load_state_dict(copy.deepcopy(old.state_dict()))  # as from a file: no tensor shared with `old`
    assert all(g["fused"] for g in resumed.param_groups)
    for g in grads[2:]:
        step(models[0], old, g)
        step(models[1], resumed, g)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_no_fused_optimizer_under_a_gradient_scaler() -> None:
    """With trainer.precision=16-mixed a fused AdamW would unscale its gradients itself, which Lightning does not
    allow together with gradient clipping: the optimizer is then torch's default AdamW."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    class _Trainer:
        estimated_stepping_batches = 10
        num_training_batches = 10
        accumulate_grad_batches = 1
        max_epochs = 1

    optim = Optimization(lr=1e-3, lr_min=0.0, warmup_epochs=0)
    trainer = _Trainer()
    with warnings.catch_warnings():  # without CUDA torch warns that the scaler is disabled; it exists all the same
        warnings.simplefilter("ignore")
        trainer.precision_plugin = MixedPrecision("16-mixed", "cuda")
    assert trainer.precision_plugin.scaler is not None
    assert not configure_optimizer(optim, _TinyModel(), trainer)["optimizer"].defaults["fused"]
    trainer.precision_plugin = MixedPrecision("bf16-mixed", "cpu")
    assert configure_optimizer(optim, _TinyModel(), trainer)["optimizer"].defaults["fused"] is True


@pytest.mark.parametrize(("precision", "fused"), [("32-true", True), ("bf16-mixed", False)])
def test_gradient_clipping_trains_with_the_optimizer_lightning_allows(precision, fused, tmp_path) -> None:
    """Lightning's mixed-precision plugins (bf16-mixed too) refuse to clip the gradients of a fused optimizer: with
    trainer.gradient_clip_val set there the optimizer is the unfused AdamW, and training runs."""
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = _TinyModel()

        def training_step(self, batch, batch_idx):
            (x,) = batch
            return (self.model.backbone(x) * self.model.prompt.sum()).pow(2).mean() + self.model.prompt.pow(2).sum()

        def configure_optimizers(self):
            return configure_optimizer(Optimization(lr=1e-2, lr_min=0.0, warmup_epochs=0), self.model, self.trainer)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
    module = Module()
    trainer = pl.Trainer(
        accelerator="cpu", precision=precision, gradient_clip_val=0.5, max_epochs=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    before = module.model.backbone.weight.detach().clone()
    trainer.fit(module, data)
    optimizer = trainer.optimizers[0]
    assert bool(optimizer.defaults["fused"]) is fused
    assert trainer.global_step == 4 and not torch.equal(module.model.backbone.weight, before)
