"""What the commands of the command line share: exit codes, usage errors, argument
types and the one-line failure message."""

from __future__ import annotations

import argparse
import sys
from typing import Final

from exporter import config

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse would exit by itself; main() chooses the exit code and the one line.
        raise UsageError(message)


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
