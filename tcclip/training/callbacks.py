"""Callbacks of the experiment suite: the results file, predictions file, per-epoch seeding and the run guard (the
evaluation reports that feed the results file are in `tcclip.training.reporting`)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import seed_everything
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint

from tcclip.training.reporting import BestLast, EvaluationMetrics, WiseFT, find_callback
from tcclip.training.runs import RunLock
from tcclip.utils.errors import UserError, note_interrupt
from tcclip.utils.finite import nonfinite_tensors
from tcclip.utils.outputs import atomic_write

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.json"


def _atomic_write_json(path: Path, payload: Any) -> None:
    text = (json.dumps(payload, indent=2) + "\n").encode()
    atomic_write(path, lambda f: f.write(text), what=path.name)


def harmonic_mean(a: float, b: float) -> float:
    """HM = 2ab / (a + b), the base-to-novel summary (0 when both are 0)."""
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def summarize_sets(sets: dict[str, dict[str, Any]], protocol: str | None) -> dict[str, float]:
    """Summary over evaluation sets: mean and population std of top-1 (zero-shot: the three test splits); for
    base-to-novel also base, novel and their harmonic mean (sets whose names contain "base" / "novel")."""
    top1 = [s["top1"] for s in sets.values()]
    summary: dict[str, float] = {}
    if top1:
        summary["mean_top1"] = statistics.fmean(top1)
        summary["std_top1"] = statistics.pstdev(top1)
    if protocol == "base2novel":
        base = [s["top1"] for name, s in sets.items() if "base" in name.lower()]
        novel = [s["top1"] for name, s in sets.items() if "novel" in name.lower()]
        if len(base) == 1 and len(novel) == 1:
            summary.update(base=base[0], novel=novel[0], hm=harmonic_mean(base[0], novel[0]))
    return summary


_HASHES: dict[tuple[str, int, int], str] = {}


def weights_sha256(path: str | Path) -> str | None:
    """SHA-256 of a checkpoint file (of `model.safetensors` for a `tcclip export` folder); None when absent.

    Remembered per (path, size, modification time): a run's every validation names the same file.
    """
    from tcclip.training.calibration_record import file_sha256
    from tcclip.training.portable import WEIGHTS_FILE

    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path.absolute()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = file_sha256(path)
    return _HASHES[key]


def weights_record(trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any]:
    """Which weights an evaluation scored: the --ckpt_path file, the init checkpoint, the configured CLIP weights,
    or the weights being trained (with the epoch), with the file's SHA-256 where there is a file."""
    fn = trainer.state.fn.value if trainer.state.fn is not None else None
    ckpt = getattr(trainer, "ckpt_path", None)
    if fn == "fit":
        return {"source": "training", "epoch": getattr(trainer, "current_epoch", None)}
    if ckpt:
        return {"source": "ckpt_path", "path": str(Path(ckpt).absolute()), "sha256": weights_sha256(ckpt)}
    init = module.hparams.get("init_checkpoint")
    if init:
        return {"source": "model.init_checkpoint", "path": str(Path(init).absolute()), "sha256": weights_sha256(init)}
    return {"source": "model.clip_weights", "path": module.hparams.get("clip_weights"), "sha256": None}


def results_payload(trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any] | None:
    """The results dict (`results.json`) of the last evaluation of `module` (None before any)."""
    evaluation = find_callback(trainer, EvaluationMetrics)
    results = evaluation.results if evaluation is not None else None
    if not results:
        return None
    datamodule = trainer.datamodule
    protocol = getattr(datamodule, "protocol", None)
    hparams = module.hparams
    if hparams.get("init_checkpoint"):
        variant = "pretrained"
    elif getattr(datamodule, "llm_labels", False):
        variant = "llm"
    else:
        variant = "plain"
    tracker = find_callback(trainer, BestLast)
    best_last = tracker.record() if tracker is not None else {"best": None, "last": None}
    wise_ft = find_callback(trainer, WiseFT)
    wise = wise_ft.results if wise_ft is not None else None
    if wise is not None:
        wise = {**wise, "summary": summarize_sets(wise["sets"], protocol)}
    return {
        "protocol": protocol,
        "dataset": getattr(datamodule, "dataset_name", None) or type(datamodule).__name__.lower(),
        "variant": variant,
        # Families carry default shots / seed; they mean something in their protocol only.
        "shots": getattr(datamodule, "shots", None) if protocol == "few_shot" else None,
        "seed": getattr(datamodule, "seed", None) if protocol == "base2novel" else None,
        "stage": trainer.state.fn.value if trainer.state.fn is not None else None,
        "checkpoint": trainer.ckpt_path or hparams.get("init_checkpoint"),
        # Which weights these numbers belong to, beyond doubt: the file and its hash (see weights_record).
        "weights": weights_record(trainer, module),
        "sets": results["sets"],
        "summary": summarize_sets(results["sets"], protocol),
        "wise_ft": wise,
        "best": best_last["best"],
        "last": best_last["last"],
    }


