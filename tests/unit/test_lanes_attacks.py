"""Attacks on the lanes plan (exporter.lanes, the poller's phases, merge's deferred rules,
the budget's learnt policy).

Each test states the promise it attacks. Tests marked ``# FOUND:`` failed when written:
they found a defect, since fixed (the comment names the cause as it was); the others held
from the start. docs/reliability.md lists them.

Harnesses: the simulator in-process on one hand-moved clock (tests/harness.py),
and, for hostile answers, a wrapper around the real client that twists one answer.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from exporter import lanes
from exporter.budget import RequestBudget
from exporter.client import ENDPOINTS, REASONS, ApiError, RealtimeKitClient
from exporter.collector import SnapshotCollector
from exporter.config import AppConfig, RateLimit
from exporter.model import LIVE, Listing, Livestream
from exporter.poller import Poller
from exporter.simulator import REALISTIC, RateLimiter, Simulator, World
from exporter.telemetry import ExporterMetrics
from tests.clock import FakeClock
from tests.conftest import ACCOUNT, APP, TOKEN, make_config
from tests.harness import INTERVAL, Harness

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from exporter.config import Config
    from exporter.model import ActiveSession, Snapshot, StreamState, Totals
    from exporter.poller import Api

PER_PAGE = 7
OTHER = "app-other"


# -- harness -------------------------------------------------------------------------------
def world_with(clock: FakeClock, streams: int, live: int, *, app: str = APP) -> World:
    world = World(seed=3, profile=REALISTIC, clock=clock)
    add_streams(world, streams, live, app=app)
    return world


def add_streams(
    world: World, streams: int, live: int, *, app: str = APP, prefix: str = "ls"
) -> None:
    for n in range(streams):
        world.create(ACCOUNT, app, livestream_id=f"{prefix}-{n:03d}", name=f"Stream {n}")
    for n in range(live):
        world.go_live(f"{prefix}-{n:03d}", viewers=10)


class Rig(Harness):
    """Harness whose poller plans with the budget in force (as Exporter wires it), and
    which records every grant time of the token's budget."""

    budget: RequestBudget

    def start(self, config: Config) -> Poller:
        metrics = ExporterMetrics(registry=self.registry, endpoints=ENDPOINTS, reasons=REASONS)
        rate = config.shard.budget(config.api.rate_limit)
        self.budget = RequestBudget(
            requests=rate.requests, window=rate.window, clock=self.clock, sleep=self.clock.sleep
        )
        client = RealtimeKitClient(
            session=self.http,
            base_url=config.api.base_url,
            token=config.api.token,
            budget=self.budget,
            timeout=config.api.timeout,
            observer=metrics,
            clock=self.clock,
            sleep=self.clock.sleep,
            jitter=lambda: 0.0,
            budget_share=config.shard.total,
        )
        poller = Poller(
            config=config,
            api=client,
            observer=metrics,
            clock=self.clock,
            monotonic=self.clock,
            budget=lambda: (self.budget.requests, self.budget.window),
        )
        self.registry.register(SnapshotCollector(lambda: poller.snapshot))
        self.poller = poller
        return poller

    def twist(self, **hooks: Any) -> Twisted:
        assert self.poller is not None
        twisted = Twisted(self.poller._api, **hooks)
        self.poller.reconfigure(self.poller._config, api=twisted)
        return twisted

    def reconfigure(self, config: Config) -> None:
        assert self.poller is not None
        rate = config.shard.budget(config.api.rate_limit)
        self.budget.resize(requests=rate.requests, window=rate.window)
        self.poller.reconfigure(config)

    def grants(self) -> list[float]:
        return list(self.budget._granted)

    async def run_like(self, cycles: int) -> list[tuple[int, float]]:
        """Cycles scheduled as Poller.run schedules them (the next starts an interval after
        the last started, or at once if that one overran); (requests, seconds) of each."""
        assert self.poller is not None
        out = []
        for _ in range(cycles):
            start = max(self.clock.now, self.last_start + self.poller._config.poll.interval)
            self.clock.now = self.last_start = start
            before = sum(self.sent().values())
            await self.poller.poll_once()
            out.append((sum(self.sent().values()) - before, self.clock.now - start))
        return out

    last_start = -math.inf


