"""What a verified webhook sets off: a targeted refresh of the one stream it names.

A delivery says a stream's status changed, but it has no timestamp and no order, and it
may be a replay: it is a hint, not the truth. So a hint that disagrees with what the
exporter shows (a stop of a stream shown live, a start of one shown not live) makes the
exporter ask the API about that stream at once and show what the API says: its status,
and on a stop the session's final values, on a start its session. A stop's lookup goes
ahead of every other request (:data:`~exporter.client.PRIORITY_PUSH`, with the share of
the budget kept for it): that is the news users alert on. The rest (a start's session, a
stop's final values) queues behind the poll cycle's listing and sessions and is taken
from the poll plan's credit: polling would have spent it on the same streams. If the API
does not agree with the hint yet, it is asked again at :data:`RECHECKS` of the poll
interval. Hints for a stream are coalesced: one refresh at a time, which takes the latest
hint when it ends.

What a hint may cost is bounded whatever comes, since a signed body can be replayed (the
signature has no time in it) and its headers (delivery and webhook ids) are not signed:

- a hint that agrees with what is shown costs nothing, nor does one that repeats the claim
  already being checked;
- once the API has denied hints about a stream :data:`DENIALS` times (a check that
  disagreed, or failed) within :data:`COOLDOWN`, further hints about it are not checked
  until the oldest denial is that old: a replayed body costs at most that many requests
  per stream and cool-down, however often and in whatever order it comes;
- stops' lookups spend at most :data:`PUSH_SHARE` of the request budget's window, the
  other refresh requests :data:`REFRESH_SHARE`; past it a hint is dropped
  (``throttled``) and polling shows the change.

:class:`Announcements` keeps count of the changes polling found that no hint announced:
with a working subscription that count stays near zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Final, Protocol

from exporter import merge
from exporter.budget import CycleDeadline
from exporter.client import PRIORITY_OTHER, PRIORITY_PUSH, ApiError
from exporter.model import LIVE, addressable

if TYPE_CHECKING:
    from collections.abc import Callable

    from exporter.model import StreamState
    from exporter.poller import Api, Poller

log = logging.getLogger(__name__)

# When a hint the API disagreed with is checked again, as shares of the poll interval.
RECHECKS: Final = (0.125, 0.25, 0.5)
MIN_RECHECK: Final = 1.0  # seconds, at least, before a check again
COOLDOWN: Final = 600.0  # seconds over which a stream's denials are counted
DENIALS: Final = 4  # denials of one stream's hints within COOLDOWN before they are ignored
# Of the budget's window, the most that stops' lookups spend (twice the share kept for
# them), and the most that the other refresh requests spend.
PUSH_SHARE: Final = 0.2
REFRESH_SHARE: Final = 0.25
GRACE: Final = 120.0  # seconds a hint may come before or after polling found its change
MAX_REMEMBERED: Final = 100_000
RESULTS: Final = ("agreed", "disagreed", "failed", "throttled")
# The share of the request budget kept for these refreshes while webhooks are on: polling
# plans with the rest, so a refresh never waits behind a cycle's requests for room.
KEPT_SHARE: Final = 0.1

Key = tuple[tuple[str, str], str]  # (app key, livestream id)


class _Throttled(Exception):
    """Refreshes have spent their share of the budget's window."""


class RefreshObserver(Protocol):
    def webhook_refresh(self, result: str) -> None: ...

    def webhook_unannounced(self, count: int) -> None: ...


