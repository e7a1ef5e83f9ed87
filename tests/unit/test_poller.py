"""Poll cycles against a loopback fake of the API, through the real client."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from exporter.budget import RequestBudget
from exporter.client import ENDPOINTS, REASONS, RealtimeKitClient
from exporter.collector import SnapshotCollector
from exporter.config import RateLimit
from exporter.model import ActiveSession, Listing, Livestream
from exporter.poller import Poller
from exporter.simulator import Canned, Faults, Simulator
from exporter.simulator.api import livestream_body
from exporter.telemetry import ExporterMetrics
from tests.apidouble import UnaskedApi
from tests.clock import FakeClock
from tests.conftest import ACCOUNT, APP, add_stream, go_live, make_config, sent

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from exporter.config import Config

LISTING, SESSION, BY_ID = "livestreams", "active_livestream_session", "livestream_session"


class Rig:
    """A poller wired to the simulated API with a private registry and a hand-moved clock."""

    def __init__(self, sim: Simulator, session: aiohttp.ClientSession) -> None:
        self.sim = sim
        self.session = session
        self.clock = FakeClock()
        self.registry = CollectorRegistry()
        self.metrics = ExporterMetrics(registry=self.registry, endpoints=ENDPOINTS, reasons=REASONS)

    def poller(self, config: Config) -> Poller:
        client = RealtimeKitClient(
            session=self.session,
            base_url=config.api.base_url,
            token=config.api.token,
            budget=RequestBudget(requests=1000, window=300),
            timeout=config.api.timeout,
            observer=self.metrics,
            sleep=_no_sleep,
        )
        return Poller(config=config, api=client, observer=self.metrics, clock=self.clock)

    def errors(self, reason: str) -> float:
        value = self.registry.get_sample_value(
            "realtimekit_exporter_poll_errors_total",
            {"account_id": ACCOUNT, "app_id": APP, "reason": reason},
        )
        assert value is not None
        return value


async def _no_sleep(seconds: float) -> None:
    return None


@pytest.fixture
async def rig(sim: Simulator) -> AsyncIterator[Rig]:
    async with aiohttp.ClientSession() as session:
        yield Rig(sim, session)


async def test_cycle_costs_one_listing_plus_one_request_per_live_stream(rig: Rig) -> None:
    """Only LIVE streams cost a session request; everyone's status comes from the listing."""
    streams = [add_stream(rig.sim, f"s{i}") for i in range(5)]
    rig.sim.state.faults = Faults(numbers_as_strings=True)
    go_live(rig.sim, streams[1], ingest=120.5, viewer=300)
    rig.sim.world.go_live(streams[3])
    rig.sim.world.stop(streams[4], status="OFFLINE")
    poller = rig.poller(make_config(rig.sim.base_url, streams=tuple(streams)))

    snapshot = await poller.poll_once()

    assert sent(rig.sim, LISTING) == 1
    assert sent(rig.sim, SESSION) == 2
    app = snapshot.apps[0]
    assert app.up
    assert [s.livestream.status for s in app.streams] == ["IDLE", "LIVE", "IDLE", "LIVE", "OFFLINE"]
    assert [s.live for s in app.streams] == [False, True, False, True, False]
    s1 = app.stream("s1")
    assert s1 is not None and s1.session is not None
    assert s1.session.ingest_seconds == 120.5 and s1.session.viewer_seconds == 300


async def test_discovery_pages_through_the_listing(rig: Rig) -> None:
    """discover: true follows every page and tracks every stream once."""
    rig.sim.state.max_per_page = 40
    for i in range(95):
        add_stream(rig.sim, f"s{i:03d}")
    poller = rig.poller(make_config(rig.sim.base_url, discover=True))

    snapshot = await poller.poll_once()

    assert sent(rig.sim, LISTING) == 3
    assert [r.query["page_no"] for r in rig.sim.state.log] == ["1", "2", "3"]
    assert len(snapshot.apps[0].streams) == 95


