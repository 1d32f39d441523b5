"""Parsers of single command-line words, for `Annotated[int, at_least(0)]` parameters of typed commands.

Each raises `argparse.ArgumentTypeError`, which argparse reports as "argument --seed: must be >= 0, got -1"; its
`repr` is what `--help` shows as the option's type.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


class Spelling(tuple):
    """`Annotated` metadata: the option strings of a parameter, instead of `--name-with-dashes`."""

    def __new__(cls, *strings: str) -> Spelling:
        return super().__new__(cls, strings)


class Hidden:
    """`Annotated` metadata: an option `--help` does not list (an internal one, such as a worker's)."""


class WordParser:
    """A named parser of one word (`parse(text)`), shown in `--help` by `name`."""

    def __init__(self, name: str, parse: Callable[[str], Any]) -> None:
        self.name, self.parse = name, parse

    def __call__(self, text: str) -> Any:
        # jsonargparse passes a value it has already parsed (a default, a re-check) through the type again
        return self.parse(text) if isinstance(text, str) else text

    def __repr__(self) -> str:
        return self.name


def at_least(minimum: int) -> WordParser:
    """An integer >= `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return WordParser(f"int >= {minimum}", parse)
