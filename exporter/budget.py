"""The request budget of one API token: never more than N requests in any window.

Cloudflare blocks a token for five minutes once it goes over 1200 requests in five
minutes, for every user of that token. A sliding log of grant times keeps this exporter
strictly inside ``api.rate_limit`` over *any* window (a token bucket would allow twice the
limit across a window boundary).

Two kinds of waiting, handled differently:

- The window is full: the request waits for a grant, however long, and the poll cycle
  stretches (:class:`CycleDeadline`); spending slower is the whole point of the budget.
- The API told us to stop (a 429's ``Retry-After``, or a ``Ratelimit`` header saying
  nothing remains): every request is held until then, and one whose cycle would end first
  is refused at once with :class:`BudgetExhausted` rather than sent late.

Waiting requests are granted in priority order (lower first), then in arrival order, so
that a cycle short of budget spends it on what matters most first. A share of each window
may be kept (:meth:`RequestBudget.keep_share`) for requests of a negative priority (a
webhook's targeted refresh): the others never take it, so those find room at once.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import itertools
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator


class BudgetExhausted(Exception):
    """The API paused requests past the caller's deadline: nothing can be sent in time."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"requests are paused for the next {wait:.1f}s")
        self.wait = wait


class CycleDeadline:
    """When one poll cycle's requests must be done by; waiting for the budget pushes it back.

    A slow API cannot stretch a cycle past its interval (its requests are cut off at
    :attr:`at`), but a short budget does: while any request of the cycle waits for a grant
    (:meth:`waiting`), the deadline moves with the clock, so requests granted late still get
    their time, and requests that arrive meanwhile are not refused as too late.
    """

    def __init__(self, at: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._base = at
        self._clock = clock
        self._waiters = 0
        self._since = 0.0
        self._stretched = 0.0
        self.budget_bound = False  # some request had to wait for the budget

    @property
    def stretched(self) -> float:
        """Seconds the deadline has moved back so far."""
        ongoing = self._clock() - self._since if self._waiters else 0.0
        return self._stretched + ongoing

    @property
    def at(self) -> float:
        return self._base + self.stretched

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Hold the deadline back while the ``with`` body waits for the budget."""
        if not self._waiters:
            self._since = self._clock()
        self._waiters += 1
        try:
            yield
        finally:
            self._waiters -= 1
            if not self._waiters:
                self._stretched += self._clock() - self._since

    def __repr__(self) -> str:
        return f"CycleDeadline(at={self.at!r}, stretched={self.stretched!r})"


@dataclass(order=True)
class _Waiter:
    priority: int
    seq: int
    wake: asyncio.Event = field(compare=False, default_factory=asyncio.Event)


class RequestBudget:
    """Grants requests so that at most ``requests`` fall in any ``window`` seconds."""

    def __init__(
        self,
        *,
        requests: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        slack: float = 0.0,
    ) -> None:
        """``slack``: seconds each window is held longer than it is, so that requests that
        reach the API later or sooner than they were granted (latency varies) are never
        more than ``requests`` in any of the API's windows."""
        if requests < 1 or window <= 0:
            raise ValueError("a budget needs at least one request per positive window")
        self.requests = requests
        self.window = window
        self._configured = (requests, window)
        self._policy: tuple[int, float] | None = None
        self._keep = window  # how long grants are kept: the longest window either had
        self._slack = max(0.0, slack)
        self._clock = clock
        self._sleep = sleep
        self._granted: deque[float] = deque()
        self._paused_until = 0.0
        self._queue: list[_Waiter] = []
        self._seq = itertools.count()
        self._kept_share = 0.0

    def keep_share(self, share: float) -> None:
        """Keep ``share`` (0 to 0.5) of every window for requests of a negative priority."""
        if not 0.0 <= share <= 0.5:
            raise ValueError("the share kept must be from 0 to 0.5")
        self._kept_share = share

    def kept(self, requests: int) -> int:
        """Of ``requests`` per window, how many are kept for negative priorities."""
        if not self._kept_share:
            return 0
        return min(requests - 1, math.ceil(self._kept_share * requests))

    @property
    def planned(self) -> int:
        """Requests per :attr:`window` that the others may spend: :attr:`requests` less
        the share kept."""
        return self.requests - self.kept(self.requests)

    @property
    def paused_until(self) -> float:
        return self._paused_until

    def available(self) -> int:
        """Requests that could be granted right now. Reads only, so that a scrape may call
        it from another thread (a ``tuple`` of a deque is copied under the GIL)."""
        now = self._clock()
        if now < self._paused_until:
            return 0
        granted = tuple(self._granted)
        return min(
            requests - sum(1 for t in granted if t > now - window - self._slack)
            for requests, window in self._limits()
        )

    def resize(self, *, requests: int, window: float) -> None:
        """Grant at most ``requests`` per ``window`` from now on (or what :meth:`learn`
        set, if that is less). The grants already made still count against the new size:
        a reload never starts a fresh window."""
        if requests < 1 or window <= 0:
            raise ValueError("a budget needs at least one request per positive window")
        self._configured = (requests, window)
        self._apply()

    def learn(self, *, requests: int, window: float) -> bool:
        """A limit the API states (``Ratelimit-Policy``): grants keep to it and to the
        configured one, and :attr:`requests` per :attr:`window` is whichever allows fewer
        requests per second. Returns whether that changed."""
        if requests < 1 or window <= 0:
            raise ValueError("a budget needs at least one request per positive window")
        before = (self.requests, self.window)
        self._policy = (requests, window)
        self._apply()
        return (self.requests, self.window) != before

    @property
    def policy(self) -> tuple[int, float] | None:
        """The last limit :meth:`learn` was given."""
        return self._policy

    @property
    def from_policy(self) -> bool:
        """Whether the API's stated limit, not the configured one, is in force."""
        return self._policy is not None and (self.requests, self.window) == self._policy != (
            self._configured
        )

    def _limits(self) -> tuple[tuple[int, float], ...]:
        """Every limit a grant must keep to: the configured one and the stated one."""
        if self._policy is None or self._policy == self._configured:
            return (self._configured,)
        return (self._configured, self._policy)

    def _apply(self) -> None:
        # requests/window name the limit with fewer requests per second (what a plan can
        # spend on average); grants keep to both.
        self._keep = max(self._keep, *(window for _, window in self._limits()))
        limit = self._configured
        if self._policy is not None and _per_second(self._policy) < _per_second(limit):
            limit = self._policy
        self.requests, self.window = limit
        if self._queue:
            self._queue[0].wake.set()  # the head recomputes when it may go

    def pause_for(self, seconds: float) -> None:
        """Grant nothing for ``seconds`` (never shortens a pause already in force). Every
        waiter checks the new pause against its deadline at once."""
        until = self._clock() + max(0.0, seconds)
        if until <= self._paused_until:
            return
        self._paused_until = until
        for waiter in self._queue:
            waiter.wake.set()

    async def acquire(
        self, *, deadline: float | Callable[[], float] | None = None, priority: int = 0
    ) -> float:
        """Wait for a grant, behind every waiter of a lower ``priority`` number.

        Returns how long it waited for room in the window (0.0 if it did not have to, or
        waited only for a pause to end). Raises :class:`BudgetExhausted` if a pause would
        hold it past ``deadline`` (a time, or a function giving the time: the caller's
        deadline may move while it waits).
        """
        waiter = _Waiter(priority, next(self._seq))
        heapq.heappush(self._queue, waiter)
        asked = self._clock()
        window_bound = False
        try:
            while True:
                now = self._clock()
                if self._paused_until > now and deadline is not None:
                    due = deadline() if callable(deadline) else deadline
                    if self._paused_until > max(now, due):
                        raise BudgetExhausted(self._paused_until - now)
                waiter.wake.clear()
                if self._queue[0] is not waiter:
                    window_bound = window_bound or self._window_ready(now, kept=priority >= 0) > now
                    await waiter.wake.wait()
                    continue
                window_ready = self._window_ready(now, kept=priority >= 0)
                ready_at = max(now, self._paused_until, window_ready)
                if ready_at <= now:
                    self._granted.append(now)
                    return now - asked if window_bound else 0.0
                window_bound = window_bound or window_ready > max(now, self._paused_until)
                # Sleep until then, or until a pause or a new head changes the plan.
                sleeping = asyncio.ensure_future(self._sleep(ready_at - now))
                woken = asyncio.ensure_future(waiter.wake.wait())
                try:
                    await asyncio.wait({sleeping, woken}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (sleeping, woken):
                        task.cancel()
        finally:
            self._leave(waiter)

    def _leave(self, waiter: _Waiter) -> None:
        was_head = bool(self._queue) and self._queue[0] is waiter
        if was_head:
            heapq.heappop(self._queue)
        else:
            try:
                self._queue.remove(waiter)
            except ValueError:
                return
            heapq.heapify(self._queue)
        if self._queue:
            # A new head, or one that a higher-priority arrival had displaced, goes on.
            self._queue[0].wake.set()

    def _expire(self, now: float) -> None:
        # Grants are kept for the longest window any limit had: it may be back.
        horizon = now - self._keep - self._slack
        while self._granted and self._granted[0] <= horizon:
            self._granted.popleft()

    def _window_ready(self, now: float, *, kept: bool = False) -> float:
        """When every limit's window has room for one more grant (beyond the share kept
        for negative priorities, if ``kept``)."""
        self._expire(now)
        ready = now
        granted = self._granted
        for limit, window in self._limits():
            requests = limit - self.kept(limit) if kept else limit
            held = window + self._slack
            if len(granted) - bisect.bisect_right(granted, now - held) >= requests:
                ready = max(ready, granted[len(granted) - requests] + held)
        return ready


def _per_second(limit: tuple[int, float]) -> float:
    return limit[0] / limit[1]
