"""`TCCLIPModule`: the LightningModule around a TC-CLIP / ViFi-CLIP / vanilla CLIP network.

The network comes from `tcclip.model.factory.create_model`; this module adds the loss (mixup / cutmix with
soft-target cross-entropy, or label smoothing), the optimiser and schedule (AdamW, linear warm-up then cosine, as the
official code trains), multi-view evaluation with torchmetrics and the reports (per evaluation set top-1 / top-5,
per-class accuracy, confusion matrix, WiSE-FT, best and last epoch). Devices, DDP and precision belong to the Trainer.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from timm.loss import SoftTargetCrossEntropy
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from tcclip.data.mixup import MixupCutmix
from tcclip.model.config import TCCLIPConfig
from tcclip.model.factory import create_model
from tcclip.model.weights import wise_ft
from tcclip.training.checkpoints import read_checkpoint
from tcclip.training.schedule import accumulation_steps, param_groups, schedule_steps, warmup_cosine_scheduler
from tcclip.utils.errors import ConfigError, UserError
from tcclip.utils.finite import NonFiniteError, check_finite_logits

log = logging.getLogger(__name__)

DEFAULT_MODEL_CONFIG = TCCLIPConfig()
RANDOM_CLIP_SEED = 0
"""Random CLIP weights (`clip_weights: null`) are drawn from this seed, so that WiSE-FT can rebuild them."""
# Keys of our own in Lightning checkpoints.
CKPT_KEY = "tcclip"
# Official checkpoints do not store the token-embedding table (it comes from CLIP's weights).
_NOT_IN_OFFICIAL_CHECKPOINTS = frozenset({"prompt_learner.token_embedding.weight"})


# --------------------------------------------------------------------------------------------------------------------
# Small helpers (pure functions, unit-tested)
# --------------------------------------------------------------------------------------------------------------------


def multi_view_probabilities(model: nn.Module, video: Tensor, what: str = "a batch of videos") -> Tensor:
    """Class probabilities of multi-view videos: softmax of every view's logits, averaged over the views.

    The official evaluation sums the per-view softmax; the mean (sum / V) ranks classes identically and stays a
    probability.
    Views run one at a time to bound memory (4 clips x 3 crops for fully-supervised testing).

    Args:
        model: maps [B, T, 3, S, S] to logits [B, C].
        video: [B, V, T, 3, S, S].
        what: whose logits these are, for the error message.

    Returns:
        [B, C] float32.

    Raises:
        NonFiniteError: a view's logits hold NaN / Inf (no answer is better than an arbitrary one).
    """
    if video.dim() != 6:
        raise ValueError(f"expected video [B, V, T, 3, S, S], got shape {tuple(video.shape)}")
    num_views = video.shape[1]
    total: Tensor | None = None
    for v in range(num_views):
        logits = model(video[:, v])
        check_finite_logits(logits, what)
        probs = logits.float().softmax(dim=-1)
        total = probs if total is None else total + probs
    return total / num_views


class BestLastTracker:
    """Validation top-1 of the best and of the last epoch during `fit` (the few-shot protocol reports both).

    `best` and `last` are `{"epoch": int, "top1": float}` or None; the dicts go into checkpoints as they are.
    """

    def __init__(self) -> None:
        self.best: dict[str, Any] | None = None
        self.last: dict[str, Any] | None = None

    def update(self, epoch: int, top1: float) -> None:
        self.last = {"epoch": int(epoch), "top1": float(top1)}
        # `>` keeps the earliest epoch on ties, like ModelCheckpoint(mode="max").
        if self.best is None or top1 > self.best["top1"]:
            self.best = dict(self.last)

    def state_dict(self) -> dict[str, dict[str, Any] | None]:
        return {"best": self.best, "last": self.last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.last = state.get("best"), state.get("last")


class SetMetrics(nn.Module):
    """Accuracy of one evaluation set: top-1, top-5 and the confusion matrix (per-class accuracy, video count).

    torchmetrics sums the states over processes at `compute()`, so every video counts once in DDP as long as the
    sampler does not pad (the data side guarantees that).
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")
        self.confusion = MulticlassConfusionMatrix(num_classes)

    def update(self, probs: Tensor, labels: Tensor) -> None:
        self.top1.update(probs, labels)
        self.top5.update(probs, labels)
        self.confusion.update(probs, labels)

    def compute(self) -> dict[str, Any]:
        """Percentages (rounded to 1e-4) and counts; `confusion` [C, C]: rows true class, columns predicted."""
        confusion = self.confusion.compute()
        per_class_total = confusion.sum(dim=1)
        per_class = torch.where(
            per_class_total > 0, 100.0 * confusion.diagonal() / per_class_total.clamp(min=1), torch.nan
        )
        return {
            "top1": round(100.0 * float(self.top1.compute()), 4),
            "top5": round(100.0 * float(self.top5.compute()), 4),
            "num_videos": int(per_class_total.sum()),
            "per_class_top1": [round(x, 4) for x in per_class.tolist()],
            "confusion": confusion,
        }

    def reset(self) -> None:
        self.top1.reset()
        self.top5.reset()
        self.confusion.reset()


