"""The exporter's own client, poller and collector polling the simulator in-process."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporter.budget import RequestBudget
from exporter.client import ENDPOINTS, REASONS, RealtimeKitClient
from exporter.collector import SnapshotCollector
from exporter.config import RateLimit
from exporter.model import KNOWN_STATUSES
from exporter.poller import Poller
from exporter.server import Exporter
from exporter.simulator import REALISTIC, RateLimiter, Simulator, World
from exporter.telemetry import ExporterMetrics
from tests.clock import FakeClock
from tests.conftest import ACCOUNT, APP, TOKEN, make_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from exporter.config import Config
    from exporter.model import Snapshot
    from exporter.simulator.world import SimStream

T0 = 1_800_000_000.0
STREAMS = 30
LIVE = 5
INTERVAL = 2.0


def seeded_world(clock: FakeClock, seed: int = 21) -> World:
    world = World(seed=seed, profile=REALISTIC, clock=clock)
    world.populate(ACCOUNT, APP, STREAMS, live=LIVE)
    return world


class Rig:
    """The pieces :class:`Exporter` wires, on the simulator's clock and without real sleeps
    or jitter, so that retries and rate-limit pauses are deterministic."""

    def __init__(self, sim: Simulator, http: aiohttp.ClientSession, clock: FakeClock) -> None:
        self.sim = sim
        self.http = http
        self.clock = clock
        self.config: Config = make_config(
            sim.base_url, discover=True, interval=INTERVAL, token=TOKEN
        )
        self.registry = CollectorRegistry(auto_describe=False)
        metrics = ExporterMetrics(registry=self.registry, endpoints=ENDPOINTS, reasons=REASONS)
        rate = self.config.api.rate_limit
        budget = RequestBudget(
            requests=rate.requests, window=rate.window, clock=clock, sleep=clock.sleep
        )
        client = RealtimeKitClient(
            session=http,
            base_url=self.config.api.base_url,
            token=self.config.api.token,
            budget=budget,
            timeout=self.config.api.timeout,
            observer=metrics,
            clock=clock,
            sleep=clock.sleep,
            jitter=lambda: 0.0,
        )
        self.poller = Poller(
            config=self.config, api=client, observer=metrics, clock=clock, monotonic=clock
        )
        self.registry.register(SnapshotCollector(lambda: self.poller.snapshot))

    @property
    def world(self) -> World:
        return self.sim.world

    def streams(self) -> list[SimStream]:
        self.world.now()
        return self.world.streams(ACCOUNT, APP) or []

    async def poll(self) -> Snapshot:
        """A poll cycle one interval after the previous one."""
        self.clock.now += INTERVAL
        return await self.poller.poll_once()

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(
            name, {"account_id": ACCOUNT, "app_id": APP, **labels}
        )

    def stream_value(self, name: str, stream: SimStream) -> float | None:
        return self.value(name, livestream_id=stream.id)

    def errors(self, reason: str) -> float | None:
        return self.value("realtimekit_exporter_poll_errors_total", reason=reason)

    def live_flags(self) -> dict[str, float | None]:
        return {s.id: self.stream_value("realtimekit_livestream_live", s) for s in self.streams()}

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.sim.control_url + path, json=body) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def stats(self) -> dict[str, Any]:
        answer = await self.control("GET", "/stats")
        assert isinstance(answer, dict)
        return answer


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = FakeClock()
    async with (
        Simulator(seeded_world(clock), token=TOKEN) as sim,
        aiohttp.ClientSession() as http,
    ):
        yield Rig(sim, http, clock)


def assert_mirrors_world(rig: Rig, snapshot: Snapshot, *, up: bool = True) -> None:
    """Exported statuses and live flags are the world's, stream for stream."""
    world = {s.id: s for s in rig.streams()}
    (app,) = snapshot.apps
    assert app.up is up
    assert {s.id: (s.livestream.status, s.live) for s in app.streams} == {
        sid: (s.status, s.session is not None) for sid, s in world.items()
    }
    assert rig.value("realtimekit_up") == (1.0 if up else 0.0)
    for stream in world.values():
        for known in KNOWN_STATUSES:
            got = rig.value("realtimekit_livestream_status", livestream_id=stream.id, status=known)
            assert got == (1.0 if known == stream.status else 0.0), (stream.id, known)
        live = rig.stream_value("realtimekit_livestream_live", stream)
        assert live == (1.0 if stream.session is not None else 0.0)


