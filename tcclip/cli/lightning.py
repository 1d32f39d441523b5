"""`tcclip fit|validate|test|score`: a LightningCLI over `TCCLIPModule` and the tcclip data modules (`score` is
Lightning's predict loop, `TCCLIPTrainer.score`, so that `tcclip predict` means the video predictor).

Only LightningCLI's public hooks are used (`subcommands`, `add_arguments_to_parser`, `parse_arguments`,
`before_instantiate_classes`, `instantiate_classes`, `instantiate_trainer`, `trainer_class`, `parser_kwargs`), so
a new Lightning release within the supported range does not change how a command is parsed.

What it adds to LightningCLI:
- `tcclip/cli/defaults.yaml` (package data) is read before any `--config` (trainer, callbacks, seed), so an
  experiment file only holds what makes the experiment;
- `data.init_args.num_frames` -> the network's `num_frames` and the CLIP architecture -> `data.init_args.input_size`
  are linked, so the two cannot disagree;
- run-time defaults: `trainer.precision` (bf16-mixed on a GPU that has it, else 32-true) and
  `trainer.default_root_dir` (`runs/<name of the last --config file>`) when left null;
- `--ckpt_path last` / `best` are looked up under `trainer.default_root_dir` (`tcclip.training.runs.find_checkpoint`:
  unreadable files skipped, `best` from the run's whole record), so a new process can resume or evaluate; the
  network's configuration then comes from the checkpoint, while evaluation options (WiSE-FT weight, ...) stay
  those of the command line;
- a resumed `fit` continues in its checkpoint's version folder (same logs, same checkpoints, the callbacks' whole
  history), and no two processes write one run folder at once (`tcclip.training.callbacks.RunGuard`);
- checkpoints are written atomically and read safely (`tcclip.training.checkpoint_io.AtomicCheckpointIO`);
- SIGTERM (and, under SLURM, the requeue signal SIGUSR1) saves the run at the next batch boundary and exits with
  status 143 (`tcclip.training.preemption.Preemption`), so a cancelled or preempted job resumes where it stopped;
- `--trainer.enable_progress_bar false` drops the progress bar of the defaults; an unwritable
  `trainer.default_root_dir` is a one-paragraph error;
- the results file (`<log dir>/results.json`) and predictions file are always written.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_info

import tcclip.data.families  # noqa: F401  (a config's short class names, `class_path: HMDB51`, resolve among them)
from tcclip.data.datamodule import VideoDataModule
from tcclip.data.resumable import RestoreLoaderPosition
from tcclip.model.config import CLIPCfg
from tcclip.training.callbacks import PredictionsJSON, ResultsJSON, RunGuard
from tcclip.training.checkpoint_io import AtomicCheckpointIO, checkpoint_kind, lightning_layout, refuse_for_fit
from tcclip.training.hparams import check_legacy_keys
from tcclip.training.module import TCCLIPModule
from tcclip.training.preemption import Preemption
from tcclip.training.runs import LAST_PATTERNS, find_checkpoint, run_folder_of
from tcclip.training.safe_load import safe_load
from tcclip.training.schedule import accumulation_from_config
from tcclip.utils.errors import UserError, user_error_in_chain
from tcclip.utils.outputs import atomic_write

log = logging.getLogger(__name__)

# Package data (in the wheel too), found next to this module as open_clip finds its model configs.
DEFAULTS_PATH = Path(__file__).resolve().parent / "defaults.yaml"
DEFAULTS_ENV = "TCCLIP_DEFAULTS"
"""Environment variable: the defaults file to use instead of tcclip/cli/defaults.yaml (empty: none)."""
SUBCOMMANDS = ("fit", "validate", "test", "score", "calibrate")
FOR_PREDICTION = frozenset({"calibrate"})
"""Sub-commands that evaluate a checkpoint as `tcclip predict` and `timeline` will use it: every weight comes from the
checkpoint (the network built from the config needs no CLIP weights), and the data is sampled at the checkpoint's
own frame count (predict and timeline sample that many frames)."""
RUNS_DIR = Path("runs")
# Hyper-parameters of a checkpoint that define its network; the others (evaluation options) come from the user.
NETWORK_HPARAMS = ("model_config", "clip_weights")


def defaults_files() -> list[str]:
    """The defaults file(s) read before every `--config`: $TCCLIP_DEFAULTS, else the package's defaults.yaml."""
    env = os.environ.get(DEFAULTS_ENV)
    if env is not None:
        return [env] if env else []
    if not DEFAULTS_PATH.is_file():
        # Without it a run silently loses its checkpoint callbacks (no last.ckpt to resume from): refuse instead.
        raise FileNotFoundError(
            f"{DEFAULTS_PATH}: the shared defaults are missing from this tcclip installation. Fix: reinstall tcclip "
            f"(the file ships as package data), or set ${DEFAULTS_ENV} to a defaults file (empty: none)."
        )
    return [str(DEFAULTS_PATH)]


