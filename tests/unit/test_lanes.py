"""The lanes plan: status every cycle, counters on the budget left over (exporter.lanes).

Client and poller poll the simulator in-process on one hand-moved clock (as in
test_scale), so request counts are exact. The world's streams are under manual control:
they change only when a test says so.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from exporter import lanes
from exporter.client import stated_policy
from exporter.config import RateLimit
from exporter.model import Listing, Livestream
from exporter.simulator import REALISTIC, RateLimiter, Simulator, World
from tests.clock import FakeClock
from tests.conftest import ACCOUNT, APP, TOKEN, make_config
from tests.harness import INTERVAL, Harness

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from exporter.config import Config
    from exporter.model import ActiveSession, Snapshot, Totals
    from exporter.poller import Api

PER_PAGE = 7
DEFAULT = {"credentials": "default"}  # the labels of the exporter's budget metrics


def world_with(clock: FakeClock, streams: int, live: int) -> World:
    world = World(seed=3, profile=REALISTIC, clock=clock)
    for n in range(streams):
        world.create(ACCOUNT, APP, livestream_id=f"ls-{n:03d}", name=f"Stream {n}")
    for n in range(live):
        world.go_live(f"ls-{n:03d}", viewers=10)
    return world


def config_for(rig: Harness, requests: int, **poll: float) -> Config:
    config = make_config(
        rig.sim.base_url,
        discover=True,
        interval=INTERVAL,
        max_staleness=600.0,
        rate_limit=RateLimit(requests, 300.0),
    )
    return dataclasses.replace(config, poll=dataclasses.replace(config.poll, **poll))


@pytest.fixture
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    streams, live = getattr(request, "param", (60, 12))
    clock = FakeClock()
    async with (
        Simulator(
            world_with(clock, streams, live),
            token=TOKEN,
            max_per_page=PER_PAGE,
            limiter=RateLimiter(100_000, 300.0),
            ip_limiter="off",  # the hand-moved clock sends a cycle's pages in no time
        ) as sim,
        aiohttp.ClientSession() as http,
    ):
        yield Harness(sim, http, clock)


def live_of(snapshot: Snapshot) -> dict[str, bool]:
    app = snapshot.app(ACCOUNT, APP)
    assert app is not None
    return {s.id: s.live for s in app.streams}


def counted(snapshot: Snapshot) -> dict[str, float]:
    app = snapshot.app(ACCOUNT, APP)
    assert app is not None
    return {s.id: s.counters_at for s in app.streams if s.live}


async def test_tight_budget_reads_the_live_listing_every_cycle(rig: Harness) -> None:
    """60 streams (9 pages), 12 live, and a budget of 1500/5m at a 2 s interval (9.9
    requests a cycle): the full plan (9 pages + 12 sessions) does not fit. Each cycle then
    reads the LIVE listing (2 pages) and one page of the full listing pass, and spends the
    rest of its share on sessions; no cycle goes over its share."""
    rig.start(config_for(rig, 1500))
    await rig.cycle_cost()  # the first cycle: the whole listing, and what sessions fit
    allowance = lanes.allowance(1500, 300.0, INTERVAL)
    for _ in range(12):
        _, cost = await rig.cycle_cost()
        assert cost["livestreams"] == 2 + 1, cost  # LIVE pages, one page of the pass
        assert sum(cost.values()) <= math.floor(allowance) + 1, cost
        assert cost.get("active_livestream_session", 0) >= 5, cost
    assert rig.value("realtimekit_exporter_poll_lanes", app="") is None  # no labels
    assert rig.registry.get_sample_value("realtimekit_exporter_poll_lanes", DEFAULT) == 1.0


async def test_a_stop_shows_within_one_cycle_after_its_lookup(rig: Harness) -> None:
    """In the lanes plan a stream that leaves the LIVE listing is looked up by id (one
    request) and shown stopped in that same cycle; its final values follow."""
    rig.start(config_for(rig, 1500))
    for _ in range(3):
        await rig.poll()
    rig.sim.world.stop("ls-004")
    snapshot, cost = await rig.cycle_cost()
    assert cost["livestream"] == 1, cost
    assert live_of(snapshot)["ls-004"] is False
    assert sum(live_of(snapshot).values()) == 11
    app = snapshot.app(ACCOUNT, APP)
    assert app is not None
    stopped = app.stream("ls-004")
    assert stopped is not None and stopped.livestream.status == "IDLE"
    # Its final values (the session by id) come within the next cycles.
    for _ in range(3):
        snapshot = await rig.poll()
        app = snapshot.app(ACCOUNT, APP)
        assert app is not None
        stopped = app.stream("ls-004")
        assert stopped is not None
        if stopped.session is not None and not stopped.session.active:
            break
    else:
        pytest.fail("the stopped stream's final values never came")


@pytest.mark.parametrize("rig", [(60, 30)], indirect=True)
async def test_budget_far_too_small_for_counters(rig: Harness) -> None:
    """30 live streams and about 8 requests a cycle: the status (5 LIVE pages and a page
    of the pass) is still read every cycle, and every live stream's counters are
    refreshed at least every planned period (about 15 cycles), oldest first."""
    rig.start(config_for(rig, 1250))
    for _ in range(3):
        await rig.poll()
    period = rig.registry.get_sample_value(
        "realtimekit_exporter_session_refresh_period_seconds", {"credentials": "default"}
    )
    assert period is not None and 10 * INTERVAL <= period <= 20 * INTERVAL, period
    cycles = math.ceil(2 * period / INTERVAL)
    last: dict[str, float] = {}
    gaps: dict[str, float] = {}
    for _ in range(cycles):
        snapshot, cost = await rig.cycle_cost()
        assert cost["livestreams"] >= 5, cost  # the LIVE listing, every cycle
        app = snapshot.app(ACCOUNT, APP)
        assert app is not None
        assert all(s.last_update == rig.clock.now for s in app.streams if s.live)
        for sid, at in counted(snapshot).items():
            if sid in last and at != last[sid]:
                gaps[sid] = max(gaps.get(sid, 0.0), at - last[sid])
            last[sid] = at
    assert len(gaps) == 30, "some live stream's counters were never refreshed"
    assert max(gaps.values()) <= period + INTERVAL, (max(gaps.values()), period)


async def test_a_newly_live_stream_gets_its_first_session_first(rig: Harness) -> None:
    """In the lanes plan, a stream that goes LIVE has its session asked in the cycle that
    first lists it LIVE, ahead of every stream with older counters."""
    rig.start(config_for(rig, 1500))
    for _ in range(3):
        await rig.poll()
    rig.sim.world.go_live("ls-050", viewers=5)
    snapshot = await rig.poll()
    app = snapshot.app(ACCOUNT, APP)
    assert app is not None
    fresh = app.stream("ls-050")
    assert fresh is not None and fresh.live
    assert fresh.session is not None and fresh.counters_at == rig.clock.now


class SkippingApi:
    """The real client, except that one LIVE listing lacks ``skip`` (as a page shifting
    under a reader can make it)."""

    def __init__(self, real: Api, skip: str) -> None:
        self._real = real
        self.skip: str | None = skip

    async def list_livestreams(self, *args: Any, **kwargs: Any) -> Listing:
        listing = await self._real.list_livestreams(*args, **kwargs)
        if kwargs.get("status") == "LIVE" and self.skip is not None:
            kept = tuple(s for s in listing.livestreams if s.id != self.skip)
            listing = Listing(livestreams=kept, pages=listing.pages, total=listing.total)
            self.skip = None
        return listing

    async def livestream(self, *args: Any, **kwargs: Any) -> Livestream | None:
        return await self._real.livestream(*args, **kwargs)

    async def active_session(self, *args: Any, **kwargs: Any) -> ActiveSession:
        return await self._real.active_session(*args, **kwargs)

    async def session(self, *args: Any, **kwargs: Any) -> ActiveSession:
        return await self._real.session(*args, **kwargs)

    async def livestream_analytics(self, *args: Any, **kwargs: Any) -> Totals:
        return await self._real.livestream_analytics(*args, **kwargs)

    async def livestream_analytics_days(self, *args: Any, **kwargs: Any) -> tuple[Totals, ...]:
        return await self._real.livestream_analytics_days(*args, **kwargs)


async def test_a_stream_skipped_by_the_live_listing_is_not_a_false_stop(rig: Harness) -> None:
    """A live stream missing from one LIVE listing is looked up by id; the lookup says
    LIVE, so it stays live: a skipped entry is never shown as a stop."""
    poller = rig.start(config_for(rig, 1500))
    for _ in range(3):
        await rig.poll()
    poller.reconfigure(poller._config, api=SkippingApi(poller._api, "ls-003"))
    snapshot, cost = await rig.cycle_cost()
    assert cost["livestream"] == 1
    assert live_of(snapshot)["ls-003"] is True


async def test_an_ignored_status_filter_falls_back_to_the_full_listing(
    rig: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """When the API answers status=LIVE with every status, the exporter says so once and
    reads the full listing every cycle from then on; stops are still seen."""
    rig.start(config_for(rig, 1500))
    await rig.poll()
    await rig.poll()  # lanes from here on
    rig.sim.state.faults = rig.sim.state.faults.update({"ignore_status_filter": True})
    caplog.set_level(logging.WARNING, logger="exporter.poller")
    for _ in range(4):
        _, cost = await rig.cycle_cost()
    assert cost["livestreams"] == math.ceil(60 / PER_PAGE), cost
    warnings = [r for r in caplog.records if "ignored the listing's status filter" in r.message]
    assert len(warnings) == 1
    rig.sim.world.stop("ls-001")
    snapshot = await rig.poll()
    assert live_of(snapshot)["ls-001"] is False
    assert sum(live_of(snapshot).values()) == 11


async def test_generous_budget_keeps_the_full_plan(rig: Harness) -> None:
    """With room for everything, each cycle is the full listing and every live stream's
    session: the lower bound of before, no LIVE listing and no lookup."""
    rig.start(config_for(rig, 100_000))
    for _ in range(4):
        _, cost = await rig.cycle_cost()
        assert cost == {"livestreams": math.ceil(60 / PER_PAGE), "active_livestream_session": 12}
    assert rig.registry.get_sample_value("realtimekit_exporter_poll_lanes", DEFAULT) == 0.0


async def test_the_api_stated_policy_lowers_the_budget() -> None:
    """A Ratelimit-Policy below api.rate_limit is followed and exported; the budget in
    force is the smaller of the two."""
    clock = FakeClock()
    async with (
        Simulator(
            world_with(clock, 10, 2),
            token=TOKEN,
            max_per_page=PER_PAGE,
            limiter=RateLimiter(600, 300.0),
        ) as sim,
        aiohttp.ClientSession() as http,
    ):
        rig = Harness(sim, http, clock)
        rig.start(config_for(rig, 1200))
        await rig.poll()
        sample = rig.registry.get_sample_value
        assert sample("realtimekit_exporter_rate_limit_policy_requests", DEFAULT) == 600
        assert sample("realtimekit_exporter_rate_limit_policy_window_seconds", DEFAULT) == 300


def test_stated_policy_reads_the_strictest_readable_policy() -> None:
    """The header's policies: the fewest requests per second wins; windows over an hour,
    zero quotas and unreadable items are passed over."""
    assert stated_policy('"burst";q=1200;w=300') == (1200, 300.0)
    assert stated_policy('"a";q=3500;w=300, "b";q=1200;w=300') == (1200, 300.0)
    assert stated_policy('"day";q=10;w=86400, "b";q=100;w=60') == (100, 60.0)
    assert stated_policy('"x";q=0;w=300') is None
    assert stated_policy("nonsense") is None
    assert stated_policy(None) is None
    assert stated_policy('"x";q=99999999999;w=300') is None  # too many digits to trust


def test_credit_refills_at_the_budget_rate_and_keeps_at_most_one_cycle() -> None:
    """The credit starts at one cycle's allowance, grows at the budget's rate (less the
    margin), banks no more than one cycle however long the time since, and carries a
    debt."""
    credit = lanes.Credit(0.0)

    def refill(now: float) -> None:
        credit.refill(now, requests=300, window=300.0, interval=10.0)

    refill(0.0)
    assert credit.available == 9  # 10 less 1 %
    credit.spend(9)
    refill(10.0)
    assert credit.available == 9  # 0.9 + 9.9, but at most one cycle's 9.9
    credit.spend(30)
    refill(20.0)
    assert credit.available == 0  # -20.1 + 9.9: still repaying
    refill(110.0)
    assert credit.available == 9  # a 90 s cycle (or a clock jump) banks no burst
    refill(50.0)  # the clock went back: nothing gained, nothing lost
    assert credit.available == 9


def test_turns_go_by_due_time() -> None:
    """Turns go earliest due first: first answers and final values are due a refresh
    period before they began to wait, so they go ahead of refreshes that are not
    overdue, but not ahead of one overdue for longer."""
    turns = [
        lanes.Turn(50.0, lanes.REFRESH, 0, "c"),
        lanes.Turn(10.0, lanes.REFRESH, 1, "d"),
        lanes.Turn(100.0 - 60.0, lanes.FINAL, 0, "b"),
        lanes.Turn(100.0 - 60.0, lanes.NEW, 0, "a"),
    ]
    assert [t.livestream_id for t in lanes.turns(turns, 3)] == ["d", "a", "b"]
    assert lanes.turns(turns, 0) == []


def test_choose_keeps_the_full_plan_when_lanes_would_starve_the_counters() -> None:
    """The full plan while it fits (and back to it only below 80 % of the allowance);
    the lanes plan only if its least status lane (the LIVE listing and a page of the
    pass) leaves the sessions a twentieth of the allowance."""
    demand = lanes.Demand(full_pages=9, live_pages=2, sessions=12)
    assert lanes.choose(demand, 30.0, None) == "full"
    assert lanes.choose(demand, 20.0, None) == "lanes"
    assert lanes.choose(demand, 22.0, "lanes") == "lanes"  # 21 > 80 % of 22
    assert lanes.choose(demand, 27.0, "lanes") == "full"
    assert lanes.choose(demand, 3.0, None) == "full"  # 2 + 1 status > 95 % of 3
    # Few live streams in a large listing: the lanes plan, its pass taking what is left.
    few = lanes.Demand(full_pages=500, live_pages=1, sessions=5)
    assert lanes.choose(few, lanes.allowance(1200, 300.0, 30.0), None) == "lanes"
    assert lanes.pass_pages(few, lanes.allowance(1200, 300.0, 30.0), 30.0) == 112


@pytest.mark.parametrize("rig", [(2000, 12)], indirect=True)
async def test_a_large_first_listing_takes_at_most_half_the_budget(rig: Harness) -> None:
    """A process's first listing of an app too large for it (286 pages of 7, a budget of
    540 per 5 minutes) stops at half the budget; the LIVE listing in the same cycle shows
    every live stream; the rest of the listing follows in passes, after which every stream
    is tracked, and the budget holds."""
    rig.start(config_for(rig, 540))
    snapshot, cost = await rig.cycle_cost()
    assert cost["livestreams"] <= 270 + 2 + 1, cost
    assert sum(live_of(snapshot).values()) == 12
    assert rig.registry.get_sample_value("realtimekit_exporter_poll_lanes", DEFAULT) == 1.0
    for _ in range(60):
        snapshot = await rig.poll()
        if len(live_of(snapshot)) == 2000:
            break
    else:
        pytest.fail(f"the listing pass never finished: {len(live_of(snapshot))} streams")
    assert sum(live_of(snapshot).values()) == 12
    assert rig.sim.state.traffic.busiest <= 540


async def test_an_ignored_filter_is_tried_again_after_an_hour(
    rig: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """After falling back to the full listing, the exporter asks with the filter again an
    hour later; an API that heeds it again gets the lanes plan back, with no second
    warning."""
    rig.start(config_for(rig, 1500))
    await rig.poll()
    await rig.poll()
    caplog.set_level(logging.WARNING, logger="exporter.poller")
    rig.sim.state.faults = rig.sim.state.faults.update({"ignore_status_filter": True})
    await rig.poll()
    _, cost = await rig.cycle_cost()
    assert cost["livestreams"] == math.ceil(60 / PER_PAGE)  # the full listing
    rig.sim.state.faults = rig.sim.state.faults.update({"ignore_status_filter": False})
    rig.clock.now += 3600
    await rig.poll()
    _, cost = await rig.cycle_cost()
    assert cost["livestreams"] == 2 + 1, cost  # LIVE pages, one page of the pass
    warnings = [r for r in caplog.records if "ignored the listing's status filter" in r.message]
    assert len(warnings) == 1


class StaleEntryApi(SkippingApi):
    """The real client, except that every LIVE listing also holds ``extra`` with status
    IDLE (a stream that stopped while the listing was served)."""

    async def list_livestreams(self, *args: Any, **kwargs: Any) -> Listing:
        listing = await self._real.list_livestreams(*args, **kwargs)
        if kwargs.get("status") == "LIVE" and self.skip is not None:
            stale = Livestream(self.skip, "IDLE")
            listing = dataclasses.replace(listing, livestreams=(*listing.livestreams, stale))
        return listing


async def test_a_stale_entry_in_the_live_listing_is_no_ignored_filter(rig: Harness) -> None:
    """One entry of another status in the LIVE listing is a stream that stopped while it
    was served, not an API ignoring the filter: it is looked up by id, and the LIVE listing
    stays in use."""
    poller = rig.start(config_for(rig, 1500))
    for _ in range(3):
        await rig.poll()
    rig.sim.world.stop("ls-002")
    poller.reconfigure(poller._config, api=StaleEntryApi(poller._api, "ls-002"))
    for _ in range(3):
        snapshot, cost = await rig.cycle_cost()
        assert cost["livestreams"] == 2 + 1, cost
    assert live_of(snapshot)["ls-002"] is False


async def test_a_failed_cycle_keeps_the_lanes_plan(rig: Harness) -> None:
    """A cycle whose status failed (the token throttled by others) shows nothing of what a
    cycle needs: the plan stays lanes, so the first cycle after the pause is no burst of
    the full listing and every session."""
    rig.start(config_for(rig, 1500))
    for _ in range(3):
        await rig.poll()
    rig.sim.state.limiter.block(TOKEN, rig.sim.world.now(), 3.0)
    snapshot = await rig.poll()
    app = snapshot.app(ACCOUNT, APP)
    assert app is not None and not app.up
    assert rig.registry.get_sample_value("realtimekit_exporter_poll_lanes", DEFAULT) == 1.0
    rig.clock.now += 10  # the pause is over
    _, cost = await rig.cycle_cost()
    assert cost["livestreams"] == 2 + 1, cost
    assert sum(cost.values()) <= math.floor(lanes.allowance(1500, 300.0, INTERVAL)) + 1, cost


@pytest.mark.parametrize("rig", [(2000, 12)], indirect=True)
async def test_streams_a_pass_has_read_are_tracked_before_it_ends(rig: Harness) -> None:
    """The streams the first part of a long pass read are exported from the first cycle
    on, not only when the pass ends; the live ones are those the LIVE listing holds."""
    rig.start(config_for(rig, 540))
    snapshot = await rig.poll()
    streams = live_of(snapshot)
    assert len(streams) >= 270 * PER_PAGE  # the first part: 270 pages of 7
    assert sum(streams.values()) == 12


@pytest.mark.parametrize("rig", [(60, 24)], indirect=True)
async def test_stops_beyond_the_lookup_room_show_a_cycle_later(rig: Harness) -> None:
    """Two stops a cycle with room for one lookup a cycle (833/5m): the stops looked up
    show at once, the others when a second LIVE listing in a row lacks them; every stop
    shows within two cycles, no cycle sends more than one lookup, and no live stream is
    shown stopped."""
    rig.start(config_for(rig, 833))
    for _ in range(3):
        await rig.poll()
    stopped_at: dict[str, int] = {}
    for cycle in range(4):
        for n in (2 * cycle, 2 * cycle + 1):
            rig.sim.world.stop(f"ls-{n:03d}")
            stopped_at[f"ls-{n:03d}"] = cycle
        snapshot, cost = await rig.cycle_cost()
        assert cost.get("livestream", 0) <= 1, cost
        shown = live_of(snapshot)
        late = [sid for sid, at in stopped_at.items() if shown[sid] and cycle - at >= 1]
        assert late == [], (cycle, late)
        assert all(shown[f"ls-{n:03d}"] for n in range(8, 24)), "a false stop"
    app = snapshot.app(ACCOUNT, APP)
    assert app is not None
    unread = [s.id for s in app.streams if s.livestream.status == "UNKNOWN"]
    assert unread, "no stop was taken on the listings' word"
