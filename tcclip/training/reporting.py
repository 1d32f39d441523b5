"""Callbacks that report an evaluation of a `TCCLIPModule`: accuracy per evaluation set, WiSE-FT, confusion matrices,
and the best and last epoch of a fit.

The module's `validation_step` / `test_step` return the multi-view class probabilities of a batch
(`{"probs": [B, C]}`); these callbacks do the rest. The module attaches them itself
(`TCCLIPModule.configure_callbacks`), in this order: `EvaluationMetrics` logs `<stage>/top1` (what ModelCheckpoint
monitors) before `BestLast` reads it. `tcclip.training.callbacks.ResultsJSON` writes what they hold.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, TypeVar

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from tcclip.training.hparams import check_wise_ft_weight
from tcclip.training.metrics import SetMetrics, confusion_figure, multi_view_probabilities
from tcclip.training.network import use_class_names, wise_ft_network

log = logging.getLogger(__name__)

CKPT_KEY = "tcclip"
"""Our own entry in Lightning checkpoints: `train_class_names` (the module), `best` and `last` (`BestLast`)."""

C = TypeVar("C", bound=Callback)


def find_callback(trainer: L.Trainer, kind: type[C]) -> C | None:
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)


class SetsAccuracy:
    """`SetMetrics` of each evaluation set of a stage, logged under one prefix (`val`, `test_wise`, ...)."""

    def __init__(self, sets: Sequence[Any], module: L.LightningModule) -> None:
        self.sets = list(sets)
        self.metrics = nn.ModuleList(SetMetrics(len(s.class_names)) for s in self.sets).to(module.device)

    def update(self, index: int, probs: Tensor, labels: Tensor) -> None:
        self.metrics[index].update(probs, labels)

    def collect(self, module: L.LightningModule, prefix: str) -> tuple[dict[str, dict[str, Any]], list[tuple]]:
        """Compute (collective in DDP), log `<prefix>/<set>/top1|top5`, reset; the per-set results and
        `(prefix, set, confusion)` of each set."""
        out, confusions = {}, []
        for eval_set, metrics in zip(self.sets, self.metrics, strict=True):
            m = metrics.compute()
            metrics.reset()
            for name in ("top1", "top5"):
                module.log(f"{prefix}/{eval_set.name}/{name}", m[name], sync_dist=True)
            confusions.append((prefix, eval_set, m["confusion"]))
            out[eval_set.name] = {
                "top1": m["top1"],
                "top5": m["top5"],
                "num_videos": m["num_videos"],
                "per_class_top1": dict(zip(eval_set.class_names, m["per_class_top1"], strict=True)),
            }
        return out, confusions


class _StageCallback(Callback):
    """Routes Lightning's validation and test hooks to `_start(stage)`, `_update(stage)`, `_finish(stage)`."""

    def _start(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None: ...

    def _update(self, module: L.LightningModule, stage: str, outputs: Any, batch: Any, index: int) -> None: ...

    def _finish(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None: ...

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module, "test")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(pl_module, "val", outputs, batch, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(pl_module, "test", outputs, batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, pl_module, "test")


class EvaluationMetrics(_StageCallback):
    """Top-1, top-5 and confusion matrix of each evaluation set; logs `<stage>/<set>/top1|top5` and `<stage>/top1`,
    the mean top-1 over the sets (what ModelCheckpoint monitors and `BestLast` tracks).

    `results` (`{"stage", "sets"}`), `mean_top1` and `confusions` hold the latest evaluation.
    """

    def __init__(self) -> None:
        self.accuracy: SetsAccuracy | None = None
        self.results: dict[str, Any] | None = None
        self.mean_top1: float | None = None
        self.confusions: list[tuple] = []

    def _start(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        self.accuracy = SetsAccuracy(module.eval_sets(stage), module)

    def _update(self, module: L.LightningModule, stage: str, outputs: Any, batch: Any, index: int) -> None:
        self.accuracy.update(index, outputs["probs"], batch["label"])

    def _finish(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        sets, self.confusions = self.accuracy.collect(module, stage)
        self.mean_top1 = sum(r["top1"] for r in sets.values()) / max(len(sets), 1)
        module.log(f"{stage}/top1", self.mean_top1, prog_bar=True, sync_dist=True)
        self.results = {"stage": stage, "sets": sets}


class WiseFT(_StageCallback):
    """`validate` / `test` also evaluate the WiSE-FT model (Wortsman et al., CVPR 2022): weights
    (1 - w) * CLIP + w * fine-tuned, TC-CLIP's additions staying fine-tuned; logs `<stage>_wise/<set>/top1|top5`.

    `results` holds `{"weight", "sets"}` after such an evaluation, None otherwise (a fit's validation).
    """

    def __init__(self, weight: float) -> None:
        check_wise_ft_weight(weight)
        self.weight = weight
        self.network: nn.Module | None = None
        self.accuracy: SetsAccuracy | None = None
        self.results: dict[str, Any] | None = None
        self.confusions: list[tuple] = []

    def _start(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        self.results, self.confusions, self.network = None, [], None
        if trainer.state.fn not in ("validate", "test"):
            return
        cfg, clip_weights = module.model_config, module.hparams.clip_weights
        self.network = wise_ft_network(module.model, cfg, clip_weights, self.weight).to(module.device)
        self.accuracy = SetsAccuracy(module.eval_sets(stage), module)
        log.info("evaluating the fine-tuned model and its WiSE-FT fusion with weight %.2f", self.weight)

    def _update(self, module: L.LightningModule, stage: str, outputs: Any, batch: Any, index: int) -> None:
        if self.network is None:
            return
        eval_set = module.eval_sets(stage)[index]
        use_class_names(self.network, eval_set.class_names)
        what = f"a {stage} batch of {eval_set.name} (WiSE-FT model)"
        self.accuracy.update(index, multi_view_probabilities(self.network, batch["video"], what), batch["label"])

    def _finish(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if self.network is not None:
            sets, self.confusions = self.accuracy.collect(module, f"{stage}_wise")
            self.results = {"weight": self.weight, "sets": sets}
            self.network = None  # not kept between evaluations: the fine-tuned weights change


class ConfusionMatrices(Callback):
    """A confusion-matrix image per evaluation set (and per WiSE-FT set) in TensorBoard, tagged
    `<stage>/<set>/confusion`; not during the sanity check."""

    def _log(self, trainer: L.Trainer) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        boards = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        for source in (find_callback(trainer, EvaluationMetrics), find_callback(trainer, WiseFT)):
            for prefix, eval_set, confusion in getattr(source, "confusions", []):
                for board in boards:
                    fig = confusion_figure(confusion, eval_set.class_names, f"{prefix} {eval_set.name}")
                    board.experiment.add_figure(f"{prefix}/{eval_set.name}/confusion", fig, trainer.global_step)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer)


class BestLast(Callback):
    """Validation top-1 of the best and of the last epoch of a fit (the few-shot protocol reports both), carried by
    every checkpoint (`checkpoint["tcclip"]["best" | "last"]`), so a resumed run keeps the whole run's record.

    `best` and `last` are `{"epoch": int, "top1": float}` or None.
    """

    def __init__(self) -> None:
        self.best: dict[str, Any] | None = None
        self.last: dict[str, Any] | None = None

    def update(self, epoch: int, top1: float) -> None:
        self.last = {"epoch": int(epoch), "top1": float(top1)}
        # `>` keeps the earliest epoch on ties, like ModelCheckpoint(mode="max").
        if self.best is None or top1 > self.best["top1"]:
            self.best = dict(self.last)

    def record(self) -> dict[str, dict[str, Any] | None]:
        return {"best": self.best, "last": self.last}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        evaluation = find_callback(trainer, EvaluationMetrics)
        if trainer.state.fn == "fit" and not trainer.sanity_checking and evaluation is not None:
            self.update(pl_module.current_epoch, evaluation.mean_top1)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint.setdefault(CKPT_KEY, {}).update(self.record())

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        ours = checkpoint.get(CKPT_KEY) or {}
        self.best, self.last = ours.get("best"), ours.get("last")