def clip_image_size(arch: str) -> int:
    """Input size the CLIP architecture was built for (its positional table fixes it)."""
    return CLIPCfg.from_name(arch).vision.image_size


def default_precision(accelerator: Any) -> str:
    """bf16-mixed when training will run on a CUDA GPU with bf16, else full fp32."""
    on_gpu = isinstance(accelerator, str) and accelerator in ("auto", "gpu", "cuda")
    if on_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def _is_progress_bar(callback: Any) -> bool:
    class_path = callback.get("class_path") if hasattr(callback, "get") else None
    if class_path is None:
        return isinstance(callback, ProgressBar)
    module_name, _, name = str(class_path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return False
    return isinstance(cls, type) and issubclass(cls, ProgressBar)


def _stored_checkpoint_dir(ckpt_path: str) -> str | None:
    """`<dirpath>/x.ckpt` with the folder exactly as the run that wrote `ckpt_path` spelled it (its ModelCheckpoint
    state), when that is the checkpoint's own folder; None otherwise."""
    ckpt = safe_load(ckpt_path, mmap=True)
    for key, state in (ckpt.get("callbacks") or {}).items():
        dirpath = state.get("dirpath") if key.startswith("ModelCheckpoint") and isinstance(state, dict) else None
        if dirpath and Path(dirpath).is_dir() and os.path.samefile(dirpath, Path(ckpt_path).parent):
            return str(Path(dirpath) / Path(ckpt_path).name)
    return None


def check_writable(folder: str | Path, key: str) -> None:
    """Raise a UserError naming the config `key` unless `folder` can be created and written (nothing is created:
    a file is written and removed in the nearest folder that exists)."""
    folder = Path(folder).expanduser().absolute()
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise UserError(
            f"{key} cannot be created: {existing} is a file, not a folder",
            path=folder,
            fix=f"Set {key} to a folder you can write to.",
        )
    probe = existing / f".tcclip-write-test-{os.getpid()}"
    try:
        atomic_write(probe, lambda f: f.write(b"ok"), what="test file")
    except UserError as err:
        raise UserError(
            f"{key} cannot be written: {err.message}", path=folder, fix=f"Set {key} to a folder you can write to."
        ) from err
    probe.unlink(missing_ok=True)


NO_CHECKPOINT_FIX = (
    "Give the run's folder with --trainer.default_root_dir (the one its fit used), or the checkpoint file with "
    "--ckpt_path PATH; to evaluate the configured weights on purpose, leave --ckpt_path out."
)


def no_checkpoint_message(which: str, root: str | Path) -> str:
    searched = ", ".join(LAST_PATTERNS) + " or any *.ckpt" if which == "last" else "the best epoch's .ckpt"
    return (
        f"--ckpt_path {which}: no readable checkpoint found; searched {Path(root).absolute()} and every folder "
        f"below it for {searched}"
    )


def check_checkpoint_path(path: str | Path) -> None:
    """An explicit --ckpt_path: a file, or a `tcclip export` folder; a folder of checkpoints names them."""
    from tcclip.training.portable import is_exported_dir

    path = Path(path)
    if path.is_dir() and not is_exported_dir(path):
        found = sorted(str(p.relative_to(path)) for p in path.rglob("*.ckpt"))[:5]
        raise UserError(
            "--ckpt_path is a folder, not a checkpoint",
            path=path,
            fix=(f"Pass one of its checkpoints ({', '.join(found)}), " if found else "Pass a .ckpt file, ")
            + "or --ckpt_path last / best with --trainer.default_root_dir set to the run's folder.",
        )
    if not path.exists():
        raise UserError(
            "--ckpt_path: no such checkpoint file",
            path=path,
            fix="Check the path, or use --ckpt_path last / best to look under trainer.default_root_dir.",
        )


class TCCLIPTrainer(Trainer):
    """Lightning's Trainer with `score`: its predict loop under the name `tcclip score` (`tcclip predict` is the
    video predictor). LightningCLI builds a sub-command from a Trainer method of the same name, so the name, its
    usage line and its errors are those the user typed, with no renaming of parsers."""

    def score(
        self,
        model: Any = None,
        dataloaders: Any = None,
        datamodule: Any = None,
        return_predictions: bool | None = None,
        ckpt_path: str | None = None,
    ) -> Any:
        """Per-video top-k of a config's test sets into predictions.json (Lightning's predict loop).

        Args:
            model: the model to run.
            dataloaders: loaders to predict on (the data module's test sets when None).
            datamodule: the data module whose predict loaders are used.
            return_predictions: keep the predictions in memory and return them.
            ckpt_path: the checkpoint to score: a file, a `tcclip export` folder, or last / best (looked up under
                trainer.default_root_dir).
        """
        return self.predict(model, dataloaders, datamodule, return_predictions, ckpt_path)

    def calibrate(
        self,
        model: Any = None,
        datamodule: Any = None,
        ckpt_path: str | None = None,
        set_name: str | None = None,
        score: str = "msp",
        target_recall: float = 0.95,
        min_videos: int = 20,
        quiet: bool = False,
    ) -> Path:
        """Fit a temperature (NLL) and choose rejection thresholds on the config's validation list; writes
        <ckpt>.calibration.json next to the checkpoint (`tcclip.load_model`, predict, timeline and export use it).

        Args:
            model: built from the config (the network's settings come from the checkpoint); unused, the weights are
                read from `ckpt_path`.
            datamodule: the config's data module, whose validation list is scored with its test pipeline.
            ckpt_path: the checkpoint to calibrate: a file, or last / best (looked up under
                trainer.default_root_dir, as by tcclip test).
            set_name: the validation set to fit on (default: the first).
            score: the rejection score whose threshold becomes the default (msp, max_logit, energy, mcm).
            target_recall: the fraction of validation videos every threshold accepts, in (0, 1].
            min_videos: the fewest validation videos to fit on (fewer give a meaningless temperature).
            quiet: no progress bar.
        """
        from tcclip.inference.calibrate import calibrate_checkpoint

        if ckpt_path is None:
            raise UserError("tcclip calibrate needs --ckpt_path", fix="Give the .ckpt to calibrate, or last / best.")
        return calibrate_checkpoint(
            datamodule, ckpt_path, self.strategy.root_device, set_name, score, target_recall, min_videos, quiet
        )


class TCCLIPLightningCLI(LightningCLI):
    """LightningCLI with the project's links and run-time defaults (see the module docstring); public hooks only."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("trainer_class", TCCLIPTrainer)  # its `score` method is the `score` sub-command
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {
            "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
            "validate": {"model", "dataloaders", "datamodule"},
            "test": {"model", "dataloaders", "datamodule"},
            "score": {"model", "dataloaders", "datamodule"},
            "calibrate": {"model", "datamodule"},
        }

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.init_args.num_frames", "model.model_config.num_frames")
        parser.link_arguments("model.model_config.arch", "data.init_args.input_size", compute_fn=clip_image_size)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        check_legacy_keys(sys.argv[1:] if args is None else args if isinstance(args, list) else [], defaults_files())
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        cfg = self.config if subcommand is None else self.config[subcommand]
        trainer = cfg.trainer
        if trainer.get("enable_progress_bar") is False and trainer.get("callbacks"):
            # The defaults add a progress bar; Lightning refuses one together with enable_progress_bar=false.
            trainer.callbacks = [c for c in trainer.callbacks if not _is_progress_bar(c)]
        if subcommand is None:
            return
        if trainer.get("precision") is None:
            trainer.precision = default_precision(trainer.get("accelerator", "auto"))
        if trainer.get("default_root_dir") is None:
            configs = cfg.get("config") or []
            name = Path(str(configs[-1])).stem if configs else "tcclip"
            trainer.default_root_dir = str(RUNS_DIR / name)
        if subcommand != "calibrate":  # calibrate writes beside the checkpoint only
            check_writable(trainer.default_root_dir, "trainer.default_root_dir")
        ckpt = cfg.get("ckpt_path")
        if ckpt in ("last", "best"):
            found = find_checkpoint(ckpt, trainer.default_root_dir)
            if found is None and subcommand != "fit":
                # Evaluating the configured weights instead would report numbers of a model nobody asked for.
                raise UserError(no_checkpoint_message(ckpt, trainer.default_root_dir), fix=NO_CHECKPOINT_FIX)
            if found is None:  # a requeued job's first start: nothing to resume yet
                root = trainer.default_root_dir
                rank_zero_info(f"--ckpt_path {ckpt}: no checkpoint under {root} yet; starting a new run")
            else:
                rank_zero_info(f"--ckpt_path {ckpt}: {found}")
            cfg.ckpt_path = found
        elif ckpt:
            check_checkpoint_path(ckpt)
            if subcommand == "fit":
                refuse_for_fit(ckpt)
        if cfg.get("ckpt_path"):
            self._network_from_checkpoint(subcommand, cfg.ckpt_path)
            if subcommand == "fit":
                self._resume_in_own_folder(cfg.ckpt_path)
            # Held back until `before_instantiate_classes`: LightningCLI would otherwise copy every hyper-parameter
            # of the checkpoint over the command line (WiSE-FT weight included); `_network_from_checkpoint` took
            # only the network's.
            self._resolved_ckpt_path = self.config[subcommand].ckpt_path
            self.config[subcommand].ckpt_path = None
        elif subcommand != "fit":
            model = cfg.get("model") or {}
            init = model.get("init_checkpoint") if hasattr(model, "get") else None
            clip = model.get("clip_weights") or "null (random weights)"
            weights = f"model.init_checkpoint {init}" if init else f"model.clip_weights {clip}"
            rank_zero_info(f"no --ckpt_path: evaluating the configured weights ({weights})")

    def before_instantiate_classes(self) -> None:
        ckpt_path = getattr(self, "_resolved_ckpt_path", None)
        if ckpt_path is not None and self.subcommand is not None:
            self.config[self.subcommand].ckpt_path = ckpt_path
        # Gradient accumulation is part of the recipe (model.optim.total_batch_size): settled before the Trainer is
        # built, never by the module. Evaluation commands do not step an optimiser.
        if self.subcommand in (None, "fit"):
            cfg = self.config[self.subcommand] if self.subcommand else self.config
            cfg.trainer.accumulate_grad_batches = accumulation_from_config(cfg)

    def _network_from_checkpoint(self, subcommand: str, ckpt_path: str) -> None:
        """Take the network's configuration from the checkpoint so its weights fit (evaluation options stay)."""
        # A CheckpointError (UserError) for a missing or unreadable file; weights only (save_model, export) for
        # an evaluation.
        ckpt = lightning_layout(ckpt_path) if Path(ckpt_path).is_dir() else safe_load(ckpt_path, mmap=True)
        if checkpoint_kind(ckpt_path, ckpt) != "lightning":
            ckpt = lightning_layout(ckpt_path)
        hparams = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
        network = {k: hparams[k] for k in NETWORK_HPARAMS if k in hparams}
        if not network:
            return
        model_config = dict(network.get("model_config", {}))
        # num_frames is linked from the data: a resumed training must keep it (it is the same experiment), an
        # evaluation may change it unless the positional embedding has one entry per frame (joint).
        stored = model_config.pop("num_frames", None)
        data = self.config[subcommand].get("data")
        init_args = data.get("init_args") if data is not None and hasattr(data, "get") else None
        wanted = init_args.get("num_frames") if init_args is not None and hasattr(init_args, "get") else None
        joint = model_config.get("positional_embedding_type") == "joint"
        if subcommand in FOR_PREDICTION:  # every weight from the checkpoint, its own frame count
            network["clip_weights"] = None
            if stored is not None:
                if init_args is not None:
                    init_args.num_frames = stored
                wanted = stored
        if stored is not None and wanted is not None and stored != wanted and (subcommand == "fit" or joint):
            why = (
                "a resumed training must keep it"
                if subcommand == "fit"
                else "its joint positional embedding has one entry per frame"
            )
            raise UserError(
                f"data.init_args.num_frames is {wanted}, but the checkpoint was trained with {stored} frames; {why}",
                path=ckpt_path,
                fix=f"Set --data.init_args.num_frames {stored} (or leave it to the config the run was trained with).",
            )
        if model_config:
            network["model_config"] = model_config
        self.config = self.parser.parse_object({subcommand: {"model": network}}, self.config)

    def _resume_in_own_folder(self, ckpt_path: str) -> None:
        """A resumed fit logs and checkpoints into the version folder its checkpoint came from (when the default
        TensorBoard logger is used), so the callbacks restore their whole history and one folder holds the run."""
        cfg = self.config["fit"]
        if cfg.trainer.get("logger") is not True:
            return
        folder = run_folder_of(_stored_checkpoint_dir(ckpt_path) or ckpt_path)
        if folder is None:
            return
        logger = {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(folder.save_dir), "name": folder.name, "version": folder.version},
        }
        self.config = self.parser.parse_object({"fit": {"trainer": {"logger": logger}}}, self.config)
        rank_zero_info(f"resuming in {folder.path}")

    def instantiate_classes(self) -> None:
        # jsonargparse wraps an error raised while building the data module or model in its own ValueError (with the
        # union subtypes it tried); a UserError in that chain is the message that matters.
        try:
            super().instantiate_classes()
        except Exception as err:
            user_error = user_error_in_chain(err)
            if user_error is None:
                raise
            raise user_error from err

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        try:
            trainer = super().instantiate_trainer(**kwargs)
        except MisconfigurationException as err:  # Lightning's own check of a trainer.* setting: the user's to fix
            raise UserError(
                f"trainer: {str(err).strip()}", fix="Fix that trainer.* setting in the config or on the command line."
            ) from err
        # Every checkpoint written atomically and read safely, unless the user configured a CheckpointIO of their own.
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer


