"""The `tcclip` command: LightningCLI for fit/validate/test/predict, plus the project's own sub-commands."""

from __future__ import annotations

import importlib
import sys

from tcclip.errors import UserError

# Sub-commands that are not LightningCLI's: name -> "module:function", function(argv: list[str]) -> int.
EXTRA_COMMANDS: dict[str, str] = {
    "splits": "tcclip.data.splits:main",
    "data": "tcclip.data.cli:main",
    "convert-checkpoint": "tcclip.convert:main",
    "explain": "tcclip.explain:main",
    "sweep": "tcclip.sweep:main",
}
# `tcclip predict VIDEO ... --checkpoint CKPT` is the people's predictor; with --config it is LightningCLI's.
PEOPLE_PREDICT = "tcclip.inference:main"


def _run(target: str, argv: list[str]) -> int:
    module_name, func_name = target.split(":")
    return int(getattr(importlib.import_module(module_name), func_name)(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(argv)
    except UserError as error:
        command = " ".join(["tcclip", *argv[:1]])
        print(f"{command}: error: {error.format()}", file=sys.stderr)
        return error.exit_code


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in EXTRA_COMMANDS:
        return _run(EXTRA_COMMANDS[argv[0]], argv[1:])
    if argv and argv[0] == "predict" and not any(a in ("-c", "--config") or a.startswith("--config=") for a in argv):
        return _run(PEOPLE_PREDICT, argv[1:])
    from tcclip.lightning_cli import run_lightning_cli

    run_lightning_cli(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