class ResultsJSON(Callback):
    """Write `<log_dir>/results.json` after every validation (also during fit, with best/last) and test run."""

    def __init__(self, filename: str = RESULTS_FILE) -> None:
        self.filename = filename

    def _write(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        log_dir = trainer.log_dir  # collective: every rank calls it
        payload = results_payload(trainer, module)
        if payload is None or not trainer.is_global_zero:
            return
        path = Path(log_dir or trainer.default_root_dir) / self.filename
        _atomic_write_json(path, payload)
        log.info("results written to %s", path)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module)


class PredictionsJSON(BasePredictionWriter):
    """Write `<log_dir>/predictions.json` (one file per process in DDP): the weights scored (as in results.json),
    every video's top-k classes and, when the data has labels, the top-1 accuracy."""

    def __init__(self, top_k: int = 5, filename: str = PREDICTIONS_FILE) -> None:
        super().__init__(write_interval="epoch")
        self.top_k = top_k
        self.filename = filename

    def write_on_epoch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any] | None,
    ) -> None:
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        # One list of batch outputs per dataloader; a single dataloader gives a flat list.
        per_loader = predictions if predictions and isinstance(predictions[0], list) else [predictions]
        loaders = [prediction_records(batches, self.top_k) for batches in per_loader]
        name = self.filename if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.json"
        _atomic_write_json(log_dir / name, {"weights": weights_record(trainer, pl_module), "dataloaders": loaders})


def prediction_records(batches: Sequence[dict[str, Any]], top_k: int) -> dict[str, Any]:
    """Per-video records of predict_step outputs, plus the accuracy when labels are known."""
    videos, correct, labelled = [], 0, 0
    for out in batches:
        names = out["class_names"]
        probs, indices = out["probs"], out["index"].tolist()
        top_p, top_i = probs.topk(min(top_k, probs.shape[1]), dim=1)
        labels = out.get("label")
        for row, index in enumerate(indices):
            record = {
                "index": index,
                "top": [[names[c], round(float(p), 6)] for c, p in zip(top_i[row].tolist(), top_p[row], strict=True)],
            }
            if labels is not None:
                label = int(labels[row])
                record["label"] = names[label]
                correct += int(top_i[row, 0] == label)
                labelled += 1
            videos.append(record)
    summary = {"num_videos": len(videos)}
    if labelled:
        summary["top1"] = 100.0 * correct / labelled
    return {**summary, "videos": videos}


class EpochSeed(Callback):
    """Reseed every RNG with `seed + e` when epoch e is about to start (at the end of epoch e - 1), and carry the RNG
    states through a checkpoint saved in the middle of an epoch.

    Data order, augmentations and mixup of an epoch then depend on the epoch number only, so a run resumed from an
    end-of-epoch checkpoint (`--ckpt_path last`) continues exactly like the uninterrupted run. The reseed happens at
    the end of the previous epoch, and again when a checkpoint is restored, because Lightning draws the first batch
    of a run's first epoch before `on_train_epoch_start`. A checkpoint saved between two training batches (on a stop
    signal, `tcclip.training.preemption`) also holds the RNG states of that moment (mixup and dropout draw from them);
    they are
    put back before the first batch a resumed run trains, so its remaining batches draw what the uninterrupted run
    drew. (Which videos and which augmentations a batch holds is the training sampler's business: see
    `tcclip.data.resumable`.)

    Args:
        seed: base seed; null takes the run's `seed_everything` value (env `PL_GLOBAL_SEED`), else 0.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self.next_epoch = 0
        self._rng_to_restore: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Read once: every reseed below rewrites PL_GLOBAL_SEED.
        if self.seed is None:
            self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _reseed(self) -> None:
        seed_everything((self.seed or 0) + self.next_epoch, workers=True, verbose=False)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.next_epoch = trainer.current_epoch + 1
        self._reseed()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        states, self._rng_to_restore = self._rng_to_restore, None
        # Only a checkpoint from the middle of an epoch resumes at a batch other than the epoch's first.
        if states is not None and trainer.fit_loop.epoch_loop.batch_progress.current.completed > 0:
            set_rng_states(states)

    def state_dict(self) -> dict[str, Any]:
        return {"next_epoch": self.next_epoch, "rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.next_epoch = int(state_dict.get("next_epoch", 0))
        self._reseed()
        self._rng_to_restore = state_dict.get("rng")


def rng_states() -> dict[str, Any]:
    """The global RNG states a training step draws from (torch, CUDA when initialised, numpy, Python), as tensors,
    numbers and tuples only (checkpoints are read with `weights_only=True`)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class BatchLog(Callback):
    """Append one line per training batch to `<log_dir>/batches.tsv` (`batches_rank<r>.tsv` under DDP): global step,
    epoch, batch index, the videos' list indices and a SHA-256 of the batch's video tensor (its first 16 hex digits).

    For checking the data order and augmentations of a run: a resumed run appends to its own file, and the last line
    of each global step is the batch that step trained on (a batch that was being trained when the run stopped
    appears twice). Off by default; add it with `--trainer.callbacks+=tcclip.training.callbacks.BatchLog`.
    """

    def __init__(self, filename: str = "batches.tsv") -> None:
        self.filename = filename

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        name = (
            self.filename if trainer.world_size == 1 else self.filename.replace(".", f"_rank{trainer.global_rank}.", 1)
        )
        path = Path(trainer.log_dir or trainer.default_root_dir) / name
        video = batch["video"].detach().cpu().contiguous()
        digest = hashlib.sha256(video.numpy().tobytes()).hexdigest()[:16]
        indices = ",".join(str(i) for i in batch["index"].tolist())
        with open(path, "a") as f:
            f.write(f"{trainer.global_step}\t{trainer.current_epoch}\t{batch_idx}\t{indices}\t{digest}\n")


