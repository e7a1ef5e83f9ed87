"""The simulator's deliveries, with each of its faults, into the exporter's receiver: the
exporter's objects as the daemon wires them (Exporter and Server) on loopback, its key
from the simulator's key document, its URL registered with the simulator. Polling waits
a minute between cycles, so what changes within a test came by webhook."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporter.config import WebhooksConfig
from exporter.server import Exporter, Server
from exporter.simulator import REALISTIC, Simulator, World
from exporter.simulator.webhooks import DeliverySettings
from tests.conftest import ACCOUNT, APP, TOKEN, make_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

FAST = DeliverySettings(retry_delay=0.05, timeout=2.0, tick=0.02, duplicate_gap=0.05)
OTHER_APP = "sim-other-app"


class Rig:
    def __init__(self, sim: Simulator, exporter: Exporter, server: Server) -> None:
        self.sim = sim
        self.world = sim.world
        self.exporter = exporter
        self.server = server

    def faults(self, **changes: Any) -> None:
        self.sim.state.faults = dataclasses.replace(self.sim.state.faults, **changes)

    def sample(self, name: str, **labels: str) -> float:
        value = self.exporter.registry.get_sample_value(name, labels)
        return value or 0.0

    def deliveries(self, outcome: str, event: str = "livestreaming.statusUpdate") -> float:
        return self.sample(
            "realtimekit_exporter_webhook_deliveries_total", event=event, outcome=outcome
        )

    def live(self, sid: str) -> bool | None:
        app = self.exporter.poller.snapshot.app(ACCOUNT, APP)
        state = app.stream(sid) if app is not None else None
        return None if state is None else state.live

    def live_ids(self) -> list[str]:
        app = self.exporter.poller.snapshot.app(ACCOUNT, APP)
        assert app is not None
        return sorted(s.id for s in app.streams if s.live)

    async def until(self, what: str, condition: Callable[[], bool], within: float = 10) -> None:
        async with asyncio.timeout(within):
            while not condition():
                await asyncio.sleep(0.02)
        assert condition(), what

    async def settled(self) -> None:
        """Every delivery done (or given up), and every refresh it set off ended."""
        async with asyncio.timeout(20):
            await self.sim.deliveries_settled()
            refresher = self.exporter.refresher
            assert refresher is not None
            while refresher.busy:
                await asyncio.sleep(0.01)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    world = World(seed=9, profile=REALISTIC)  # nothing changes by itself for 150 s
    world.populate(ACCOUNT, APP, 8, live=4)
    world.populate(ACCOUNT, OTHER_APP, 3, live=2)
    async with Simulator(world, token=TOKEN, webhook_settings=FAST) as sim:
        config = make_config(sim.base_url, discover=True, interval=60.0)
        hooks = WebhooksConfig(host="127.0.0.1", port=0, public_key_url=sim.key_url)
        config = dataclasses.replace(config, webhooks=hooks)
        exporter = Exporter(config, registry=CollectorRegistry(), process_metrics=False)
        async with exporter:
            server = Server(exporter, host="127.0.0.1", port=0)
            await server.start()
            try:
                rig = Rig(sim, exporter, server)
                keys = exporter.keys
                assert keys is not None
                await rig.until("a poll cycle and the key", lambda: exporter.poller.ready)
                await rig.until("the key", lambda: keys.key is not None)
                host, port = server.webhook_addresses[0]
                url = f"http://{host}:{port}/webhooks/realtimekit"
                for app in (APP, OTHER_APP):
                    sim.add_webhook(ACCOUNT, app, url=url)
                yield rig
            finally:
                await server.close()


async def test_a_delivered_stop_shows_at_once(rig: Rig) -> None:
    """The plain case: the simulator's signed delivery, the stream shown stopped."""
    sid = rig.live_ids()[0]
    rig.world.stop(sid)
    await rig.until("the stop shown", lambda: rig.live(sid) is False)
    await rig.settled()
    assert rig.deliveries("accepted") == 1


async def test_unsigned_and_wrongly_signed_deliveries_change_nothing(rig: Rig) -> None:
    """Deliveries without a signature, or signed with another key: refused (401, which
    the simulator does not retry), counted bad_signature, the streams still shown live."""
    first, second = rig.live_ids()[:2]
    rig.faults(webhook_unsigned_rate=1.0)
    rig.world.stop(first)
    await rig.settled()
    rig.faults(webhook_unsigned_rate=0.0, webhook_wrong_key_rate=1.0)
    rig.world.stop(second)
    await rig.settled()
    assert rig.live(first) is True
    assert rig.live(second) is True
    # The unsigned one is refused once (401); the other may first get 503 (the key was
    # read just now, so it could be a rotated key's) and be retried, then 401.
    assert rig.deliveries("bad_signature", event="unverified") >= 2
    assert rig.deliveries("accepted") == 0
    assert {r.response for r in rig.sim.webhook_log} <= {401, 503}
    assert all(r.outcome != "delivered" for r in rig.sim.webhook_log)


async def test_a_rotated_key_is_fetched_and_deliveries_go_on(rig: Rig) -> None:
    """The simulator signs with a new key: the first such delivery makes the exporter
    fetch the key again, and is accepted (at once, or on RealtimeKit's retry)."""
    keys = rig.exporter.keys
    assert keys is not None
    keys._refetch_floor = 0.1  # fast, for the test
    rig.sim.rotate_key()
    sid = rig.live_ids()[0]
    rig.world.stop(sid)
    await rig.until("the stop shown", lambda: rig.live(sid) is False)
    await rig.settled()
    assert rig.deliveries("accepted") == 1
    fetched = rig.sample("realtimekit_exporter_webhook_public_key_fetches_total", result="ok")
    assert fetched == 2


