"""Cloudflare's per-token rate limit as the API documents it.

N requests per window per token, counted over a sliding window; the request that goes
over blocks every request with that token for a whole window (HTTP 429 with
``Retry-After``). Every answer carries ``Ratelimit`` and ``Ratelimit-Policy`` headers.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    remaining: int
    reset: int  # seconds until the window frees a request (or the block ends)
    retry_after: int = 0


@dataclass(slots=True)
class _Usage:
    times: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0


class RateLimiter:
    """``requests`` per sliding ``window`` per key; with ``block``, going over shuts the
    key out for a whole window (Cloudflare's per-token limit), else only that request is
    refused (its per-IP limit)."""

    def __init__(self, requests: int = 1200, window: float = 300.0, *, block: bool = True) -> None:
        if requests < 1 or window <= 0:
            raise ValueError("rate limit needs at least 1 request per positive window")
        self.requests = requests
        self.window = window
        self._block = block
        self._usage: dict[str, _Usage] = {}

    def policy(self) -> str:
        return f'"burst";q={self.requests};w={math.ceil(self.window)}'

    def block(self, token: str, now: float, seconds: float) -> None:
        """Block the token as if its budget had been spent elsewhere."""
        usage = self._usage.setdefault(token, _Usage())
        usage.blocked_until = max(usage.blocked_until, now + seconds)

    def check(self, token: str, now: float) -> Decision:
        usage = self._usage.setdefault(token, _Usage())
        times = usage.times
        while times and times[0] <= now - self.window:
            times.popleft()
        if now < usage.blocked_until:
            wait = math.ceil(usage.blocked_until - now)
            return Decision(False, 0, wait, retry_after=wait)
        if len(times) >= self.requests:
            if not self._block:
                wait = max(1, math.ceil(times[0] + self.window - now))
                return Decision(False, 0, wait, retry_after=wait)
            usage.blocked_until = now + self.window
            wait = math.ceil(self.window)
            return Decision(False, 0, wait, retry_after=wait)
        times.append(now)
        reset = math.ceil(times[0] + self.window - now)
        return Decision(True, self.requests - len(times), max(reset, 0))
