"""TCCLIPModule and its pieces: loss, multi-view aggregation, metrics, best/last, WiSE-FT, freezing, optimiser,
hyper-parameters (and their earlier spelling), results."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tcclip.model.config import TCCLIPConfig
from tcclip.training.callbacks import harmonic_mean, results_payload, summarize_sets
from tcclip.training.hparams import Loss, Optimization, flat_hyper_parameters
from tcclip.training.metrics import SetMetrics, multi_view_probabilities
from tcclip.training.module import TCCLIPModule
from tcclip.training.network import load_init_checkpoint, wise_ft_network
from tcclip.training.reporting import BestLast, ConfusionMatrices, EvaluationMetrics, WiseFT
from tcclip.utils.errors import ConfigError

TINY = TCCLIPConfig(arch="test-tiny", num_frames=4, context_token_k=8, tome_r=4, prompt_generation_layer_level=(2,))


@pytest.fixture(scope="module")
def module() -> TCCLIPModule:
    return TCCLIPModule(model_config=TINY, clip_weights=None, optim=Optimization(lr=1e-3, lr_min=1e-5, warmup_epochs=1))


class _ViewLogits(nn.Module):
    """Logits that depend only on the view's first pixel: view v of video b gives logits[b, v]."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits  # [B, V, C]

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        view = int(video[0, 0, 0, 0, 0])
        return self.logits[:, view]


def test_multi_view_probabilities_average_per_view_softmax() -> None:
    logits = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 0.0, 5.0]], [[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]])  # [B=2, V=2, C=3]
    video = torch.zeros(2, 2, 1, 3, 2, 2)
    video[:, 1] = 1.0  # the fake model reads the view index from the first pixel
    probs = multi_view_probabilities(_ViewLogits(logits), video)
    expected = logits.softmax(-1).sum(1) / 2
    torch.testing.assert_close(probs, expected)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))


def test_multi_view_probabilities_need_a_view_axis() -> None:
    with pytest.raises(ValueError, match="B, V, T, 3, S, S"):
        multi_view_probabilities(nn.Identity(), torch.zeros(2, 4, 3, 8, 8))


def test_soft_target_cross_entropy_matches_torch() -> None:
    from timm.loss import SoftTargetCrossEntropy  # the loss of the mixup training step

    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    targets = torch.softmax(torch.randn(4, 5, generator=torch.Generator().manual_seed(1)), -1)
    torch.testing.assert_close(SoftTargetCrossEntropy()(logits, targets), F.cross_entropy(logits, targets))


def test_set_metrics_top1_top5_per_class_and_count() -> None:
    metrics = SetMetrics(num_classes=6)
    probs = torch.eye(6)[[0, 1, 2, 0]] + 0.01 * torch.arange(6)  # predictions 0, 1, 2, 0; then 5, 4, 3 ...
    labels = torch.tensor([0, 1, 3, 3])
    metrics.update(probs, labels)
    out = metrics.compute()
    assert out["top1"] == 50.0
    assert out["top5"] == 100.0  # class 3 is in the top 5 of both misses
    assert out["num_videos"] == 4
    per_class = out["per_class_top1"]
    assert per_class[:2] == [100.0, 100.0] and per_class[3] == 0.0
    assert all(math.isnan(per_class[c]) for c in (2, 4, 5))  # classes without videos
    assert out["confusion"][3].tolist() == [1, 0, 1, 0, 0, 0]


def test_set_metrics_top5_with_fewer_classes() -> None:
    metrics = SetMetrics(num_classes=3)
    metrics.update(torch.tensor([[0.1, 0.2, 0.7]]), torch.tensor([0]))
    out = metrics.compute()
    assert (out["top1"], out["top5"]) == (0.0, 100.0)


