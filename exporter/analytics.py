"""Each app's livestream analytics: the API's totals, read at a slow cadence.

Two requests per app each ``poll.analytics_interval``: ``/analytics/livestreams/overall``
(all time) and ``/daywise`` for the current UTC day. They come last in the credentials'
budget: after the status of every stream and the session counters. The poller hands
over what its cycles left unspent (:meth:`Analytics.after_cycle`); while the budget is
short (the lanes plan) that is nothing, and analytics wait. They are read off the cycle,
so a slow analytics endpoint never delays the stop of a stream.

A 403 or 404 (a token without the permission, an API without the endpoint) turns them
off for that app, with one log line and ``realtimekit_app_analytics_enabled`` at 0, and
never marks the app down; they are tried again after :data:`RETRY_OFF`, or at a reload.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Final, Protocol

from exporter.budget import BudgetExhausted
from exporter.client import PRIORITY_ANALYTICS, ApiError
from exporter.model import AppAnalytics, Totals

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from exporter.config import AppConfig

log = logging.getLogger(__name__)

REQUESTS_PER_APP: Final = 2  # overall and today's row of daywise
RETRY_OFF: Final = 3600.0  # seconds before analytics turned off by a 403/404 are tried again
DAY: Final = 86400.0
OFF_STATUSES: Final = frozenset({403, 404})


class AnalyticsApi(Protocol):
    """What reading analytics needs of :class:`~exporter.client.RealtimeKitClient`."""

    async def livestream_analytics(
        self,
        account_id: str,
        app_id: str,
        *,
        deadline: float | None = None,
        priority: int = PRIORITY_ANALYTICS,
    ) -> Totals: ...

    async def livestream_analytics_days(
        self,
        account_id: str,
        app_id: str,
        *,
        start: int,
        end: int,
        deadline: float | None = None,
        priority: int = PRIORITY_ANALYTICS,
    ) -> tuple[Totals, ...]: ...


class Analytics:
    """The analytics of one poller's apps: when each is due, the requests the budget
    left them, and the last values read."""

    def __init__(
        self,
        *,
        on_read: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``on_read`` is called after each round that changed something."""
        self._on_read = on_read
        self._clock = clock
        self._monotonic = monotonic
        self._values: dict[tuple[str, str], AppAnalytics] = {}
        self._due: dict[tuple[str, str], float] = {}
        self._failing: set[tuple[str, str]] = set()  # apps whose last read failed (logged)
        self._credit = 0
        self._task: asyncio.Task[None] | None = None

    def current(self, apps: Sequence[AppConfig]) -> tuple[AppAnalytics, ...]:
        """The values of ``apps`` read so far (or turned off), in their order."""
        return tuple(self._values[a.key] for a in apps if a.key in self._values)

    def reconfigure(self, apps: Sequence[AppConfig]) -> None:
        """Forget apps no longer polled; try those turned off again at once."""
        keys = {a.key for a in apps}
        for table in (self._values, self._due):
            for key in set(table) - keys:
                del table[key]
        self._failing &= keys
        for key, value in self._values.items():
            if not value.enabled:
                self._due[key] = 0.0

    def after_cycle(
        self,
        apps: Sequence[AppConfig],
        api: AnalyticsApi,
        *,
        interval: float | None,
        spare: int,
        timeout: float,
        cycles_per_window: float = math.inf,
    ) -> None:
        """A cycle ended leaving ``spare`` requests of its allowance unspent (0 while
        the budget is short): read the apps that are due, as far as the requests
        left over since the last round allow, in the background. ``interval`` None:
        analytics are off.

        What is saved is at most what cycles leaving ``spare`` each would leave over one
        budget window (``cycles_per_window`` of them): saved while the cycles were light,
        it would be spent in a window in which they are heavy, and the next cycles would
        wait for the budget. So nothing is saved while a cycle leaves nothing."""
        if interval is None:
            self._values.clear()
            self._due.clear()
            self._credit = 0
            return
        spare = max(0, spare)
        most = REQUESTS_PER_APP * len(apps)
        if spare == 0:
            most = 0
        elif spare * cycles_per_window < most:
            most = math.floor(spare * cycles_per_window)
        self._credit = min(most, self._credit + spare)
        if timeout <= 0 or (self._task is not None and not self._task.done()):
            return  # no time before the next cycle, or a round still under way
        now = self._monotonic()
        due = [a for a in apps if self._due.get(a.key, 0.0) <= now]
        take = due[: self._credit // REQUESTS_PER_APP]
        if not take:
            return
        self._credit -= REQUESTS_PER_APP * len(take)
        self._task = asyncio.create_task(
            self._round(take, api, interval=interval, seconds=timeout), name="analytics"
        )

    async def _round(
        self, apps: Sequence[AppConfig], api: AnalyticsApi, *, interval: float, seconds: float
    ) -> None:
        results = await asyncio.gather(
            *(self._read(app, api, seconds) for app in apps), return_exceptions=True
        )
        now = self._monotonic()
        changed = False
        for app, result in zip(apps, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # a cancellation
            changed |= self._take(app, result, now, interval)
        if changed and self._on_read is not None:
            self._on_read()

    def _take(
        self, app: AppConfig, result: AppAnalytics | Exception, now: float, interval: float
    ) -> bool:
        before = self._values.get(app.key)
        fields = {"account_id": app.account_id, "app_id": app.app_id}
        failing = app.key in self._failing
        self._failing.discard(app.key)
        if isinstance(result, AppAnalytics):
            self._values[app.key] = result
            self._due[app.key] = now + interval
            if (before is not None and not before.enabled) or failing:
                log.info("the app's livestream analytics can be read again", extra=fields)
            return True
        if isinstance(result, BudgetExhausted):
            return False  # the token is paused: due again at the next cycle
        if isinstance(result, ApiError) and result.status in OFF_STATUSES:
            self._due[app.key] = now + max(interval, RETRY_OFF)
            self._values[app.key] = AppAnalytics(app.account_id, app.app_id, enabled=False)
            if before is None or before.enabled:
                log.warning(
                    "livestream analytics turned off for the app: the API answered %d "
                    "(%s); the app's streams are still polled, and analytics are tried "
                    "again in %.0f minutes or at a reload",
                    result.status,
                    "the token lacks the permission" if result.status == 403 else "not found",
                    max(interval, RETRY_OFF) / 60,
                    extra=fields,
                )
            return before is None or before.enabled
        self._due[app.key] = now + interval
        self._failing.add(app.key)
        if isinstance(result, ApiError):
            # Once when they start failing: a state change, not a line every interval.
            log.log(
                logging.DEBUG if failing else logging.WARNING,
                "could not read the app's livestream analytics (%s); the last values stay",
                result.reason,
                extra=fields,
            )
        else:  # a bug: the poller goes on, its analytics with the last values
            log.log(
                logging.DEBUG if failing else logging.ERROR,
                "reading the app's livestream analytics failed",
                exc_info=result,
                extra=fields,
            )
        return False

    async def _read(self, app: AppConfig, api: AnalyticsApi, seconds: float) -> AppAnalytics:
        deadline = self._monotonic() + seconds
        overall = await api.livestream_analytics(app.account_id, app.app_id, deadline=deadline)
        now = self._clock()
        start = int(now // DAY * DAY)
        days = await api.livestream_analytics_days(
            app.account_id, app.app_id, start=start, end=int(now), deadline=deadline
        )
        today = time.strftime("%Y-%m-%d", time.gmtime(start))
        row = next((d for d in days if d.day == today), None)
        undated = [d for d in days if d.day is None]
        if row is None and len(days) == 1 and undated:
            row = undated[0]  # the one day asked for
        elif row is None and not undated:
            row = Totals(0, 0.0, 0.0, today)  # no session today
        # Else today's row may be one whose date cannot be read: today is not known.
        return AppAnalytics(
            app.account_id, app.app_id, overall=overall, today=row, updated_at=self._clock()
        )

    async def settled(self) -> None:
        """Wait for the round under way, if any (tests, ``--once``)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
