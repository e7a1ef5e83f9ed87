"""A rotated api.token_file: what may be swapped in, and a file system that hangs."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING

import pytest

from exporter.config import Secret
from exporter.tokenfile import TokenFile
from exporter.workers import DaemonExecutor
from tests.files import dev_zero, directory, fifo, sized

if TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import Executor
    from pathlib import Path

FIRST, SECOND = "first-token-0123456789", "second-token-9876543210"


two_hundred_mb = sized(200_000_000)  # sparse: no disk space, and no token either


SWAPPED_IN: dict[str, tuple[Callable[[Path], None], str]] = {
    "a FIFO": (fifo, "it is a FIFO (named pipe), not a regular file"),
    "200 MB": (two_hundred_mb, "it is over the limit of 4 KiB (200000000 bytes)"),
    "a symlink to /dev/zero": (dev_zero, "it is a character device, not a regular file"),
    "a directory": (directory, "it is a directory, not a regular file"),
}


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("make", "reason"), SWAPPED_IN.values(), ids=list(SWAPPED_IN))
def test_a_swapped_in_file_that_is_not_a_small_regular_file_keeps_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, make: Callable[[Path], None], reason: str
) -> None:
    """Put in the token file's place, it is refused at once without reading it, with one
    warning naming what it is, and the next real rotation is picked up."""
    caplog.set_level(logging.INFO)
    path = tmp_path / "token"
    path.write_text(FIRST + "\n", encoding="utf-8")
    watch = TokenFile(path, Secret(FIRST))
    assert watch.check() is None
    path.unlink()
    make(path)
    assert watch.check() is None and watch.check() is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"cannot read {path}: {reason}; keeping the current token"]
    if path.is_dir():
        path.rmdir()
    else:
        path.unlink()
    path.write_text(SECOND + "\n", encoding="utf-8")
    assert watch.check() == Secret(SECOND)
    assert FIRST not in caplog.text and SECOND not in caplog.text


class HangingTokenFile(TokenFile):
    """A token file on a file system that does not answer until ``answer`` is set."""

    def __init__(self, path: Path, token: Secret, *, executor: Executor, timeout: float) -> None:
        super().__init__(path, token, executor=executor, timeout=timeout)
        self.answer = threading.Event()
        self.checks = 0

    def check(self) -> Secret | None:
        self.checks += 1
        self.answer.wait(timeout=30)  # bounded, in case the test fails before setting it
        return super().check()


async def test_a_check_that_hangs_holds_up_no_poll_cycle(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A check that does not return within its timeout keeps the current token with one
    warning; while it hangs, no other check starts and no call waits for it; once it
    returns, its result is taken."""
    caplog.set_level(logging.INFO)
    path = tmp_path / "token"
    path.write_text(SECOND + "\n", encoding="utf-8")
    executor = DaemonExecutor(1, name="test-token-file")
    watch = HangingTokenFile(path, Secret(FIRST), executor=executor, timeout=0.05)
    try:
        started = time.monotonic()
        assert await watch.poll() is None
        assert time.monotonic() - started < 1.0
        for _ in range(3):
            started = time.monotonic()
            assert await watch.poll() is None
            assert time.monotonic() - started < 0.05  # no second wait for the same check
        assert watch.checks == 1
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == [
            f"checking {path} took over 0.05s; keeping the current token until it is done"
        ]
        watch.answer.set()
        async with asyncio.timeout(5):
            while (token := await watch.poll()) is None:
                await asyncio.sleep(0.01)
        assert token == Secret(SECOND) and watch.checks == 1
        assert await watch.poll() is None and watch.checks == 2  # a new check, unchanged file
    finally:
        watch.answer.set()
        executor.shutdown()
