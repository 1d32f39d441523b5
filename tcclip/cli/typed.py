"""A typed function is a command: its signature gives the options, its docstring the help.

`function_parser(fn, prog)` reads `fn`'s parameters (the type hints and defaults) and its Google-style docstring
(`Args:`) and builds a `jsonargparse.ArgumentParser`, as jsonargparse's `auto_cli` does, with the spellings the
`tcclip` commands have always had:

- a parameter without a default before the `*` is a positional argument; `*videos: str` takes one or more;
- a keyword parameter `top_k` is the option `--top-k`; `--top_k` (LightningCLI's spelling) is read as `--top-k`;
- `x: bool = False` is a flag (`--json`), `Literal[...]` a choice, `T | None` an optional `T`, `list[T]` an option
  given once per value (`--list a --list b`); a keyword parameter without a default is a required option;
- `Annotated[int, at_least(0)]` parses the word with the callable (`tcclip.cli.types`), whose
  `argparse.ArgumentTypeError` becomes argparse's message "argument --seed: must be >= 0, got -1";
  `Annotated[..., Spelling("--from")]` names an option otherwise (a keyword, a short `-c`);
- `x: bool = True` takes a value, `--x false` (`true`/`false`, `yes`/`no`, `1`/`0`);
- a parameter named `passthrough` is no option: it receives the words after `--` (`tcclip sweep ... -- --seed 3`);
- `Annotated[..., Hidden]` keeps an internal option out of `--help`;
- a keyword parameter typed by a frozen dataclass is a group of options, one per field (documented by the
  dataclass's `Args:`): a command with many options keeps them together and its function short.

`run(fn, argv, prog)` parses `argv` and calls `fn`; what it returns is the exit code (None is 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from jsonargparse import ArgumentParser, DefaultHelpFormatter

from tcclip.cli.types import Hidden, Spelling, WordParser

_PLAIN = (str, int, float)

PATH = WordParser("path", Path)
"""A file or folder name, shown as `path` in `--help` (jsonargparse would print pathlib's class repr)."""


def _word_type(hint: Any) -> Any:
    """The `type=` of one word of type `hint`: `PATH` for paths, else the type itself."""
    return PATH if isinstance(hint, type) and issubclass(hint, Path) else hint


PASSTHROUGH = "passthrough"
"""The parameter that receives the words after `--`."""


def option_string(name: str) -> str:
    """`top_k` -> `--top-k`."""
    return "--" + name.replace("_", "-")


class Param(typing.NamedTuple):
    """One command-line argument: a parameter of the function, or a field of a dataclass parameter (`group`)."""

    name: str
    kind: Any
    hint: Any
    default: Any
    help: str
    group: str | None = None


def _parameters(fn: Callable[..., Any]) -> list[Param]:
    _, helps = _docstring(fn)
    hints = typing.get_type_hints(fn, include_extras=True)
    out = []
    for name, param in inspect.signature(fn).parameters.items():
        hint = hints.get(name, str)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            fields = typing.get_type_hints(hint, include_extras=True)
            _, field_helps = _docstring(hint)
            for field in dataclasses.fields(hint):
                default = inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default
                kind = inspect.Parameter.KEYWORD_ONLY
                out.append(Param(field.name, kind, fields[field.name], default, field_helps.get(field.name, ""), name))
        elif name != PASSTHROUGH:
            out.append(Param(name, param.kind, hint, param.default, helps.get(name, "")))
    return out


def _spellings(fn: Callable[..., Any]) -> dict[str, list[str]]:
    """Option name -> its option strings (keyword parameters and dataclass fields)."""
    out = {}
    for p in _parameters(fn):
        if p.kind is inspect.Parameter.KEYWORD_ONLY or p.default is not inspect.Parameter.empty:
            meta = typing.get_args(p.hint) if typing.get_origin(p.hint) is Annotated else ()
            given = [m for m in meta[1:] if isinstance(m, Spelling)]
            out[p.name] = list(given[0]) if given else [option_string(p.name)]
    return out


def dashed_options(argv: Sequence[str], fn: Callable[..., Any]) -> list[str]:
    """`--top_k 3` / `--top_k=3` -> `--top-k 3` / `--top-k=3` where `--top-k` is an option of `fn` (one spelling
    per option keeps argparse's messages naming it once: "argument --top-k: ...")."""
    known = {option for strings in _spellings(fn).values() for option in strings}
    out = []
    for word in argv:
        name, eq, value = word.partition("=")
        dashed = name.replace("_", "-")
        out.append(dashed + eq + value if word.startswith("--") and "_" in name and dashed in known else word)
    return out


def _unwrap_optional(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def _argument(hint: Any, default: Any) -> dict[str, Any]:
    """argparse keyword arguments for one parameter's type hint."""
    hint = _unwrap_optional(hint)
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *meta = typing.get_args(hint)
        parsers = [m for m in meta if callable(m) and not isinstance(m, (Spelling, type))]
        # the word parser reads the whole word (`--shots 2,4`: one list), so it replaces the base type's spelling
        return {"type": parsers[0]} if parsers else _argument(base, default)
    if hint is bool:
        return {"action": "store_true"} if default is False else {"type": YES_NO}
    if origin is Literal:
        choices = typing.get_args(hint)
        return {"choices": choices} if isinstance(choices[0], str) else {"choices": choices, "type": type(choices[0])}
    if origin in (list, Sequence, tuple) or (origin is not None and issubclass(origin, Sequence)):
        (item,) = typing.get_args(hint)[:1]
        return {"action": "append", "type": _word_type(item)}
    if isinstance(hint, type) and issubclass(hint, (*_PLAIN, Path)):
        return {"type": _word_type(hint)}
    raise TypeError(f"no command line spelling for the type {hint!r}")


def _parse_yes_no(text: str) -> bool:
    import argparse

    word = str(text).strip().lower()
    if word in ("true", "yes", "1", "on"):
        return True
    if word in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


YES_NO = WordParser("true|false", _parse_yes_no)


def _docstring(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """(description, {parameter: help}) from a Google-style docstring."""
    from docstring_parser import parse

    doc = parse(inspect.getdoc(fn) or "")
    description = "\n\n".join(p for p in (doc.short_description, doc.long_description) if p)
    return description, {p.arg_name.lstrip("*"): " ".join((p.description or "").split()) for p in doc.params}


def description(fn: Callable[..., Any]) -> str:
    """The description of a command function's help: its docstring without the `Args:` section."""
    return _docstring(fn)[0]


class _RawEpilog(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help, with the description and epilog kept as written."""


def function_parser(fn: Callable[..., Any], prog: str, epilog: str | None = None) -> ArgumentParser:
    """The parser of the command that runs `fn` (see the module docstring)."""
    # an epilog (a script's module docstring, with its example commands) is printed as written
    formatter = {"formatter_class": _RawEpilog} if epilog else {}
    parser = ArgumentParser(prog=prog, description=_docstring(fn)[0], epilog=epilog, **formatter)
    spellings = _spellings(fn)
    for name, kind, hint, default, text, _ in _parameters(fn):  # jsonargparse's help adds the type and default
        kwargs = _argument(hint, default)
        if kind is inspect.Parameter.VAR_POSITIONAL:
            parser.add_argument(name, nargs="+", metavar=name.rstrip("s").upper(), help=text, **kwargs)
        elif kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and default is inspect.Parameter.empty:
            parser.add_argument(name, metavar=name.upper(), help=text, **kwargs)
        else:
            required = default is inspect.Parameter.empty
            extra = {} if required or kwargs.get("action") == "store_true" else {"default": default}
            if kwargs.get("action") == "append" and not required and default is not None:
                extra["default"] = list(default)  # argparse appends to (a copy of) the default
            hidden = typing.get_origin(hint) is Annotated and Hidden in typing.get_args(hint)
            text = argparse.SUPPRESS if hidden else text
            parser.add_argument(*spellings[name], dest=name, required=required, help=text, **kwargs, **extra)
    return parser


def group_parser(
    functions: dict[str, Callable[..., Any]], prog: str, description: str, others: dict[str, str] | None = None
) -> ArgumentParser:
    """A parser with one sub-command per function (`tcclip data synth|check|...`), for `tcclip data --help`;
    `others` names the group's sub-commands that another parser reads (LightningCLI's), with their summary."""
    parser = ArgumentParser(prog=prog, description=description)
    subcommands = parser.add_subcommands(dest="command")
    for name, fn in functions.items():
        summary = _docstring(fn)[0].split("\n")[0]
        subcommands.add_subcommand(name, function_parser(fn, f"{prog} {name}"), help=summary)
    for name, summary in (others or {}).items():
        where = f"`{prog} {name} --config C.yaml --help` lists its options (LightningCLI's)."
        subcommands.add_subcommand(name, ArgumentParser(prog=f"{prog} {name}", description=where), help=summary)
    return parser


def call(fn: Callable[..., Any], values: dict[str, Any]) -> int:
    """Call `fn` with parsed values (the `*args` parameter's list spread); its result as an exit code."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    hints = typing.get_type_hints(fn)
    parameters = inspect.signature(fn).parameters
    # by keyword, but for the parameters before a `*args` (which can only be given by position)
    variadic = any(p.kind is p.VAR_POSITIONAL for p in parameters.values())
    for name, param in parameters.items():
        if isinstance(hints.get(name), type) and dataclasses.is_dataclass(hints[name]):
            values = {**values, name: hints[name](**{f.name: values[f.name] for f in dataclasses.fields(hints[name])})}
        if param.kind is param.VAR_POSITIONAL:
            args.extend(values[name])
        elif param.kind is param.POSITIONAL_OR_KEYWORD and variadic:
            args.append(values[name])
        else:
            kwargs[name] = values[name]
    return int(fn(*args, **kwargs) or 0)


def parse(fn: Callable[..., Any], argv: Sequence[str], prog: str, epilog: str | None = None) -> dict[str, Any]:
    """The values `run` would call `fn` with (`fn` may be a dataclass: its fields are the options)."""
    return function_parser(fn, prog, epilog).parse_args(dashed_options(argv, fn)).as_dict()


def run(fn: Callable[..., Any], argv: Sequence[str], prog: str, epilog: str | None = None) -> int:
    """Parse `argv` with `function_parser(fn, prog, epilog)` and call `fn` (the commands, the benchmark scripts and
    configs/generate.py)."""
    argv, extra = list(argv), []
    if PASSTHROUGH in inspect.signature(fn).parameters and "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    parsed = function_parser(fn, prog, epilog).parse_args(dashed_options(argv, fn))
    values = parsed.as_dict()
    if PASSTHROUGH in inspect.signature(fn).parameters:
        values[PASSTHROUGH] = extra
    return call(fn, values)
