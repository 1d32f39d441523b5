"""The `tcclip` command: LightningCLI for fit/validate/test/predict, plus the project's own sub-commands.

Every sub-command is one row of a table (name, where it lives, one line of help), so `tcclip --help` lists them all
and an unknown word gets the list of the ones that exist.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from typing import NamedTuple

from tcclip.errors import UserError


class Command(NamedTuple):
    """One `tcclip` sub-command that is not LightningCLI's."""

    target: str
    """"module:function"; function(argv: list[str]) -> int (the exit code)."""
    summary: str
    """One line for `tcclip --help`."""


# LightningCLI's sub-commands (tcclip.lightning_cli): name -> one line for `tcclip --help`.
LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "train (and validate) a model from a config: tcclip fit --config configs/....yaml",
    "validate": "evaluate a checkpoint on the validation split of a config",
    "test": "evaluate a checkpoint on the test split of a config and write results.json",
    "predict": "classify video files: tcclip predict VIDEO... --checkpoint CKPT (with --config: Lightning's loop)",
}

EXTRA_COMMANDS: dict[str, Command] = {
    "splits": Command("tcclip.data.splits:main", "download the official split files; make splits of your own data"),
    "data": Command("tcclip.data.cli:main", "make a synthetic dataset; check that every video of a dataset decodes"),
    "convert-checkpoint": Command("tcclip.convert:main", "turn an official TC-CLIP .pth into a tcclip .ckpt"),
    "explain": Command("tcclip.explain:main", "draw the seed patches, context tokens and top-k classes of a video"),
    "sweep": Command("tcclip.sweep:main", "run a protocol's grid of runs locally, on SLURM or as a smoke test"),
    "export": Command("tcclip.export:main", "write model.safetensors + config.json + model card (and ONNX)"),
    "calibrate": Command("tcclip.calibrate:main", "fit a temperature and rejection thresholds on a validation list"),
    "timeline": Command("tcclip.timelines:main", "label a long video window by window: CSV, JSON, segments, plot"),
}
# `tcclip predict VIDEO ... --checkpoint CKPT` is the people's predictor; with --config it is LightningCLI's.
PEOPLE_PREDICT = "tcclip.inference:main"


def _run(target: str, argv: list[str]) -> int:
    module_name, func_name = target.split(":")
    return int(getattr(importlib.import_module(module_name), func_name)(argv) or 0)


def known_commands() -> list[str]:
    return [*LIGHTNING_COMMANDS, *EXTRA_COMMANDS]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(argv)
    except UserError as error:
        return _report(error, argv)
    except Exception as error:
        wrapped = wrapped_user_error(error)
        if wrapped is None:
            raise
        return _report(wrapped, argv)


def _report(error: UserError, argv: list[str]) -> int:
    # Name the sub-command only when the first word is one (not an option, a file or a typo).
    command = " ".join(["tcclip", *argv[:1]]) if argv[:1] and argv[0] in known_commands() else "tcclip"
    print(f"{command}: error: {error.format()}", file=sys.stderr)
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
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, UserError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


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
    if argv[0] in EXTRA_COMMANDS:
        return _run(EXTRA_COMMANDS[argv[0]].target, argv[1:])
    if argv[0] == "predict" and not any(a in ("-c", "--config") or a.startswith("--config=") for a in argv):
        return _run(PEOPLE_PREDICT, argv[1:])
    if not argv[0].startswith("-") and argv[0] not in LIGHTNING_COMMANDS:
        close = difflib.get_close_matches(argv[0], known_commands(), n=1)
        guess = f"Did you mean `tcclip {close[0]}`? " if close else ""
        raise UserError(
            f"unknown command {argv[0]!r}",
            fix=f"{guess}The commands are {', '.join(known_commands())}; `tcclip --help` says what each does.",
        )
    from tcclip.lightning_cli import run_lightning_cli

    run_lightning_cli(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