class _DropInterruptNotice(logging.Filter):
    """Lightning's "Detected KeyboardInterrupt, attempting graceful shutdown" line: `tcclip.cli` says it in one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Detected KeyboardInterrupt" not in str(record.msg)


_INTERRUPT_FILTER = _DropInterruptNotice()


def run_lightning_cli(argv: list[str] | None = None, run: bool = True) -> TCCLIPLightningCLI:
    """Parse `argv` (`fit --config configs/few_shot_hmdb_k8.yaml ...`) and run it (or only build it, `run=False`)."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_INTERRUPT_FILTER)
    defaults = defaults_files()
    # With sub-commands every sub-parser reads the defaults; without (run=False) the one parser does.
    if not defaults:
        parser_kwargs: dict[str, Any] = {}
    elif run:
        parser_kwargs = {sub: {"default_config_files": defaults} for sub in SUBCOMMANDS}
    else:
        parser_kwargs = {"default_config_files": defaults}
    if argv is not None and list(argv) == sys.argv[1:]:
        argv = None  # the same words: let LightningCLI read sys.argv itself
    with warnings.catch_warnings():
        # `tcclip CMD ...` reaches LightningCLI without the program's own words (`python -m tcclip.cli`, the console
        # script): the words differ from sys.argv on purpose, which LightningCLI would otherwise warn about.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return TCCLIPLightningCLI(
            TCCLIPModule,
            VideoDataModule,
            subclass_mode_data=True,
            args=argv,
            run=run,
            parser_kwargs=parser_kwargs,
            trainer_defaults={
                "callbacks": [RunGuard(), Preemption(), RestoreLoaderPosition(), ResultsJSON(), PredictionsJSON()]
            },
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
        )
