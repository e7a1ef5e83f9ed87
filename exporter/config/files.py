"""Reading the small files a configuration names, safely: whatever is at the path, a
bounded read that never blocks, and errors that never quote the file."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from pathlib import Path

# The most read_file reads of a config file and a token file. Parse time follows the
# number of nodes, not bytes, so MAX_YAML_NODES is what bounds it; the byte bound leaves
# room for DEFAULT_MAX_LIVESTREAMS livestreams with ids of MAX_LIVESTREAM_ID_LENGTH and
# expect_live (5.9 MB). Measured by bench/config_limits.py with libyaml: 20,000 livestreams
# load in 1.1-1.4 s, MAX_YAML_NODES in 1.4-1.8 s, one 8 MiB scalar in 0.07 s; PyYAML on
# its own takes about 3 times as long.
MAX_CONFIG_FILE_BYTES: Final = 8 * 1024 * 1024
MAX_TOKEN_FILE_BYTES: Final = 4096  # API tokens are 40 characters
MAX_KEY_FILE_BYTES: Final = 64 * 1024  # a webhook public key (PEM)


class UnreadableFile(Exception):
    """A file :func:`read_file` refuses; the message says why, and never quotes the file."""


class UnreadableTokenFile(ValueError):
    """A token file that cannot be read at all (missing, say), as opposed to one that
    holds no usable token: a configuration checked where its secrets are not may skip it."""


def read_file(path: str | os.PathLike[str], *, limit: int) -> bytes:
    """The bytes of the regular file at ``path``, if it holds at most ``limit`` of them;
    :class:`UnreadableFile` otherwise.

    Whatever is at ``path``, this neither blocks nor reads more than ``limit + 1`` bytes: a
    FIFO, a device (``/dev/zero``), a directory or a socket is refused before a byte is
    read. It is looked at (``stat``) before it is opened, since opening some devices does
    something (a tape rewinds), opened non-blocking (a FIFO without a writer would wait
    for one), and judged again by the open descriptor (``fstat``), so that a file swapped
    in between is judged too. The size is checked before reading, and again while reading
    for a file that grows meanwhile.
    """
    try:
        if (refused := _not_small_and_regular(os.stat(path), limit)) is not None:
            raise UnreadableFile(refused)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise UnreadableFile(exc.strerror or type(exc).__name__) from None
    try:
        if (refused := _not_small_and_regular(os.fstat(fd), limit)) is not None:
            raise UnreadableFile(refused)
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0 and (chunk := os.read(fd, left)):
            chunks.append(chunk)
            left -= len(chunk)
        if left == 0:  # it grew after fstat, or its size says less than it holds (/proc)
            raise UnreadableFile(f"it held more than the limit of {_bytes(limit)} when read")
        return b"".join(chunks)
    except OSError as exc:
        raise UnreadableFile(exc.strerror or type(exc).__name__) from None
    finally:
        os.close(fd)


_FILE_KINDS: Final = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_small_and_regular(st: os.stat_result, limit: int) -> str | None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((f"{name}, " for test, name in _FILE_KINDS if test(st.st_mode)), "")
        return f"it is {kind}not a regular file"
    if st.st_size > limit:
        return f"it is over the limit of {_bytes(limit)} ({st.st_size} bytes)"
    return None


def _bytes(count: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{count} bytes"


def read_token_file(path: Path, *, shown: str | None = None) -> str:
    """The token in ``path``, stripped; ``ValueError`` otherwise.

    Errors name the file as ``shown`` (default: the path) and never quote the content.
    """
    name = str(path) if shown is None else shown
    try:
        text = read_file(path, limit=MAX_TOKEN_FILE_BYTES).decode("utf-8").strip()
    except UnreadableFile as exc:
        raise UnreadableTokenFile(f"cannot read {name}: {exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{name} is not UTF-8 text") from None
    if not text:
        raise ValueError(f"{name} is empty")
    if any(ch.isspace() for ch in text):
        raise ValueError(f"{name} must hold one token with no spaces or line breaks")
    if not text.isprintable():
        raise ValueError(f"{name} must not hold control characters (no request could carry it)")
    return text