# -- the real Exporter ------------------------------------------------------------------
async def test_one_poll_of_the_exporter_mirrors_the_world() -> None:
    """Exporter itself, polled once: up, every stream's status, live flag and counters,
    and none of the world's stream keys nor the token in the exposition."""
    clock = FakeClock()
    world = seeded_world(clock)
    # Room for every session in one cycle, on both sides (the exporter follows the
    # simulator's Ratelimit-Policy when it is lower).
    roomy = RateLimiter(100_000, 300.0)
    async with Simulator(world, token=TOKEN, limiter=roomy) as sim:
        config = make_config(
            sim.base_url,
            discover=True,
            interval=1.0,
            token=TOKEN,
            rate_limit=RateLimit(100_000, 300.0),
        )
        registry = CollectorRegistry(auto_describe=False)
        async with Exporter(config, registry=registry, process_metrics=False) as exporter:
            snapshot = await exporter.poller.poll_once()
            exposition = generate_latest(exporter.registry).decode()
        stats = sim.state.requests

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"account_id": ACCOUNT, "app_id": APP, **labels})

    (app,) = snapshot.apps
    assert app.up and value("realtimekit_up") == 1.0
    assert value("realtimekit_exporter_livestreams_tracked") == STREAMS
    streams = world.streams(ACCOUNT, APP) or []
    assert len(streams) == STREAMS
    assert {s.id: (s.livestream.status, s.live) for s in app.streams} == {
        s.id: (s.status, s.session is not None) for s in streams
    }
    live = [s for s in streams if s.session is not None]
    assert len(live) == LIVE
    for stream in streams:
        labels = {"livestream_id": stream.id}
        assert value("realtimekit_livestream_status", **labels, status=stream.status) == 1.0
        assert value("realtimekit_livestream_live", **labels) == (stream in live)
    for stream in live:
        session = stream.session
        assert session is not None
        labels = {"livestream_id": stream.id}
        assert value("realtimekit_livestream_ingest_seconds", **labels) == session.ingest_seconds(
            clock.now
        )
        assert value("realtimekit_livestream_viewer_seconds", **labels) == session.viewer_seconds(
            clock.now
        )
        assert value("realtimekit_livestream_session_info", **labels, session_id=session.id) == 1
    # One listing page and one session request per live stream, nothing else.
    assert dict(stats) == {("livestreams", 200): 1, ("active_livestream_session", 200): LIVE}

    assert all(s.id in exposition for s in streams)
    for secret in world.secrets():
        assert secret not in exposition
    assert TOKEN not in exposition


# -- the pieces on the simulator's clock ------------------------------------------------
async def test_one_poll_mirrors_the_world(rig: Rig) -> None:
    snapshot = await rig.poll()
    assert_mirrors_world(rig, snapshot)
    assert rig.value("realtimekit_exporter_livestreams_tracked") == STREAMS
    assert sum(s.live for s in snapshot.apps[0].streams) == LIVE


async def test_numbers_as_strings_still_give_numbers(rig: Rig) -> None:
    await rig.control("PUT", "/faults", {"numbers_as_strings": True})
    snapshot = await rig.poll()
    assert_mirrors_world(rig, snapshot)
    live = [s for s in rig.streams() if s.session is not None]
    assert len(live) == LIVE
    for stream in live:
        session = stream.session
        assert session is not None
        state = snapshot.apps[0].stream(stream.id)
        assert state is not None and state.session is not None
        assert isinstance(state.session.ingest_seconds, float)
        assert isinstance(state.session.viewer_seconds, float)
        expected = (session.ingest_seconds(rig.clock.now), session.viewer_seconds(rig.clock.now))
        assert (state.session.ingest_seconds, state.session.viewer_seconds) == expected
        assert rig.stream_value("realtimekit_livestream_ingest_seconds", stream) == expected[0]
        assert rig.stream_value("realtimekit_livestream_viewer_seconds", stream) == expected[1]


