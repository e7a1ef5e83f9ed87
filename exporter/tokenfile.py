"""Notice a rotated ``api.token_file`` without a restart.

A mounted Kubernetes Secret rotates by swapping a symlink, a file written by hand or by a
sidecar changes in place: either way the file's identity (device, inode), size or
modification time changes. :meth:`TokenFile.check` compares them once per poll cycle and
reads the file only when they differ.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from exporter.config import Secret, read_token_file

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger(__name__)


class TokenFile:
    """The token in ``path``, starting from ``token`` (what the configuration read)."""

    def __init__(self, path: Path, token: Secret) -> None:
        self.path = path
        self._token = token
        self._seen: tuple[int, int, int, int] | None = None
        self._failing = False

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r})"

    def check(self) -> Secret | None:
        """The new token if the file now holds another valid one, else None. A file that
        cannot be read, or holds no valid token (mid-rotation), keeps the current token,
        with one warning until it is readable again."""
        try:
            st = os.stat(self.path)  # follows the symlink a Secret mount swaps
        except OSError as exc:
            self._warn(f"cannot read {self.path}: {exc.strerror or type(exc).__name__}")
            return None
        seen = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if seen == self._seen:
            return None
        try:
            text = read_token_file(self.path)
        except ValueError as exc:
            self._warn(str(exc))
            return None
        self._seen = seen
        self._failing = False
        if text == self._token.reveal():
            return None
        self._token = Secret(text)
        log.info("the token file changed: using the token it holds now")
        return self._token

    def _warn(self, problem: str) -> None:
        if not self._failing:
            log.warning("%s; keeping the current token", problem)
        self._failing = True