def read_batch_log(path: Path) -> dict[int, tuple[str, str]]:
    """{global step: (indices, digest)} of a `BatchLog` file, the last line of each step winning."""
    steps: dict[int, tuple[str, str]] = {}
    for line in Path(path).read_text().splitlines():
        step, _epoch, _batch, indices, digest = line.split("\t")
        steps[int(step)] = (indices, digest)
    return steps


class RunGuard(Callback):
    """Keeps a run folder whole: one writing process at a time, and a resumable checkpoint when `fit` is stopped.

    - `setup`: takes the run folder's lock (`tcclip.training.runs.RunLock`); a second process aimed at the same folder
      stops with a message instead of interleaving its checkpoints and logs with the first one's. Released at
      `teardown` or on an exception.
    - Ctrl-C (KeyboardInterrupt) or a `UserError` during a training epoch (a non-finite loss, too many broken
      videos): saves the current weights (the failing step was not taken) as `last.ckpt`, where `--ckpt_path last`
      finds them, and says so. Weights that are already non-finite are not saved; the previous `last.ckpt` stays
      the resume point. Under DDP nothing is saved here (the ranks may not reach a common barrier).
    """

    def __init__(self) -> None:
        self._lock: RunLock | None = None
        self._training = False  # between on_train_start and on_train_end: there is a run to save

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        log_dir = trainer.log_dir  # collective: every rank calls it
        if trainer.is_global_zero and self._lock is None:
            self._lock = RunLock(Path(log_dir or trainer.default_root_dir))
            self._lock.acquire()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._release()

    def _heartbeat(self) -> None:
        if self._lock is not None:
            self._lock.heartbeat()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._heartbeat()

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._heartbeat()

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._heartbeat()

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._heartbeat()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        try:
            stopping = isinstance(exception, (KeyboardInterrupt, UserError))
            # Only a run that holds its folder and has started training saves (never over another process's files).
            ours = self._lock is not None and self._lock.held and self._training
            if stopping and ours and trainer.training and not trainer.sanity_checking:
                self._save_on_stop(trainer, pl_module, exception)
        finally:
            self._training = False
            self._release()

    def _save_on_stop(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        where = f"epoch {trainer.current_epoch}, global step {trainer.global_step}"
        previous = self.last_path(trainer)
        if trainer.world_size > 1:
            saved = None
        elif nonfinite_tensors(pl_module.state_dict()):
            saved = None
        else:
            saved = previous
            try:
                self.save_last(trainer, saved)
            except UserError as err:  # e.g. the disk is full: say so, and keep the original error
                log.warning("could not save a checkpoint on stopping: %s", err.format())
                saved = None
        if saved is not None:
            note = f"Stopped at {where}; the weights from before the stop are saved in {saved}."
        elif previous is not None and previous.is_file():
            note = f"Stopped at {where}; nothing saved now, the last good checkpoint is {previous}."
        else:
            note = f"Stopped at {where}; no checkpoint was saved yet."
        resume = "To resume, run the same command with --ckpt_path last."
        if isinstance(exception, UserError):
            exception.fix = f"{exception.fix} {note} {resume}".strip()
        else:  # Ctrl-C: `tcclip.cli` prints this in its one line
            note_interrupt(f"{note} {resume}")

    @staticmethod
    def _last_callback(trainer: L.Trainer) -> ModelCheckpoint | None:
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.monitor is None and callback.dirpath:
                return callback
        return None

    @staticmethod
    def last_path(trainer: L.Trainer) -> Path | None:
        """Where `--ckpt_path last` looks: the file of the ModelCheckpoint that monitors nothing (`last.ckpt`, or
        the file it last wrote)."""
        callback = RunGuard._last_callback(trainer)
        if callback is not None:
            if callback.best_model_path:
                return Path(callback.best_model_path)
            return Path(callback.dirpath) / f"{callback.filename or 'last'}{callback.FILE_EXTENSION}"
        folder = trainer.log_dir or trainer.default_root_dir
        return Path(folder) / "checkpoints" / "last.ckpt" if folder else None

    @staticmethod
    def save_last(trainer: L.Trainer, path: Path) -> None:
        """Save the run to `path` (from `last_path`) as the `last` ModelCheckpoint's own file: saved before that
        callback's first save, it would otherwise take the file for someone else's and write `last-v1.ckpt` beside
        it, leaving two `last` files in the folder."""
        callback = RunGuard._last_callback(trainer)
        if callback is not None and not callback.best_model_path:
            callback.best_model_path = str(path)
        trainer.save_checkpoint(path)
