"""Notice a rotated ``api.token_file`` without a restart.

A mounted Kubernetes Secret rotates by swapping a symlink, a file written by hand or by a
sidecar changes in place: either way the file's identity (device, inode), size or
modification time changes. :meth:`TokenFile.check` compares them once per poll cycle and
reads the file only when they differ, through :func:`exporter.config.read_token_file`,
which refuses at once what is not a small regular file (a FIFO, ``/dev/zero``, a file of
200 MB). :meth:`TokenFile.poll` runs that check in a thread and waits for it a bounded
time, so that a file system that hangs (an NFS server gone) holds up no poll cycle.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Final

from exporter.config import Secret, read_token_file
from exporter.workers import DaemonExecutor

if TYPE_CHECKING:
    from concurrent.futures import Executor
    from pathlib import Path

log = logging.getLogger(__name__)

# A local file answers in microseconds, a network file system in milliseconds.
CHECK_TIMEOUT: Final = 1.0
# Daemon threads: a check stuck in the kernel must not keep a stopping process alive. Two,
# so that the check of a reloaded token_file need not queue behind one that hangs. Each
# API token has threads of its own (exporter.apitoken); this executor is the default.
CHECK_THREADS: Final = 2
_CHECKS: Final = DaemonExecutor(CHECK_THREADS, name="token-file")


class TokenFile:
    """The token in ``path``, starting from ``token`` (what the configuration read).
    :meth:`poll` checks it in a thread of ``executor``, waiting at most ``timeout``
    seconds."""

    def __init__(
        self,
        path: Path,
        token: Secret,
        *,
        executor: Executor = _CHECKS,
        timeout: float = CHECK_TIMEOUT,
    ) -> None:
        self.path = path
        self._token = token
        self._seen: tuple[int, int, int, int] | None = None
        self._failing = False
        self._executor = executor
        self._timeout = timeout
        self._running: asyncio.Future[Secret | None] | None = None
        self._slow = False

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r})"

    async def poll(self) -> Secret | None:
        """:meth:`check`, run in a thread. If it takes over ``timeout`` seconds, the current
        token stays (one warning), and no other check starts while it runs: each later
        call only takes its result once it has one."""
        started = self._running is None
        if self._running is None:
            loop = asyncio.get_running_loop()
            self._running = loop.run_in_executor(self._executor, self.check)
        running = self._running
        if started:
            # asyncio.wait, unlike wait_for, leaves the check running when it times out.
            await asyncio.wait({running}, timeout=self._timeout)
        if not running.done():
            if not self._slow:
                log.warning(
                    "checking %s took over %gs; keeping the current token until it is done",
                    self.path,
                    self._timeout,
                )
            self._slow = True
            return None
        self._running = None
        self._slow = False
        return running.result()

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