def test_best_last_tracker_and_its_checkpoint_entry() -> None:
    tracker = BestLast()
    for epoch, top1 in enumerate([10.0, 30.0, 30.0, 20.0]):
        tracker.update(epoch, top1)
    assert tracker.best == {"epoch": 1, "top1": 30.0}  # ties keep the earlier epoch
    assert tracker.last == {"epoch": 3, "top1": 20.0}
    # The layout every release writes and reads: checkpoint["tcclip"] beside the module's train_class_names.
    checkpoint = {"tcclip": {"train_class_names": ["a", "b"]}}
    tracker.on_save_checkpoint(None, None, checkpoint)
    assert checkpoint["tcclip"] == {"train_class_names": ["a", "b"], "best": tracker.best, "last": tracker.last}
    restored = BestLast()
    restored.on_load_checkpoint(None, None, checkpoint)
    assert restored.record() == tracker.record()
    empty = BestLast()
    empty.on_load_checkpoint(None, None, {})
    assert empty.record() == {"best": None, "last": None}


def test_hparams_hold_plain_dicts(module: TCCLIPModule) -> None:
    assert module.hparams["model_config"] == TINY.to_dict()
    assert TCCLIPConfig.from_dict(module.hparams["model_config"]) == TINY
    assert module.hparams["optim"] == {
        "lr": 1e-3,
        "lr_min": 1e-5,
        "warmup_epochs": 1,
        "total_batch_size": None,
        "weight_decay": 0.001,
        "betas": (0.9, 0.98),
        "eps": 1e-8,
        "lr_10x": True,
    }
    assert module.hparams["loss"] == {
        "mixup": True,
        "mixup_alpha": 0.8,
        "cutmix_alpha": 1.0,
        "mixup_switch_prob": 0.5,
        "label_smoothing": 0.1,
    }
    # What load_from_checkpoint passes back in builds the same module.
    again = TCCLIPModule(**{k: v for k, v in module.hparams.items() if not k.startswith("_")})
    assert (again.optim, again.loss_config, again.model_config) == (module.optim, module.loss_config, TINY)