class Announcements:
    """Changes (live or not) polling found, set against the hints that announced them.

    A change found with a hint for the stream within :data:`GRACE` before it was
    announced; one with none is held for :data:`GRACE` (a delivery may come late, after
    retries) and then counted as unannounced by :meth:`settle`."""

    def __init__(
        self, *, grace: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._grace = GRACE if grace is None else grace
        self._clock = clock
        self._hinted: OrderedDict[Key, tuple[float, bool]] = OrderedDict()
        self._found: OrderedDict[Key, tuple[float, bool]] = OrderedDict()

    def hinted(self, key: Key, live: bool) -> None:
        now = self._clock()
        self._hinted.pop(key, None)
        self._hinted[key] = (now, live)
        found = self._found.get(key)
        if found is not None and found[1] == live:
            del self._found[key]  # announced, if late
        _bound(self._hinted)

    def found(self, key: Key, live: bool) -> None:
        now = self._clock()
        hint = self._hinted.get(key)
        if hint is not None and hint[1] == live and now - hint[0] <= self._grace:
            return
        self._found.pop(key, None)
        self._found[key] = (now, live)
        _bound(self._found)

    def settle(self) -> int:
        """How many changes found have gone unannounced for :data:`GRACE` (each counted
        once); forgets hints older than that."""
        horizon = self._clock() - self._grace
        count = 0
        while self._found and next(iter(self._found.values()))[0] < horizon:
            self._found.popitem(last=False)
            count += 1
        while self._hinted and next(iter(self._hinted.values()))[0] < horizon:
            self._hinted.popitem(last=False)
        return count


def _bound(table: OrderedDict[Key, tuple[float, bool]]) -> None:
    while len(table) > MAX_REMEMBERED:
        table.popitem(last=False)


class Refresher:
    """Turns hints into targeted refreshes through ``api()`` into ``poller``'s snapshot."""

    def __init__(
        self,
        *,
        poller: Poller,
        api: Callable[[], Api],
        interval: Callable[[], float],
        observer: RefreshObserver | None = None,
        announcements: Announcements | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rechecks: tuple[float, ...] = RECHECKS,
        min_recheck: float = MIN_RECHECK,
        budget: Callable[[], tuple[int, float]] | None = None,
        room: Callable[[], int] | None = None,
    ) -> None:
        """``api`` and ``interval`` give the client and the poll interval in force (a
        reload may change them); ``rechecks`` (shares of the interval, at least
        ``min_recheck`` seconds) when a hint the API disagreed with is checked again;
        ``budget`` the requests per window in force, of which refreshes spend at most
        :data:`REFRESH_SHARE` (None: no such cap); ``room`` how many requests the
        budget would grant at once beyond its kept share: a refresh request other than a
        stop's lookup is sent only into room (it would hold a connection slot while it
        waited, and polling does the same work in turn anyway)."""
        self._poller = poller
        self._api = api
        self._interval = interval
        self._observer = observer
        self.announcements = announcements if announcements is not None else Announcements()
        self._clock = clock
        self._monotonic = monotonic
        self._claims: dict[Key, str] = {}  # the latest status hinted, not yet taken up
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._news: dict[Key, asyncio.Event] = {}
        self._settling: dict[Key, bool] = {}  # the claim (live or not) being checked
        self._denied: OrderedDict[Key, deque[float]] = OrderedDict()
        # When each refresh request was sent: stops' lookups, and the others.
        self._spent_push: deque[float] = deque()
        self._spent: deque[float] = deque()
        self._budget = budget
        self._room = room
        self._closed = False
        self._rechecks = rechecks
        self._min_recheck = min_recheck

    @property
    def busy(self) -> int:
        """Streams with a refresh under way."""
        return len(self._tasks)

    def hint(self, livestream_id: str, status: str) -> bool:
        """A verified status change; False if no app here tracks the stream."""
        if self._closed or not addressable(livestream_id):
            return False  # no request can name it: the listing is all there is
        apps = self._poller.tracking(livestream_id)
        if not apps:
            return False
        live = status == LIVE
        for app in apps:
            key = (app, livestream_id)
            self.announcements.hinted(key, live)
            if self._settling.get(key) == live:
                continue  # the same claim is being checked: nothing new
            self._claims[key] = status
            if key in self._tasks:
                self._news[key].set()
            else:
                self._news[key] = asyncio.Event()
                self._start(key)
        return True

    def _start(self, key: Key) -> None:
        task = asyncio.create_task(self._work(key), name="webhook-refresh")
        self._tasks[key] = task
        task.add_done_callback(lambda done: self._ended(key, done))

    def found_change(self, app: tuple[str, str], livestream_id: str, live: bool) -> None:
        """Polling found the stream going live or not (``Poller(on_change=...)``)."""
        self.announcements.found((app, livestream_id), live)

    def settle(self) -> None:
        """Count the changes polling found that went unannounced (once per cycle)."""
        count = self.announcements.settle()
        if count and self._observer is not None:
            self._observer.webhook_unannounced(count)

    async def close(self) -> None:
        """Cancel the refreshes under way, and wait for them to end."""
        self._closed = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _ended(self, key: Key, task: asyncio.Task[None]) -> None:
        # Also for a task cancelled before it ran (close()), whose body never started.
        if self._tasks.get(key) is not task:
            return
        if key in self._claims and not self._closed:
            self._start(key)  # a hint that came after the work's last look
            return
        del self._tasks[key]
        del self._news[key]
        self._claims.pop(key, None)
        self._settling.pop(key, None)

    async def _work(self, key: Key) -> None:
        while (claim := self._claims.pop(key, None)) is not None:
            self._news[key].clear()
            self._settling[key] = claim == LIVE
            try:
                await self._settle(key, claim)
            except _Throttled:
                self._count("throttled")
            except ApiError:
                # A failing API is asked less: a failure counts as half the denials.
                for _ in range(DENIALS // 2):
                    self._deny(key)
                self._count("failed")  # polling is the safety net
            except Exception:
                log.exception("unexpected error in a webhook's refresh")
                self._deny(key)
                self._count("failed")
            finally:
                self._settling.pop(key, None)

    def _count(self, result: str) -> None:
        if self._observer is not None:
            self._observer.webhook_refresh(result)

    def _state(self, key: Key) -> StreamState | None:
        app = self._poller.snapshot.app(*key[0])
        return app.stream(key[1]) if app is not None else None

    async def _settle(self, key: Key, claim: str) -> None:
        """Refresh the stream until the API agrees with ``claim``, or the rechecks are
        spent, or a newer hint of the other claim comes (it is taken up next)."""
        live = claim == LIVE
        delays = [0.0] + [
            max(self._min_recheck, share * self._interval()) for share in self._rechecks
        ]
        waited = 0.0
        for delay in delays:
            if delay > waited:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._news[key].wait(), timeout=delay - waited)
                    return  # a newer hint: the loop in _work takes it up
                waited = delay
            state = self._state(key)
            if state is None or state.live == live:
                return  # not tracked (any more), or shown as the hint says
            if self._denials(key) >= DENIALS:
                return  # the API kept denying this stream's hints lately (replays?)
            if await self._refresh(key, live):
                self._denied.pop(key, None)  # confirmed: its hints are news, not replays
                self._count("agreed")
                return
            self._deny(key)
        self._count("disagreed")

    def _denials(self, key: Key) -> int:
        """How many times the API denied the stream's hints within :data:`COOLDOWN`."""
        times = self._denied.get(key)
        if times is None:
            return 0
        horizon = self._monotonic() - COOLDOWN
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._denied[key]
        return len(times)

    def _deny(self, key: Key) -> None:
        times = self._denied.pop(key, None) or deque(maxlen=DENIALS)
        times.append(self._monotonic())
        self._denied[key] = times  # last: the table forgets the longest quiet first
        while len(self._denied) > MAX_REMEMBERED:
            self._denied.popitem(last=False)

    def _spend(self, priority: int) -> None:
        """Count one refresh request, or raise _Throttled if refreshes of its kind have
        spent their share of the budget's window: stops' lookups (a negative
        ``priority``) :data:`PUSH_SHARE`, the others :data:`REFRESH_SHARE`. One of the
        others comes out of the poll plan's credit."""
        push = priority < 0
        if not push and self._room is not None and self._room() < 1:
            raise _Throttled  # no room now: polling does it in turn
        if self._budget is not None:
            requests, window = self._budget()
            spent = self._spent_push if push else self._spent
            now = self._monotonic()
            while spent and spent[0] <= now - window:
                spent.popleft()
            share = PUSH_SHARE if push else REFRESH_SHARE
            if len(spent) >= max(1, math.floor(share * requests)):
                raise _Throttled
            spent.append(now)
        if not push:
            self._poller.spent_elsewhere(1)

    async def _refresh(self, key: Key, live: bool) -> bool:
        """Ask the API about the stream and show what it says; whether it is ``live``.
        Raises ApiError if a request fails, _Throttled if refreshes have spent their
        share. A stop: the stream's lookup (its status), then its session's final values.
        A start: its active session alone (it holds the livestream and the session)."""
        (account_id, app_id), sid = key
        api = self._api()
        deadline = CycleDeadline(self._monotonic() + self._interval(), self._monotonic)
        if live:
            self._spend(PRIORITY_OTHER)
            answer = await api.active_session(
                account_id, app_id, sid, deadline=deadline, priority=PRIORITY_OTHER
            )
            if answer.livestream is not None and answer.livestream.id != sid:
                return False  # an answer about another stream: polling decides
            now = self._clock()
            state = self._poller.push(
                key[0], sid, lambda s: merge.pushed_session(s, answer, now=now)
            )
            return state is not None and state.live
        self._spend(PRIORITY_PUSH)
        found = await api.livestream(
            account_id, app_id, sid, deadline=deadline, priority=PRIORITY_PUSH
        )
        if found is None or found.id != sid:
            return False  # gone, or an answer about another stream: polling decides
        now = self._clock()
        state = self._poller.push(key[0], sid, lambda s: merge.pushed_status(s, found, now=now))
        if state is None or state.live:
            return False
        if (session_id := merge.awaits_final(state)) is not None:
            try:
                self._spend(PRIORITY_OTHER)
            except _Throttled:
                return True  # the stop is shown; polling asks for its final values in turn
            final = await api.session(
                account_id, app_id, session_id, deadline=deadline, priority=PRIORITY_OTHER
            )
            now = self._clock()
            self._poller.push(
                key[0], sid, lambda s: merge.pushed_final(s, session_id, final.session, now=now)
            )
        return True
