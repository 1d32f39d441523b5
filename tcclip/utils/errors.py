"""One kind of error for mistakes a user can fix, and one way of reporting it.

Every command raises `UserError` for bad input (a missing file, a malformed line, an option out of range) instead of
letting a library's exception surface as a traceback. `tcclip.cli.main` prints it as one paragraph on stderr,
prefixed with the command, and exits with `UserError.exit_code` (2, as argparse does for usage errors). Anything
else that escapes is a bug and keeps its traceback.

The model core (`tcclip.model`) imports nothing from here; its errors (`tcclip.model.errors`) are `ValueError`s that
carry the same fields and mark themselves `user_fixable`. `as_user_error` presents them as a `UserError` (a
`ConfigError` when they name a setting), with the same text.
"""

from __future__ import annotations

import errno
from pathlib import Path


class UserError(Exception):
    """A mistake in the user's input, with what went wrong, where, and how to fix it.

    Args:
        message: what is wrong, in one or two sentences.
        path: the file (or folder) at fault, if any.
        line: 1-based line number within ``path``, if known.
        fix: what the user should do about it.
    """

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None, fix: str = ""):
        self.message = _strip_worker_traceback(message, type(self))
        self.path = None if path is None else Path(path)
        self.line = line
        self.fix = fix
        super().__init__(self.format())

    def format(self) -> str:
        where = ""
        if self.path is not None:
            where = f"{self.path}:{self.line}: " if self.line is not None else f"{self.path}: "
        text = where + self.message
        if self.fix:
            text = text.rstrip() + ("" if text.rstrip().endswith(".") else ".") + " " + self.fix
        return text


class ConfigError(UserError, ValueError):
    """A setting out of range or of the wrong type, named by its key as a config file spells it.

    Also a `ValueError`, the exception a Python caller of the class that checks the value expects.

    Args:
        key: the setting (``model.optim.lr``, ``data.init_args.protocol``, ``tome_r``).
        message: what is wrong with its value.
    """

    def __init__(self, key: str, message: str, *, path: str | Path | None = None, fix: str = "") -> None:
        self.key = key
        super().__init__(f"{key}: {message}", path=path, fix=fix)


ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: ("the disk is full", "Free some space (or write elsewhere) and run the command again."),
    errno.EDQUOT: ("the disk quota is used up", "Free some space (or write elsewhere) and run the command again."),
    errno.EROFS: ("the file system is read-only", "Write to a folder on a writable disk."),
    errno.EACCES: ("permission denied", "Check the permissions of this file or folder, or use another one."),
    errno.EPERM: ("operation not permitted", "Check the permissions of this file or folder, or use another one."),
}
"""OS errors that are about the machine, not a bug of tcclip: reported as one paragraph by every command."""


def environment_error(error: BaseException | None) -> UserError | None:
    """A full disk, a read-only folder or a permission problem anywhere in an exception's chain, as a `UserError`
    naming the file (None for any other exception)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS:
            reason, fix = ENVIRONMENT_ERRNOS[error.errno]
            name = error.filename
            return UserError(
                f"{reason}; the command stopped (tcclip writes its outputs whole or not at all)",
                path=None if name is None else Path(str(name)),
                fix=fix,
            )
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _strip_worker_traceback(message: str, cls: type) -> str:
    """The original message of an error re-raised by a DataLoader worker.

    torch re-creates an exception from a worker process as `cls("Caught ... Original Traceback ...: <message>")`;
    the one paragraph is the last line's text after the class name.
    """
    if not message.startswith("Caught ") or "Original Traceback" not in message:
        return message
    marker = f"{cls.__module__}.{cls.__qualname__}: "
    return message.rsplit(marker, 1)[1].strip() if marker in message else message


def as_user_error(error: BaseException | None, path: str | Path | None = None, fix: str = "") -> UserError | None:
    """`error` as a `UserError`: itself, or an error of the model core (marked `user_fixable`) as a `ConfigError`
    (it names a setting: `key`) or a `UserError` with the same text; None for any other exception.

    Args:
        error: the exception.
        path: the file the model core's error is about (a checkpoint whose setting is refused), if the caller knows.
        fix: replaces the model core's own fix (a caller knows better where the value came from).
    """
    if isinstance(error, UserError):
        return error
    if error is None or not getattr(error, "user_fixable", False):
        return None
    message, fix = getattr(error, "message", str(error)), fix or getattr(error, "fix", "")
    key = getattr(error, "key", None)
    if key is not None:
        converted: UserError = ConfigError(key, getattr(error, "reason", message), path=path, fix=fix)
    else:
        converted = UserError(message, path=path, fix=fix)
    converted.__cause__ = error
    return converted


def user_error_in_chain(error: BaseException | None) -> UserError | None:
    """The first `UserError` (or model core error, `as_user_error`) in an exception's chain of causes and contexts
    (the exception itself included)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        converted = as_user_error(error)
        if converted is not None:
            return converted
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def check_format(record: object, *, name: str, version: int, what: str, path: str | Path, fix: str) -> None:
    """Refuse a JSON record of tcclip's that is not of format `name`, or that a newer tcclip wrote.

    Records carry ``{"format": name, "format_version": N}``; a reader accepts every version up to its own.
    """
    found = record.get("format") if isinstance(record, dict) else None
    if found != name:
        raise UserError(f"not a tcclip {what} (format {found!r})", path=path, fix=fix)
    if int(record.get("format_version", 0)) > version:
        raise UserError(
            f"{what} format version {record['format_version']} is newer than this tcclip reads ({version})",
            path=path,
            fix="upgrade tcclip",
        )


_interrupt_note: list[str] = []


def note_interrupt(text: str) -> None:
    """What a command saved or kept when Ctrl-C stopped it; `tcclip.cli` prints it in its one line."""
    _interrupt_note[:] = [text]


def take_interrupt_note() -> str:
    note = _interrupt_note[0] if _interrupt_note else ""
    _interrupt_note.clear()
    return note
