"""Scale: request planning, the shared budget, and sharding, against the simulator.

The exporter's client and poller poll the simulator in-process on one hand-moved clock
(as in test_simulator_exporter), so request counts and budget waits are exact:

- a discovering app costs its listing's pages plus one request per live stream, plus one
  per stream that has just stopped (its final values): the lower bound of docs/scaling.md;
- an app of configured streams costs the cheaper of its listing and its first page plus
  one request per configured stream that page lacks;
- one budget per token: a 429 on one app's request holds every app's requests; a cycle
  the budget cannot cover waits for it (and says so) instead of failing;
- a livestream belongs to exactly one shard, the same one every time.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import TYPE_CHECKING

import aiohttp
import pytest

from exporter import cli
from exporter.cliargs import EXIT_OK, EXIT_USAGE
from exporter.client import REASONS, ApiError
from exporter.config import AppConfig, Config, LivestreamConfig, RateLimit, Shard
from exporter.model import ActiveSession, Listing, Livestream
from exporter.poller import Poller
from exporter.simulator import REALISTIC, Simulator, World
from tests.apidouble import UnaskedApi
from tests.clock import FakeClock
from tests.conftest import ACCOUNT, APP, TOKEN, make_config
from tests.harness import INTERVAL, Harness
from tests.reloading import cli_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


STREAMS = 30
LIVE = 5
PER_PAGE = 7  # the simulator's cap: 30 streams are 5 pages
PAGES = math.ceil(STREAMS / PER_PAGE)
OTHER_APP = "app-two"
T0 = 1_800_000_000.0
ROOMY = RateLimit(100_000, 300.0)  # a budget that never makes the plan choose lanes


def world_of(clock: FakeClock, *apps: str) -> World:
    world = World(seed=5, profile=REALISTIC, clock=clock)
    for app in apps or (APP,):
        world.populate(ACCOUNT, app, STREAMS, live=LIVE)
    return world


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    clock = FakeClock()
    async with (
        Simulator(world_of(clock, APP, OTHER_APP), token=TOKEN, max_per_page=PER_PAGE) as sim,
        aiohttp.ClientSession() as http,
    ):
        yield Harness(sim, http, clock)


def live_ids(harness: Harness, app: str = APP) -> list[str]:
    harness.sim.world.now()
    return [s.id for s in harness.sim.world.streams(ACCOUNT, app) or [] if s.session is not None]


def configured(base_url: str, ids: list[str]) -> Config:
    return make_config(base_url, streams=tuple(ids), interval=INTERVAL, rate_limit=ROOMY)


# -- request planning ---------------------------------------------------------------------
async def test_a_discovering_app_costs_its_pages_plus_its_live_streams(harness: Harness) -> None:
    """Per cycle: every page of the listing, one session request per live stream, and one
    by-id request per stream that stopped since the last cycle; nothing for the others."""
    # A budget with room for the whole plan every cycle (tests/unit/test_lanes.py: without it).
    harness.start(
        make_config(harness.sim.base_url, discover=True, interval=INTERVAL, rate_limit=ROOMY)
    )
    _, cost = await harness.cycle_cost()
    assert cost == {"livestreams": PAGES, "active_livestream_session": LIVE}

    stopped = live_ids(harness)[:2]
    for sid in stopped:
        harness.sim.world.stop(sid)
    snapshot, cost = await harness.cycle_cost()
    assert cost == {
        "livestreams": PAGES,
        "active_livestream_session": LIVE - 2,
        "livestream_session": 2,
    }
    (app,) = snapshot.apps
    assert {s.id for s in app.streams if s.live} == set(live_ids(harness))

    _, cost = await harness.cycle_cost()
    assert cost == {"livestreams": PAGES, "active_livestream_session": LIVE - 2}


async def test_the_listing_asks_for_large_pages_and_keeps_to_the_apis_cap(
    harness: Harness,
) -> None:
    """The first page asks for far more than 100 entries; the simulator's cap of 7 then
    sets the size of the pages after it, and no stream is missed or read twice."""
    harness.start(make_config(harness.sim.base_url, discover=True, interval=INTERVAL))
    snapshot = await harness.poll()
    world_ids = {s.id for s in harness.sim.world.streams(ACCOUNT, APP) or []}
    assert sorted(s.id for s in snapshot.apps[0].streams) == sorted(world_ids)
    assert harness.value("realtimekit_exporter_livestreams_tracked") == STREAMS


async def test_few_configured_streams_are_fetched_by_id_instead_of_every_page(
    harness: Harness,
) -> None:
    """Two configured streams of 30 (5 pages): the first page, then one request for each
    configured stream it lacks, plus the live one's session; a configured id the API does
    not know is reported unlisted, as a listing would."""
    world = harness.sim.world
    first_page = {s.id for s in (world.by_creation_time(ACCOUNT, APP) or [])[-PER_PAGE:]}
    live = next(i for i in live_ids(harness) if i not in first_page)
    idle = next(
        s.id
        for s in world.streams(ACCOUNT, APP) or []
        if s.session is None and s.id not in first_page
    )
    ids = [live, idle, "no-such-stream"]
    harness.start(configured(harness.sim.base_url, ids))
    snapshot, cost = await harness.cycle_cost()
    assert cost == {"livestreams": 1, "livestream": 3, "active_livestream_session": 1}
    (app,) = snapshot.apps
    assert app.up
    assert {s.id: s.live for s in app.streams} == {live: True, idle: False}
    assert [u.id for u in app.unlisted] == ["no-such-stream"]
    assert harness.value("realtimekit_livestream_unlisted", livestream_id="no-such-stream") == 1


async def test_many_configured_streams_use_the_listing(harness: Harness) -> None:
    """When the configured streams outnumber the listing's pages, every page is cheaper."""
    ids = [s.id for s in harness.sim.world.streams(ACCOUNT, APP) or []][:12]
    live = [i for i in ids if i in live_ids(harness)]
    harness.start(configured(harness.sim.base_url, ids))
    snapshot, cost = await harness.cycle_cost()
    assert live  # the world's first 12 streams hold a live one
    assert cost == {"livestreams": PAGES, "active_livestream_session": len(live)}
    assert {s.id for s in snapshot.apps[0].streams} == set(ids)


