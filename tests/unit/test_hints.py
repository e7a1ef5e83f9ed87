"""Targeted refreshes that webhooks set off, against the simulated API through the real
client and poller; and the count of changes polling found that no webhook announced."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from exporter import receiver
from exporter.budget import RequestBudget
from exporter.client import ENDPOINTS, PRIORITY_PUSH, REASONS, RealtimeKitClient
from exporter.hints import RESULTS, Announcements, Refresher
from exporter.model import ActiveSession, Listing, Livestream, Session
from exporter.poller import Poller
from exporter.simulator import REALISTIC, Simulator, World
from exporter.telemetry import ExporterMetrics
from tests.clock import FakeClock
from tests.conftest import ACCOUNT, APP, TOKEN, make_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from exporter.model import Snapshot, StreamState, Totals

APP_KEY = (ACCOUNT, APP)
INTERVAL = 2.0


class Rig:
    def __init__(self, sim: Simulator, http: aiohttp.ClientSession) -> None:
        self.sim = sim
        self.world = sim.world
        self.config = make_config(sim.base_url, discover=True, interval=INTERVAL, token=TOKEN)
        self.registry = CollectorRegistry()
        self.metrics = ExporterMetrics(registry=self.registry, endpoints=ENDPOINTS, reasons=REASONS)
        self.metrics.enable_webhooks(
            events=(receiver.STATUS_UPDATE,),
            unverified=(),
            outcomes=receiver.VERIFIED_OUTCOMES,
            results=RESULTS,
        )
        self.client = RealtimeKitClient(
            session=http,
            base_url=self.config.api.base_url,
            token=self.config.api.token,
            budget=RequestBudget(requests=1000, window=300.0),
            timeout=2.0,
            observer=self.metrics,
        )
        self.poller = Poller(config=self.config, api=self.client, observer=self.metrics)
        self.refresher = Refresher(
            poller=self.poller,
            api=lambda: self.client,
            interval=lambda: INTERVAL,
            observer=self.metrics,
            rechecks=(0.25, 0.5, 1.0),
            min_recheck=0.0,
        )

    def requests(self, endpoint: str | None = None) -> int:
        return sum(
            n for (name, _), n in self.sim.state.requests.items() if endpoint in (None, name)
        )

    def results(self, result: str) -> float:
        value = self.registry.get_sample_value(
            "realtimekit_exporter_webhook_refreshes_total", {"result": result}
        )
        return value or 0.0

    def live_ids(self) -> list[str]:
        app = self.poller.snapshot.app(*APP_KEY)
        assert app is not None
        return sorted(s.id for s in app.streams if s.live)

    def idle_ids(self) -> list[str]:
        app = self.poller.snapshot.app(*APP_KEY)
        assert app is not None
        return sorted(s.id for s in app.streams if not s.live and s.livestream.status == "IDLE")

    def state(self, sid: str) -> Any:
        app = self.poller.snapshot.app(*APP_KEY)
        assert app is not None
        return app.stream(sid)

    async def settled(self) -> None:
        """Wait (bounded) until no refresh is under way."""
        async with asyncio.timeout(10):
            while self.refresher.busy:
                await asyncio.sleep(0.01)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    world = World(seed=5, profile=REALISTIC)  # nothing changes by itself for 150 s
    world.populate(ACCOUNT, APP, 12, live=4)
    async with Simulator(world, token=TOKEN) as sim, aiohttp.ClientSession() as http:
        r = Rig(sim, http)
        await r.poller.poll_once()
        try:
            yield r
        finally:
            await r.refresher.close()


async def test_a_stop_hint_shows_the_stop_and_its_final_values_in_two_requests(rig: Rig) -> None:
    """The stream stops; its hint makes one lookup (status) and one request by session id
    (final values), and the snapshot shows it not live with a stop time, without a cycle."""
    sid = rig.live_ids()[0]
    rig.world.stop(sid)
    before = rig.requests()
    assert rig.refresher.hint(sid, "IDLE")
    await rig.settled()
    state = rig.state(sid)
    assert not state.live
    assert state.livestream.status == "IDLE"
    assert state.session is not None
    assert state.session.stopped_time is not None
    assert rig.requests() - before == 2
    assert rig.requests("livestream") >= 1
    assert rig.results("agreed") == 1


async def test_a_start_hint_shows_the_stream_live_with_its_session(rig: Rig) -> None:
    """A stream goes live; its hint makes one active-session request (it holds the
    livestream and the session), and the stream shows live with the new session."""
    sid = rig.idle_ids()[0]
    session = rig.world.go_live(sid)
    before = rig.requests()
    assert rig.refresher.hint(sid, "LIVE")
    await rig.settled()
    state = rig.state(sid)
    assert state.live
    assert state.session is not None
    assert state.session.id == session.id
    assert state.livestream.status == "LIVE"
    assert rig.requests() - before == 1


async def test_a_hint_that_agrees_with_what_is_shown_costs_no_request(rig: Rig) -> None:
    """A stop of a stream shown stopped, or a start of one shown live (a replay, or news
    polling already had): no request."""
    before = rig.requests()
    assert rig.refresher.hint(rig.idle_ids()[0], "OFFLINE")
    assert rig.refresher.hint(rig.live_ids()[0], "LIVE")
    await rig.settled()
    assert rig.requests() == before


async def test_an_untracked_stream_is_not_hinted(rig: Rig) -> None:
    """A stream no app here tracks: the hint is refused (the receiver counts it ignored)."""
    before = rig.requests()
    assert not rig.refresher.hint("no-such-stream", "IDLE")
    assert rig.refresher.busy == 0
    assert rig.requests() == before


async def test_a_hint_the_api_denies_is_rechecked_then_cooled_down(rig: Rig) -> None:
    """A stop hint for a stream that is still live (forged? replayed? early?): asked once
    and again at each recheck, then given up (disagreed), the stream still shown live;
    the same hint again, however often, asks nothing within the cool-down."""
    sid = rig.live_ids()[0]
    before = rig.requests()
    assert rig.refresher.hint(sid, "IDLE")
    await rig.settled()
    assert rig.requests() - before == 4  # once, then three rechecks
    assert rig.results("disagreed") == 1
    assert rig.state(sid).live
    for _ in range(50):
        rig.refresher.hint(sid, "IDLE")
    await rig.settled()
    assert rig.requests() - before == 4


async def test_a_lagging_api_is_asked_again_until_it_agrees(rig: Rig) -> None:
    """The API still shows the old status for a moment after the stop: the refresh asks
    again at its rechecks, and shows the stop once the API agrees."""
    sid = rig.live_ids()[0]
    rig.sim.state.faults = dataclasses.replace(rig.sim.state.faults, status_lag=0.7)
    rig.world.stop(sid)
    assert rig.refresher.hint(sid, "IDLE")
    await rig.settled()
    assert not rig.state(sid).live
    assert rig.results("agreed") == 1
    assert rig.requests("livestream") >= 2


async def test_hints_for_one_stream_are_coalesced(rig: Rig) -> None:
    """Many hints for one stream while its refresh runs: at most one more refresh, for
    the latest hint, follows."""
    sid = rig.live_ids()[0]
    rig.world.stop(sid)
    before = rig.requests("livestream")
    for _ in range(20):
        rig.refresher.hint(sid, "IDLE")
    await rig.settled()
    assert rig.requests("livestream") - before == 1  # the later ones agree with the push
    assert not rig.state(sid).live


async def test_a_failed_refresh_is_counted_and_leaves_the_state(rig: Rig) -> None:
    """The API fails the lookup: counted failed, the stream stays as shown (polling is
    the safety net)."""
    sid = rig.live_ids()[0]
    rig.world.stop(sid)
    rig.sim.state.faults = dataclasses.replace(rig.sim.state.faults, error_rate=1.0)
    rig.refresher.hint(sid, "IDLE")
    await rig.settled()
    assert rig.results("failed") == 1
    assert rig.state(sid).live


async def test_close_cancels_refreshes_under_way(rig: Rig) -> None:
    """Closing the refresher ends every refresh under way (none outlives the exporter)."""
    rig.sim.state.faults = dataclasses.replace(rig.sim.state.faults, latency=30.0)
    sid = rig.live_ids()[0]
    rig.refresher.hint(sid, "IDLE")
    assert rig.refresher.busy == 1
    async with asyncio.timeout(5):
        await rig.refresher.close()
    assert rig.refresher.busy == 0
    assert not rig.refresher.hint(sid, "IDLE")


# -- a push during a cycle -------------------------------------------------------------


def stream_in(snapshot: Snapshot, sid: str) -> StreamState:
    """The state of stream ``sid`` of the app in ``snapshot`` (which must hold both)."""
    app = snapshot.app(*APP_KEY)
    assert app is not None
    state = app.stream(sid)
    assert state is not None
    return state


class GatedApi:
    """The API as it was before a stop: the listing says LIVE, the session is active. The
    listing waits for ``gate`` (so a push can come while the cycle runs)."""

    def __init__(self) -> None:
        self.stream = Livestream(id="s1", status="LIVE")
        self.live_session = Session(id="sess-1", started_time=1.0)
        self.listed = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()

    async def list_livestreams(self, *args: Any, **kwargs: Any) -> Listing:
        self.listed.set()
        await self.gate.wait()
        return Listing(livestreams=(self.stream,), total=1)

    async def livestream(self, *args: Any, **kwargs: Any) -> Livestream | None:
        return self.stream

    async def active_session(self, *args: Any, **kwargs: Any) -> ActiveSession:
        return ActiveSession(livestream=self.stream, session=self.live_session)

    async def session(self, *args: Any, **kwargs: Any) -> ActiveSession:
        return ActiveSession(livestream=None, session=self.live_session)

    async def livestream_analytics(self, *args: Any, **kwargs: Any) -> Totals:
        raise AssertionError("analytics are off in these tests")

    async def livestream_analytics_days(self, *args: Any, **kwargs: Any) -> tuple[Totals, ...]:
        raise AssertionError("analytics are off in these tests")


async def test_a_cycle_under_way_keeps_the_state_a_push_gave() -> None:
    """A push shows a stop while a cycle that read the listing before it runs: the
    cycle's older word (LIVE) does not bring the stream back; the next cycle's does."""
    api = GatedApi()
    config = make_config("http://127.0.0.1:9", discover=True, interval=INTERVAL)
    poller = Poller(config=config, api=api)
    await poller.poll_once()
    api.gate.clear()
    api.listed.clear()
    cycle = asyncio.create_task(poller.poll_once())
    await asyncio.wait_for(api.listed.wait(), timeout=5)
    stopped = dataclasses.replace(api.stream, status="IDLE")
    pushed = poller.push(
        APP_KEY, "s1", lambda s: dataclasses.replace(s, livestream=stopped, live=False)
    )
    assert pushed is not None
    assert not pushed.live
    api.gate.set()
    snapshot = await asyncio.wait_for(cycle, timeout=5)
    state = stream_in(snapshot, "s1")
    assert not state.live
    assert state.livestream.status == "IDLE"
    snapshot = await poller.poll_once()  # began after the push: the API's word stands
    assert stream_in(snapshot, "s1").live


def test_push_priority_goes_ahead_of_everything() -> None:
    """A refresh's requests queue ahead of the listing, the first thing a cycle asks."""
    from exporter.client import PRIORITY_LISTING

    assert PRIORITY_PUSH < PRIORITY_LISTING
    assert PRIORITY_PUSH < 0  # the budget keeps its share for negative priorities


