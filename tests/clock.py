"""The tests' fake clock."""

from __future__ import annotations

import asyncio
from typing import Final

T0: Final = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC


class FakeClock:
    """Time that moves only when a test moves it (``now``, :meth:`advance`) or when
    something sleeps on it; call it for the time, as ``time.time`` or ``time.monotonic``."""

    def __init__(self, now: float = T0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        """Move on by ``seconds`` at once, then let the other tasks run, as a sleep would."""
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)
