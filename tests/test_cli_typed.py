"""Typed functions as commands (`tcclip.cli.typed`): signature and docstring make the parser, every option users
had keeps its spelling (dashes, and LightningCLI's underscores too), and messages name the option as typed."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import pytest

from tcclip.cli import commands as cli
from tcclip.cli.typed import call, dashed_options, function_parser, parse, run
from tcclip.cli.types import Hidden, Spelling, at_least

# Every option each project command had before the typed functions (from the hand-built parsers): all still exist.
OLD_OPTIONS = {
    "predict": "--checkpoint --labels --label-file --device --backend --clip-weights --top-k --views --json "
    "--batch-size --workers --quiet --reject --reject-threshold --reject-score",
    "timeline": "--checkpoint --labels --label-file --device --backend --clip-weights --window --stride --top-k "
    "--batch-size --smooth --refine --out --quiet --reject --reject-threshold --reject-score",
    "explain": "--checkpoint --labels --label-file --device --backend --clip-weights --out --layer --top-k --format",
    "export": "--labels --label-file --onnx --onnx-batch",
    "convert-checkpoint": "--config --clip-weights",
}


def sample(
    first: str,
    *,
    count: Annotated[int, at_least(1)] = 2,
    top_k: int = 5,
    kind: Literal["a", "b"] = "a",
    out: Path | None = None,
    item: list[str] | None = None,
    loud: bool = False,
) -> int:
    """Do a sample thing.

    Args:
        first: the first word
        count: how many
        top_k: the best k
        kind: a or b
        out: where to write
        item: one per use
        loud: say more
    """
    sample.seen = dict(first=first, count=count, top_k=top_k, kind=kind, out=out, item=item, loud=loud)
    return 3


def test_signature_and_docstring_make_the_parser():
    parser = function_parser(sample, "tcclip sample")
    text = parser.format_help()
    assert text.startswith("usage: tcclip sample") and "Do a sample thing." in text
    for option, doc in (("--top-k", "the best k"), ("--count", "how many"), ("--loud", "say more"), ("FIRST", "")):
        assert option in text and doc in text
    assert "--top_k" not in text  # one spelling shown
    assert run(sample, ["x", "--count", "4", "--top-k", "1", "--kind", "b", "--out", "o", "--item", "p", "--item",
                        "q", "--loud"], "tcclip sample") == 3  # fmt: skip
    assert sample.seen == dict(first="x", count=4, top_k=1, kind="b", out=Path("o"), item=["p", "q"], loud=True)
    assert call(sample, {**sample.seen, "loud": False}) == 3 and sample.seen["loud"] is False


def test_underscore_spellings_are_read_as_the_dashed_options():
    assert dashed_options(["--top_k", "3", "--top_k=4", "--not_an_option", "a_b"], sample) == [
        "--top-k", "3", "--top-k=4", "--not_an_option", "a_b"
    ]  # fmt: skip
    run(sample, ["x", "--top_k=7"], "tcclip sample")
    assert sample.seen["top_k"] == 7


def test_word_parsers_errors_name_the_option(capsys):
    with pytest.raises(SystemExit) as done:
        run(sample, ["x", "--count", "0"], "tcclip sample")
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "argument --count: must be >= 1, got 0" in err
    with pytest.raises(SystemExit):
        run(sample, ["x", "--kind", "c"], "tcclip sample")
    assert "argument --kind: invalid choice: 'c'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(OLD_OPTIONS))
def test_every_old_option_keeps_its_spelling(name):
    text = cli.build_parser(name).format_help()
    missing = [option for option in OLD_OPTIONS[name].split() if f"{option} " not in text and f"{option}\n" not in text]
    assert missing == []


@pytest.mark.parametrize("name", sorted(n for n, c in cli.EXTRA_COMMANDS.items() if ":" in c.target))
def test_every_typed_command_documents_every_parameter(name):
    from docstring_parser import parse

    fn = cli._function(cli.EXTRA_COMMANDS[name].target)
    documented = {p.arg_name.lstrip("*") for p in parse(inspect.getdoc(fn)).params}
    assert set(inspect.signature(fn).parameters) == documented
    for hint in typing.get_type_hints(fn).values():  # an option group documents its fields in its own docstring
        if dataclasses.is_dataclass(hint):
            fields = {f.name for f in dataclasses.fields(hint)}
            assert fields == {p.arg_name for p in parse(inspect.getdoc(hint)).params}, hint


def test_reject_score_choices_are_the_library_scores():
    import typing

    from tcclip.cli.apps import RejectScore
    from tcclip.inference.openset import SCORES

    assert typing.get_args(RejectScore) == SCORES


def test_old_underscore_spelling_through_tcclip_main(capsys):
    # `--label_file` (LightningCLI style) and `--label-file` reach the same option; both exclude --labels.
    for spelling in ("--label-file", "--label_file"):
        assert cli.main(["export", "a.ckpt", "out", "--labels", "a,b", spelling, "l.csv"]) == 2
        assert "--labels and --label-file both name the classes" in capsys.readouterr().err


def test_every_command_help_is_fast_and_imports_no_heavy_library():
    import subprocess
    import sys

    words = [[name] for name, c in cli.EXTRA_COMMANDS.items() if ":" in c.target or isinstance(c.target, dict)]
    words += [[name, sub] for name, c in cli.EXTRA_COMMANDS.items() if isinstance(c.target, dict) for sub in c.target]
    code = (
        "import contextlib, io, sys\nfrom tcclip.cli import main\n"
        f"for words in {words!r}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "        main([*words, '--help'])\n"
        "    assert out.getvalue().startswith('usage: tcclip ' + ' '.join(words)), (words, out.getvalue()[:100])\n"
        "print(sorted(m for m in ('torch', 'lightning', 'rich') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert len(words) >= 10 and result.stdout.strip().splitlines()[-1] == "[]"


def test_dataset_choices_are_the_library_datasets():
    import typing

    from tcclip.cli.data_get import Dataset
    from tcclip.data.acquire import DATASETS

    assert typing.get_args(Dataset) == tuple(DATASETS)


def test_a_group_names_its_commands_for_an_unknown_word(capsys):
    assert cli.main(["data", "chek"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'tcclip data chek'. Did you mean `tcclip data check`?" in err
    assert "synth, prepare, check, download, verify" in err


@dataclass(frozen=True)
class GroupOptions:
    """Options.

    Args:
        batch_size: videos per step
        worker: internal
    """

    batch_size: int = 4
    worker: Annotated[str | None, Spelling("--_worker"), Hidden] = None


def group_command(o: GroupOptions, passthrough: list[str] = ()) -> int:
    """A command.

    Args:
        o: the options
        passthrough: the words after --
    """
    group_command.seen = (o, list(passthrough))
    return 0


def test_a_dataclass_is_a_group_of_options_and_hidden_ones_stay_out_of_help():
    text = function_parser(group_command, "tcclip x").format_help()
    assert "--batch-size" in text and "videos per step" in text and "--_worker" not in text
    assert run(group_command, ["--batch_size", "2", "--_worker", "w", "--", "--seed", "3"], "tcclip x") == 0
    assert group_command.seen == (GroupOptions(2, "w"), ["--seed", "3"])
    assert parse(GroupOptions, ["--batch-size", "8"], "x") == {"batch_size": 8, "worker": None}


def test_the_job_scripts_old_module_runs_the_new_command(tmp_path):
    # Job scripts written before `tcclip sweep run-cell` call `python -m tcclip.experiments.cells`: same behaviour.
    import subprocess
    import sys

    for argv in (["-m", "tcclip.experiments.cells"], ["-m", "tcclip.cli", "sweep", "run-cell"]):
        done = subprocess.run(
            [sys.executable, *argv, str(tmp_path / "no-plan.json"), "0"], capture_output=True, text=True
        )
        assert done.returncode == 2 and "cannot read the plan" in done.stderr, done.stderr