# -- announcements ---------------------------------------------------------------------


KEY = (APP_KEY, "s1")


def test_a_change_polling_found_with_no_hint_is_counted_once_after_the_grace() -> None:
    """Polling finds a stop no webhook announced: counted once the grace has passed (a
    late delivery may still come), and only once."""
    clock = FakeClock(0.0)
    ann = Announcements(grace=120.0, clock=clock)
    ann.found(KEY, False)
    assert ann.settle() == 0
    clock.now = 121
    assert ann.settle() == 1
    assert ann.settle() == 0


def test_a_change_announced_before_or_late_within_the_grace_is_not_counted() -> None:
    """A hint before the change was found, or one arriving within the grace after it,
    announces it; a hint of the other direction does not."""
    clock = FakeClock(0.0)
    ann = Announcements(grace=120.0, clock=clock)
    ann.hinted(KEY, False)
    clock.now = 5
    ann.found(KEY, False)  # announced before
    other = (APP_KEY, "s2")
    ann.found(other, False)
    clock.now = 60
    ann.hinted(other, False)  # announced late
    third = (APP_KEY, "s3")
    ann.hinted(third, True)
    ann.found(third, False)  # announced the other way: not this change
    clock.now = 300
    assert ann.settle() == 1


def test_an_old_hint_does_not_announce_a_later_change() -> None:
    """A hint older than the grace announces nothing found after it."""
    clock = FakeClock(0.0)
    ann = Announcements(grace=120.0, clock=clock)
    ann.hinted(KEY, False)
    clock.now = 500
    ann.found(KEY, False)
    clock.now = 700
    assert ann.settle() == 1