class Twisted:
    """The real client, except for the answers the hooks twist.

    ``listing(kwargs, listing) -> Listing``; ``lookup(app_id, sid, real) -> Livestream |
    None`` (may raise); ``sessions`` notes every active-session request."""

    def __init__(
        self,
        real: Api,
        *,
        listing: Callable[[dict[str, Any], Listing], Listing] | None = None,
        lookup: Callable[[str, str, Livestream | None], Livestream | None] | None = None,
    ) -> None:
        self._real = real
        self.listing_hook = listing
        self.lookup_hook = lookup
        self.lookups: list[str] = []
        self.listings: list[dict[str, Any]] = []
        self.sessions: list[str] = []

    async def list_livestreams(self, account_id: str, app_id: str, **kwargs: Any) -> Listing:
        self.listings.append({"app_id": app_id, **kwargs})
        listing: Listing = await self._real.list_livestreams(account_id, app_id, **kwargs)
        if self.listing_hook is not None:
            listing = self.listing_hook({"app_id": app_id, **kwargs}, listing)
        return listing

    async def livestream(
        self, account_id: str, app_id: str, livestream_id: str, **kwargs: Any
    ) -> Livestream | None:
        self.lookups.append(livestream_id)
        real = await self._real.livestream(account_id, app_id, livestream_id, **kwargs)
        if self.lookup_hook is not None:
            return self.lookup_hook(app_id, livestream_id, real)
        return real

    async def active_session(
        self, account_id: str, app_id: str, livestream_id: str, **kwargs: Any
    ) -> ActiveSession:
        self.sessions.append(livestream_id)
        return await self._real.active_session(account_id, app_id, livestream_id, **kwargs)

    async def session(
        self, account_id: str, app_id: str, session_id: str, **kwargs: Any
    ) -> ActiveSession:
        return await self._real.session(account_id, app_id, session_id, **kwargs)

    async def livestream_analytics(self, *args: Any, **kwargs: Any) -> Totals:
        return await self._real.livestream_analytics(*args, **kwargs)

    async def livestream_analytics_days(self, *args: Any, **kwargs: Any) -> tuple[Totals, ...]:
        return await self._real.livestream_analytics_days(*args, **kwargs)


@dataclasses.dataclass
class Setup:
    streams: int = 60
    live: int = 12
    per_page: int = PER_PAGE


@pytest.fixture
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    setup: Setup = getattr(request, "param", Setup())
    clock = FakeClock()
    async with (
        Simulator(
            world_with(clock, setup.streams, setup.live),
            token=TOKEN,
            max_per_page=setup.per_page,
            limiter=RateLimiter(1_000_000, 300.0),
            ip_limiter="off",
        ) as sim,
        aiohttp.ClientSession() as http,
    ):
        yield Rig(sim, http, clock)


def config_for(
    rig: Harness,
    requests: int,
    *,
    window: float = 300.0,
    interval: float = INTERVAL,
    apps: tuple[str, ...] = (APP,),
    **poll: Any,
) -> Config:
    config = make_config(
        rig.sim.base_url,
        discover=True,
        interval=interval,
        max_staleness=600.0,
        rate_limit=RateLimit(requests, window),
    )
    config = dataclasses.replace(
        config,
        apps=tuple(AppConfig(account_id=ACCOUNT, app_id=a, discover=True) for a in apps),
    )
    return dataclasses.replace(config, poll=dataclasses.replace(config.poll, **poll))


def streams_of(snapshot: Snapshot, app: str = APP) -> dict[str, StreamState]:
    state = snapshot.app(ACCOUNT, app)
    assert state is not None
    return {s.id: s for s in state.streams}


def live_of(snapshot: Snapshot, app: str = APP) -> dict[str, bool]:
    return {sid: s.live for sid, s in streams_of(snapshot, app).items()}


def truly_live(rig: Harness, app: str = APP) -> set[str]:
    rig.sim.world.now()
    return {
        s.id
        for s in rig.sim.world.streams(ACCOUNT, app) or []
        if s.session is not None and s.status == LIVE
    }


def no_false_stop(rig: Harness, snapshot: Snapshot, app: str = APP) -> None:
    """Every stream the world has LIVE with a session is exported live=1."""
    shown = live_of(snapshot, app)
    wrong = sorted(sid for sid in truly_live(rig, app) if shown.get(sid) is not True)
    assert not wrong, f"false stops: {wrong}"


def internal_errors(poller: Poller) -> list[str]:
    return [e.message for e in poller.recent_errors if e.reason == "internal"]


async def into_lanes(rig: Rig, config: Config, cycles: int = 3) -> Poller:
    poller = rig.start(config)
    for _ in range(cycles):
        await rig.poll()
    assert poller._lanes.mode == "lanes"
    return poller


