"""Signals for the event loop, that never fall back to their default action.

asyncio's ``loop.add_signal_handler`` would do, but removing a handler (and closing the
loop, which removes them all) restores the default action, which for SIGHUP and SIGTERM
ends the process: a SIGHUP that arrived while the exporter stopped killed it with status
129. :class:`Signals` catches them with plain Python handlers instead, woken on the loop
as asyncio's own are (by ``signal.set_wakeup_fd``, so a signal taken by another thread
wakes it too), and :meth:`Signals.ignore` turns them to ``SIG_IGN`` in one step when
the process starts to stop: from then on, no signal changes how it ends.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType, TracebackType

# The signals a process of ours acts on: stop (TERM, INT) and reload (HUP).
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Signals:
    """Runs a callback on the running loop for each signal given to :meth:`handle`; use
    as ``with Signals() as signals`` on the main thread. On the way out the handlers are
    left as :meth:`ignore` set them, or ignored if it was not called: never the default."""

    def __init__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("signals are handled on the main thread only")
        self._loop = asyncio.get_running_loop()
        self._callbacks: dict[int, Callable[[], object]] = {}
        self._reader, self._writer = socket.socketpair()
        self._previous_fd = -1

    def __enter__(self) -> Signals:
        for sock in (self._reader, self._writer):
            sock.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self._loop.add_reader(self._reader.fileno(), self._drain)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.ignore()
        self._loop.remove_reader(self._reader.fileno())
        signal.set_wakeup_fd(self._previous_fd)
        self._reader.close()
        self._writer.close()

    def handle(self, sig: signal.Signals, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the loop whenever ``sig`` arrives."""
        self._callbacks[sig] = callback
        signal.signal(sig, self._caught)

    def ignore(self) -> None:
        """Ignore every signal handled so far, from now until the process ends."""
        for sig in self._callbacks:
            signal.signal(sig, signal.SIG_IGN)
        self._callbacks.clear()

    def _caught(self, signum: int, frame: FrameType | None) -> None:
        # Runs on the main thread, between two bytecodes of whatever it was doing.
        callback = self._callbacks.get(signum)
        if callback is not None:
            self._loop.call_soon_threadsafe(callback)

    def _drain(self) -> None:
        # The bytes only woke the loop so that _caught could run; they say nothing more.
        try:
            while self._reader.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