def test_flat_hyper_parameters_read_both_layouts(module: TCCLIPModule) -> None:
    flat = flat_hyper_parameters(module.hparams)
    assert flat["lr"] == 1e-3 and flat["mixup"] is True and flat["total_batch_size"] is None
    assert "optim" not in flat and "loss" not in flat and flat["clip_weights"] is None
    earlier = {"lr": 2e-6, "mixup": False, "model_config": {}}  # an earlier release's flat hyper_parameters
    assert flat_hyper_parameters(earlier) == earlier


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda: Optimization(lr=0, lr_min=0, warmup_epochs=1), "model.optim.lr"),
        (lambda: Optimization(lr=1e-3, lr_min=1e-2, warmup_epochs=1), "model.optim.lr_min"),
        (lambda: Optimization(lr=1e-3, lr_min=0, warmup_epochs=-1), "model.optim.warmup_epochs"),
        (lambda: Optimization(lr=1e-3, lr_min=0, warmup_epochs=1, betas=(0.9, 1.0)), "model.optim.betas"),
        (lambda: Optimization(lr=1e-3, lr_min=0, warmup_epochs=1, total_batch_size=0), "model.optim.total_batch_size"),
        (lambda: Optimization(lr=float("nan"), lr_min=0, warmup_epochs=1), "model.optim.lr"),
        (lambda: Loss(label_smoothing=1.0), "model.loss.label_smoothing"),
        (lambda: Loss(mixup_alpha=0), "model.loss.mixup_alpha"),
        (lambda: Loss(mixup_switch_prob=1.5), "model.loss.mixup_switch_prob"),
        (lambda: WiseFT(1.5), "model.wise_ft_weight"),
        (lambda: TCCLIPModule(model_config=TINY, clip_weights=None, wise_ft_weight=-0.1), "model.wise_ft_weight"),
    ],
)
def test_hyper_parameters_out_of_range_are_named(make, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        make()
    assert err.value.key == key


def test_hyper_parameters_are_frozen() -> None:
    from dataclasses import FrozenInstanceError

    with pytest.raises(FrozenInstanceError):
        Optimization(lr=1e-3, lr_min=0, warmup_epochs=1).lr = 1.0  # type: ignore[misc]


def test_reports_are_callbacks_the_module_attaches(module: TCCLIPModule) -> None:
    kinds = [type(c) for c in module.configure_callbacks()]
    assert kinds == [EvaluationMetrics, BestLast, ConfusionMatrices]  # BestLast reads EvaluationMetrics: after it
    wise = TCCLIPModule(model_config=TINY, clip_weights=None, wise_ft_weight=0.7, log_confusion_matrix=False)
    callbacks = wise.configure_callbacks()
    assert [type(c) for c in callbacks] == [EvaluationMetrics, BestLast, WiseFT] and callbacks[2].weight == 0.7


def test_wise_ft_model_mixes_clip_and_finetuned_weights(module: TCCLIPModule) -> None:
    clip_state = {k: v.clone() for k, v in module.model.state_dict().items()}
    with torch.no_grad():  # pretend fine-tuning moved every trainable tensor by +1
        for param in module.model.parameters():
            if param.requires_grad:
                param.add_(1.0)
    try:
        wise = wise_ft_network(module.model, module.model_config, None, 0.7).state_dict()
        clip_name = "image_encoder.transformer.resblocks.0.attn.q_proj.weight"
        torch.testing.assert_close(wise[clip_name], clip_state[clip_name] + 0.7)
        for kept in ("prompt_learner.ctx", "image_encoder.transformer.resblocks.1.attn.local_global_bias_table"):
            torch.testing.assert_close(wise[kept], clip_state[kept] + 1.0)
        # The module's own network is untouched.
        torch.testing.assert_close(module.model.state_dict()[clip_name], clip_state[clip_name] + 1.0)
    finally:
        module.model.load_state_dict(clip_state)


def test_random_clip_weights_are_reproducible(module: TCCLIPModule) -> None:
    other = TCCLIPModule(model_config=TINY, clip_weights=None)
    name = "image_encoder.conv1.weight"
    torch.testing.assert_close(other.model.state_dict()[name], module.model.state_dict()[name])


def test_freeze_image_keeps_tc_clip_additions_trainable() -> None:
    m = TCCLIPModule(model_config=TINY, clip_weights=None, freeze_image=True)
    trainable = {n for n, p in m.model.named_parameters() if p.requires_grad}
    assert "image_encoder.conv1.weight" not in trainable
    assert "image_encoder.transformer.resblocks.1.attn.local_global_bias_table" in trainable
    assert "text_encoder.ln_final.weight" in trainable and "logit_scale" in trainable


def test_freeze_backbone_leaves_only_the_new_parts() -> None:
    m = TCCLIPModule(model_config=TINY, clip_weights=None, freeze_image=True, freeze_text=True)
    for name, param in m.model.named_parameters():
        assert param.requires_grad == (m.model.keeps_finetuned_in_wise_ft(name) and "token_embedding" not in name), name


class _FakeTrainer:
    """What configure_optimizers / setup read from the Trainer (weak-referenceable, unlike SimpleNamespace)."""

    def __init__(self, **kw) -> None:
        self.__dict__.update(kw)


def test_configure_optimizers_x10_groups_and_warmup_from_zero(module: TCCLIPModule) -> None:
    module.trainer = _FakeTrainer(
        estimated_stepping_batches=40, num_training_batches=8, accumulate_grad_batches=2, max_epochs=10
    )
    try:
        conf = module.configure_optimizers()
    finally:
        module.trainer = None
    optimizer, scheduler = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    assert [g["name"] for g in optimizer.param_groups] == ["clip", "new"]
    assert [g["initial_lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 1e-2])
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["eps"] == 1e-8
    assert all(g["weight_decay"] == 0.001 for g in optimizer.param_groups)
    assert [g["lr"] for g in optimizer.param_groups] == [0.0, 0.0]
    # 8 batches / 2 accumulation = 4 steps per epoch: 4 warm-up steps of 40.
    factors = scheduler.lr_lambdas[0]
    assert (factors.warmup_steps, factors.total_steps) == (4, 40)


def test_fit_refuses_a_trainer_whose_accumulation_misses_the_total_batch() -> None:
    optim = Optimization(lr=1e-3, lr_min=1e-5, warmup_epochs=1, total_batch_size=64)
    m = TCCLIPModule(model_config=TINY, clip_weights=None, optim=optim)
    m.train_class_names = ["a", "b"]
    data = SimpleNamespace(batch_size=8)
    m.trainer = _FakeTrainer(world_size=2, accumulate_grad_batches=4)
    try:
        m._setup_fit(data)  # 8 x 2 x 4 = 64: the module only checks, never changes it
        assert m.trainer.accumulate_grad_batches == 4
        m.trainer.accumulate_grad_batches = 1
        with pytest.raises(ValueError, match="accumulate_grad_batches=4"):
            m._setup_fit(data)
        assert m.trainer.accumulate_grad_batches == 1
    finally:
        m.trainer = None


def test_fit_needs_an_optimisation_recipe() -> None:
    m = TCCLIPModule(model_config=TINY, clip_weights=None)
    with pytest.raises(ConfigError, match="model.optim: training needs"):
        m._setup_fit(SimpleNamespace(batch_size=8))


def test_init_checkpoint_loads_our_lightning_checkpoint(module: TCCLIPModule, tmp_path) -> None:
    source = TCCLIPModule(model_config=TINY, clip_weights=None)
    with torch.no_grad():
        source.model.prompt_learner.ctx.add_(3.0)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": source.state_dict()}, path)
    target = TCCLIPModule(model_config=TINY, clip_weights=None)
    load_init_checkpoint(target.model, path)
    torch.testing.assert_close(target.model.prompt_learner.ctx, source.model.prompt_learner.ctx)


def test_init_checkpoint_of_another_network_is_refused(tmp_path) -> None:
    other = TCCLIPModule(model_config=TINY.replace(local_global_bias=False), clip_weights=None)
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": other.state_dict()}, path)
    with pytest.raises(ValueError, match="does not match"):
        load_init_checkpoint(TCCLIPModule(model_config=TINY, clip_weights=None).model, path)


def test_summaries_mean_std_and_harmonic_mean() -> None:
    sets = {"split1": {"top1": 50.0}, "split2": {"top1": 54.0}, "split3": {"top1": 52.0}}
    summary = summarize_sets(sets, "zero_shot")
    assert summary["mean_top1"] == pytest.approx(52.0)
    assert summary["std_top1"] == pytest.approx(math.sqrt(8 / 3))
    b2n = summarize_sets({"base": {"top1": 80.0}, "novel": {"top1": 60.0}}, "base2novel")
    assert b2n["hm"] == pytest.approx(harmonic_mean(80.0, 60.0)) == pytest.approx(2 * 80 * 60 / 140)


def test_results_payload_follows_the_contract(module: TCCLIPModule) -> None:
    evaluation, best_last, wise = EvaluationMetrics(), BestLast(), WiseFT(0.5)
    evaluation.results = {"stage": "test", "sets": {"split1": {"top1": 60.0, "top5": 90.0, "num_videos": 3}}}
    wise.results = {"weight": 0.5, "sets": {"split1": {"top1": 50.0, "top5": 80.0, "num_videos": 3}}}
    best_last.update(0, 55.0)
    datamodule = SimpleNamespace(protocol="few_shot", dataset_name="hmdb51", shots=8, seed=1, llm_labels=True)
    trainer = SimpleNamespace(datamodule=datamodule, state=SimpleNamespace(fn=SimpleNamespace(value="test")))
    trainer.ckpt_path = "x.ckpt"
    trainer.callbacks = [evaluation, best_last]
    payload = results_payload(trainer, module)
    assert {k: payload[k] for k in ("protocol", "dataset", "variant", "shots", "seed", "stage", "checkpoint")} == {
        "protocol": "few_shot",
        "dataset": "hmdb51",
        "variant": "llm",
        "shots": 8,
        "seed": None,
        "stage": "test",
        "checkpoint": "x.ckpt",
    }
    assert payload["sets"]["split1"]["top1"] == 60.0
    assert payload["best"] == {"epoch": 0, "top1": 55.0} and payload["last"] == {"epoch": 0, "top1": 55.0}
    assert payload["wise_ft"] is None
    trainer.callbacks.append(wise)
    with_wise = results_payload(trainer, module)["wise_ft"]
    assert with_wise["weight"] == 0.5 and with_wise["sets"]["split1"]["top1"] == 50.0
    assert with_wise["summary"]["mean_top1"] == 50.0
    trainer.callbacks = []
    assert results_payload(trainer, module) is None  # nothing evaluated yet
