"""`tcclip data check|verify --config C.yaml`: the experiment config read by LightningCLI, its data module built alone.

`DataModuleCLI` is `tcclip fit`'s LightningCLI (`tcclip.cli.lightning.TCCLIPLightningCLI`: the shared defaults,
the links between the model and the data, the legacy-key check) in LightningCLI's `run=False` mode, so a config
that `tcclip fit` accepts is accepted here and one that it refuses is refused with the same message (a config
without a data section is told so by name). Its `instantiate_classes` builds the data module only: checking videos
needs no Trainer and no network, so none is built and no CLIP weights are read or downloaded. The command's own
options (`--stage`, `--workers`, ...) are the keyword parameters of its function (`check`, `verify` here), added to
the parser from their signature and docstring.

`datamodule_from_config` is the one way to get a data module from config files in Python.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.cli import LightningArgumentParser

from tcclip.cli.lightning import TCCLIPLightningCLI, defaults_files
from tcclip.data.datamodule import VideoDataModule
from tcclip.training.module import TCCLIPModule
from tcclip.utils.errors import UserError, user_error_in_chain

Stage = Literal["fit", "validate", "test", "all"]
PARTS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "all": ("train", "val", "test")}
"""Which lists of a config each `--stage` covers."""

# Options of `tcclip data check|verify` before they read the config through LightningCLI, and their spelling now:
# settings of the data module, put after every other word so that they override the config files, as they did.
DATA_OPTIONS = {"--root": "root", "--backend": "backend", "--num-frames": "num_frames", "--num_frames": "num_frames"}
# Flags before; LightningCLI's booleans take a value (`--verify_frames true`).
FLAGS = {
    "--verify-frames": "--verify_frames",
    "--verify_frames": "--verify_frames",
    "--presence-only": "--presence_only",
    "--presence_only": "--presence_only",
}


def translate_old_options(argv: Sequence[str]) -> list[str]:
    """The words users typed before (`--root DIR`, `--num-frames 8`, `--verify-frames`) in LightningCLI's spelling
    (`--data.init_args.root=DIR` at the end, ..., `--verify_frames=true`)."""
    out: list[str] = []
    settings: list[str] = []
    words = list(argv)
    i = 0
    while i < len(words):
        name, eq, value = words[i].partition("=")
        if name in DATA_OPTIONS:
            if not eq:
                if i + 1 >= len(words):
                    raise UserError(f"{name} needs a value", fix=f"e.g. --data.init_args.{DATA_OPTIONS[name]} VALUE")
                i += 1
                value = words[i]
            settings.append(f"--data.init_args.{DATA_OPTIONS[name]}={value}")
        elif name in FLAGS:
            given = eq or (i + 1 < len(words) and words[i + 1].lower() in ("true", "false"))
            out.append(FLAGS[name] + (eq + value if given else "=true"))
        else:
            out.append(words[i])
        i += 1
    return [*out, *settings]


class DataModuleCLI(TCCLIPLightningCLI):
    """`tcclip fit`'s LightningCLI, without a sub-command (`run=False`), that builds the config's data module only.

    Args:
        command: a function `command(datamodule, **options)` whose keyword parameters become options of the parser
            (from its signature and docstring); None: none.
    """

    def __init__(self, command: Callable[..., Any] | None, *args: Any, **kwargs: Any) -> None:
        self.command = command
        super().__init__(*args, **kwargs)

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # LightningCLI's, but with the data section optional to the parser: a config without one is then told so by
        # name (`instantiate_classes`) instead of jsonargparse's "the following arguments are required: data".
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({f"trainer.{k}": v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        parser.add_lightning_class_args(self.model_class, "model", subclass_mode=self.subclass_mode_model)
        parser.add_lightning_class_args(
            self.datamodule_class, "data", subclass_mode=self.subclass_mode_data, required=False
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        if self.command is not None:
            parser.add_function_arguments(self.command, skip={"datamodule"})

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        self.config.seed_everything = False  # nothing random is drawn: no "Seed set to 0" line

    def before_instantiate_classes(self) -> None:
        """Nothing: the Trainer's settings (gradient accumulation) are not needed, no Trainer is built."""

    def instantiate_classes(self) -> None:
        """The data module alone; `model` and `trainer` stay None (no network built, no CLIP weights read)."""
        data = self.config.get("data")
        # Settings alone (--root DIR) without a config's class_path give the abstract base class: no dataset either.
        if data is None or data.get("class_path") == f"{VideoDataModule.__module__}.{VideoDataModule.__name__}":
            configs = ", ".join(str(c) for c in self.config.get("config") or []) or "the configuration"
            raise UserError(
                f"no 'data:' section in {configs}",
                fix="Pass the run's config file(s) with --config: the experiment config whose data section "
                "(class_path, init_args) names the dataset.",
            )
        parser = self.init_parser()
        parser.add_lightning_class_args(self.datamodule_class, "data", subclass_mode=self.subclass_mode_data)
        try:
            self.datamodule = parser.instantiate_classes(parser.parse_object({"data": data})).data
        except Exception as err:
            user_error = user_error_in_chain(err)
            if user_error is not None:
                raise user_error from err
            # jsonargparse words the data module's own error (a list file missing, ...) as "Does not validate against
            # any of the Union subtypes", with it as the cause: that message is the one to show.
            if isinstance(err.__cause__, (OSError, ValueError)):
                raise UserError(str(err.__cause__)) from err
            raise
        self.model = self.trainer = None


