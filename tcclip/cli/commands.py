"""The `tcclip` command: LightningCLI for what takes an experiment config, one table for the other sub-commands.

Two mechanisms, each used the same way by every command it serves:
- `LIGHTNING_COMMANDS` run through LightningCLI (`tcclip.cli.lightning`): fit, validate, test, `score` (Lightning's
  predict loop, a config's test sets -> predictions.json, under its own name so that `predict` means one program)
  and `calibrate` (methods of `TCCLIPTrainer`); `CONFIG_COMMANDS`, `tcclip data check|verify --config C.yaml`, read
  the experiment config through the same LightningCLI, which builds its data module alone (`tcclip.cli.data_config`:
  no Trainer, no network);
- `EXTRA_COMMANDS` map every other name to a typed function (`module:function`): its signature and docstring are
  the command's options and help (`tcclip.cli.typed`). The module is imported only when its command runs, so
  `tcclip --help` and `tcclip CMD --help` stay fast.
`tcclip --help` lists every command once and an unknown word gets the list of the ones that exist.
"""

from __future__ import annotations

import difflib
import importlib
import signal
import sys
from collections.abc import Sequence
from typing import NamedTuple

from tcclip.utils.errors import UserError, as_user_error, environment_error, user_error_in_chain

INTERRUPTED_EXIT_CODE = 130
"""Exit code after Ctrl-C (128 + SIGINT, as a shell reports a process that SIGINT ended)."""


class Command(NamedTuple):
    """One `tcclip` sub-command that is not LightningCLI's."""

    target: str | dict[str, str]
    """`module:function`, the typed function that runs it; {sub-command: `module:function`} for a group such as
    `tcclip data synth|check|...`."""
    summary: str
    """One line for `tcclip --help`."""


# LightningCLI's sub-commands (tcclip.cli.lightning): name -> one line for `tcclip --help`.
LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "train (and validate) a model from a config: tcclip fit --config configs/....yaml",
    "validate": "evaluate a checkpoint on the validation split of a config",
    "test": "evaluate a checkpoint on the test split of a config and write results.json",
    "score": "per-video top-k of a config's test sets into predictions.json (tcclip score --config ... --ckpt_path)",
    "calibrate": "fit a temperature and rejection thresholds on a config's validation list",
}

EXTRA_COMMANDS: dict[str, Command] = {
    "predict": Command("tcclip.cli.apps:predict", "classify video files: tcclip predict VIDEO... --checkpoint CKPT"),
    "splits": Command(
        {"download": "tcclip.cli.splits:download", "make": "tcclip.cli.splits:make"},
        "download the official split files; make splits of your own data",
    ),
    "data": Command(
        {
            "synth": "tcclip.cli.data_make:synth",
            "prepare": "tcclip.cli.data_make:prepare",
            "check": "tcclip.cli.data:check",
            "download": "tcclip.cli.data_get:download",
        },
        "make a synthetic dataset; download, check, verify or re-encode a dataset",
    ),
    "convert-checkpoint": Command(
        "tcclip.cli.checkpoints:convert_checkpoint", "turn an official TC-CLIP .pth into a tcclip .ckpt"
    ),
    "explain": Command("tcclip.cli.apps:explain", "draw the seed patches, context tokens and top-k classes of a video"),
    "sweep": Command("tcclip.cli.sweep:sweep", "run a protocol's grid of runs locally, on SLURM or as a smoke test"),
    "export": Command("tcclip.cli.checkpoints:export", "write model.safetensors + config.json + model card (and ONNX)"),
    "timeline": Command("tcclip.cli.apps:timeline", "label a long video window by window: CSV, JSON, segments, plot"),
}


CONFIG_COMMANDS: dict[tuple[str, str], Command] = {
    ("data", "check"): Command("tcclip.cli.data_config:check", "Decode every video of a config's splits."),
    ("data", "verify"): Command(
        "tcclip.cli.data_config:verify",
        "For every list a config reads: videos listed, present, decodable and exact; classes losing videos.",
    ),
}
"""Sub-commands of a group that read an experiment config: LightningCLI parses it as for `tcclip fit` and builds its
data module alone (`tcclip.cli.data_config`); `module:function` runs with it and the command's options. `tcclip data
check` given `--list` instead of a config is the typed function of `EXTRA_COMMANDS`."""

