"""The model core's errors: plain `ValueError`s that say what is wrong and how to fix it.

The model core imports nothing else from tcclip, so these are not `tcclip.utils.errors.UserError`s. They carry the
same fields (`message`, `fix`, and for a setting its `key`) and mark themselves `user_fixable`; the layers above
present them as they present a `UserError` (one paragraph, exit code 2, no traceback) through
`tcclip.utils.errors.as_user_error`.
"""

from __future__ import annotations

__all__ = ["ModelConfigError", "ModelError", "WeightsError"]


class ModelError(ValueError):
    """A model setting or a set of weights the model core cannot use.

    Args:
        message: what is wrong (for weights read from a file, it starts with the file's name).
        fix: what to do about it.
    """

    user_fixable = True
    """Read by `tcclip.utils.errors.as_user_error`: a mistake in the input, reported without a traceback."""
    key: str | None = None

    def __init__(self, message: str, *, fix: str = "") -> None:
        self.message = message
        self.fix = fix
        text = message
        if fix:
            text = text.rstrip() + ("" if text.rstrip().endswith(".") else ".") + " " + fix
        super().__init__(text)


class ModelConfigError(ModelError):
    """A setting out of range or of the wrong type, named by its key as a config file spells it
    (`model_config.tome_r`)."""

    def __init__(self, key: str, reason: str, *, fix: str = "") -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}", fix=fix)


class WeightsError(ModelError):
    """Weights that do not fit the network (missing, unexpected or misshaped tensors), or an official checkpoint's
    contents this implementation cannot map."""
