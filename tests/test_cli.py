"""The `tcclip` command's two mechanisms: LightningCLI (fit/validate/test/score) and one jsonargparse parser per
project command, every one reachable, documented by --help, and `predict` meaning one program."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import jsonargparse
import pytest

from tcclip.cli import commands as cli

PACKAGE = Path(__file__).resolve().parents[1] / "tcclip"

# Sub-commands of the commands that have them: each has its own --help too.
NESTED = {"splits": ("download", "make"), "data": ("synth", "prepare", "check", "verify")}


@pytest.mark.parametrize("name", sorted(cli.EXTRA_COMMANDS))
def test_every_project_command_has_one_jsonargparse_parser_and_a_help(name, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["tcclip"])  # `tcclip data verify` is LightningCLI's, which warns of pytest's
    assert isinstance(cli.build_parser(name), jsonargparse.ArgumentParser)
    for words in ([name], *([name, sub] for sub in NESTED.get(name, ()))):
        with pytest.raises(SystemExit) as done:
            cli.main([*words, "--help"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: tcclip {name}") and "--help" in out, (words, out[:200])
        assert words[-1] in out.splitlines()[0]
        assert "<class 'Path'>" not in out, words  # file options read "type: path", not a Python repr


@pytest.mark.parametrize("name", ["fit", "score"])
def test_lightning_commands_have_a_help(name, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["tcclip"])  # LightningCLI warns when it sees pytest's arguments too
    with pytest.raises(SystemExit) as done:
        cli.main([name, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--config CONFIG" in out and "--ckpt_path" in out
    # `score` runs Lightning's predict loop; its usage line names the command as typed
    assert out.startswith(f"usage: tcclip [options] {name} "), out.splitlines()[0]


def test_a_project_command_errors_name_the_option_and_exit_2(capsys):
    assert cli.main(["export", "a.ckpt", "out", "--labels", "a,b", "--label-file", "l.csv"]) == 2
    assert "--label-file" in capsys.readouterr().err  # mutually exclusive with --labels
    with pytest.raises(SystemExit) as done:
        cli.main(["explain", "v.mp4", "--checkpoint", "c.ckpt", "--out", "o", "--format", "jpeg"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "--format" in err and "jpeg" in err
    with pytest.raises(SystemExit) as done:
        cli.main(["splits", "make", "--list", "a", "--labels", "b", "--out", "c", "--shots", "0"])
    assert done.value.code == 2
    assert "--shots" in capsys.readouterr().err


def test_predict_is_the_video_predictor_and_score_is_lightnings_predict_loop(capsys, monkeypatch, tmp_path):
    assert "predict" in cli.EXTRA_COMMANDS and cli.EXTRA_COMMANDS["predict"].target == "tcclip.cli.apps:predict"
    assert "predict" not in cli.LIGHTNING_COMMANDS and "score" in cli.LIGHTNING_COMMANDS

    for argv in (["predict", "--config", "c.yaml"], ["predict", "-c", "c.yaml"], ["predict", "--config=c.yaml"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("tcclip predict: error: ") and "tcclip score --config" in err, err

    import tcclip.cli.lightning

    seen: list[list[str]] = []
    monkeypatch.setattr(tcclip.cli.lightning, "run_lightning_cli", lambda argv: seen.append(argv))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("trainer:\n  max_epochs: 1\n")  # --config files are read before LightningCLI
    assert cli.main(["score", "--config", "c.yaml", "--ckpt_path", "last"]) == 0
    assert cli.main(["test", "--config", "c.yaml"]) == 0
    assert seen == [["score", "--config", "c.yaml", "--ckpt_path", "last"], ["test", "--config", "c.yaml"]]


def test_top_level_help_imports_no_heavy_library():
    code = (
        "import sys; from tcclip.cli import main; assert main(['--help']) == 0; "
        "print(sorted(m for m in ('torch', 'lightning', 'jsonargparse', 'rich') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


FORBIDDEN_IN_MODEL_CORE = ("lightning", "pytorch_lightning", "argparse", "jsonargparse", "rich")


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_model_core_imports_no_lightning_nor_cli_libraries():
    files = sorted((PACKAGE / "model").rglob("*.py"))
    assert len(files) >= 5  # the walk found the model core
    found = {str(p.relative_to(PACKAGE)): sorted(_imported_roots(p) & set(FORBIDDEN_IN_MODEL_CORE)) for p in files}
    assert {name: libs for name, libs in found.items() if libs} == {}


def test_import_scan_sees_function_local_imports(tmp_path):
    # The check above must see an import hidden inside a function, as the CLI-free model core could grow one.
    source = tmp_path / "m.py"
    source.write_text("def f():\n    import argparse\n    from rich.console import Console\n")
    assert _imported_roots(source) == {"argparse", "rich"}


def test_score_does_not_warn_that_its_words_differ_from_the_command_line(monkeypatch, capsys):
    import warnings

    monkeypatch.setattr(sys, "argv", ["tcclip", "score", "--help"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SystemExit) as stop:
            cli.main(["score", "--help"])
    assert stop.value.code == 0
    assert "--ckpt_path" in capsys.readouterr().out
    assert not [w for w in caught if "args parameter" in str(w.message)]


def test_lightning_cli_uses_only_public_hooks():
    # Private LightningCLI methods change between releases of the open `lightning>=2.4` range: overriding one would
    # break parsing silently on an upgrade.
    from lightning.pytorch.cli import LightningCLI

    from tcclip.cli.data_config import DataModuleCLI
    from tcclip.cli.lightning import TCCLIPLightningCLI, TCCLIPTrainer

    for cli_class in (TCCLIPLightningCLI, DataModuleCLI):
        overridden = {name for name in vars(cli_class) if hasattr(LightningCLI, name)}
        assert overridden, "the walk found the overrides"
        assert {name for name in overridden if name.startswith("_") and not name.startswith("__")} == set()
    # `score` is a sub-command because the Trainer has a method of that name, running Lightning's predict loop
    assert "score" in TCCLIPLightningCLI.subcommands() and "predict" not in TCCLIPLightningCLI.subcommands()
    assert TCCLIPTrainer.score.__doc__.splitlines()[0].startswith("Per-video top-k")


def test_data_check_of_a_config_is_lightning_clis_with_its_own_options(capsys, monkeypatch):
    # `tcclip data check --config C.yaml` reads the experiment config through LightningCLI; `--list` is the typed form
    monkeypatch.setattr(sys, "argv", ["tcclip"])
    with pytest.raises(SystemExit) as done:
        cli.main(["data", "check", "--config", "configs/demo.yaml", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tcclip data check [-c CONFIG]") and "--data CONFIG | CLASS_PATH_OR_NAME" in out
    assert "no network is built" in " ".join(out.split())
    assert all(option in out for option in ("--stage {fit,validate,test,all}", "--verify_frames", "--workers", "--out"))
    assert cli.reads_config("data", "check", ["-c", "c.yaml"]) and cli.reads_config("data", "verify", [])
    assert cli.reads_config("data", "check", ["--data.init_args.root=/d"])
    assert not cli.reads_config("data", "check", ["--list", "l.txt", "--root", "."])
    assert not cli.reads_config("data", "check", ["--help"]) and not cli.reads_config("data", "synth", ["-c", "x"])
