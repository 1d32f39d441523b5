"""Config files checked before LightningCLI reads them, so that a mistake names the file.

jsonargparse reports an empty or comment-only file as "Unexpected config: " followed by its text, without the
file's name, and a YAML syntax error without the line. `check_config_files` reads every `--config` of a command
line first: a missing file, an empty one, one that is not a mapping of settings, or bad YAML is a `UserError` with
the file (and line).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tcclip.training.hparams import config_paths
from tcclip.utils.errors import UserError

__all__ = ["check_config_file", "check_config_files", "config_paths"]


def check_config_file(path: str | Path) -> None:
    """Raise a `UserError` naming `path` unless it is a readable YAML mapping of settings."""
    import yaml

    path = Path(path)
    fix = "An experiment config maps sections to settings (trainer:, model:, data:); see configs/demo.yaml."
    if path.is_dir():
        raise UserError("--config is a folder, not a config file", path=path, fix="Give a YAML file.")
    if not path.is_file():
        raise UserError("no such config file", path=path, fix="Check the path of the --config file.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"not UTF-8 text ({err.reason})", path=path, fix="Save the config as UTF-8.") from None
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(
            f"not valid YAML ({problem})", path=path, line=None if mark is None else mark.line + 1, fix="Fix the YAML."
        ) from None
    if content is None:
        raise UserError("the config file is empty (or holds only comments)", path=path, fix=fix)
    if not isinstance(content, dict):
        raise UserError(f"the config holds a {type(content).__name__}, not a mapping of settings", path=path, fix=fix)


def _inline_yaml(text: str) -> bool:
    """jsonargparse also takes the settings themselves as `--config 'trainer: {max_epochs: 1}'`."""
    return not Path(text).exists() and any(mark in text for mark in (":", "{", "\n"))


def check_config_files(argv: Sequence[str]) -> None:
    for path in config_paths(argv):
        if not _inline_yaml(path):
            check_config_file(path)
