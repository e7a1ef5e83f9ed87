"""The request budget of one API token: never more than N requests in any window.

Cloudflare blocks a token for five minutes once it goes over 1200 requests in five
minutes, for every user of that token. A sliding log of grant times keeps this exporter
strictly inside ``api.rate_limit`` over *any* window (a token bucket would allow twice the
limit across a window boundary). The API can also tell us to stop: a 429's ``Retry-After``
or a ``Ratelimit`` header saying nothing remains pauses every request until then.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


class BudgetExhausted(Exception):
    """No request can be granted before the caller's deadline."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"request budget exhausted for the next {wait:.1f}s")
        self.wait = wait


class RequestBudget:
    """Grants requests so that at most ``requests`` fall in any ``window`` seconds."""

    def __init__(
        self,
        *,
        requests: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if requests < 1 or window <= 0:
            raise ValueError("a budget needs at least one request per positive window")
        self.requests = requests
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self._granted: deque[float] = deque()
        self._paused_until = 0.0

    @property
    def paused_until(self) -> float:
        return self._paused_until

    def available(self) -> int:
        """Requests that could be granted right now."""
        now = self._clock()
        self._expire(now)
        if now < self._paused_until:
            return 0
        return self.requests - len(self._granted)

    def pause_for(self, seconds: float) -> None:
        """Grant nothing for ``seconds`` (never shortens a pause already in force)."""
        self._paused_until = max(self._paused_until, self._clock() + max(0.0, seconds))

    async def acquire(self, *, deadline: float | None = None) -> None:
        """Wait for a grant; raise :class:`BudgetExhausted` if it would come after ``deadline``."""
        while True:
            now = self._clock()
            ready_at = self._ready_at(now)
            if ready_at <= now:
                self._granted.append(now)
                return
            if deadline is not None and ready_at > deadline:
                raise BudgetExhausted(ready_at - now)
            await self._sleep(ready_at - now)

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        while self._granted and self._granted[0] <= horizon:
            self._granted.popleft()

    def _ready_at(self, now: float) -> float:
        self._expire(now)
        ready = max(now, self._paused_until)
        if len(self._granted) >= self.requests:
            ready = max(ready, self._granted[len(self._granted) - self.requests] + self.window)
        return ready