async def test_duplicated_deliveries_are_dropped(rig: Rig) -> None:
    """Every delivery sent twice (same id, same bytes): one accepted, one duplicate."""
    rig.faults(webhook_duplicate_rate=1.0)
    sid = rig.live_ids()[0]
    rig.world.stop(sid)
    await rig.settled()
    assert rig.live(sid) is False
    assert rig.deliveries("accepted") == 1
    assert rig.deliveries("duplicate") == 1


async def test_reordered_deliveries_end_in_the_apis_truth(rig: Rig) -> None:
    """A stop's delivery held back until after the start that follows it: the late stop
    is checked against the API, which says LIVE; the stream ends shown live."""
    refresher = rig.exporter.poller.unit().refresher
    assert refresher is not None
    refresher._rechecks = (0.001, 0.002, 0.003)  # a minute's poll interval: 60-180 ms
    sid = rig.live_ids()[0]
    rig.faults(webhook_reorder_rate=1.0, webhook_reorder_delay=0.5)
    rig.world.stop(sid)
    rig.faults(webhook_reorder_rate=0.0)
    session = rig.world.go_live(sid)
    await rig.settled()
    app = rig.exporter.poller.snapshot.app(ACCOUNT, APP)
    assert app is not None
    state = app.stream(sid)
    assert state is not None
    assert state.live
    assert state.livestream.status == "LIVE"
    # The start's hint agreed with what was shown (live), so it asked nothing: the new
    # session's values come with polling's turn for them (docs/reliability.md).
    assert session.id != (state.session.id if state.session is not None else None)
    records = {r.status: r for r in rig.sim.webhook_log if r.stream_id == sid}
    stop, start = records["IDLE"], records["LIVE"]
    assert stop.delivered_at is not None
    assert start.delivered_at is not None
    assert stop.delivered_at > start.delivered_at  # the stop came last


async def test_a_delayed_delivery_still_shows_the_stop(rig: Rig) -> None:
    """A delivery that comes a second late shows the stop a second late."""
    rig.faults(webhook_delay=1.0)
    sid = rig.live_ids()[0]
    rig.world.stop(sid)
    await rig.until("the stop shown", lambda: rig.live(sid) is False, within=10)
    assert rig.deliveries("accepted") == 1


async def test_a_lost_delivery_is_left_to_polling_and_counted_unannounced(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery never made: the stream stays shown live until a cycle finds the stop,
    which counts as unannounced once the grace has passed."""
    rig.faults(webhook_drop_rate=1.0)
    sid = rig.live_ids()[0]
    rig.world.stop(sid)
    await rig.settled()
    assert rig.live(sid) is True
    refresher = rig.exporter.poller.unit().refresher
    assert refresher is not None
    clock = [0.0]
    refresher.announcements._clock = lambda: clock[0]
    await rig.exporter.poller.poll_once()  # polling finds the stop
    assert rig.live(sid) is False
    clock[0] += 1000
    refresher.settle()
    assert rig.sample("realtimekit_exporter_webhook_unannounced_changes_total") == 1


async def test_an_unreachable_key_document_is_503_and_realtimekit_retries(rig: Rig) -> None:
    """The key rotates while the key document is down: the new key's deliveries are
    answered 503 (the key cannot be read), and the simulator retries; once the document
    is back, a retry is accepted and the stop shows."""
    keys = rig.exporter.keys
    assert keys is not None
    keys._retry_floor = keys._refetch_floor = 0.2  # fast, for the test
    rig.faults(key_document_unavailable=True)
    rig.sim.rotate_key()
    sid = rig.live_ids()[0]
    rig.world.stop(sid)
    await rig.until("a 503", lambda: any(r.response == 503 for r in rig.sim.webhook_log), within=10)
    assert rig.live(sid) is True
    rig.faults(key_document_unavailable=False)
    await rig.until("the stop shown", lambda: rig.live(sid) is False, within=15)
    await rig.settled()
    record = next(r for r in rig.sim.webhook_log if r.stream_id == sid)
    assert record.attempts >= 2
    assert record.outcome == "delivered"


async def test_a_stream_of_an_app_not_tracked_is_ignored(rig: Rig) -> None:
    """Webhooks are per app: a stream this exporter does not track (here, the other app is
    not in its config) is acknowledged and ignored, with no API request."""
    other = rig.world.streams(ACCOUNT, OTHER_APP) or []
    live = [s.id for s in other if s.session is not None]
    before = sum(rig.sim.state.requests.values())
    rig.world.stop(live[0])
    await rig.settled()
    assert rig.deliveries("ignored") == 1
    assert sum(rig.sim.state.requests.values()) == before


async def test_no_stream_key_in_the_exporters_metrics(rig: Rig) -> None:
    """After deliveries of every kind, none of the simulator's stream keys is exported."""
    rig.faults(webhook_duplicate_rate=0.5, webhook_unsigned_rate=0.3)
    for sid in rig.live_ids()[:3]:
        rig.world.stop(sid)
    await rig.settled()
    body = generate_latest(rig.exporter.registry).decode()
    for secret in rig.world.secrets():
        assert secret not in body