CONFIG_OPTIONS = ("-c", "--config", "--print_config", "--seed_everything")
CONFIG_PREFIXES = ("--data.", "--model.", "--trainer.")
"""Options that only the LightningCLI form of a `CONFIG_COMMANDS` command reads (with `CONFIG_OPTIONS`)."""


def reads_config(command: str, sub: str, argv: Sequence[str]) -> bool:
    """Whether `tcclip COMMAND SUB ARGV` runs through LightningCLI (`CONFIG_COMMANDS`): always when the group has
    no typed function of that name, else when a config (or a LightningCLI setting) is given and no `--list`."""
    if (command, sub) not in CONFIG_COMMANDS:
        return False
    target = EXTRA_COMMANDS[command].target
    if not isinstance(target, dict) or sub not in target:
        return True
    names = [word.partition("=")[0] for word in argv]
    if "--list" in names:
        return False
    return any(name in CONFIG_OPTIONS or name.startswith(CONFIG_PREFIXES) for name in names)


HIDDEN_COMMANDS: dict[tuple[str, str], str] = {
    # What each task of a `tcclip sweep --slurm` job array runs (tcclip/experiments/templates/sweep.sbatch).
    ("sweep", "run-cell"): "tcclip.experiments.cells:run_planned_cell",
}
"""Commands that are not listed by `tcclip --help`: (command, sub-command) -> `module:function`."""


