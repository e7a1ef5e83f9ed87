"""Reading each app's livestream analytics (exporter.analytics): only with what the
cycles leave, at their cadence, off for an app whose API answers 403 or 404."""

from __future__ import annotations

import logging

import pytest

from exporter.analytics import REQUESTS_PER_APP, RETRY_OFF
from exporter.budget import BudgetExhausted
from exporter.client import ENDPOINT_ANALYTICS, ApiError
from exporter.model import Totals
from tests.analyticsapi import APPS, TODAY, TotalsApi, cycle, reader
from tests.clock import T0, FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def test_values_are_the_apis_totals_and_todays_row(clock: FakeClock) -> None:
    """With room for every app, each gets both requests; the day asked is the current
    UTC day up to now, and today's row is the one dated today."""
    api, told = TotalsApi(), list[int]()
    got = await cycle(reader(clock, told), api, spare=100)
    assert [a.app_id for a in got] == ["a1", "a2", "a3"]
    assert all(a.enabled and a.overall == Totals(3, 100.0, 40.0) for a in got)
    assert all(a.today == Totals(2, 20.0, 8.0, TODAY) for a in got)
    assert all(a.updated_at == T0 for a in got)
    day = int(T0 // 86400 * 86400)
    assert set(api.ranges) == {(day, int(T0))}
    assert told == [1]


async def test_no_spare_requests_no_analytics(clock: FakeClock) -> None:
    """While the cycles spend their whole allowance (statuses and counters first), no
    analytics request is made at all."""
    api = TotalsApi()
    analytics = reader(clock)
    for _ in range(5):
        assert await cycle(analytics, api, spare=0) == ()
        clock.advance(300)
    assert api.asked == []


async def test_a_small_spare_reads_apps_in_turn(clock: FakeClock) -> None:
    """Two spare requests a cycle read one app per cycle, in order, and no app twice
    before its interval has passed."""
    api = TotalsApi()
    analytics = reader(clock)
    for _ in range(3):
        await cycle(analytics, api, spare=REQUESTS_PER_APP)
        clock.advance(30)
    assert [app for kind, app in api.asked if kind == "overall"] == ["a1", "a2", "a3"]
    await cycle(analytics, api, spare=REQUESTS_PER_APP)
    assert len(api.asked) == 6  # none due: a1 was read 90 s ago
    clock.advance(300)
    await cycle(analytics, api, spare=100)
    assert [app for kind, app in api.asked if kind == "overall"][3:] == ["a1", "a2", "a3"]


async def test_unspent_credit_is_capped(clock: FakeClock) -> None:
    """Requests left over pile up to one round of every app, not more: a long quiet
    spell cannot turn into a burst."""
    api = TotalsApi()
    analytics = reader(clock)
    analytics.after_cycle(APPS, api, interval=300.0, spare=10_000, timeout=30.0)
    await analytics.settled()
    assert len(api.asked) == REQUESTS_PER_APP * len(APPS)
    clock.advance(300)
    await cycle(analytics, api, spare=0)
    assert len(api.asked) == REQUESTS_PER_APP * len(APPS)  # the credit was spent


@pytest.mark.parametrize("status", [403, 404])
async def test_403_or_404_turns_analytics_off_for_that_app_only(
    clock: FakeClock, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    """One warning, enabled False and no values for the refused app; the others go on;
    the refused app is asked again only after RETRY_OFF (or a reload)."""
    api = TotalsApi(refuse={"a2": status})
    analytics = reader(clock)
    with caplog.at_level(logging.WARNING, "exporter.analytics"):
        got = await cycle(analytics, api, spare=100)
        clock.advance(300)
        await cycle(analytics, api, spare=100)
    by_app = {a.app_id: a for a in got}
    assert not by_app["a2"].enabled and by_app["a2"].overall is None
    assert by_app["a1"].enabled and by_app["a3"].enabled
    warnings = [r for r in caplog.records if "turned off" in r.getMessage()]
    assert len(warnings) == 1 and str(status) in warnings[0].getMessage()
    assert [app for kind, app in api.asked if kind == "overall"].count("a2") == 1
    clock.advance(RETRY_OFF)
    api.refuse.clear()
    got = await cycle(analytics, api, spare=100)
    assert all(a.enabled for a in got)


async def test_a_reload_tries_refused_apps_again_and_forgets_removed_ones(
    clock: FakeClock,
) -> None:
    api = TotalsApi(refuse={"a1": 403})
    analytics = reader(clock)
    await cycle(analytics, api, spare=100)
    api.refuse.clear()
    analytics.reconfigure(APPS[:2])
    analytics.after_cycle(APPS[:2], api, interval=300.0, spare=100, timeout=30.0)
    await analytics.settled()
    got = analytics.current(APPS)
    assert [a.app_id for a in got] == ["a1", "a2"]
    assert got[0].enabled


async def test_other_failures_keep_the_last_values(clock: FakeClock) -> None:
    """A timeout or a paused budget keeps what was read last (enabled); a paused
    budget is tried again at the next cycle, an error at the next interval."""
    api = TotalsApi()
    analytics = reader(clock)
    first = await cycle(analytics, api, spare=100)
    clock.advance(300)
    api.failure = ApiError("timeout", "slow", endpoint=ENDPOINT_ANALYTICS)
    assert await cycle(analytics, api, spare=100) == first
    clock.advance(30)
    asked = len(api.asked)
    await cycle(analytics, api, spare=100)
    assert len(api.asked) == asked  # not due before the interval
    clock.advance(300)
    api.failure = BudgetExhausted(60.0)
    assert await cycle(analytics, api, spare=100) == first
    api.failure = None
    clock.advance(30)
    got = await cycle(analytics, api, spare=100)
    assert got[0].updated_at == clock.now


async def test_off_by_config_reads_nothing_and_forgets(clock: FakeClock) -> None:
    api = TotalsApi()
    analytics = reader(clock)
    await cycle(analytics, api, spare=100)
    assert await cycle(analytics, api, spare=100, interval=None) == ()
    clock.advance(1000)
    asked = len(api.asked)
    await cycle(analytics, api, spare=100, interval=None)
    assert len(api.asked) == asked
