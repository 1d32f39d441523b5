"""`TCCLIPModule`: the LightningModule around a TC-CLIP / ViFi-CLIP / vanilla CLIP network.

It holds the network (`tcclip.training.network`), the training loss (mixup / cutmix with soft-target cross-entropy,
or label smoothing) and the optimiser and schedule that `model.optim` describes (`tcclip.training.schedule`). Its
evaluation steps return multi-view class probabilities; the reports (accuracy per set, WiSE-FT, confusion matrices,
best and last epoch) are callbacks (`tcclip.training.reporting`), which the module attaches itself. Devices, DDP,
precision and gradient accumulation belong to the Trainer: `tcclip fit` derives the accumulation from
`model.optim.total_batch_size` before it builds the Trainer, and `setup` only checks that the two agree.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from timm.loss import SoftTargetCrossEntropy
from torch import Tensor

from tcclip.data.mixup import MixupCutmix
from tcclip.model.config import TCCLIPConfig
from tcclip.training.hparams import Loss, Optimization, check_wise_ft_weight, plain
from tcclip.training.metrics import multi_view_probabilities
from tcclip.training.network import build_network, freeze, load_init_checkpoint, need_two_classes, use_class_names
from tcclip.training.reporting import CKPT_KEY, BestLast, ConfusionMatrices, EvaluationMetrics, WiseFT
from tcclip.training.schedule import check_accumulation, configure_optimizer
from tcclip.utils.errors import ConfigError
from tcclip.utils.finite import NonFiniteError

log = logging.getLogger(__name__)

DEFAULT_MODEL_CONFIG = TCCLIPConfig()
DEFAULT_LOSS = Loss()


class TCCLIPModule(L.LightningModule):
    """Train and evaluate a TC-CLIP / ViFi-CLIP / CLIP network on the datamodule's class names.

    Args:
        model_config: the network (`TCCLIPConfig`): kind, CLIP architecture, TC-CLIP options.
        clip_weights: CLIP weights: `openai`, a path to OpenAI / open_clip weights, or null for random weights
            (drawn from a fixed seed; tests and the demo).
        init_checkpoint: start from a TC-CLIP checkpoint instead of CLIP (the (P) variants): an official `.pth` or
            one of our Lightning `.ckpt` files. Loaded at `setup`, before any `--ckpt_path` restore.
        optim: the optimiser, schedule and effective batch (`Optimization`: lr, lr_min, warmup_epochs,
            total_batch_size, ...), from the protocol's recipe in the experiment config. Needed by `fit` only.
        loss: the training loss (`Loss`: mixup / cutmix, label smoothing).
        freeze_image: freeze the CLIP image encoder (TC-CLIP's own additions, e.g. the local-global bias, still train).
        freeze_text: freeze the CLIP text encoder (the prompt learner and prompt-generation layers still train).
            Both together ("backbone") also freeze `logit_scale`.
        wise_ft_weight: when set, `validate` / `test` also evaluate the WiSE-FT model
            (`tcclip.training.reporting.WiseFT`): (1 - w) * CLIP + w * fine-tuned.
        log_confusion_matrix: log a confusion-matrix image per evaluation set to TensorBoard.
    """

    def __init__(
        self,
        model_config: TCCLIPConfig = DEFAULT_MODEL_CONFIG,
        clip_weights: str | None = "openai",
        init_checkpoint: str | None = None,
        optim: Optimization | None = None,
        loss: Loss = DEFAULT_LOSS,
        freeze_image: bool = False,
        freeze_text: bool = False,
        wise_ft_weight: float | None = None,
        log_confusion_matrix: bool = True,
    ) -> None:
        super().__init__()
        # load_from_checkpoint passes the stored dicts back in.
        self.model_config = TCCLIPConfig.from_dict(model_config) if isinstance(model_config, dict) else model_config
        self.optim = Optimization(**optim) if isinstance(optim, Mapping) else optim
        self.loss_config = Loss(**loss) if isinstance(loss, Mapping) else loss
        check_wise_ft_weight(wise_ft_weight)
        self.save_hyperparameters()
        # Plain types only in hparams, so checkpoints load with weights_only=True (checkpoint.load_model reads this).
        self.hparams.update(
            model_config=self.model_config.to_dict(), optim=plain(self.optim), loss=plain(self.loss_config)
        )
        self.model = build_network(self.model_config, clip_weights)
        freeze(self.model, freeze_image, freeze_text)
        self.train_class_names: list[str] = []
        self.mixup_fn: MixupCutmix | None = None
        self._init_checkpoint_loaded = False

    def configure_callbacks(self) -> list[Callback]:
        callbacks: list[Callback] = [EvaluationMetrics(), BestLast()]  # in this order: BestLast reads the first
        if self.hparams.wise_ft_weight is not None:
            callbacks.append(WiseFT(self.hparams.wise_ft_weight))
        if self.hparams.log_confusion_matrix:
            callbacks.append(ConfusionMatrices())
        return callbacks

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        missing = [a for a in ("train_class_names", "val_sets", "test_sets") if not hasattr(datamodule, a)]
        if datamodule is None or missing:
            raise TypeError(
                f"TCCLIPModule needs a tcclip data module (train_class_names, val_sets, test_sets); got "
                f"{type(datamodule).__name__}. Fix: pass one with --data (see configs/)."
            )
        self.train_class_names = list(datamodule.train_class_names)
        # A restored checkpoint (--ckpt_path) replaces these weights anyway, and need not exist any more.
        restoring = bool(getattr(self.trainer, "ckpt_path", None))
        if self.hparams.init_checkpoint and not self._init_checkpoint_loaded and not restoring:
            load_init_checkpoint(self.model, self.hparams.init_checkpoint)
            self._init_checkpoint_loaded = True
        if stage == "fit":
            self._setup_fit(datamodule)
        for s in {"fit": ["val"], "validate": ["val"], "test": ["test"]}.get(stage, []):
            for eval_set in self.eval_sets(s):
                need_two_classes(eval_set.class_names, f"the {s} set {eval_set.name!r}")

    def _setup_fit(self, datamodule: Any) -> None:
        if self.optim is None:
            raise ConfigError(
                "model.optim",
                "training needs an optimisation recipe (lr, lr_min, warmup_epochs, total_batch_size)",
                fix="Start from an experiment config of configs/ (each holds its protocol's recipe), or set "
                "model.optim.lr, model.optim.lr_min and model.optim.warmup_epochs.",
            )
        need_two_classes(self.train_class_names, "the training set")
        check_accumulation(self.optim.total_batch_size, datamodule, self.trainer)
        loss = self.loss_config
        if loss.mixup:
            self.mixup_fn = MixupCutmix(
                num_classes=len(self.train_class_names),
                mixup_alpha=loss.mixup_alpha,
                cutmix_alpha=loss.cutmix_alpha,
                switch_prob=loss.mixup_switch_prob,
                label_smoothing=loss.label_smoothing,
            )

    def configure_optimizers(self) -> dict[str, Any]:
        return configure_optimizer(self.optim, self.model, self.trainer)

    def forward(self, video: Tensor) -> Tensor:
        """Logits [B, C] of one view [B, T, 3, S, S] over the current class names."""
        return self.model(video)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        use_class_names(self.model, self.train_class_names)
        video, labels = batch["video"], batch["label"]
        # Training batches carry one view: [B, 1, T, 3, S, S]; more views are more samples of the same label.
        num_views = video.shape[1]
        video = video.flatten(0, 1)  # [B*V, T, 3, S, S]
        labels = labels.repeat_interleave(num_views)
        if self.mixup_fn is not None:
            video, targets = self.mixup_fn(video, labels)
            # Cross-entropy against the mixed, label-smoothed targets [B, C], averaged over the batch.
            loss = SoftTargetCrossEntropy()(self.model(video).float(), targets)
        else:
            logits = self.model(video)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.loss_config.label_smoothing)
        if not bool(torch.isfinite(loss)):
            # Stop before the optimiser step spreads it to the weights; RunGuard saves the still-finite weights.
            raise NonFiniteError(
                f"the training loss became {loss.detach().item()} at epoch {self.current_epoch}, global step "
                f"{self.global_step} (batch {batch_idx}); the run stops here",
                fix="Lower model.optim.lr, set trainer.gradient_clip_val, or use trainer.precision=32-true; check the "
                "epoch's videos.",
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=labels.numel())
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """`{"probs": [B, C]}` over the set's classes, for `tcclip.training.reporting.EvaluationMetrics`."""
        return self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        return self._eval_step("test", batch, dataloader_idx)

    def _eval_step(self, stage: str, batch: dict[str, Tensor], dataloader_idx: int) -> dict[str, Tensor]:
        eval_set = self.eval_sets(stage)[dataloader_idx]
        use_class_names(self.model, eval_set.class_names)
        probs = multi_view_probabilities(self.model, batch["video"], f"a {stage} batch of {eval_set.name}")
        return {"probs": probs}

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Probabilities [B, C] (multi-view), the dataset indices [B] and the class names they refer to."""
        datamodule = self.trainer.datamodule
        sets = list(getattr(datamodule, "predict_sets", None) or getattr(datamodule, "test_sets", []))
        names = list(sets[dataloader_idx].class_names) if sets else self.train_class_names
        use_class_names(self.model, names)
        probs = multi_view_probabilities(self.model, batch["video"], f"predict batch {batch_idx}")
        out = {"probs": probs.cpu(), "index": batch["index"].cpu(), "class_names": names}
        if "label" in batch:
            out["label"] = batch["label"].cpu()
        return out

    def eval_sets(self, stage: str) -> list[Any]:
        """The datamodule's evaluation sets of `stage` (`val` or `test`), each with `name` and `class_names`."""
        return list(self.trainer.datamodule.val_sets if stage == "val" else self.trainer.datamodule.test_sets)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault(CKPT_KEY, {})["train_class_names"] = list(self.train_class_names)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        ours = checkpoint.get(CKPT_KEY, {})
        if ours.get("train_class_names") and not self.train_class_names:
            self.train_class_names = list(ours["train_class_names"])
        self._init_checkpoint_loaded = True  # the restored weights replace whatever init_checkpoint would give