def window_max(times: list[float], window: float) -> int:
    """The most grant times in any window of ``window`` seconds."""
    times = sorted(times)
    best = start = 0
    for end, t in enumerate(times):
        while times[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


# -- promise 4: no starvation ------------------------------------------------------------
# FOUND: streams listed LIVE that have no active session (a stale LIVE status, or a
# session not yet created) are NEW turns every cycle (poller.py _pick: a stream whose
# last state is not session_current always gets lanes.NEW), so they take the whole credit
# ahead of every REFRESH turn: real live streams' counters are never refreshed again.
async def test_zombie_live_statuses_do_not_starve_real_live_counters(rig: Rig) -> None:
    """Attacks promise 4: 12 live streams and 8 streams listed LIVE without a session
    (``world.set_status``): every real live stream's counters must still be refreshed
    within the planned refresh period."""
    config = config_for(rig, 1500)
    await into_lanes(rig, config)
    for n in range(40, 48):
        rig.sim.world.set_status(f"ls-{n:03d}", LIVE)  # listed LIVE, no session
    await rig.poll()
    await rig.poll()
    period = rig.registry.get_sample_value(
        "realtimekit_exporter_session_refresh_period_seconds", {"credentials": "default"}
    )
    assert period is not None and math.isfinite(period)
    start = rig.clock.now
    cycles = math.ceil(2 * period / INTERVAL) + 2
    for _ in range(cycles):
        snapshot = await rig.poll()
    streams = streams_of(snapshot)
    stale = {
        sid: rig.clock.now - streams[sid].counters_at
        for sid in truly_live(rig)
        if streams[sid].counters_at <= start
    }
    assert not stale, f"never refreshed in {cycles} cycles (period {period}s): {stale}"


# -- promise 5/6: a stop race makes the filter look ignored -------------------------------
# FOUND: poller.py _filter_ignored counts one stale entry of a one-entry LIVE listing as
# "the API ignores the filter" (1 other > 0 LIVE), and _lanes_listing then puts the app in
# _unfiltered for good: every later cycle reads the whole listing, though the filter works.
async def test_one_stale_entry_does_not_turn_the_filter_off_for_good(rig: Rig) -> None:
    """Attacks promise 5 (an entry with a non-LIVE status inside the LIVE listing): the
    only LIVE stream stops while the LIVE listing is served, so that listing holds it with
    status IDLE once. The filter was not ignored: later cycles must read the LIVE listing
    again, not the whole listing every cycle."""
    config = config_for(rig, 1500)
    await into_lanes(rig, config)
    for n in range(1, 12):
        rig.sim.world.stop(f"ls-{n:03d}")
    await rig.poll()
    await rig.poll()
    once = {"done": False}

    def stale(kwargs: dict[str, Any], listing: Listing) -> Listing:
        if kwargs.get("status") == LIVE and not once["done"]:
            once["done"] = True
            gone = tuple(dataclasses.replace(s, status="IDLE") for s in listing.livestreams)
            return dataclasses.replace(listing, livestreams=gone)
        return listing

    twisted = rig.twist(listing=stale)
    rig.sim.world.stop("ls-000")
    await rig.poll()
    twisted.listings.clear()
    for _ in range(3):
        await rig.poll()
    filtered = [k for k in twisted.listings if k.get("status") == LIVE]
    whole = [k for k in twisted.listings if k.get("status") is None and k.get("max_pages") is None]
    assert filtered and not whole, twisted.listings


# -- promise 2: a real stop shows within one cycle ----------------------------------------
# FOUND: poller.py _lanes_listing drops unaddressable ids from the suspects to look up,
# but keeps their LIVE status from the previous state in ``base``: a "." stream that
# stops stays live=1 until the next full listing pass ends (listing_every, many cycles).
async def test_an_unaddressable_stream_stop_shows_within_a_cycle(rig: Rig) -> None:
    """Attacks promises 2 and 5 (ids "." and ".."): a stream whose id is "." goes LIVE,
    then stops; in the lanes plan the stop must show in the cycle after it."""
    rig.sim.world.create(ACCOUNT, APP, livestream_id=".", name="dot")
    rig.sim.world.go_live(".", viewers=3)
    config = config_for(rig, 1500)
    snapshot = None
    poller = rig.start(config)
    for _ in range(12):  # past a whole pass
        snapshot = await rig.poll()
    assert poller._lanes.mode == "lanes"
    assert snapshot is not None and live_of(snapshot)["."] is True
    rig.sim.world.stop(".")
    snapshot = await rig.poll()
    assert live_of(snapshot).get(".") is not True, "a stopped '.' stream is still live=1"


# -- promise 5: a by-id lookup that answers about another stream -------------------------
# FOUND: poller.py _lanes_listing stores a lookup's answer under the id asked
# (``base[sid] = answer``) without checking that answer.id is that id: an answer about
# another stream makes the skipped live stream vanish (a false stop) and exports the
# other stream's id twice (duplicate series in one scrape).
async def test_a_lookup_answering_another_stream_is_no_stop_and_no_duplicate(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """Attacks promises 1 and 5: a live stream skipped by the LIVE listing is looked up,
    and the lookup answers with another stream's object (a cache mix-up). The skipped
    stream must not be shown stopped or vanish, no id may be exported twice, and nothing
    may be an internal error."""
    poller = await into_lanes(rig, config_for(rig, 1500))
    skip = {"ls-003"}

    def skipping(kwargs: dict[str, Any], listing: Listing) -> Listing:
        if kwargs.get("status") == LIVE:
            kept = tuple(s for s in listing.livestreams if s.id not in skip)
            return dataclasses.replace(listing, livestreams=kept)
        return listing

    def other(app_id: str, sid: str, real: Livestream | None) -> Livestream | None:
        return Livestream(id="ls-004", status="IDLE")

    rig.twist(listing=skipping, lookup=other)
    caplog.set_level(logging.ERROR, logger="exporter")
    snapshot = await rig.poll()
    app = snapshot.app(ACCOUNT, APP)
    assert app is not None
    ids = [s.id for s in app.streams]
    assert len(ids) == len(set(ids)), "an id is exported twice"
    no_false_stop(rig, snapshot)
    assert not internal_errors(poller)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- promise 7 / 2: the plan's choice near the edge -----------------------------------------
# FOUND: lanes.choose's "status lane leaves the counters less than FULL_SHARE" check is
# given lanes.pass_pages, which hands the pass all that the LIVE listing and the sessions
# leave (floor(left)); with few live streams that is always > 90 % of the allowance, so a
# big listing with few live streams gets the full plan, which does not fit: every cycle
# waits for the budget and a stop shows only after several intervals (lanes.py choose /
# pass_pages).
def test_few_live_streams_in_a_big_listing_get_the_lanes_plan() -> None:
    """Attacks promises 2 and 7 on the planning arithmetic: 1200/5 min at 30 s (118.8
    requests a cycle), a listing of 500 pages and 5 live streams. The full plan needs 505
    requests a cycle; the lanes plan's status lane needs 2. The plan must be lanes."""
    allowance = lanes.allowance(1200, 300.0, 30.0)
    demand = lanes.Demand(full_pages=500, live_pages=1, sessions=5)
    assert lanes.choose(demand, allowance, None) == "lanes", allowance


@pytest.mark.parametrize("rig", [Setup(streams=250, live=1)], indirect=True)
async def test_few_live_streams_in_a_big_listing_keep_the_interval(rig: Rig) -> None:
    """Attacks promise 2 through the simulator: 250 streams (36 pages), 1 live, 3000/5 min
    at 2 s (19.8 a cycle). The LIVE listing and a pass page fit easily, so no cycle may
    send more than its allowance, and a stop must show in the next cycle's poll (no cycle
    stretched by waiting for the budget)."""
    rig.start(config_for(rig, 3000))
    allowance = lanes.allowance(3000, 300.0, INTERVAL)
    for _ in range(3):
        await rig.poll()
    over = []
    for _ in range(4):
        before = rig.clock.now
        _, cost = await rig.cycle_cost()
        if sum(cost.values()) > math.floor(allowance) + 1 or rig.clock.now - before > INTERVAL:
            over.append((cost, rig.clock.now - before))
    assert not over, f"cycles over their allowance ({allowance:.1f}): {over}"


# -- promise 3: the budget in force ------------------------------------------------------
# FOUND: budget.py RequestBudget._apply keeps only the limit with fewer requests per
# second; a stated policy with a longer window (5000 per 3600 s: 1.39/s < 4/s) then
# replaces api.rate_limit (1200 per 300 s) and its whole quota can go in a burst: 3000
# requests in seconds, far over 1200 in 300 s (the API blocks the token for 5 minutes).
async def test_a_long_policy_window_never_lets_a_burst_over_the_configured_limit() -> None:
    """Attacks promise 3 (a huge Ratelimit-Policy window): api.rate_limit 1200/300 s and a
    stated policy of 5000/3600 s. No 300 s may see more than 1200 grants."""
    clock = FakeClock(0.0)
    budget = RequestBudget(requests=1200, window=300.0, clock=clock, sleep=clock.sleep)
    budget.learn(requests=5000, window=3600.0)
    times = []
    for _ in range(2500):
        await budget.acquire()
        times.append(clock.now)
    assert window_max(times, 300.0) <= 1200


# FOUND: budget.py RequestBudget._expire keeps grants only for the longest window of the
# configured limit and the *current* policy: a policy that changes (3600 s, then 60 s,
# then 3600 s again) drops grants the 3600 s window still needs, so it is exceeded.
async def test_a_policy_changing_every_response_keeps_each_window() -> None:
    """Attacks promise 3 (a policy that changes every response): 100 per 3600 s in force,
    then for one answer a looser 1000 per 60 s, then 100 per 3600 s again. No 3600 s
    window may hold more than 100 grants of those made under the 3600 s policy."""
    clock = FakeClock(0.0)
    budget = RequestBudget(requests=1200, window=300.0, clock=clock, sleep=clock.sleep)
    budget.learn(requests=100, window=3600.0)
    times = []
    for _ in range(100):
        await budget.acquire()
        times.append(clock.now)
    clock.now += 400.0
    budget.learn(requests=1000, window=60.0)
    await budget.acquire()
    times.append(clock.now)
    budget.learn(requests=100, window=3600.0)
    for _ in range(50):
        await budget.acquire()
        times.append(clock.now)
    assert window_max(times, 3600.0) <= 101


# -- promise 3: the credit after a clock jump ------------------------------------------------
# FOUND: lanes.Credit.refill caps the credit at allowance(max(interval, elapsed)): after
# one cycle that started long after the last (a stalled process, a jump of the monotonic
# clock) the counter lane sends a whole window's budget at once; that cycle then waits a
# window for the budget, so the next refill again banks a window's worth, and so on: the
# exporter never returns to poll.interval (here every cycle takes 20 s instead of 2 s, so
# the status, and every stop, is read 10 times less often, for good).
@pytest.mark.parametrize("rig", [Setup(streams=220, live=200, per_page=100)], indirect=True)
async def test_a_forward_clock_jump_lets_no_burst_through(rig: Rig) -> None:
    """Attacks promise 3 (clock jumps forwards; the status lane is not starved by session
    requests): 200 live streams, 100 requests per 20 s at 2 s (9.9 a cycle). After a 30 s
    jump, cycles must come back to the interval: the status read every 2 s again."""
    rig.start(config_for(rig, 100, window=20.0))
    await rig.run_like(15)
    assert rig.poller is not None and rig.poller._lanes.mode == "lanes"
    rig.clock.now += 30.0
    costs = await rig.run_like(10)
    assert all(took <= INTERVAL for _, took in costs[-5:]), f"(requests, seconds): {costs}"


# FOUND: same cause (lanes.Credit.refill banks what a long cycle earned): once the budget
# in force drops (a reload lowering api.rate_limit, or a Ratelimit-Policy learnt below it),
# one cycle waits for the fuller window, banks its elapsed time, spends it in a burst,
# and the poller settles into a cycle of bursts: every fifth cycle or so takes 4 to 6
# intervals, delaying the status lane (and every stop) by that much, for good.
@pytest.mark.parametrize("rig", [Setup(streams=220, live=200, per_page=100)], indirect=True)
@pytest.mark.parametrize("how", ["reload", "policy"])
async def test_a_lower_budget_settles_to_the_interval(rig: Rig, how: str) -> None:
    """Attacks promise 3 (rate_limit changes, a stated policy): 200 live streams at
    100/20 s, then 60/20 s (5.9 requests a cycle; the status lane needs 3). After a few
    cycles to settle, every cycle must keep the 2 s interval."""
    rig.start(config_for(rig, 100, window=20.0))
    await rig.run_like(15)
    assert rig.poller is not None and rig.poller._lanes.mode == "lanes"
    if how == "reload":
        rig.reconfigure(config_for(rig, 60, window=20.0))
    else:
        rig.budget.learn(requests=60, window=20.0)
    costs = await rig.run_like(15)
    assert all(took <= INTERVAL for _, took in costs[-8:]), f"(requests, seconds): {costs}"


# -- promise 1: no false stop from a lookup that fails --------------------------------------
def skip_in_live_listing(*ids: str) -> Callable[[dict[str, Any], Listing], Listing]:
    def hook(kwargs: dict[str, Any], listing: Listing) -> Listing:
        if kwargs.get("status") == LIVE:
            kept = tuple(s for s in listing.livestreams if s.id not in ids)
            return dataclasses.replace(listing, livestreams=kept)
        return listing

    return hook


LOOKUP_FAILURES = {
    "timeout": ApiError("timeout", "no answer", endpoint="livestream"),
    "503": ApiError("http_error", "unavailable", endpoint="livestream", status=503),
    "decode": ApiError("decode", "not json", endpoint="livestream", status=200),
    "429": ApiError("rate_limited", "slow down", endpoint="livestream", status=429),
    # FOUND (this case): Cloudflare's gateway answers 400 (code 6003, "invalid request
    # headers") in its own envelope; poller.py _lanes_listing takes every 400 http_error
    # of a lookup for "no such livestream id" and drops the stream (base.pop, not
    # unknown): a LIVE stream vanishes from the export on one gateway error.
    "gateway-400": ApiError(
        "http_error", "invalid request headers (code 6003)", endpoint="livestream", status=400
    ),
}


@pytest.mark.parametrize("failure", sorted(LOOKUP_FAILURES))
async def test_a_failed_lookup_is_no_false_stop(rig: Rig, failure: str) -> None:
    """Attacks promise 1: a live stream the LIVE listing lacks is looked up, and the
    lookup fails (timeout, 5xx, decode error, 429, a gateway's 400). The stream must stay
    exported live=1."""
    poller = await into_lanes(rig, config_for(rig, 1500))

    def fail(app_id: str, sid: str, real: Livestream | None) -> Livestream | None:
        raise LOOKUP_FAILURES[failure]

    rig.twist(listing=skip_in_live_listing("ls-003"), lookup=fail)
    for _ in range(2):
        snapshot = await rig.poll()
        no_false_stop(rig, snapshot)
    assert not internal_errors(poller)


@pytest.mark.parametrize("status", ["UNKNOWN", "STARTING", "LIVE"])
async def test_an_odd_lookup_status_is_no_false_stop(rig: Rig, status: str) -> None:
    """Attacks promise 1: the lookup of a live stream the LIVE listing lacks answers an
    unreadable or undocumented status (or LIVE): no false stop, over several cycles in
    which the counter lane defers it."""
    poller = await into_lanes(rig, config_for(rig, 1500))

    def odd(app_id: str, sid: str, real: Livestream | None) -> Livestream | None:
        assert real is not None
        return dataclasses.replace(real, status=status)

    rig.twist(listing=skip_in_live_listing("ls-003", "ls-007"), lookup=odd)
    for _ in range(6):
        snapshot = await rig.poll()
        no_false_stop(rig, snapshot)
    assert not internal_errors(poller)


async def test_non_live_entries_and_duplicates_in_the_live_listing(rig: Rig) -> None:
    """Attacks promise 1: the LIVE listing repeats entries and shows two live streams
    with status IDLE (a replica behind the filter); no false stop, no duplicate ids."""
    poller = await into_lanes(rig, config_for(rig, 1500))

    def odd(kwargs: dict[str, Any], listing: Listing) -> Listing:
        if kwargs.get("status") != LIVE:
            return listing
        entries = [
            dataclasses.replace(s, status="IDLE") if s.id in ("ls-001", "ls-002") else s
            for s in listing.livestreams
        ]
        return dataclasses.replace(listing, livestreams=tuple(entries + entries[:3]))

    rig.twist(listing=odd)
    for _ in range(3):
        snapshot = await rig.poll()
        no_false_stop(rig, snapshot)
        ids = [s.id for s in snapshot.apps[0].streams]
        assert len(ids) == len(set(ids))
    assert not internal_errors(poller)


async def test_a_live_listing_cut_short_or_lying_is_no_false_stop(rig: Rig) -> None:
    """Attacks promises 1 and 5 (total_count lying: zero ends the listing after one page,
    huge, negative): the LIVE listing gives only its first page with a wrong total; the
    other live streams are confirmed by lookups, none shown stopped."""
    poller = await into_lanes(rig, config_for(rig, 1500))
    totals = iter([0, 10**9, -5, 3, 0, 10**9])

    def short(kwargs: dict[str, Any], listing: Listing) -> Listing:
        if kwargs.get("status") != LIVE:
            return listing
        return dataclasses.replace(
            listing, livestreams=listing.livestreams[:PER_PAGE], total=next(totals)
        )

    rig.twist(listing=short)
    for _ in range(6):
        snapshot = await rig.poll()
        no_false_stop(rig, snapshot)
    assert not internal_errors(poller)


async def test_status_flapping_between_cycles(rig: Rig) -> None:
    """Attacks promises 1 and 2: a stream goes LIVE, stops, goes LIVE again, stops, on
    consecutive cycles while the counter lane is short: each state shows in its cycle."""
    poller = await into_lanes(rig, config_for(rig, 1500))
    for n in range(6):
        if n % 2 == 0:
            rig.sim.world.go_live("ls-050", viewers=1)
        else:
            rig.sim.world.stop("ls-050")
        snapshot = await rig.poll()
        assert live_of(snapshot)["ls-050"] is (n % 2 == 0), n
        no_false_stop(rig, snapshot)
    assert not internal_errors(poller)


async def test_many_stops_show_within_two_cycles(rig: Rig) -> None:
    """Attacks promise 2: half the live streams stop at once in the lanes plan. Lookups
    have room for three a cycle here, and so many missing at once is no proof without
    them: every stop shows within two cycles, and the others stay live."""
    await into_lanes(rig, config_for(rig, 1500))
    stopped = [f"ls-{n:03d}" for n in range(0, 12, 2)]
    for sid in stopped:
        rig.sim.world.stop(sid)
    await rig.poll()
    snapshot = await rig.poll()
    shown = live_of(snapshot)
    assert [sid for sid in stopped if shown[sid]] == []
    no_false_stop(rig, snapshot)


# -- promise 5: hostile listings -------------------------------------------------------------
async def test_a_live_listing_of_another_apps_streams_is_no_false_stop(rig: Rig) -> None:
    """Attacks promise 5: the LIVE listing of the app answers with another app's streams
    (a routing mix-up). The app's own live streams, confirmed by lookups, stay live."""
    rig.sim.world.populate(ACCOUNT, OTHER, 10, live=5)
    poller = await into_lanes(rig, config_for(rig, 1500))

    def other(kwargs: dict[str, Any], listing: Listing) -> Listing:
        if kwargs.get("status") == LIVE and kwargs["app_id"] == APP:
            return Listing(livestreams=tuple(Livestream(f"x-{n}", LIVE) for n in range(5)))
        return listing

    rig.twist(listing=other)
    for _ in range(6):  # long enough for any "missing twice" rule to act
        snapshot = await rig.poll()
        no_false_stop(rig, snapshot)
    assert not internal_errors(poller)


# FOUND: poller.py _pass_step: each part of a pass is a fresh client listing, so the
# client's "a page with nothing new ends the listing" never sees that the pass repeats
# itself; a listing whose pages repeat the same entries (with a total_count that never
# comes) makes the pass go on forever: no full listing ever again, so a stream deleted
# while not LIVE stays exported for good (and the pass walks toward page 10000).
async def test_a_pass_whose_pages_repeat_forever_ends(rig: Rig) -> None:
    """Attacks promise 5 (pages repeating the same entries forever): every part of the
    full listing pass answers the first page again, total_count huge. The pass must end
    (as a whole listing read ends at a page with nothing new) and a deleted idle stream
    must leave the export within a few passes' time."""
    poller = await into_lanes(rig, config_for(rig, 1500))
    first: dict[str, Listing] = {}

    def same(kwargs: dict[str, Any], listing: Listing) -> Listing:
        if kwargs.get("max_pages") is None:
            return listing
        first.setdefault("page", listing)
        return dataclasses.replace(first["page"], complete=False, total=10**9, unread=10**9)

    rig.twist(listing=same)
    victim = "ls-059"  # idle, on the last page
    for _ in range(12):
        await rig.poll()
    rig.sim.world.delete(victim)
    for _ in range(40):
        snapshot = await rig.poll()
    going = poller._passes.get((ACCOUNT, APP))
    assert victim not in streams_of(snapshot), (
        f"deleted stream still exported after 40 cycles; pass at page "
        f"{going.next_page if going else None}"
    )


# -- promise 6: reloads ----------------------------------------------------------------------
# FOUND: poller.py reconfigure keeps _pass_started (it prunes only removed apps), and _replan
# never recomputes it: a reload that lowers poll.full_listing_interval (3600 s -> unset)
# takes effect only when the old due time comes, up to the old interval later, so a
# new stream that is not LIVE is not discovered for up to an hour.
async def test_a_shorter_full_listing_interval_applies_at_once(rig: Rig) -> None:
    """Attacks promise 6 (full_listing_interval change): a pass every 3600 s, then a
    reload that unsets it (a pass about every 18 s here). A new idle stream must be
    discovered within a few passes of the new setting."""
    poller = rig.start(config_for(rig, 1500, full_listing_interval=3600.0))
    for _ in range(14):  # the first pass (9 pages, one a cycle) ends
        await rig.poll()
    assert poller._lanes.mode == "lanes"
    rig.reconfigure(config_for(rig, 1500))
    rig.sim.world.create(ACCOUNT, APP, livestream_id="ls-new", name="new")
    for _ in range(30):  # 60 s: three passes' time
        snapshot = await rig.poll()
    assert "ls-new" in streams_of(snapshot), poller._pass_started


async def test_reloads_mid_pass_leak_nothing_and_stop_nothing(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """Attacks promise 6: between cycles of the lanes plan, reloads add an app mid-pass,
    remove it, change the interval, full_listing_interval, the rate limit, toggle
    discovery off and on, and shard in two. No internal error, no false stop of a stream
    the config still tracks, and no state left for the removed app."""
    rig.sim.world.populate(ACCOUNT, OTHER, 30, live=4)
    poller = await into_lanes(rig, config_for(rig, 1500))
    caplog.set_level(logging.ERROR, logger="exporter")
    steps: list[Config] = [
        config_for(rig, 1500, apps=(APP, OTHER)),
        config_for(rig, 1500, apps=(APP, OTHER), interval=4.0),
        config_for(rig, 1500, apps=(APP,), full_listing_interval=10.0),
        config_for(rig, 900, apps=(OTHER, APP)),
        dataclasses.replace(
            config_for(rig, 1500, apps=(APP, OTHER)),
            apps=(
                AppConfig(account_id=ACCOUNT, app_id=APP, discover=True),
                AppConfig(account_id=ACCOUNT, app_id=OTHER, discover=False),
            ),
        ),
        config_for(rig, 1500, apps=(APP, OTHER)),
        config_for(rig, 1500, apps=(APP,)),
    ]
    for config in steps:
        rig.reconfigure(config)
        for _ in range(3):
            snapshot = await rig.poll()
            no_false_stop(rig, snapshot)
            if any(a.app_id == OTHER and a.discover for a in config.apps):
                no_false_stop(rig, snapshot, OTHER)
    assert not internal_errors(poller)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    keys = {(ACCOUNT, APP)}
    for table in (poller._passes, poller._pass_started, poller._full_pages, poller._live_pages):
        assert set(table) <= keys, table
    assert snapshot.app(ACCOUNT, OTHER) is None


async def test_a_shard_of_two_keeps_its_share(rig: Rig) -> None:
    """Attacks promises 1 and 3 (a shard count): shard 0 of 2 plans with half the budget;
    its streams are never falsely stopped and no cycle spends more than its share."""
    config = config_for(rig, 1500)
    config = dataclasses.replace(config, shard=dataclasses.replace(config.shard, index=0, total=2))
    poller = rig.start(config)
    share = lanes.allowance(750, 300.0, INTERVAL)
    for n in range(8):
        snapshot, cost = await rig.cycle_cost()
        if n >= 2:
            assert sum(cost.values()) <= math.floor(share) + 1, cost
        mine = {sid for sid in truly_live(rig) if config.shard.owns(sid)}
        shown = live_of(snapshot)
        assert all(shown.get(sid) for sid in mine)
    assert poller._lanes.mode == "lanes"


# -- promise 3: never over budget, measured at the grants ---------------------------------------
async def test_grants_keep_to_the_budget_through_reloads_and_policies(rig: Rig) -> None:
    """Attacks promise 3: a run of lanes cycles with stops, an interval change, a rate
    limit change and a stated policy of q=1 that then goes: in no window are more grants
    than the limit in force allows (the strictest, 1500 per 300 s, is checked)."""
    await into_lanes(rig, config_for(rig, 1500))
    rig.sim.world.stop("ls-001")
    await rig.poll()
    rig.reconfigure(config_for(rig, 1500, interval=1.0))
    for _ in range(5):
        await rig.poll()
    rig.reconfigure(config_for(rig, 1200))
    for _ in range(5):
        await rig.poll()
    rig.budget.learn(requests=1, window=60.0)
    await rig.poll()
    assert window_max(rig.grants()[-3:], 60.0) <= 1
    rig.budget.learn(requests=100_000, window=300.0)
    for _ in range(5):
        await rig.poll()
    assert window_max(rig.grants(), 300.0) <= 1500
