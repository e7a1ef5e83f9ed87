"""Things that are not small regular files, put where the exporter expects one.

Each maker replaces whatever is at ``path`` (a file written earlier) with its thing, so
that the same makers serve a file that is missing and one swapped at run time.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def _clear(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()


def fifo(path: Path) -> None:
    """A named pipe: opened for reading without a writer, it blocks."""
    _clear(path)
    os.mkfifo(path)


def dev_zero(path: Path) -> None:
    """A symlink to /dev/zero: endless."""
    _clear(path)
    path.symlink_to("/dev/zero")


def directory(path: Path) -> None:
    _clear(path)
    path.mkdir()


def unix_socket(path: Path) -> None:
    _clear(path)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))


def sized(size: int) -> Callable[[Path], None]:
    """A maker of a file of ``size`` bytes of zeros, taking no disk space (sparse)."""

    def make(path: Path) -> None:
        _clear(path)
        with path.open("wb") as out:
            out.truncate(size)

    return make
