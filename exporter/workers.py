"""Threads for work that must never hold up the end of the process.

The threads of a :class:`concurrent.futures.ThreadPoolExecutor` are joined when the
interpreter exits, and ``asyncio.run`` waits for the loop's default executor, so one call
that runs long (a bcrypt check of a high cost, the parse of a large file, the last of 300
queued renders) keeps a stopping process alive past its promise to stop within 5 seconds.
A :class:`DaemonExecutor` runs calls in daemon threads, which nothing waits for, and its
:meth:`~DaemonExecutor.shutdown` never waits, and may drop the calls not yet started.
A call still running at exit is abandoned: use it only for work whose result no longer
matters once the process stops.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

_Item = tuple["Future[Any]", "Callable[..., Any]", tuple[Any, ...], dict[str, Any]]


class DaemonExecutor(Executor):
    """Runs calls in at most ``max_workers`` daemon threads named ``name``, in the order
    they were submitted. A call cancelled before it starts never runs (asyncio cancels
    the call behind ``run_in_executor`` when the awaiting task is cancelled)."""

    def __init__(self, max_workers: int, *, name: str) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._max_workers = max_workers
        self._name = name
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._shutdown = False

    def __repr__(self) -> str:
        return f"DaemonExecutor(max_workers={self._max_workers}, name={self._name!r})"

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit to a DaemonExecutor that is shut down")
            self._queue.put((future, fn, args, kwargs))
            if self._idle > 0:
                self._idle -= 1
            elif len(self._threads) < self._max_workers:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more calls and let the threads end once the queue is done, cancelling
        the calls not started yet if ``cancel_futures``; never waits, whatever ``wait``
        says."""
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
            threads = len(self._threads)
        while cancel_futures:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        for _ in range(threads):
            self._queue.put(None)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn, args, kwargs = item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # handed to whoever awaits the future
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del item, future, fn, args, kwargs  # hold nothing while idle
            with self._lock:
                self._idle += 1