async def test_polling_finding_an_unannounced_change_is_counted_in_the_metric(rig: Rig) -> None:
    """Wired to the poller, a stop found by a cycle with no webhook makes the metric count
    one once the grace passes."""
    clock = FakeClock(0.0)
    rig.refresher.announcements = Announcements(grace=10.0, clock=clock)
    poller = Poller(
        config=rig.config,
        api=rig.client,
        on_change=rig.refresher.found_change,
    )
    await poller.poll_once()
    sid = sorted(s.id for s in poller.snapshot.apps[0].streams if s.live)[0]
    rig.world.stop(sid)
    await poller.poll_once()
    clock.now = 11
    rig.refresher.settle()
    value = rig.registry.get_sample_value("realtimekit_exporter_webhook_unannounced_changes_total")
    assert value == 1


class RecordingApi(GatedApi):
    """GatedApi, recording each refresh request's endpoint and priority."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[str, int]] = []

    async def livestream(self, *args: Any, **kwargs: Any) -> Livestream | None:
        self.asked.append(("livestream", kwargs["priority"]))
        return self.stream

    async def active_session(self, *args: Any, **kwargs: Any) -> ActiveSession:
        if "priority" in kwargs:  # a refresh's (a cycle's asks without one)
            self.asked.append(("active_session", kwargs["priority"]))
        return ActiveSession(livestream=self.stream, session=self.live_session)

    async def session(self, *args: Any, **kwargs: Any) -> ActiveSession:
        self.asked.append(("session", kwargs["priority"]))
        return ActiveSession(
            livestream=None, session=dataclasses.replace(self.live_session, stopped_time=9.0)
        )


async def test_only_a_stops_lookup_takes_the_kept_share() -> None:
    """A stop's lookup goes ahead of everything (PRIORITY_PUSH, the budget's kept share);
    its final values, and a start's session, queue behind the cycle's listing and
    sessions (PRIORITY_OTHER)."""
    from exporter.client import PRIORITY_OTHER

    api = RecordingApi()
    config = make_config("http://127.0.0.1:9", discover=True, interval=INTERVAL)
    poller = Poller(config=config, api=api)
    await poller.poll_once()
    refresher = Refresher(poller=poller, api=lambda: api, interval=lambda: INTERVAL)
    try:
        api.stream = dataclasses.replace(api.stream, status="IDLE")
        refresher.hint("s1", "IDLE")
        async with asyncio.timeout(5):
            while refresher.busy:
                await asyncio.sleep(0.01)
        assert api.asked == [("livestream", PRIORITY_PUSH), ("session", PRIORITY_OTHER)]
        api.asked.clear()
        api.stream = dataclasses.replace(api.stream, status="LIVE")
        api.live_session = Session(id="sess-2", started_time=10.0)
        refresher.hint("s1", "LIVE")
        async with asyncio.timeout(5):
            while refresher.busy:
                await asyncio.sleep(0.01)
        assert api.asked == [("active_session", PRIORITY_OTHER)]
    finally:
        await refresher.close()


async def test_with_no_room_in_the_budget_only_a_stops_lookup_is_sent() -> None:
    """The budget has no room beyond its kept share: a stop's lookup still goes (the
    stream shows stopped; its final values are left to polling's turn), a start asks
    nothing (throttled: polling's next cycle shows it)."""
    from exporter.client import PRIORITY_PUSH as PUSH

    api = RecordingApi()
    config = make_config("http://127.0.0.1:9", discover=True, interval=INTERVAL)
    poller = Poller(config=config, api=api)
    await poller.poll_once()
    registry = CollectorRegistry()
    metrics = ExporterMetrics(registry=registry, endpoints=ENDPOINTS, reasons=REASONS)
    metrics.enable_webhooks(events=(), unverified=(), outcomes=(), results=RESULTS)
    refresher = Refresher(
        poller=poller,
        api=lambda: api,
        interval=lambda: INTERVAL,
        observer=metrics,
        room=lambda: 0,
    )
    try:
        api.stream = dataclasses.replace(api.stream, status="IDLE")
        refresher.hint("s1", "IDLE")
        async with asyncio.timeout(5):
            while refresher.busy:
                await asyncio.sleep(0.01)
        assert api.asked == [("livestream", PUSH)]
        state = stream_in(poller.snapshot, "s1")
        assert not state.live
        api.asked.clear()
        api.stream = dataclasses.replace(api.stream, status="LIVE")
        refresher.hint("s1", "LIVE")
        async with asyncio.timeout(5):
            while refresher.busy:
                await asyncio.sleep(0.01)
        assert api.asked == []
        throttled = registry.get_sample_value(
            "realtimekit_exporter_webhook_refreshes_total", {"result": "throttled"}
        )
        assert throttled == 1
    finally:
        await refresher.close()