def data_module_cli(
    argv: Sequence[str], command: Callable[..., Any] | None = None, prog: str = "tcclip"
) -> DataModuleCLI:
    """Parse `argv` (`--config C.yaml [--data.init_args.root DIR] [options of command]`) and build the data module."""
    defaults = defaults_files()
    parser_kwargs: dict[str, Any] = {"prog": prog}
    if defaults:
        parser_kwargs["default_config_files"] = defaults
    if command is not None:
        from tcclip.cli.typed import description

        parser_kwargs["description"] = (
            f"{description(command)}\n\nIts own options come last: "
            + ", ".join(f"--{name}" for name in inspect.signature(command).parameters if name != "datamodule")
            + "."
        )
    with warnings.catch_warnings():
        # the words are not sys.argv's on purpose (see tcclip.cli.lightning.run_lightning_cli)
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return DataModuleCLI(
            command,
            TCCLIPModule,
            VideoDataModule,
            subclass_mode_data=True,
            args=list(argv),
            run=False,
            parser_kwargs=parser_kwargs,
        )


def datamodule_from_config(configs: Sequence[str | Path], *overrides: str) -> VideoDataModule:
    """The data module of experiment config files as `tcclip fit` reads them (`overrides`: command-line words such
    as `--data.init_args.root=/data`)."""
    argv = [word for config in configs for word in ("--config", str(config))]
    return data_module_cli([*argv, *overrides]).datamodule


def run_data_command(name: str, command: Callable[..., Any], argv: Sequence[str]) -> int:
    """`tcclip NAME --config C.yaml ...` (`name`: `data check`, ...): the data module and the options parsed, then
    `command` run; its result is the exit code."""
    cli = data_module_cli(translate_old_options(argv), command, prog=f"tcclip {name}")
    options = {k: cli.config.get(k) for k in inspect.signature(command).parameters if k != "datamodule"}
    return int(command(cli.datamodule, **options) or 0)


def check(
    datamodule: VideoDataModule,
    *,
    stage: Stage = "all",
    verify_frames: bool = False,
    workers: int | None = None,
    out: str | None = None,
) -> int:
    """Decode every video of a config's splits: a test view's frames and the last frame of each.

    Exit status 1 if a video is unreadable (or, with --verify_frames true, decodes to other frames); 2 for a list or
    label file it cannot read. The config is read as `tcclip fit` reads it, but only its data section is used: no
    network is built and no CLIP weights are read. The dataset root, the video reader and the frames per view are
    the data module's: --data.init_args.root, --data.init_args.backend and --data.init_args.num_frames (the earlier
    spellings --root, --backend and --num-frames are read too).

    Args:
        datamodule: the config's data module.
        stage: which lists of the config.
        verify_frames: also decode sampled frames with a second backend and sequentially, and list files where they
            differ (--verify-frames alone is read too).
        workers: processes (default: up to 8).
        out: also write the broken videos to this file.
    """
    from rich.console import Console

    from tcclip.cli.data import report

    try:
        lists, root = datamodule.annotation_files(PARTS[stage]), datamodule.root
    except (ValueError, OSError) as e:
        Console(stderr=True).print(f"[red]error:[/red] {e}")
        return 2
    num_frames, backend = datamodule.num_frames, datamodule.backend
    return report(lists, root, backend, num_frames, verify_frames, workers, None if out is None else Path(out))