async def test_stream_that_stops_gets_one_final_fetch(rig: Rig) -> None:
    """Leaving LIVE costs one request for the session by id, which has the final values."""
    s = add_stream(rig.sim, "s1")
    go_live(rig.sim, s, ingest=100, viewer=50)
    poller = rig.poller(make_config(rig.sim.base_url, streams=("s1",)))
    await poller.poll_once()
    rig.sim.world.set_counters(s, ingest_seconds=130)
    rig.sim.world.stop(s)  # the active endpoint now answers 404, as the real one does

    snapshot = await poller.poll_once()
    assert (sent(rig.sim, SESSION), sent(rig.sim, BY_ID)) == (1, 1)
    (state,) = snapshot.apps[0].streams
    assert not state.live and state.session is not None and state.session.ingest_seconds == 130
    assert snapshot.apps[0].up

    snapshot = await poller.poll_once()
    await poller.poll_once()
    assert (sent(rig.sim, SESSION), sent(rig.sim, BY_ID)) == (1, 1)
    (state,) = snapshot.apps[0].streams
    assert state.session is not None and state.session.ingest_seconds == 130


async def test_unknown_status_is_asked_about_and_exported(rig: Rig) -> None:
    """A status the exporter does not know costs a session request and is exported as is."""
    s = add_stream(rig.sim, "s1")
    rig.sim.world.go_live(s)
    rig.sim.world.set_status(s, "Re-connecting")
    poller = rig.poller(make_config(rig.sim.base_url, discover=True))
    snapshot = await poller.poll_once()
    (state,) = snapshot.apps[0].streams
    assert sent(rig.sim, SESSION) == 1
    assert state.live and state.livestream.status == "RE-CONNECTING"


async def test_persistent_session_failures_never_make_series_flap(rig: Rig) -> None:
    """Session requests failing past max_staleness drop the counters, never the stream."""
    s = add_stream(rig.sim, "s1")
    go_live(rig.sim, s, ingest=5)
    poller = rig.poller(
        make_config(rig.sim.base_url, streams=("s1",), interval=30, max_staleness=90)
    )
    await poller.poll_once()
    rig.sim.state.answer_next(SESSION, Canned(500, {"success": False}), times=None)
    seen = []
    for _ in range(6):
        rig.clock.now += 30
        (state,) = (await poller.poll_once()).apps[0].streams
        seen.append((state.live, state.session is not None))
    assert seen == [(True, True)] * 3 + [(True, False)] * 3


async def test_api_failure_keeps_live_streams_live_until_max_staleness(rig: Rig) -> None:
    """A failing listing marks the app down, keeps values, then drops them after max_staleness."""
    s = add_stream(rig.sim, "s1")
    rig.sim.world.go_live(s)
    config = make_config(rig.sim.base_url, streams=("s1",), interval=30, max_staleness=90)
    poller = rig.poller(config)
    await poller.poll_once()
    bad_gateway = {"success": False, "error": {"code": 502, "message": "bad gateway"}}
    rig.sim.state.answer_next(LISTING, Canned(502, bad_gateway), times=None)

    for _ in range(3):
        rig.clock.now += 30
        snapshot = await poller.poll_once()
        app = snapshot.apps[0]
        assert not app.up and app.streams[0].live
    assert rig.errors("http_error") == 3
    rig.clock.now += 30
    snapshot = await poller.poll_once()
    assert snapshot.apps[0].streams == ()

    rig.sim.state.clear_answers()
    snapshot = await poller.poll_once()
    assert snapshot.apps[0].up and snapshot.apps[0].streams[0].live