async def test_a_stream_stopped_between_polls_keeps_its_final_counters(rig: Rig) -> None:
    await rig.poll()
    stream = next(s for s in rig.streams() if s.session is not None)
    session = stream.session
    assert session is not None
    rig.clock.now += 20
    rig.world.stop(stream.id)
    stopped_at = rig.clock.now
    final = (session.ingest_seconds(stopped_at), session.viewer_seconds(stopped_at))
    assert final != (60.0, 60.0)

    snapshot = await rig.poll()
    assert_mirrors_world(rig, snapshot)
    state = snapshot.apps[0].stream(stream.id)
    assert state is not None and not state.live and state.session is not None
    assert state.session.id == session.id
    assert state.session.stopped_time == pytest.approx(stopped_at, abs=0.001)
    assert (state.session.ingest_seconds, state.session.viewer_seconds) == final
    assert rig.stream_value("realtimekit_livestream_live", stream) == 0.0
    assert rig.stream_value("realtimekit_livestream_ingest_seconds", stream) == final[0]
    assert rig.stream_value("realtimekit_livestream_viewer_seconds", stream) == final[1]
    assert rig.value("realtimekit_livestream_status", livestream_id=stream.id, status="IDLE") == 1
    assert (await rig.stats())["requests"]["livestream_session"] == {"200": 1}

    # The final values stay; no further request is spent on them.
    rig.clock.now += 60
    snapshot = await rig.poll()
    assert rig.stream_value("realtimekit_livestream_ingest_seconds", stream) == final[0]
    assert (await rig.stats())["requests"]["livestream_session"] == {"200": 1}


async def test_an_errored_stream_reports_an_errored_session(rig: Rig) -> None:
    await rig.poll()
    live = [s for s in rig.streams() if s.session is not None]
    failed = live[0]
    rig.clock.now += 30
    rig.world.fail(failed.id, message="Ingest timeout: no media received for 30s")
    snapshot = await rig.poll()
    assert_mirrors_world(rig, snapshot)
    state = snapshot.apps[0].stream(failed.id)
    assert state is not None and state.session is not None
    assert state.session.err_message == "Ingest timeout: no media received for 30s"
    assert rig.stream_value("realtimekit_livestream_session_errored", failed) == 1.0
    assert rig.value("realtimekit_livestream_status", livestream_id=failed.id, status="ERRORED")
    for other in live[1:]:
        assert rig.stream_value("realtimekit_livestream_session_errored", other) == 0.0


async def test_server_errors_mark_the_app_down_without_flipping_streams(rig: Rig) -> None:
    snapshot = await rig.poll()
    assert_mirrors_world(rig, snapshot)
    before = rig.live_flags()
    assert sum(v == 1.0 for v in before.values()) == LIVE
    assert rig.errors("http_error") == 0

    await rig.control("PUT", "/faults", {"error_rate": 1})
    for cycle in (1, 2, 3):
        snapshot = await rig.poll()
        assert not snapshot.apps[0].up and rig.value("realtimekit_up") == 0.0
        assert rig.live_flags() == before
        assert rig.errors("http_error") == cycle
    served = (await rig.stats())["requests"]["livestreams"]
    assert set(served) - {"200"} <= {"500", "502", "503", "504"} and len(served) > 1

    await rig.control("PUT", "/faults", {"error_rate": 0})
    snapshot = await rig.poll()
    assert_mirrors_world(rig, snapshot)
    assert rig.errors("http_error") == 3


async def test_a_throttled_token_sends_nothing_until_the_block_ends(rig: Rig) -> None:
    await rig.poll()
    before = rig.live_flags()
    await rig.control("POST", "/throttle", {"seconds": 120})
    sent = (await rig.stats())["total"]

    snapshot = await rig.poll()
    assert not snapshot.apps[0].up and rig.errors("rate_limited") == 1
    stats = await rig.stats()
    assert stats["total"] == sent + 1 and stats["requests"]["livestreams"]["429"] == 1
    for cycle in (2, 3):
        snapshot = await rig.poll()
        assert not snapshot.apps[0].up and rig.errors("rate_limited") == cycle
        assert (await rig.stats())["total"] == sent + 1  # nothing was sent
        assert rig.live_flags() == before

    rig.clock.now += 120
    snapshot = await rig.poll()
    assert_mirrors_world(rig, snapshot)
    assert (await rig.stats())["total"] > sent + 1