# -- one budget per token -------------------------------------------------------------------
def two_apps(base_url: str, rate: RateLimit | None = None) -> Config:
    config = make_config(base_url, discover=True, interval=INTERVAL, rate_limit=rate)
    other = AppConfig(account_id=ACCOUNT, app_id=OTHER_APP, discover=True)
    return dataclasses.replace(config, apps=(*config.apps, other))


async def test_a_429_holds_the_requests_of_every_app_on_the_token(harness: Harness) -> None:
    """The API throttles the token: its first 429 pauses both apps' requests until the
    block ends, so exactly one request is refused; then both recover."""
    harness.start(two_apps(harness.sim.base_url))
    await harness.poll()
    async with harness.http.post(
        harness.sim.control_url + "/throttle", json={"seconds": 120}
    ) as answer:
        assert answer.status == 200
    for cycle in (1, 2):
        before = sum(harness.sent().values())
        snapshot = await harness.poll()
        assert [a.up for a in snapshot.apps] == [False, False]
        # Only what was in flight when the first 429 came back was sent (each app's first
        # page); nothing after it, in this cycle or the next.
        throttled = harness.sim.state.requests[("livestreams", 429)]
        assert sum(harness.sent().values()) - before == (throttled if cycle == 1 else 0)
        assert throttled <= 2
        for app in (APP, OTHER_APP):
            assert harness.value("realtimekit_up", app) == 0
            # Streams keep their last values; none flips to not live.
            state = snapshot.app(ACCOUNT, app)
            assert state is not None
            assert sum(s.live for s in state.streams) == LIVE
    harness.clock.now += 120
    snapshot = await harness.poll()
    assert [a.up for a in snapshot.apps] == [True, True]


async def test_a_budget_too_small_for_a_cycle_stretches_it(harness: Harness) -> None:
    """A cycle costs 2 * (5 pages + 5 sessions) = 20 requests and the budget allows 30 per
    300 s: the second cycle waits for room instead of failing, finishes with every stream,
    and counts itself in realtimekit_exporter_poll_budget_exhausted_total. The API never
    sees more than the budget in any window."""
    harness.start(two_apps(harness.sim.base_url, RateLimit(30, 300.0)))
    exhausted = "realtimekit_exporter_poll_budget_exhausted_total"
    first = await harness.poll()
    assert all(a.up for a in first.apps)
    assert harness.registry.get_sample_value(exhausted, {"credentials": "default"}) == 0
    started = harness.clock.now
    second = await harness.poll()
    assert all(a.up for a in second.apps)
    assert harness.clock.now - started >= 300.0 - INTERVAL  # it waited for the window
    assert harness.registry.get_sample_value(exhausted, {"credentials": "default"}) == 1
    for reason in REASONS:
        for app in (APP, OTHER_APP):
            assert harness.value("realtimekit_exporter_poll_errors_total", app, reason=reason) == 0
    assert not any(code == 429 for _, code in harness.sim.state.requests)
    assert sum(harness.sent().values()) == 40