def verify(
    datamodule: VideoDataModule,
    *,
    stage: Stage = "all",
    presence_only: bool = False,
    workers: int | None = None,
    out: str | None = None,
) -> int:
    """For every list a config reads: videos listed, present, decodable and exact under the configured reader;
    classes losing videos; files no list names.

    Exit status 1 if a listed video is missing, unreadable or decodes to other frames. The config is read as
    `tcclip fit` reads it, but only its data section is used (no network, no CLIP weights). The dataset root and the
    video reader are the data module's: --data.init_args.root and --data.init_args.backend (the earlier spellings
    --root and --backend are read too).

    Args:
        datamodule: the config's data module.
        stage: which lists of the config.
        presence_only: only count present files (seconds, no decoding); --presence-only alone is read too.
        workers: decoding processes (default: up to 8).
        out: also write the missing/unreadable videos to this file.
    """
    from rich.console import Console

    from tcclip.cli.data import check_video
    from tcclip.data.verify import datamodule_lists, kinetics_notes
    from tcclip.data.verify import verify as verify_lists
    from tcclip.data.video_reader import resolve_backend
    from tcclip.utils.progress import progress_bar

    console = Console(stderr=True)
    backend = resolve_backend(datamodule.backend)
    specs = datamodule_lists(datamodule, PARTS[stage])
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    with progress_bar(console=console) as progress:
        task = progress.add_task(f"decoding videos under {datamodule.root}", total=None)
        report = verify_lists(datamodule.dataset_name, datamodule.root, specs, backend, datamodule.num_frames,
                              check=None if presence_only else check_video, workers=workers,
                              on_start=lambda n: progress.update(task, total=n),
                              on_done=lambda: progress.advance(task))  # fmt: skip
    if datamodule.dataset_name == "k400":
        report.notes.extend(kinetics_notes(report, datamodule.splits_dir))
    if datamodule.dataset_name == "k600":
        from tcclip.data.kinetics import CASE_ONLY_RENAMING, check_k600_zero_shot

        check = check_k600_zero_shot(datamodule.splits_dir / "labels")
        report.notes.append(
            f"k600 zero-shot labels: {len(check.new_classes)} K600 classes not in K400 ({CASE_ONLY_RENAMING!r} is "
            f"K400's, not a 221st); the three splits use {', '.join(map(str, check.split_classes.values()))} of them"
        )
    _print_report(report, console, None if out is None else Path(out))
    return 0 if report.ok else 1


def _print_report(report, console, out: Path | None) -> None:
    from rich.table import Table

    table = Table("list", "listed", "present", "decodable", "exact", "classes losing videos", title_justify="left")
    table.title = f"{report.dataset} under {report.root} (reader: {report.backend})"
    for r in report.lists:
        losing = ", ".join(f"{name} ({n})" for name, n in list(r.classes_losing.items())[:4])
        if len(r.classes_losing) > 4:
            losing += f", ... ({len(r.classes_losing)} classes)"
        dec = "-" if r.decodable is None else f"{r.decodable:,}"
        exact = "-" if r.exact is None else f"{r.exact:,}"
        table.add_row(r.name, f"{r.listed:,}", f"{r.present:,}", dec, exact, losing or "none")
    console.print(table)
    problems: list[str] = []
    for r in report.lists:
        problems += [f"{p}\t{r.name}\tmissing" for p in r.missing]
        problems += [f"{p}\t{r.name}\tunreadable: {why}" for p, why in r.unreadable]
        problems += [f"{p}\t{r.name}\tother frames: {why}" for p, why in r.inexact]
    for line in problems[:20]:
        console.print(line.replace("\t", "  "))
    if len(problems) > 20:
        console.print(f"... and {len(problems) - 20} more" + (f" (all in {out})" if out else " (--out FILE lists all)"))
    if out is not None:
        from tcclip.utils.outputs import atomic_write_texts

        atomic_write_texts({out: "".join(f"{line}\n" for line in problems)})
    if report.extra:
        shown = ", ".join(report.extra[:3]) + (", ..." if len(report.extra) > 3 else "")
        console.print(f"{len(report.extra):,} video files under the root are in no list of this config ({shown})")
    for note in report.notes:
        console.print(note)
    print(report.summary())