async def test_a_rejected_token_is_an_auth_error_until_accepted_again(rig: Rig) -> None:
    await rig.poll()
    await rig.control("PUT", "/faults", {"reject_token": True})
    for cycle in (1, 2):
        snapshot = await rig.poll()
        assert not snapshot.apps[0].up and rig.errors("auth") == cycle
    assert (await rig.stats())["requests"]["livestreams"]["401"] == 2
    await rig.control("PUT", "/faults", {"reject_token": False})
    snapshot = await rig.poll()
    assert_mirrors_world(rig, snapshot)
    assert rig.errors("auth") == 2


async def test_no_stream_key_nor_the_token_is_ever_exported(rig: Rig) -> None:
    """Through live sessions, a stop, an error and faults, the exposition holds no secret."""
    expositions = []
    await rig.poll()
    expositions.append(generate_latest(rig.registry).decode())
    live = [s for s in rig.streams() if s.session is not None]
    rig.world.stop(live[0].id)
    rig.world.fail(live[1].id)
    await rig.control("PUT", "/faults", {"numbers_as_strings": True})
    await rig.poll()
    expositions.append(generate_latest(rig.registry).decode())
    await rig.control("PUT", "/faults", {"malformed_rate": 1})
    await rig.poll()
    expositions.append(generate_latest(rig.registry).decode())
    secrets = rig.world.secrets()
    assert len(secrets) == STREAMS
    for text in expositions:
        assert all(s.id in text for s in rig.streams())
        for secret in secrets:
            assert secret not in text
        assert TOKEN not in text


async def test_every_documented_variant_and_a_lagging_listing_are_understood(rig: Rig) -> None:
    """With every answer in another documented shape (the listing as an object, disabled
    as text, no active session as a 200 with a null session) and a listing that lags 30 s
    behind the sessions, nothing fails to decode, and once the lag is over the exported
    statuses and live flags are the world's again."""
    lag = 30.0
    disabled = next(s for s in rig.streams() if s.session is None)
    disabled.disabled = True
    await rig.control("PUT", "/faults", {"variant_rate": 1, "status_lag": lag})
    rig.clock.now += lag  # what changed before the test has reached the listing
    snapshot = await rig.poll()
    assert_mirrors_world(rig, snapshot)
    assert rig.stream_value("realtimekit_livestream_disabled", disabled) == 1.0

    live = [s for s in rig.streams() if s.session is not None]
    resting = [s for s in rig.streams() if s.session is None and s is not disabled]
    rig.world.stop(live[0].id)
    rig.world.fail(live[1].id)
    rig.world.go_live(resting[0].id)
    rig.world.go_live(resting[1].id)
    for _ in range(int(lag / INTERVAL) - 1):  # the listing still shows the old statuses
        snapshot = await rig.poll()
        assert snapshot.apps[0].up
        # A stream listed LIVE that has stopped is asked, and read as not live at once.
        assert rig.stream_value("realtimekit_livestream_live", live[0]) == 0.0
        assert rig.stream_value("realtimekit_livestream_live", live[1]) == 0.0
    for _ in range(2):
        snapshot = await rig.poll()
    assert_mirrors_world(rig, snapshot)
    for stream in (*live[:2], *resting[:2]):
        assert rig.stream_value("realtimekit_livestream_live", stream) == (
            1.0 if stream.session is not None else 0.0
        )
    assert rig.stream_value("realtimekit_livestream_disabled", disabled) == 1.0
    assert rig.errors("decode") == 0
    stats = (await rig.stats())["requests"]
    assert set(stats["livestreams"]) == {"200"}
    # A stopped stream still listed LIVE was asked: 200 with a null session, or the 404.
    assert set(stats["active_livestream_session"]) == {"200", "404"}