# -- sharding ---------------------------------------------------------------------------
def test_every_livestream_belongs_to_exactly_one_shard() -> None:
    """For any shard count, each id is owned by one shard, and the split is near even."""
    rng = random.Random(7)
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(3000)] + ["", "é", "a" * 300]
    for total in range(1, 9):
        shards = [Shard(i, total) for i in range(total)]
        owners = [[s.index for s in shards if s.owns(i)] for i in ids]
        assert all(len(o) == 1 for o in owners)
        counts = [sum(1 for o in owners if o == [s.index]) for s in shards]
        assert min(counts) > len(ids) / total * 0.8


def test_shard_assignment_is_stable() -> None:
    """The hash is fixed (SHA-256 of the id): these assignments must never change, or an
    upgrade would move streams between shards."""
    expected = {
        "b60ef3da-fbbb-441b-9168-8235b0035248": 0,
        "9fb22eea-3392-42ad-b884-1129a4f517d2": 2,
        "ls-1": 2,
        "ls-2": 0,
        "stream": 2,
    }
    got = {i: next(s for s in range(3) if Shard(s, 3).owns(i)) for i in expected}
    assert got == expected


@pytest.mark.parametrize(("index", "total"), [(0, 0), (1, 1), (-1, 2), (3, 2)])
def test_a_shard_that_cannot_exist_is_refused(index: int, total: int) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        Shard(index, total)


def test_each_shard_spends_its_share_of_the_budget() -> None:
    assert Shard(0, 3).budget(RateLimit(1000, 300.0)) == RateLimit(333, 300.0)
    assert Shard(0, 1).budget(RateLimit(1000, 300.0)) == RateLimit(1000, 300.0)
    assert Shard(4, 1000).budget(RateLimit(1000, 300.0)) == RateLimit(1, 300.0)
    with pytest.raises(ValueError, match="cannot share"):
        Shard(4, 1001).budget(RateLimit(1000, 300.0))


async def test_shards_split_the_streams_and_only_shard_0_exports_the_app() -> None:
    """Two shards polling the same app: together they export every stream exactly once,
    each asks only for its own live streams' sessions, and realtimekit_up comes from
    shard 0 alone, so sums over targets count each app once."""
    clock = FakeClock()
    async with (
        Simulator(world_of(clock), token=TOKEN, max_per_page=PER_PAGE) as sim,
        aiohttp.ClientSession() as http,
    ):
        base = make_config(sim.base_url, discover=True, interval=INTERVAL, rate_limit=ROOMY)
        shards = [Harness(sim, http, clock) for _ in range(2)]
        snapshots = []
        for index, harness in enumerate(shards):
            poller = harness.start(dataclasses.replace(base, shard=Shard(index, 2)))
            before = sim.state.requests.get(("active_livestream_session", 200), 0)
            snapshots.append(await poller.poll_once())
            sessions = sim.state.requests.get(("active_livestream_session", 200), 0) - before
            mine = [i for i in live_ids(harness) if Shard(index, 2).owns(i)]
            assert sessions == len(mine)
        ids = [[s.id for s in snap.apps[0].streams] for snap in snapshots]
        world_ids = {s.id for s in sim.world.streams(ACCOUNT, APP) or []}
        assert set(ids[0]).isdisjoint(ids[1])
        assert set(ids[0]) | set(ids[1]) == world_ids
        assert all(ids)  # 30 streams do not all hash to one shard
        assert shards[0].value("realtimekit_up") == 1
        assert shards[1].value("realtimekit_up") is None
        tracked = "realtimekit_exporter_livestreams_tracked"
        assert sum(h.value(tracked) or 0 for h in shards) == STREAMS


async def test_shards_split_configured_streams_and_their_unlisted_ones() -> None:
    clock = FakeClock()
    async with (
        Simulator(world_of(clock), token=TOKEN, max_per_page=PER_PAGE) as sim,
        aiohttp.ClientSession() as http,
    ):
        ids = [*[s.id for s in sim.world.streams(ACCOUNT, APP) or []][:4], "gone-1", "gone-2"]
        base = dataclasses.replace(
            make_config(sim.base_url, interval=INTERVAL),
            apps=(AppConfig(ACCOUNT, APP, livestreams=tuple(LivestreamConfig(i) for i in ids)),),
        )
        seen: list[str] = []
        unlisted: list[str] = []
        for index in range(2):
            harness = Harness(sim, http, clock)
            poller = harness.start(dataclasses.replace(base, shard=Shard(index, 2)))
            snapshot = await poller.poll_once()
            (app,) = snapshot.apps
            assert all(Shard(index, 2).owns(s.id) for s in app.streams)
            seen += [s.id for s in app.streams]
            unlisted += [u.id for u in app.unlisted]
        assert sorted(seen) == sorted(ids[:4])
        assert sorted(unlisted) == ["gone-1", "gone-2"]


