"""A scripted analytics API and an :class:`~exporter.analytics.Analytics` on the fake
clock, for the tests of exporter.analytics and the attacks on it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from exporter.analytics import Analytics
from exporter.client import ENDPOINT_ANALYTICS, ApiError
from exporter.config import AppConfig
from exporter.model import Totals
from tests.apidouble import UnaskedApi

if TYPE_CHECKING:
    from exporter.model import AppAnalytics
    from tests.clock import FakeClock

APPS = (AppConfig("acc", "a1"), AppConfig("acc", "a2"), AppConfig("acc", "a3"))
TODAY = "2027-01-15"  # tests.clock.T0's UTC day


class TotalsApi(UnaskedApi):
    """Analytics that answer from ``overall`` by app id; ``refuse`` answers those apps
    with the given status."""

    def __init__(self, refuse: dict[str, int] | None = None) -> None:
        self.overall = {app.app_id: Totals(3, 100.0, 40.0) for app in APPS}
        self.refuse = refuse or {}
        self.asked: list[tuple[str, str]] = []
        self.ranges: list[tuple[int, int]] = []
        self.failure: Exception | None = None

    async def livestream_analytics(self, account_id: str, app_id: str, **_: object) -> Totals:
        self.asked.append(("overall", app_id))
        if self.failure is not None:
            raise self.failure
        if app_id in self.refuse:
            status = self.refuse[app_id]
            raise ApiError("auth", "refused", endpoint=ENDPOINT_ANALYTICS, status=status)
        return self.overall[app_id]

    async def livestream_analytics_days(
        self, account_id: str, app_id: str, **kwargs: Any
    ) -> tuple[Totals, ...]:
        self.asked.append(("daywise", app_id))
        self.ranges.append((kwargs["start"], kwargs["end"]))
        return (Totals(1, 10.0, 4.0, "2027-01-14"), Totals(2, 20.0, 8.0, TODAY))


def reader(clock: FakeClock, told: list[int] | None = None) -> Analytics:
    return Analytics(
        on_read=(lambda: told.append(1)) if told is not None else None,
        clock=clock,
        monotonic=clock,
    )


async def cycle(
    analytics: Analytics, api: TotalsApi, *, spare: int, interval: float | None = 300.0
) -> tuple[AppAnalytics, ...]:
    analytics.after_cycle(APPS, api, interval=interval, spare=spare, timeout=30.0)
    await analytics.settled()
    return analytics.current(APPS)
