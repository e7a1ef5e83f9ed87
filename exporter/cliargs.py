"""What the commands of the command line share: exit codes, usage errors, argument
types and the one-line failure message."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from typing import TYPE_CHECKING, Final

from exporter import config

if TYPE_CHECKING:
    from collections.abc import Sequence

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse would exit by itself; main() chooses the exit code and the one line.
        raise UsageError(message)


# A word argparse takes for a negative number, not a flag (our parsers have no flag that
# looks like one).
_NEGATIVE_NUMBER = re.compile(r"-\d+|-\d*\.\d+")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``argv`` (default: the process's) parsed by ``parser``; a :class:`UsageError` that
    names the flag and the one meant when a flag is mistyped: ``--web.listen_address :1``
    would otherwise be read as an unknown flag and a command named ``:1``."""
    words = sys.argv[1:] if argv is None else list(argv)
    if (problem := unknown_flag(parser, words)) is not None:
        raise UsageError(problem)
    return parser.parse_args(words)


def unknown_flag(parser: argparse.ArgumentParser, words: Sequence[str]) -> str | None:
    """What is wrong with the first flag in ``words`` that ``parser`` (or the command
    parser a word names) does not know, and the known flag that comes closest; None if
    every flag is known, or left to argparse (an abbreviation of a known one, which
    argparse takes or calls ambiguous)."""
    # argparse keeps no public list of its flags and commands: _actions is where they are.
    actions = {name: action for action in parser._actions for name in action.option_strings}
    commands = {
        name: sub
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name, sub in action.choices.items()
    }
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            return None
        if (
            not word.startswith("-")
            or word == "-"
            or " " in word  # argparse takes it for a value too
            or _NEGATIVE_NUMBER.fullmatch(word)
        ):
            if word in commands:
                return unknown_flag(commands[word], words[i:])
            if commands:
                return None  # not a command: argparse says so
            continue
        name, inline, _ = word.partition("=")
        long_flags = [flag for flag in actions if flag.startswith("--")]
        if name in actions:
            known = [name]
        elif name.startswith("--"):
            known = [flag for flag in long_flags if flag.startswith(name)]  # abbreviated
        elif name[:2] in actions and _normal(name) not in map(_normal, long_flags):
            continue  # a short flag with its value attached (-hx): argparse's to judge
        else:
            known = []
        if not known:
            return _unknown(name, long_flags)
        if len(known) > 1:
            return None  # an ambiguous abbreviation: argparse says which flags it could be
        if not inline and actions[known[0]].nargs != 0:
            i += 1  # its value, whatever it looks like
    return None


def _unknown(name: str, flags: list[str]) -> str:
    """The message for an unknown flag ``name``, with the one of ``flags`` meant."""
    # Not quoted when it could be a token given by mistake (40 characters, no dot).
    plain = name.isprintable() and (len(name) <= 32 or ("." in name and len(name) <= 64))
    shown = name if plain else f"<a flag of {len(name)} characters>"
    single = not name.startswith("--")
    wanted = _normal(name)
    by_normal = {_normal(f): f for f in flags}
    if single and wanted in by_normal:
        return f"unknown flag {shown}: flags take two dashes, as in {by_normal[wanted]}"
    close = difflib.get_close_matches(wanted, list(by_normal), n=1)
    how = "flags take two dashes; " if single and len(name) > 2 else ""
    if not close:
        return f"unknown flag {shown}" + (f" ({how.removesuffix('; ')})" if how else "")
    return f"unknown flag {shown} ({how}did you mean {by_normal[close[0]]}?)"


def _normal(flag: str) -> str:
    """A flag as compared: without its dashes, lower case, ``_`` as ``-``."""
    return flag.lstrip("-").lower().replace("_", "-")


def index(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def count_positive(text: str) -> int:
    value = index(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {text!r}")
    return value


def count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share between 0 and 1")
    return value


def duration(text: str) -> float:
    try:
        return config.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_listen(address: str, flag: str = "--web.listen-address") -> tuple[str | None, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``:PORT`` (all interfaces) -> (host, port)."""
    try:
        return config.parse_listen_address(address)
    except ValueError as exc:
        raise UsageError(f"{flag} {exc}") from None


def fail(code: int, message: str) -> int:
    """Say ``message`` on stderr as the command's one line; ``code``."""
    print(f"realtimekit-exporter: {message}", file=sys.stderr)
    return code
