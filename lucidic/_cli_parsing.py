"""How the CLI's commands are declared: the help formatter, the parser of a
subcommand, and the arguments several commands share (paging)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from .limits import INT_MAX


class HelpFormatter(argparse.HelpFormatter):
    """--help shows each option's default, where it has one worth saying."""

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        # argparse measures subcommands one indent short of where it prints
        # them, so the longest one's help would wrap onto a line of its own.
        for sub in getattr(action, "_get_subactions", list)():
            width = (len(self._format_action_invocation(sub)) + self._current_indent
                     + 2 * self._indent_increment)
            self._action_max_length = max(self._action_max_length, width)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        default = action.default
        if (default not in (None, False, argparse.SUPPRESS) and "%(default)" not in help_text
                and (action.option_strings or action.nargs in ("?", "*"))):
            help_text += " (default: %(default)s)"
        return help_text


def add_parser(commands: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name, formatter_class=HelpFormatter, **kwargs)
    return parser


def help_of(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """A handler for a command given without its subcommand: its help."""
    def show(args: argparse.Namespace) -> int:
        parser.print_help()
        return 0
    return show


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argument type: a whole number from ``minimum`` up to what a
    database can count (a larger one would reach the store and fail there)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {text!r}")
        if value > INT_MAX:
            raise argparse.ArgumentTypeError(f"must be at most {INT_MAX}, not {text!r}")
        return value
    return parse


def add_paging(listing: argparse.ArgumentParser, default_limit: int = 50) -> None:
    listing.add_argument("--limit", type=whole_number(1), default=default_limit,
                         help="at most this many")
    listing.add_argument("--offset", type=whole_number(0), default=0,
                         help="skip this many first")