def _function(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def run_command(name: str, argv: list[str]) -> int:
    """Run one of `EXTRA_COMMANDS` (`tcclip NAME ARGV...`); its exceptions propagate (`main` reports them)."""
    from tcclip.cli.typed import run

    hidden = HIDDEN_COMMANDS.get((name, argv[0] if argv else ""))
    if hidden is not None:
        return run(_function(hidden), argv[1:], f"tcclip {name} {argv[0]}")
    if argv[:1] and reads_config(name, argv[0], argv[1:]):
        return run_config_command(name, argv[0], argv[1:])
    target = EXTRA_COMMANDS[name].target
    if isinstance(target, dict):
        if argv[:1] and argv[0] in target:
            return run(_function(target[argv[0]]), argv[1:], f"tcclip {name} {argv[0]}")
        if argv[:1] and not argv[0].startswith("-"):
            subs = subcommands(name)
            close = difflib.get_close_matches(argv[0], subs, n=1)
            guess = f"Did you mean `tcclip {name} {close[0]}`? " if close else ""
            raise UserError(f"unknown command 'tcclip {name} {argv[0]}'",
                            fix=f"{guess}The {name} commands are {', '.join(subs)}.")  # fmt: skip
        build_parser(name).parse_args(argv)  # --help, or the usage error of a missing sub-command
        return 2
    return run(_function(target), argv, f"tcclip {name}")


def subcommands(name: str) -> list[str]:
    """The sub-commands of the group `tcclip NAME`: its typed functions and its `CONFIG_COMMANDS`."""
    target = EXTRA_COMMANDS[name].target
    return list(dict.fromkeys([*target, *(sub for group, sub in CONFIG_COMMANDS if group == name)]))


def run_config_command(name: str, sub: str, argv: list[str]) -> int:
    """`tcclip NAME SUB --config C.yaml ...` through LightningCLI (`CONFIG_COMMANDS`); its exit code."""
    from tcclip.cli.config_files import check_config_files

    check_config_files(argv)  # an empty or malformed --config named before LightningCLI reads it
    from tcclip.cli.data_config import run_data_command

    return run_data_command(f"{name} {sub}", _function(CONFIG_COMMANDS[name, sub].target), argv)


def build_parser(name: str):
    """The `jsonargparse.ArgumentParser` of one of `EXTRA_COMMANDS` (for its --help, tests and docs); a group's
    parser has one sub-command per function."""
    from tcclip.cli.typed import function_parser, group_parser

    target = EXTRA_COMMANDS[name].target
    if isinstance(target, dict):
        functions = {sub: _function(t) for sub, t in target.items()}
        config_only = {sub: CONFIG_COMMANDS[name, sub].summary for sub in subcommands(name) if sub not in target}
        return group_parser(functions, f"tcclip {name}", EXTRA_COMMANDS[name].summary, config_only)
    return function_parser(_function(target), f"tcclip {name}")


def known_commands() -> list[str]:
    return [*LIGHTNING_COMMANDS, *EXTRA_COMMANDS]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(argv)
    except UserError as error:
        return _report(error, argv)
    except KeyboardInterrupt:
        return _interrupted(argv)
    except SystemExit as exit_:
        # Lightning answers Ctrl-C with its clean-up and then sys.exit(1) from inside its `except KeyboardInterrupt`.
        if isinstance(exit_.__context__, KeyboardInterrupt):
            return _interrupted(argv)
        raise
    except Exception as error:
        # the model core's errors are ValueErrors (it cannot import UserError); as_user_error presents them as one
        wrapped = as_user_error(error) or wrapped_user_error(error) or environment_error(error)
        if wrapped is None:
            raise
        return _report(wrapped, argv)


def _command(argv: list[str]) -> str:
    # Name the sub-command only when the first word is one (not an option, a file or a typo).
    return " ".join(["tcclip", *argv[:1]]) if argv[:1] and argv[0] in known_commands() else "tcclip"


def _interrupted(argv: list[str]) -> int:
    """One line for Ctrl-C (what was saved, when a run saved something) and exit code 130."""
    from tcclip.utils.errors import take_interrupt_note

    note = take_interrupt_note()
    print(f"{_command(argv)}: interrupted" + (f"; {note}" if note else ""), file=sys.stderr)
    return INTERRUPTED_EXIT_CODE


def _report(error: UserError, argv: list[str]) -> int:
    print(f"{_command(argv)}: error: {error.format()}", file=sys.stderr)
    return error.exit_code


WRAPPING_LIBRARIES = ("jsonargparse", "lightning")
"""Libraries that catch our exceptions and raise their own instead (LightningCLI's argument parser re-raises a
DataModule's error as "Does not validate against any of the Union subtypes", with ours as its context)."""


def wrapped_user_error(error: BaseException) -> UserError | None:
    """The `UserError` that a library caught and replaced by its own exception, if that is what happened.

    Only an exception raised inside one of `WRAPPING_LIBRARIES` counts: an error raised by tcclip's own code while
    handling a `UserError` is a bug and keeps its traceback.
    """
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    if not module.startswith(WRAPPING_LIBRARIES):
        return None
    return user_error_in_chain(error)


def help_text() -> str:
    width = max(map(len, known_commands())) + 2
    rows = [*LIGHTNING_COMMANDS.items(), *((name, command.summary) for name, command in EXTRA_COMMANDS.items())]
    return "\n".join(
        [
            "usage: tcclip COMMAND [options]",
            "",
            "TC-CLIP (Temporally Contextualized CLIP) for video action recognition.",
            "",
            "commands:",
            *(f"  {name:<{width}}{summary}" for name, summary in rows),
            "",
            "`tcclip COMMAND --help` lists the options of one command.",
        ]
    )


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(help_text())
        return 0 if argv else 2
    if argv[0] == "predict" and any(a in ("-c", "--config") or a.startswith(("--config=", "-c=")) for a in argv):
        raise UserError(
            "`tcclip predict` classifies video files and takes no --config",
            fix="To score a config's test sets into predictions.json, run the same command as `tcclip score "
            "--config ...`; to classify videos, `tcclip predict VIDEO... --checkpoint CKPT`.",
        )
    if argv[0] in EXTRA_COMMANDS:
        return run_command(argv[0], argv[1:])
    if not argv[0].startswith("-") and argv[0] not in LIGHTNING_COMMANDS:
        close = difflib.get_close_matches(argv[0], known_commands(), n=1)
        guess = f"Did you mean `tcclip {close[0]}`? " if close else ""
        raise UserError(
            f"unknown command {argv[0]!r}",
            fix=f"{guess}The commands are {', '.join(known_commands())}; `tcclip --help` says what each does.",
        )
    from tcclip.cli.config_files import check_config_files

    if argv[0] == "calibrate":
        from tcclip.cli.calibrate import translate_old_options

        argv = [argv[0], *translate_old_options(argv[1:])]
    check_config_files(argv[1:])  # an empty or malformed --config named before LightningCLI reads it
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from tcclip.cli.lightning import run_lightning_cli

    try:
        run_lightning_cli(argv)
    except SIGTERMException:
        # Lightning ends a run on SIGTERM with exit status 0, as if it had finished: a stopped run is not finished.
        print(f"tcclip {argv[0]}: stopped by SIGTERM", file=sys.stderr)
        return 128 + signal.SIGTERM
    return 0


def console_main() -> int:
    """The `tcclip` console script: `main`, with a Ctrl-C during start-up (imports) also ending in one line."""
    try:
        return main()
    except KeyboardInterrupt:
        return _interrupted(sys.argv[1:2])
