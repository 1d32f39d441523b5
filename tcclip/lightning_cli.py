"""`tcclip fit|validate|test|predict`: a LightningCLI over `TCCLIPModule` and the tcclip data modules.

What it adds to LightningCLI:
- `tcclip/configs/defaults.yaml` (package data) is read before any `--config` (trainer, callbacks, seed), so an
  experiment file only holds what makes the experiment;
- `data.init_args.num_frames` -> the network's `num_frames` and the CLIP architecture -> `data.init_args.input_size`
  are linked, so the two cannot disagree;
- run-time defaults: `trainer.precision` (bf16-mixed on a GPU that has it, else 32-true) and
  `trainer.default_root_dir` (`runs/<name of the last --config file>`) when left null;
- `--ckpt_path last` / `best` look for the newest `last*.ckpt` under `trainer.default_root_dir` (every version
  folder), so a new process can resume or evaluate; the network's configuration then comes from the checkpoint,
  while evaluation options (WiSE-FT weight, ...) stay those of the command line;
- the results file (`<log dir>/results.json`) and predictions file are always written.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from tcclip.callbacks import PredictionsJSON, ResultsJSON
from tcclip.data.datamodule import VideoDataModule
from tcclip.lit import TCCLIPModule
from tcclip.model.config import CLIPCfg

log = logging.getLogger(__name__)

# Package data (in the wheel too), found next to this module as open_clip finds its model configs.
DEFAULTS_PATH = Path(__file__).resolve().parent / "configs" / "defaults.yaml"
DEFAULTS_ENV = "TCCLIP_DEFAULTS"
"""Environment variable: the defaults file to use instead of tcclip/configs/defaults.yaml (empty: none)."""
SUBCOMMANDS = ("fit", "validate", "test", "predict")
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


def find_checkpoint(which: str, root: str | Path) -> str | None:
    """`last`: the newest `last*.ckpt` under `root`; `best`: the best model recorded in that checkpoint's
    ModelCheckpoint state (None when there is nothing)."""
    root = Path(root)
    lasts = sorted(root.rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not lasts:
        return None
    last = lasts[-1]
    if which == "last":
        return str(last)
    state = torch.load(last, map_location="cpu", weights_only=True)
    for key, value in state.get("callbacks", {}).items():
        # The ModelCheckpoint that monitors a metric (the one keeping last.ckpt monitors nothing).
        if key.startswith("ModelCheckpoint") and value.get("monitor") and value.get("best_model_path"):
            best = Path(value["best_model_path"])
            if best.is_file():
                return str(best)
    return None


class TCCLIPLightningCLI(LightningCLI):
    """LightningCLI with the project's links and run-time defaults (see the module docstring)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.init_args.num_frames", "model.model_config.num_frames")
        parser.link_arguments("model.model_config.arch", "data.init_args.input_size", compute_fn=clip_image_size)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand is None:
            return
        cfg = self.config[subcommand]
        trainer = cfg.trainer
        if trainer.get("precision") is None:
            trainer.precision = default_precision(trainer.get("accelerator", "auto"))
        if trainer.get("default_root_dir") is None:
            configs = cfg.get("config") or []
            name = Path(str(configs[-1])).stem if configs else "tcclip"
            trainer.default_root_dir = str(RUNS_DIR / name)
        ckpt = cfg.get("ckpt_path")
        if ckpt in ("last", "best"):
            found = find_checkpoint(ckpt, trainer.default_root_dir)
            if found is None:
                rank_zero_warn(
                    f"--ckpt_path {ckpt}: no checkpoint under {trainer.default_root_dir}"
                    + ("; starting from scratch." if subcommand == "fit" else "; using the configured weights.")
                )
            else:
                rank_zero_info(f"--ckpt_path {ckpt}: {found}")
            cfg.ckpt_path = found
        if cfg.get("ckpt_path"):
            self._network_from_checkpoint(subcommand, cfg.ckpt_path)

    def _network_from_checkpoint(self, subcommand: str, ckpt_path: str) -> None:
        """Take the network's configuration from the checkpoint so its weights fit (evaluation options stay)."""
        if not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"--ckpt_path {ckpt_path}: no such file. Fix: give a .ckpt written by tcclip fit.")
        hparams = torch.load(ckpt_path, map_location="cpu", weights_only=True).get("hyper_parameters", {})
        network = {k: hparams[k] for k in NETWORK_HPARAMS if k in hparams}
        if not network:
            return
        model_config = dict(network.get("model_config", {}))
        # num_frames is linked from the data; a mismatch only matters for the joint positional embedding.
        model_config.pop("num_frames", None)
        if model_config:
            network["model_config"] = model_config
        self.config = self.parser.parse_object({subcommand: {"model": network}}, self.config)

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would copy every hyper-parameter of the checkpoint over the command line (WiSE-FT weight
        # included); parse_arguments above takes only the network's.
        return


def run_lightning_cli(argv: list[str] | None = None, run: bool = True) -> TCCLIPLightningCLI:
    """Parse `argv` (`fit --config configs/few_shot_hmdb_k8.yaml ...`) and run it (or only build it, `run=False`)."""
    defaults = defaults_files()
    # With sub-commands every sub-parser reads the defaults; without (run=False) the one parser does.
    if not defaults:
        parser_kwargs: dict[str, Any] = {}
    elif run:
        parser_kwargs = {sub: {"default_config_files": defaults} for sub in SUBCOMMANDS}
    else:
        parser_kwargs = {"default_config_files": defaults}
    if argv is not None and list(argv) == sys.argv[1:]:
        argv = None  # the same words: let LightningCLI read sys.argv itself (it warns when given both)
    return TCCLIPLightningCLI(
        TCCLIPModule,
        VideoDataModule,
        subclass_mode_data=True,
        args=argv,
        run=run,
        parser_kwargs=parser_kwargs,
        trainer_defaults={"callbacks": [ResultsJSON(), PredictionsJSON()]},
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
    )
