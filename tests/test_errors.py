"""The one mechanism for user mistakes: `UserError` -> one paragraph on stderr, exit code 2, no traceback."""

from __future__ import annotations

from tcclip.cli import commands as cli
from tcclip.utils.errors import UserError


def test_user_error_names_file_line_and_fix():
    err = UserError("duplicate class name 'jump'", path="labels.csv", line=3, fix="Remove one of the two rows.")
    assert err.format() == "labels.csv:3: duplicate class name 'jump'. Remove one of the two rows."
    assert str(err) == err.format()
    assert UserError("bad value").format() == "bad value"


def test_cli_prints_user_errors_without_traceback(monkeypatch, capsys):
    def boom(argv):
        raise UserError("no such folder", path="/nowhere", fix="Pass --root.")

    monkeypatch.setitem(cli.EXTRA_COMMANDS, "boom", cli.Command("tests_boom", "raise an error"))
    monkeypatch.setattr(cli, "run_command", lambda name, argv: boom(argv))
    assert cli.main(["boom", "x"]) == 2
    err = capsys.readouterr().err
    assert err == "tcclip boom: error: /nowhere: no such folder. Pass --root.\n"
    assert "Traceback" not in err


def test_user_error_found_through_causes_and_contexts():
    from tcclip.utils.errors import user_error_in_chain

    inner = UserError("bad root", path="/data")
    try:
        try:
            raise inner
        except UserError as err:
            raise ValueError("wrapped by a library") from err
    except ValueError as outer:
        assert user_error_in_chain(outer) is inner
    try:
        try:
            raise inner
        except UserError:
            raise RuntimeError("raised while handling it")  # noqa: B904 (the implicit context is what is tested)
    except RuntimeError as outer:
        assert user_error_in_chain(outer) is inner
    assert user_error_in_chain(ValueError("no user error")) is None
    assert user_error_in_chain(None) is None


def test_check_format_refuses_other_formats_and_newer_versions():
    import pytest

    from tcclip.utils.errors import check_format

    ok = {"format": "tcclip-x", "format_version": 1}
    check_format(ok, name="tcclip-x", version=2, what="x record", path="x.json", fix="redo it")
    for record, phrase in (
        ({"format": "other"}, "not a tcclip x record (format 'other')"),
        ([1, 2], "not a tcclip x record (format None)"),
        ({"format": "tcclip-x", "format_version": 3}, "x record format version 3 is newer than this tcclip reads (2)"),
    ):
        with pytest.raises(UserError) as err:
            check_format(record, name="tcclip-x", version=2, what="x record", path="x.json", fix="redo it")
        assert phrase in str(err.value) and str(err.value).startswith("x.json: ")


def test_model_core_errors_are_presented_as_user_errors(monkeypatch, capsys):
    # The model core cannot import UserError; its ValueErrors carry the same fields and read the same way.
    import pytest

    from tcclip.model.config import TCCLIPConfig
    from tcclip.model.errors import ModelConfigError, WeightsError
    from tcclip.utils.errors import ConfigError, as_user_error, user_error_in_chain

    with pytest.raises(ModelConfigError) as info:
        TCCLIPConfig(tome_r=-2)
    assert isinstance(info.value, ValueError) and not isinstance(info.value, UserError)
    assert info.value.key == "model_config.tome_r"
    shown = as_user_error(info.value, path="m.ckpt")
    assert isinstance(shown, ConfigError) and shown.key == "model_config.tome_r"
    assert shown.format() == (
        "m.ckpt: model_config.tome_r: must be >= 1, got -2. Fix model.model_config.tome_r in the config (or the "
        "checkpoint's setting)."
    )
    assert as_user_error(info.value).format() == str(info.value)  # the same text with or without the conversion
    weights = WeightsError("w.pth: does not fit", fix="Check the settings.")
    assert type(as_user_error(weights)) is UserError and as_user_error(weights).format() == str(weights)
    assert as_user_error(ValueError("a bug")) is None and as_user_error(None) is None
    try:
        raise RuntimeError("a library's wrapper") from weights
    except RuntimeError as outer:
        assert user_error_in_chain(outer).format() == str(weights)

    # raised straight out of a command (no library wrapped it): one paragraph, exit code 2
    monkeypatch.setitem(cli.EXTRA_COMMANDS, "boom", cli.Command("tests_boom", "raise an error"))
    monkeypatch.setattr(cli, "run_command", lambda name, argv: TCCLIPConfig(context_token_k=0))
    assert cli.main(["boom"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tcclip boom: error: model_config.context_token_k: must be >= 1, got 0.")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_the_model_core_has_no_checkpoint_loader():
    import pytest

    import tcclip
    import tcclip.model
    from tcclip.training.checkpoints import load_model

    assert tcclip.load_model is load_model
    for name, where in [("load_model", "tcclip.load_model"), ("save_model", "tcclip.training.checkpoints.save_model")]:
        with pytest.raises(AttributeError, match=f"{name}.*use {where}"):
            getattr(tcclip.model, name)