def confusion_figure(confusion: Tensor, class_names: Sequence[str], title: str) -> Figure:
    """A matplotlib figure of a row-normalised confusion matrix (class names on the axes up to 40 classes).

    A bare `Figure` (no pyplot): no global backend or figure registry is touched.
    """
    counts = confusion.detach().float().cpu()
    norm = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    n = len(class_names)
    side = min(4 + 0.25 * n, 16)
    fig = Figure(figsize=(side, side))
    ax = fig.add_subplot()
    ax.imshow(norm.numpy(), vmin=0, vmax=1, cmap="Blues")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 40:
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), class_names, fontsize=7)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------------------------
# The LightningModule
# --------------------------------------------------------------------------------------------------------------------


class TCCLIPModule(L.LightningModule):
    """Train and evaluate a TC-CLIP / ViFi-CLIP / CLIP network on the datamodule's class names.

    Args:
        model_config: the network (`TCCLIPConfig`): kind, CLIP architecture, TC-CLIP options.
        clip_weights: CLIP weights: `openai`, a path to OpenAI / open_clip weights, or null for random weights
            (drawn from a fixed seed; tests and the demo).
        init_checkpoint: start from a TC-CLIP checkpoint instead of CLIP (the (P) variants): an official `.pth` or
            one of our Lightning `.ckpt` files. Loaded at `setup`, before any `--ckpt_path` restore.
        lr: peak learning rate of the CLIP parameters (the protocol's recipe, see `configs/`).
        lr_min: floor of the cosine schedule (absolute, for every group).
        warmup_epochs: linear warm-up length in epochs (may be fractional).
        weight_decay: AdamW weight decay on every trainable tensor.
        betas: AdamW betas.
        eps: AdamW epsilon.
        lr_10x: ten times the learning rate for the new parts (prompt learner, prompt-generation layers).
        total_batch_size: effective batch; gradient accumulation = total / (per-device batch x devices x nodes) is
            set at the start of `fit`. null: use `trainer.accumulate_grad_batches` as given.
        mixup: mixup / cutmix with soft-target cross-entropy; off: label-smoothing cross-entropy.
        mixup_alpha: Beta(alpha, alpha) of mixup.
        cutmix_alpha: Beta(alpha, alpha) of cutmix.
        mixup_switch_prob: probability of cutmix instead of mixup for a batch.
        label_smoothing: smoothing of the targets in both losses.
        freeze_image: freeze the CLIP image encoder (TC-CLIP's own additions, e.g. the local-global bias, still train).
        freeze_text: freeze the CLIP text encoder (the prompt learner and prompt-generation layers still train).
            Both together ("backbone") also freeze `logit_scale`.
        wise_ft_weight: when set, `validate` / `test` also evaluate the WiSE-FT model (Wortsman et al., CVPR 2022):
            (1 - w) * CLIP + w * fine-tuned, the TC-CLIP additions staying fine-tuned.
        log_confusion_matrix: log a confusion-matrix image per evaluation set to TensorBoard.
    """

    def __init__(
        self,
        model_config: TCCLIPConfig = DEFAULT_MODEL_CONFIG,
        clip_weights: str | None = "openai",
        init_checkpoint: str | None = None,
        lr: float = 2e-6,
        lr_min: float = 2e-8,
        warmup_epochs: float = 5.0,
        weight_decay: float = 0.001,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-8,
        lr_10x: bool = True,
        total_batch_size: int | None = None,
        mixup: bool = True,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        mixup_switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        freeze_image: bool = False,
        freeze_text: bool = False,
        wise_ft_weight: float | None = None,
        log_confusion_matrix: bool = True,
    ) -> None:
        super().__init__()
        # load_from_checkpoint passes the stored dict back in.
        if isinstance(model_config, dict):
            model_config = TCCLIPConfig.from_dict(model_config)
        check_hyper_parameters(
            lr=lr,
            lr_min=lr_min,
            warmup_epochs=warmup_epochs,
            weight_decay=weight_decay,
            betas=betas,
            eps=eps,
            total_batch_size=total_batch_size,
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            mixup_switch_prob=mixup_switch_prob,
            label_smoothing=label_smoothing,
            wise_ft_weight=wise_ft_weight,
        )
        self.save_hyperparameters()
        # Plain types only in hparams, so checkpoints load with weights_only=True (tcclip.load_model reads this).
        self.hparams["model_config"] = model_config.to_dict()
        self.model_config = model_config
        self.model = build_network(model_config, clip_weights)
        self._freeze(freeze_image, freeze_text)

        self.train_class_names: list[str] = []
        self.best_last = BestLastTracker()
        self.mixup_fn = None
        self.eval_metrics = nn.ModuleDict()  # "<stage>" / "<stage>_wise" -> ModuleList[SetMetrics], one per set
        self.eval_results: dict[str, Any] | None = None  # read by callbacks.ResultsJSON
        self._init_checkpoint_loaded = False
        self._wise_model: nn.Module | None = None  # not a submodule: never saved, moved by hand

    # ----------------------------------------------------------------------------------------------------------------
    # Building
    # ----------------------------------------------------------------------------------------------------------------

    def _freeze(self, image: bool, text: bool) -> None:
        for name, param in self.model.named_parameters():
            if self.model.keeps_finetuned_in_wise_ft(name):
                continue  # TC-CLIP's own parts (local-global bias, prompts) stay trainable
            if (image and name.startswith("image_encoder.")) or (text and name.startswith("text_encoder.")):
                param.requires_grad_(False)
            elif image and text and name == "logit_scale":
                param.requires_grad_(False)

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
            self._set_gradient_accumulation(datamodule)
            if self.hparams.mixup:
                self.mixup_fn = MixupCutmix(
                    num_classes=len(self.train_class_names),
                    mixup_alpha=self.hparams.mixup_alpha,
                    cutmix_alpha=self.hparams.cutmix_alpha,
                    switch_prob=self.hparams.mixup_switch_prob,
                    label_smoothing=self.hparams.label_smoothing,
                )
        stages = {"fit": ["val"], "validate": ["val"], "test": ["test"]}.get(stage, [])
        if stage == "fit":
            _need_two_classes(self.train_class_names, "the training set")
        for s in stages:
            sets = self._eval_sets(s)
            for eval_set in sets:
                _need_two_classes(eval_set.class_names, f"the {s} set {eval_set.name!r}")
            self.eval_metrics[s] = nn.ModuleList(SetMetrics(len(e.class_names)) for e in sets)
            if self.hparams.wise_ft_weight is not None and stage != "fit":
                self.eval_metrics[f"{s}_wise"] = nn.ModuleList(SetMetrics(len(e.class_names)) for e in sets)

    def _set_gradient_accumulation(self, datamodule: Any) -> None:
        total = self.hparams.total_batch_size
        if total is None:
            return
        per_device = getattr(datamodule, "batch_size", None)
        if per_device is None:
            raise AttributeError(
                f"{type(datamodule).__name__} has no `batch_size`: cannot derive gradient accumulation from "
                "model.total_batch_size. Fix: set model.total_batch_size: null and trainer.accumulate_grad_batches."
            )
        steps = accumulation_steps(total, int(per_device), self.trainer.world_size)
        given = self.trainer.accumulate_grad_batches
        if given not in (1, steps):
            raise ValueError(
                f"trainer.accumulate_grad_batches={given} conflicts with model.total_batch_size={total} "
                f"(which gives {steps} with batch_size {per_device} x {self.trainer.world_size} device(s)). "
                "Fix: leave trainer.accumulate_grad_batches at 1, or set model.total_batch_size: null."
            )
        self.trainer.accumulate_grad_batches = steps
        log.info(
            "effective batch %d = %d per device x %d device(s) x %d accumulation step(s)",
            total,
            per_device,
            self.trainer.world_size,
            steps,
        )

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = param_groups(
            self.model.named_parameters(),
            lr=hp.lr,
            weight_decay=hp.weight_decay,
            lr_10x=hp.lr_10x,
            is_new_parameter=self.model.is_new_parameter,
        )
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps, weight_decay=hp.weight_decay)
        total = self.trainer.estimated_stepping_batches  # also loads the train dataloader
        if not math.isfinite(total):
            raise ValueError("the cosine schedule needs a finite run: set trainer.max_epochs or trainer.max_steps")
        warmup, full = schedule_steps(
            int(self.trainer.num_training_batches),
            self.trainer.accumulate_grad_batches,
            max(int(self.trainer.max_epochs or 1), 1),
            hp.warmup_epochs,
        )
        # With trainer.max_steps shorter than the epochs, the schedule ends with the run.
        scheduler = warmup_cosine_scheduler(
            optimizer, lr_min=hp.lr_min, warmup_steps=warmup, total_steps=min(full, int(total))
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----------------------------------------------------------------------------------------------------------------
    # Steps
    # ----------------------------------------------------------------------------------------------------------------

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
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.hparams.label_smoothing)
        if not bool(torch.isfinite(loss)):
            # Stop before the optimiser step spreads it to the weights; RunGuard saves the still-finite weights.
            raise NonFiniteError(
                f"the training loss became {loss.detach().item()} at epoch {self.current_epoch}, global step "
                f"{self.global_step} (batch {batch_idx}); the run stops here",
                fix="Lower model.lr, set trainer.gradient_clip_val, or use trainer.precision=32-true; check the "
                "epoch's videos.",
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=labels.numel())
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch, dataloader_idx)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Probabilities [B, C] (multi-view), the dataset indices [B] and the class names they refer to."""
        sets = self._predict_sets()
        names = list(sets[dataloader_idx].class_names) if sets else self.train_class_names
        use_class_names(self.model, names)
        probs = multi_view_probabilities(self.model, batch["video"], f"predict batch {batch_idx}")
        out = {"probs": probs.cpu(), "index": batch["index"].cpu(), "class_names": names}
        if "label" in batch:
            out["label"] = batch["label"].cpu()
        return out

    def _eval_step(self, stage: str, batch: dict[str, Tensor], dataloader_idx: int) -> None:
        names = list(self._eval_sets(stage)[dataloader_idx].class_names)
        use_class_names(self.model, names)
        what = f"a {stage} batch of {self._eval_sets(stage)[dataloader_idx].name}"
        probs = multi_view_probabilities(self.model, batch["video"], what)
        self.eval_metrics[stage][dataloader_idx].update(probs, batch["label"])
        if self._wise_model is not None:
            use_class_names(self._wise_model, names)
            wise_probs = multi_view_probabilities(self._wise_model, batch["video"], f"{what} (WiSE-FT model)")
            self.eval_metrics[f"{stage}_wise"][dataloader_idx].update(wise_probs, batch["label"])

    def _eval_sets(self, stage: str) -> list[Any]:
        return list(self.trainer.datamodule.val_sets if stage == "val" else self.trainer.datamodule.test_sets)

    def _predict_sets(self) -> list[Any]:
        datamodule = self.trainer.datamodule
        return list(getattr(datamodule, "predict_sets", None) or getattr(datamodule, "test_sets", []))

    # ----------------------------------------------------------------------------------------------------------------
    # WiSE-FT (Wortsman et al., CVPR 2022)
    # ----------------------------------------------------------------------------------------------------------------

    def wise_ft_model(self, weight: float) -> nn.Module:
        """A copy of the network with weights (1 - w) * CLIP + w * fine-tuned (TC-CLIP additions kept fine-tuned)."""
        clip_state = build_network(self.model_config, self.hparams.clip_weights).state_dict()
        fused = wise_ft(self.model.state_dict(), clip_state, weight, keep=self.model.keeps_finetuned_in_wise_ft)
        wise = copy.deepcopy(self.model)
        wise.load_state_dict(fused)
        return wise.eval()

    def _start_eval(self) -> None:
        w = self.hparams.wise_ft_weight
        if w is not None and self.trainer.state.fn in ("validate", "test"):
            self._wise_model = self.wise_ft_model(w).to(self.device)
            log.info("evaluating the fine-tuned model and its WiSE-FT fusion with weight %.2f", w)

    def on_validation_start(self) -> None:
        self._start_eval()

    def on_test_start(self) -> None:
        self._start_eval()

    def on_validation_end(self) -> None:
        self._wise_model = None

    def on_test_end(self) -> None:
        self._wise_model = None

    # ----------------------------------------------------------------------------------------------------------------
    # Epoch ends: metrics, logs, results
    # ----------------------------------------------------------------------------------------------------------------

    def on_validation_epoch_end(self) -> None:
        self._finish_eval("val")

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test")

    def _finish_eval(self, stage: str) -> None:
        sets = self._eval_sets(stage)
        results = self._collect(stage, sets, prefix=stage)
        wise = None
        if f"{stage}_wise" in self.eval_metrics and self._wise_model is not None:
            wise = {
                "weight": self.hparams.wise_ft_weight,
                "sets": self._collect(f"{stage}_wise", sets, prefix=f"{stage}_wise"),
            }
        mean_top1 = sum(r["top1"] for r in results.values()) / max(len(results), 1)
        # `<stage>/top1`: mean over the evaluation sets; what ModelCheckpoint monitors and best/last track.
        self.log(f"{stage}/top1", mean_top1, prog_bar=True, sync_dist=True)
        if stage == "val" and self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.best_last.update(self.current_epoch, mean_top1)
        self.eval_results = {"stage": stage, "sets": results, "wise_ft": wise}

    def _collect(self, key: str, sets: Sequence[Any], prefix: str) -> dict[str, dict[str, Any]]:
        out = {}
        for eval_set, metrics in zip(sets, self.eval_metrics[key], strict=True):
            m = metrics.compute()
            metrics.reset()
            for name in ("top1", "top5"):
                self.log(f"{prefix}/{eval_set.name}/{name}", m[name], sync_dist=True)
            if self.hparams.log_confusion_matrix and not self.trainer.sanity_checking:
                self._log_confusion(m["confusion"], eval_set, prefix)
            out[eval_set.name] = {
                "top1": m["top1"],
                "top5": m["top5"],
                "num_videos": m["num_videos"],
                "per_class_top1": dict(zip(eval_set.class_names, m["per_class_top1"], strict=True)),
            }
        return out

    def _log_confusion(self, confusion: Tensor, eval_set: Any, prefix: str) -> None:
        if not self.trainer.is_global_zero:
            return
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                fig = confusion_figure(confusion, eval_set.class_names, f"{prefix} {eval_set.name}")
                logger.experiment.add_figure(f"{prefix}/{eval_set.name}/confusion", fig, self.global_step)

    # ----------------------------------------------------------------------------------------------------------------
    # Checkpoints
    # ----------------------------------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CKPT_KEY] = {"train_class_names": list(self.train_class_names), **self.best_last.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        ours = checkpoint.get(CKPT_KEY, {})
        self.best_last.load_state_dict(ours)
        if ours.get("train_class_names") and not self.train_class_names:
            self.train_class_names = list(ours["train_class_names"])
        self._init_checkpoint_loaded = True  # the restored weights replace whatever init_checkpoint would give


# --------------------------------------------------------------------------------------------------------------------
# Network construction and weights
# --------------------------------------------------------------------------------------------------------------------


def _need_two_classes(names: Sequence[str], what: str) -> None:
    """A classifier of one class is always right: its accuracy (and torchmetrics) mean nothing."""
    if len(names) < 2:
        raise UserError(
            f"{what} has {len(names)} class(es) ({', '.join(map(repr, names[:1])) or 'none'}); classification needs "
            "at least two",
            fix="Check the label file and video lists of data.init_args (root, splits): every split should cover "
            "two or more classes.",
        )


def check_hyper_parameters(**values: Any) -> None:
    """Refuse an optimiser or loss setting out of range before any work, naming its key (`model.<name>`)."""

    def bad(name: str, rule: str) -> ConfigError:
        return ConfigError(f"model.{name}", f"must be {rule}, got {values[name]!r}", fix=f"Fix model.{name}.")

    def number(name: str) -> float:
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad(name, "a finite number")
        return float(value)

    if number("lr") <= 0:
        raise bad("lr", "> 0 (the peak learning rate)")
    if not 0 <= number("lr_min") <= values["lr"]:
        raise bad("lr_min", f">= 0 and <= model.lr ({values['lr']})")
    for name in ("warmup_epochs", "weight_decay"):
        if number(name) < 0:
            raise bad(name, ">= 0")
    if number("eps") <= 0:
        raise bad("eps", "> 0")
    betas = values["betas"]
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2 and all(0 <= float(b) < 1 for b in betas)):
        raise bad("betas", "two numbers in [0, 1)")
    total = values["total_batch_size"]
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 1):
        raise bad("total_batch_size", "an integer >= 1, or null (use trainer.accumulate_grad_batches as given)")
    for name in ("mixup_alpha", "cutmix_alpha"):
        if number(name) <= 0:
            raise bad(name, "> 0")
    if not 0 <= number("mixup_switch_prob") <= 1:
        raise bad("mixup_switch_prob", "in [0, 1]")
    if not 0 <= number("label_smoothing") < 1:
        raise bad("label_smoothing", "in [0, 1)")
    wise = values["wise_ft_weight"]
    if wise is not None and not 0.0 <= number("wise_ft_weight") <= 1.0:
        raise bad("wise_ft_weight", "in [0, 1] or null")


def build_network(cfg: TCCLIPConfig, clip_weights: str | None) -> nn.Module:
    """`create_model` with no class names yet; random CLIP weights come from `RANDOM_CLIP_SEED`."""
    if clip_weights is not None:
        try:
            return create_model(cfg, (), clip_weights=clip_weights)
        except UserError:
            raise
        except (ValueError, OSError) as err:  # not a weights file, the wrong architecture, a failed download
            raise ConfigError(
                "model.clip_weights",
                f"cannot use {clip_weights!r}: {str(err).splitlines()[0][:400]}",
                fix="Give model.clip_weights 'openai', the path of OpenAI / open_clip weights for "
                f"{cfg.arch}, or null (random weights).",
            ) from err
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_CLIP_SEED)
        return create_model(cfg, (), clip_weights=None)


def use_class_names(model: nn.Module, names: Sequence[str]) -> None:
    """Point the network at a class list (cheap when unchanged: the model rebuilds its prompts only on change)."""
    if list(model.class_names) != list(names):
        model.set_class_names(list(names))


def read_init_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Network weights from an official TC-CLIP `.pth` or one of our `.ckpt` files (keys without prefix, all finite)."""
    return read_checkpoint(path).state_dict


def load_init_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a TC-CLIP checkpoint into `model`; only the token-embedding table may be absent (it comes from CLIP)."""
    state = read_init_state_dict(path)
    result = model.load_state_dict(state, strict=False)
    missing = set(result.missing_keys) - _NOT_IN_OFFICIAL_CHECKPOINTS
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{path}: does not match the configured network (model.model_config). "
            f"Missing: {sorted(missing)[:8]}; unexpected: {sorted(result.unexpected_keys)[:8]}. "
            "Fix: use the model_config the checkpoint was trained with."
        )
    log.info("initialised the network from %s", path)