async def test_rejected_token_logs_once_per_state_change(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """401 counts an auth error every cycle but logs once, naming the permission."""
    add_stream(rig.sim, "s1")
    poller = rig.poller(make_config(rig.sim.base_url, streams=("s1",), token="wrong-token"))
    caplog.set_level(logging.INFO, logger="exporter")
    for _ in range(3):
        snapshot = await poller.poll_once()
        assert not snapshot.apps[0].up
    assert rig.errors("auth") == 3
    rejected = [r for r in caplog.records if "rejected the token" in r.getMessage()]
    assert len(rejected) == 1
    assert "Realtime or Realtime Admin" in rejected[0].getMessage()
    assert "wrong-token" not in caplog.text


async def test_recovery_is_logged_once(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """App down then up: one warning, one info, nothing for the unchanged cycles."""
    add_stream(rig.sim, "s1")
    poller = rig.poller(make_config(rig.sim.base_url, streams=("s1",)))
    caplog.set_level(logging.INFO, logger="exporter")
    await poller.poll_once()
    rig.sim.state.answer_next(LISTING, Canned(503, {"success": False}), times=6)
    await poller.poll_once()
    await poller.poll_once()
    await poller.poll_once()
    await poller.poll_once()
    messages = [r.getMessage() for r in caplog.records if r.name == "exporter.poller"]
    assert sum("app is down" in m for m in messages) == 1
    assert sum("app is up again" in m for m in messages) == 1


async def test_live_transitions_are_logged_once(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """Going LIVE and stopping each log one line; steady cycles log nothing."""
    s = add_stream(rig.sim, "s1")
    poller = rig.poller(make_config(rig.sim.base_url, streams=("s1",)))
    caplog.set_level(logging.INFO, logger="exporter")
    await poller.poll_once()
    rig.sim.world.go_live(s)
    await poller.poll_once()
    await poller.poll_once()
    rig.sim.world.stop(s)
    await poller.poll_once()
    await poller.poll_once()
    messages = [r.getMessage() for r in caplog.records if r.name == "exporter.poller"]
    assert messages == ["livestream went LIVE", "livestream stopped being LIVE (status IDLE)"]


async def test_session_error_keeps_stream_live_and_marks_app_down(rig: Rig) -> None:
    """A failed session fetch is an app error, not a stopped stream."""
    s = add_stream(rig.sim, "s1")
    go_live(rig.sim, s, ingest=70)
    poller = rig.poller(make_config(rig.sim.base_url, streams=("s1",)))
    await poller.poll_once()
    rig.sim.state.answer_next(SESSION, Canned(500, {"success": False}), times=3)
    snapshot = await poller.poll_once()
    (state,) = snapshot.apps[0].streams
    assert state.live and state.session is not None and state.session.ingest_seconds == 70
    assert not snapshot.apps[0].up
    assert rig.errors("http_error") == 1


async def test_missing_configured_stream_is_reported_once(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """A configured id the listing does not have is warned about once and exported only
    as unlisted."""
    add_stream(rig.sim, "s1")
    poller = rig.poller(make_config(rig.sim.base_url, streams=("s1", "ghost")))
    caplog.set_level(logging.WARNING, logger="exporter")
    await poller.poll_once()
    snapshot = await poller.poll_once()
    assert [s.id for s in snapshot.apps[0].streams] == ["s1"]
    assert [u.id for u in snapshot.apps[0].unlisted] == ["ghost"]
    warnings = [
        r.getMessage() for r in caplog.records if "not in the app's listing" in r.getMessage()
    ]
    assert warnings == ["configured livestreams are not in the app's listing: ghost"]


class ExplodingApi(UnaskedApi):
    """An API double whose listing raises a bug-like exception once."""

    def __init__(self) -> None:
        self.calls = 0

    async def list_livestreams(self, account_id: str, app_id: str, **_: object) -> Listing:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("bug")
        return Listing(livestreams=(Livestream("s1", "IDLE"),))


async def test_unexpected_error_marks_app_down_and_polling_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug in one cycle is logged with its traceback; the next cycle works."""
    api = ExplodingApi()
    poller = Poller(config=make_config("http://127.0.0.1:9", streams=("s1",)), api=api)
    caplog.set_level(logging.ERROR, logger="exporter")
    first = await poller.poll_once()
    second = await poller.poll_once()
    assert not first.apps[0].up and second.apps[0].up
    assert any(r.exc_info for r in caplog.records)


async def test_run_polls_every_interval_until_stopped() -> None:
    """run() keeps cycling and returns as soon as the stop event is set."""
    stop = asyncio.Event()
    cycles: list[float] = []

    class Observer:
        def poll_error(self, account_id: str, app_id: str, reason: str) -> None: ...

        def track_app(self, account_id: str, app_id: str) -> None: ...

        def untrack_app(self, account_id: str, app_id: str) -> None: ...

        def plan(self, *, counter_period: float, listing_period: float, lanes: bool) -> None:
            pass

        def cycle(self, seconds: float, *, waited_for_budget: bool = False) -> None:
            cycles.append(seconds)
            if len(cycles) == 3:
                stop.set()

    poller = Poller(
        config=make_config("http://127.0.0.1:9", streams=("s1",), interval=0.01, max_staleness=1),
        api=ExplodingApi(),
        observer=Observer(),
    )
    await asyncio.wait_for(poller.run(stop), timeout=5)
    assert len(cycles) == 3 and poller.snapshot.cycles == 3 and poller.ready


async def test_mixed_failures_log_down_once(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """An app down for changing reasons logs one warning, not one per cycle."""
    add_stream(rig.sim, "s1")
    poller = rig.poller(make_config(rig.sim.base_url, streams=("s1",)))
    caplog.set_level(logging.INFO, logger="exporter")
    await poller.poll_once()
    for fault in (Canned(500, {"success": False}), Canned(200, raw=b"{not json")) * 2:
        rig.sim.state.answer_next(LISTING, fault, times=3)
        await poller.poll_once()
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert sum("app is down" in m for m in messages) == 1


async def test_auth_failure_is_named_even_when_not_the_first_error(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """A 403 behind another failure in the same cycle still logs the permission hint once."""
    for s in ("s1", "s2"):
        rig.sim.world.go_live(add_stream(rig.sim, s))
    poller = rig.poller(make_config(rig.sim.base_url, discover=True))
    caplog.set_level(logging.INFO, logger="exporter")
    await poller.poll_once()
    gateway = {"success": False, "errors": [{"code": 10000, "message": "Authentication error"}]}
    rig.sim.state.answer_next(SESSION, Canned(502, {"success": False}), times=3)
    rig.sim.state.answer_next(SESSION, Canned(403, gateway))
    await poller.poll_once()
    hints = [r for r in caplog.records if "Realtime or Realtime Admin" in r.getMessage()]
    assert len(hints) == 1


async def test_listing_entries_that_cannot_be_read_mark_the_app_down(rig: Rig) -> None:
    """Unattributable listing entries are skipped, counted as decode errors, and up is 0."""
    s1 = rig.sim.world.find(add_stream(rig.sim, "s1"))
    poller = rig.poller(make_config(rig.sim.base_url, discover=True))
    body = {
        "success": True,
        "data": [livestream_body(s1, rig.sim.world.now()), "garbage", {"status": "LIVE"}],
        "paging": {"start_offset": 1, "end_offset": 3, "total_count": 3},
    }
    rig.sim.state.answer_next(LISTING, Canned(200, body))
    snapshot = await poller.poll_once()
    assert [s.id for s in snapshot.apps[0].streams] == ["s1"]
    assert not snapshot.apps[0].up and rig.errors("decode") == 1


class CancellingApi(UnaskedApi):
    """A double whose session request ends cancelled, as a library bug could make it."""

    async def list_livestreams(self, account_id: str, app_id: str, **_: object) -> Listing:
        return Listing(livestreams=(Livestream("s1", "LIVE"),))

    async def active_session(
        self, account_id: str, app_id: str, livestream_id: str, **_: object
    ) -> ActiveSession:
        raise asyncio.CancelledError


async def test_a_cancelled_request_is_an_internal_error_not_a_dead_poller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A request that ends cancelled (not by us) marks the app down; polling goes on."""
    poller = Poller(config=make_config("http://127.0.0.1:9", streams=("s1",)), api=CancellingApi())
    caplog.set_level(logging.DEBUG, logger="exporter")
    first = await poller.poll_once()
    second = await poller.poll_once()
    assert not first.apps[0].up and not second.apps[0].up and second.cycles == 2
    tracebacks = [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]
    assert len(tracebacks) == 1


async def test_over_budget_cycles_are_warned_about_once(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """When a cycle cannot keep to the budget at this interval (here the budget is too small
    even for the lanes plan, so the full plan stays and waits), one warning says so.
    (Sessions that do not fit a workable budget wait their turn: tests/unit/test_lanes.py.)"""
    for i in range(4):
        rig.sim.world.go_live(add_stream(rig.sim, f"s{i}"))
    config = make_config(rig.sim.base_url, discover=True, interval=30, rate_limit=RateLimit(5, 300))
    poller = rig.poller(config)
    caplog.set_level(logging.INFO, logger="exporter")
    await poller.poll_once()
    await poller.poll_once()
    warned = [r.getMessage() for r in caplog.records if "cycles will wait" in r.getMessage()]
    assert warned == [
        "a cycle needs 5 requests, 50 per 300s at this interval, but the budget "
        "(api.rate_limit, or the API's stated limit if lower) allows 5: cycles will wait "
        "for the budget and take longer than poll.interval; raise poll.interval or "
        "api.rate_limit, or shard"
    ]


async def test_ids_that_are_dot_segments_are_exported_from_the_listing_alone(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """Streams listed with ids "." and ".." cost no request and no error, are exported with
    their listed status and live 1 exactly when that is LIVE, and are warned about once."""
    go_live(rig.sim, add_stream(rig.sim, "s1"), ingest=70)
    dot = rig.sim.world.find(add_stream(rig.sim, ".", status="LIVE"))
    dotdot = rig.sim.world.find(add_stream(rig.sim, "..", status="IDLE"))
    poller = rig.poller(make_config(rig.sim.base_url, discover=True))
    rig.registry.register(SnapshotCollector(lambda: poller.snapshot))
    caplog.set_level(logging.WARNING, logger="exporter")

    def value(name: str, livestream_id: str | None = None, **labels: str) -> float | None:
        if livestream_id is not None:
            labels["livestream_id"] = livestream_id
        return rig.registry.get_sample_value(name, {"account_id": ACCOUNT, "app_id": APP, **labels})

    for cycle in range(4):
        if cycle == 2:  # both change status: "." stops, ".." goes LIVE
            rig.sim.world.set_status(".", "IDLE")
            rig.sim.world.set_status("..", "LIVE")
        rig.clock.now += 30
        await poller.poll_once()
        assert value("realtimekit_up") == 1
        for stream in (dot, dotdot):
            is_live = 1.0 if stream.status == "LIVE" else 0.0
            status = value("realtimekit_livestream_status", stream.id, status=stream.status)
            assert status == 1
            assert value("realtimekit_livestream_live", stream.id) == is_live
            assert value("realtimekit_livestream_ingest_seconds", stream.id) is None
        assert value("realtimekit_livestream_live", "s1") == 1
        assert value("realtimekit_livestream_ingest_seconds", "s1") == 70

    assert sent(rig.sim, "unrouted") == 0
    assert (sent(rig.sim, LISTING), sent(rig.sim, SESSION)) == (4, 4)
    assert sent(rig.sim, BY_ID) == 0
    assert sum(rig.errors(reason) for reason in REASONS) == 0
    (warning,) = [r for r in caplog.records if r.name == "exporter.poller"]
    extra = vars(warning)  # the fields the call's extra= set on the record
    assert (extra["account_id"], extra["app_id"]) == (ACCOUNT, APP)
    assert "2 listed livestreams" in warning.getMessage() and "'.', '..'" in warning.getMessage()