def test_the_shard_flags_are_checked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--shard must be below --total-shards; a valid pair shows in --config.check, with
    the shard's part of the budget."""
    path = cli_config(tmp_path, "http://127.0.0.1:9")
    monkeypatch.setenv("RTK_TEST_TOKEN", TOKEN)
    assert cli.main([f"--config.file={path}", "--shard=2", "--total-shards=2"]) == EXIT_USAGE
    assert "--shard=2 needs --total-shards above 2" in capsys.readouterr().err
    assert cli.main([f"--config.file={path}", "--total-shards=0"]) == EXIT_USAGE
    assert "must be 1 or more" in capsys.readouterr().err
    too_many = [f"--config.file={path}", "--total-shards=1001", "--config.check"]
    assert cli.main(too_many) == EXIT_USAGE  # the config's budget is 1000/5m
    assert "every shard needs one of its own" in capsys.readouterr().err
    args = [f"--config.file={path}", "--shard=1", "--total-shards=4", "--config.check"]
    assert cli.main(args) == EXIT_OK
    assert "shard 1 of 4 (budget 250/5m)" in capsys.readouterr().out


class ByIdApi(UnaskedApi):
    """A listing of 5,000 streams (50 pages) whose first page holds ``good``; by-id
    lookups answer from ``answers``: a Livestream, None (not found) or an ApiError."""

    def __init__(self) -> None:
        self.answers: dict[str, Livestream | ApiError | None] = {}

    async def list_livestreams(self, account_id: str, app_id: str, **options: object) -> Listing:
        first = (Livestream("good", "IDLE"), *(Livestream(f"o{i}", "IDLE") for i in range(99)))
        stop_early = options.get("stop_early")
        assert callable(stop_early), "the test expects the by-id plan"
        assert stop_early({s.id for s in first}, 49), "the test expects the by-id plan"
        return Listing(livestreams=first, total=5000, complete=False)

    async def livestream(
        self, account_id: str, app_id: str, livestream_id: str, **_: object
    ) -> Livestream | None:
        answer = self.answers[livestream_id]
        if isinstance(answer, ApiError):
            raise answer
        return answer

    async def active_session(self, *args: object, **kwargs: object) -> ActiveSession:
        return ActiveSession(None, None)

    async def session(self, *args: object, **kwargs: object) -> ActiveSession:
        return ActiveSession(None, None)


async def test_a_configured_id_the_api_refuses_is_unlisted_and_the_app_stays_up() -> None:
    """A 400 for one configured id (not a livestream id at all) reads as "not listed", as
    the listing would say; the app stays up."""
    api = ByIdApi()
    api.answers = {
        "s2": Livestream("s2", "IDLE"),
        # In RealtimeKit's own envelope (a gateway's 400 says nothing of the id).
        "typo": ApiError(
            "http_error", "invalid id", endpoint="livestream", status=400, service=True
        ),
    }
    now = [T0]
    config = make_config("http://127.0.0.1:9", streams=("good", "s2", "typo"))
    poller = Poller(config=config, api=api, clock=lambda: now[0])
    snapshot = await poller.poll_once()
    (app,) = snapshot.apps
    assert app.up
    assert [s.id for s in app.streams] == ["good", "s2"]
    assert [u.id for u in app.unlisted] == ["typo"]


async def test_a_failed_lookup_keeps_that_stream_as_a_failed_listing_would() -> None:
    """A 5xx for one configured stream's lookup: the app is down, that stream keeps its last
    state until max_staleness after it was last seen (then goes), and is not called
    unlisted; the other streams are fresh."""
    api = ByIdApi()
    api.answers = {"s2": Livestream("s2", "IDLE"), "s3": Livestream("s3", "ERRORED")}
    now = [T0]
    config = make_config(
        "http://127.0.0.1:9", streams=("good", "s2", "s3"), interval=30, max_staleness=60
    )
    poller = Poller(config=config, api=api, clock=lambda: now[0])
    await poller.poll_once()
    api.answers["s3"] = ApiError("http_error", "bad gateway", endpoint="livestream", status=502)
    api.answers["s2"] = Livestream("s2", "OFFLINE")
    for step, kept in ((30, True), (60, True), (90, False)):
        now[0] = T0 + step
        (app,) = (await poller.poll_once()).apps
        assert not app.up and not app.unlisted
        states = {s.id: s.livestream.status for s in app.streams}
        expected = {"good": "IDLE", "s2": "OFFLINE"} | ({"s3": "ERRORED"} if kept else {})
        assert states == expected, step
    assert [e.reason for e in poller.recent_errors][:1] == ["http_error"]
